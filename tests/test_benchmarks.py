"""`python -m benchmarks --quick` runs end to end: the table on stdout, a JSON with every section.

Only that the benchmark works is checked here, never how fast anything was: these machines' speed
moves 2-3x between runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every default section but scale_out: tests/benchmarks/test_scale_out.py runs that one and checks it closer.
SECTIONS = ("training", "inference", "quality", "cost", "freshness")


@pytest.mark.one_broker
@pytest.mark.timeout(900)
def test_quick_benchmark_prints_the_table_and_writes_every_section(kafka_bootstrap, tmp_path):
    sections = ",".join(SECTIONS)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--quick", "--sections", sections),
            *("--out", str(tmp_path), "--bootstrap", kafka_bootstrap),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    headings = ("1. Training throughput", "2. Freshness", "3. Inference", "4. Quality", "5. Cost")
    for heading in (*headings, "Targets"):
        assert heading in done.stdout, done.stdout
    assert "[bench" in done.stderr  # progress says what is being measured

    results = json.loads((tmp_path / "latest.json").read_text())
    assert results["meta"]["mode"] == "quick"
    assert results["machine"]["nproc"] >= 1 and results["machine"]["packages"]["scikit-learn"]
    for section in SECTIONS:
        assert section in results and "error" not in results[section], results.get(section)
    assert "scale_out" not in results and "6. Scale-out" not in done.stdout  # only the sections asked for

    training = results["training"]["sizes"]
    assert set(training) == {"1000", "10000"}
    for size in training.values():
        assert set(size["rows_per_s"]) == {
            "streamfit",
            "river_loop",
            "floor",
            "floor_kafka_python",
            "sklearn_partial_fit",
        }
        assert all(s["median"] > 0 for s in size["rows_per_s"].values())
        assert "data quality (GX)" in size["stages_s"] and "ONNX export + parity" in size["stages_s"]
        assert size["ratios"]["streamfit_vs_river_loop"]["median"] > 0

    freshness = results["freshness"]
    assert freshness["head_learned_s"]["n"] == 3
    assert {"waiting_s", "launch_s", "compute_s", "head_swap_s"} <= set(freshness["head_breakdown_s"])
    assert freshness["champion_samples"] >= 1

    inference = results["inference"]
    assert {"onnxruntime", "sklearn", "river"} <= set(inference["single_row_us"])
    assert inference["scorer"]["runs"]["1_replica"][0]["per_replica_events"] == [inference["scorer"]["events"]]

    phishing = results["quality"]["phishing"]["batches"]
    assert set(phishing) == {"10", "50", "100", "250"}
    assert all(0.5 < b["streamfit_roc_auc"] <= 1 for b in phishing.values())
    assert results["quality"]["concept_change"]["streamfit"]["1000"]["accuracy_per_window"]
    decisions = results["quality"]["decisions"]["settings"]
    assert set(decisions["near-chance classification"]) == {"roc_auc", "accuracy"}
    assert "equal" in decisions["noisy regression"]["rmse"]
    features = results["quality"]["features"]
    for stream in ("census", "sensors"):  # each stream learned with and without its new kind of feature, and by River
        assert {"streamfit", "streamfit_without", "river_onehot_logreg", "majority_rate"} <= set(features[stream])
    assert "Category and rolling features" in done.stdout

    assert results["cost"]["imports"] and results["cost"]["training_step"]["10000"]["peak_rss_mib"] > 0

    assert results["targets"] and all("met" in t for t in results["targets"])
    assert (tmp_path / "latest.txt").read_text().strip() == done.stdout.strip()
