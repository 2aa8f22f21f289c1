"""`python -m benchmarks` runs end to end: the table on stdout, a JSON with every section.

Only that the benchmark works is checked here, never how fast anything was: these machines' speed
moves 2-3x between runs. It runs at the `--smoke` size (the quick size with fewer decision-noise
trials, feature rows and scorer events), which takes every section through every step.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import FULL, QUICK, SMOKE
from benchmarks.run import parse_args

ROOT = Path(__file__).resolve().parent.parent
# Every default section but scale_out: tests/benchmarks/test_scale_out.py runs that one and checks it closer.
SECTIONS = ("training", "inference", "quality", "cost", "freshness")


@pytest.mark.one_broker
@pytest.mark.timeout(900)
def test_smoke_benchmark_prints_the_table_and_writes_every_section(kafka_bootstrap, tmp_path):
    sections = ",".join(SECTIONS)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--smoke", "--sections", sections),
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
    assert results["meta"]["mode"] == "smoke"
    assert results["machine"]["nproc"] >= 1 and results["machine"]["packages"]["scikit-learn"]
    for section in SECTIONS:
        assert section in results and "error" not in results[section], results.get(section)
    assert "scale_out" not in results and "6. Scale-out" not in done.stdout  # only the sections asked for

    training = results["training"]["sizes"]
    assert set(training) == {str(rows) for rows in SMOKE.train_sizes}
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
    assert freshness["head_learned_s"]["n"] == SMOKE.freshness_batches
    assert {"waiting_s", "launch_s", "compute_s", "head_swap_s"} <= set(freshness["head_breakdown_s"])
    assert freshness["champion_samples"] >= 1

    inference = results["inference"]
    assert {"onnxruntime", "sklearn", "river"} <= set(inference["single_row_us"])
    assert inference["scorer"]["runs"]["1_replica"][0]["per_replica_events"] == [inference["scorer"]["events"]]
    assert inference["scorer"]["events"] == SMOKE.scorer_events

    phishing = results["quality"]["phishing"]["batches"]
    assert set(phishing) == {"10", "50", "100", "250"}
    assert all(0.5 < b["streamfit_roc_auc"] <= 1 for b in phishing.values())
    assert results["quality"]["concept_change"]["streamfit"]["1000"]["accuracy_per_window"]
    assert results["quality"]["features"]["rows"] == SMOKE.feature_rows
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


def test_each_size_flag_selects_its_mode_and_smoke_cuts_only_the_repeated_work():
    assert parse_args([]).mode is QUICK and parse_args(["--quick"]).mode is QUICK
    assert parse_args(["--full"]).mode is FULL and parse_args(["--smoke"]).mode is SMOKE
    cut = {"name", "single_row_calls", "batch_repeats", "scorer_events", "decision_trials", "feature_rows"}
    for field in set(QUICK.__dataclass_fields__) - cut:  # the report's shape comes from these: as quick
        assert getattr(SMOKE, field) == getattr(QUICK, field), field
    for field in cut - {"name"}:
        assert 0 < getattr(SMOKE, field) < getattr(QUICK, field), field
    assert SMOKE.quick and QUICK.quick and not FULL.quick
