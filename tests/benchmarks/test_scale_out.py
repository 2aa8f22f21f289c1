"""`python -m benchmarks.scale_out` (quick) runs both training jobs for real and reports both ways.

Only the structure and sanity of the figures are checked, never the speed-up: it moves with the load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.one_broker
@pytest.mark.timeout(420)
def test_quick_scale_out_benchmark_runs_both_jobs_and_reports_ratios(kafka_bootstrap, tmp_path) -> None:
    out = tmp_path / "scale_out.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale_out", "--bootstrap", kafka_bootstrap, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,  # about 60 s on a quiet machine; 110 s was not enough under load on Apache Kafka
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "6. Scale-out as Dagster steps" in done.stdout and "[bench" in done.stderr

    results = json.loads(out.read_text())
    (size,) = results["end_to_end"]["mlp_classifier"]["sizes"].values()
    for way in ("sequential", "fan_out"):
        assert size["run_s"][way]["n"] == size["repeats"] == 2
        assert 0 < size["model_s"][way]["median"] < size["run_s"][way]["median"]
        assert 0 < size["read_s"][way]["median"] < size["run_s"][way]["median"]
        assert 0.9 < size["holdout"][way]["roc_auc"] <= 1  # both learned the synthetic concept
    assert size["speedup_run"]["median"] == pytest.approx(
        size["run_s"]["sequential"]["median"] / size["run_s"]["fan_out"]["median"], rel=0.5
    )
    assert size["speedup_read"]["median"] == pytest.approx(
        size["read_s"]["sequential"]["median"] / size["read_s"]["fan_out"]["median"], rel=0.5
    )
    assert size["auc_difference"] == pytest.approx(
        size["holdout"]["fan_out"]["roc_auc"] - size["holdout"]["sequential"]["roc_auc"]
    )
    for estimator in ("sgd_classifier", "mlp_classifier"):
        prequential = results["prequential"][estimator]
        assert 0.5 < prequential["sequential"]["roc_auc"] <= 1 and 0.5 < prequential["fan_out"]["roc_auc"] <= 1
