"""Readers of live_metrics.jsonl: the exporter's Prometheus families and `live_metrics`."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from prometheus_client import CollectorRegistry

from dagster_project.labels import LiveMetricsCollector, LiveStore, live_metrics
from tests.conftest import synthetic_spec
from tests.helpers import sample


def test_exporter_collector_reads_new_complete_lines_only(tmp_path: Path) -> None:
    classify, regress = (
        synthetic_spec(),
        synthetic_spec(task="regression", model={"estimator": "sgd_regressor"}, label={}),
    )
    at = "2024-05-01T12:00:00.000+00:00"
    common = {"at": at, "window_s": 60, "pending": {"predictions": 2, "labels": 1}}
    first = {"seq": 1, "task": "classification", "versions": {"v1": {"rows": 4, "correct": 3}}, **common}
    LiveStore(tmp_path, classify.name).directory.mkdir(parents=True)
    LiveStore(tmp_path, regress.name).directory.mkdir(parents=True)
    LiveStore(tmp_path, classify.name).append(first | {"counters": {"joined": 4}})
    LiveStore(tmp_path, regress.name).append(
        {"seq": 1, "task": "regression", "versions": {"v2": {"rows": 2, "abs_err": 3.0, "sq_err": 5.0}}, **common}
    )
    registry = CollectorRegistry()
    registry.register(LiveMetricsCollector(tmp_path, [classify, regress]))
    assert sample(registry, "streamfit_live_accuracy", stream=classify.name, version="v1") == 0.75
    assert sample(registry, "streamfit_live_mae", stream=regress.name, version="v2") == 1.5
    assert sample(registry, "streamfit_live_rmse", stream=regress.name, version="v2") == 2.5**0.5
    assert sample(registry, "streamfit_labels_pending", stream=regress.name, side="predictions") == 2
    line = orjson.dumps({"seq": 2, "task": "classification", "versions": {"v1": {"rows": 4, "correct": 4}}, **common})
    path = LiveStore(tmp_path, classify.name).path
    with open(path, "ab") as fh:
        fh.write(line[:20])  # half a line: not counted yet
    assert sample(registry, "streamfit_live_accuracy", stream=classify.name, version="v1") == 0.75
    with open(path, "ab") as fh:
        fh.write(line[20:] + b"\n")
    assert sample(registry, "streamfit_live_accuracy", stream=classify.name, version="v1") == 7 / 8
    assert live_metrics(tmp_path, classify.name) == {"v1": {"rows": 8, "accuracy": 7 / 8}}
    assert live_metrics(tmp_path, classify.name, since=time.time()) == {}
