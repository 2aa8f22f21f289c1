"""One path from rows to a registered version: learn, export to ONNX, check parity, register.

The training assets run these steps as separate Dagster assets, so the UI shows each one;
quarantine replay and retraining call `learn_export_register`. Every version is registered
through `dagster_project.registry.versioning.register_batch`, the one place that checks the
parent, records the learned offsets and names the first champion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.offsets import Ranges
from dagster_project.kafka.settings import KafkaSettings
from dagster_project.registry.contract import model_changed
from dagster_project.registry.store import ModelRegistry, Version
from dagster_project.spec import StreamSpec

log = logging.getLogger(__name__)


class ParityFailed(RuntimeError):
    """onnxruntime does not reproduce scikit-learn on the batch: the model must not be served."""


@dataclass
class TrainedModel:
    """A candidate: the fitted pipeline, the version it grew from, and its prequential metrics."""

    estimator: Any
    parent: str | None
    metrics: dict[str, float | int]
    rows_trained: int
    train_seconds: float
    # The champion when the batch arrived (what was served) and its prequential metrics on the same
    # rows as `metrics`; and which version's estimator the batch continued from, and why.
    served: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None


@dataclass
class OnnxArtifact:
    """The exported model and the parity evidence that it may be served."""

    onnx_bytes: bytes
    parity: dict[str, Any]
    reason: str | None = None
    unscorable: tuple[int, ...] = ()  # rows (positions in X) the float32 model overflows on: a scorer refuses them

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))


def export_checked(spec: StreamSpec, estimator: Any, X: np.ndarray) -> OnnxArtifact:
    """Export with skl2onnx and compare onnxruntime with scikit-learn on the batch's rows.

    A linear pipeline reuses the graph this process converted for the previous version
    (`onnx.reuse`); if that export fails parity, its template is dropped and the model is converted
    in full and checked again, so only skl2onnx's own conversion can fail a version.
    """
    from dagster_project.ingest.categories import encoding_signature
    from dagster_project.learning.learner import servable
    from dagster_project.onnx.export import check_parity, export_onnx
    from dagster_project.onnx.reuse import export_reusing, forget

    started = time.perf_counter()
    pipeline = servable(estimator)  # a windowed model's fit, a candidate set's leader
    width, encoding = len(spec.inputs), encoding_signature(spec)
    export = export_reusing(pipeline, width, encoding=encoding)
    onnx_bytes = export.onnx_bytes
    parity = check_parity(pipeline, onnx_bytes, X, spec.parity.atol, spec.parity.rtol)
    if export.reused and not parity.passed:
        forget(pipeline, width, encoding=encoding)
        onnx_bytes = export_onnx(pipeline, width, encoding=encoding)
        parity = check_parity(pipeline, onnx_bytes, X, spec.parity.atol, spec.parity.rtol)
    details = {
        "export_seconds": time.perf_counter() - started,
        "max_abs_diff": float(parity.max_abs_diff),
        "label_mismatches": int(parity.label_mismatches),
        "rows": int(parity.rows),
        "passed": bool(parity.passed),
        "scale": float(parity.scale),  # what atol is a fraction of (`onnx.tolerance`)
        **({"unscorable_rows": len(parity.unscorable)} if parity.unscorable else {}),
    }
    return OnnxArtifact(onnx_bytes, details, parity.reason, parity.unscorable)


def unscorable_warning(batch: MicroBatch, rows: tuple[int, ...], shown: int = 5) -> str:
    """Which rows the served (float32) model cannot score, and what that means for them."""
    where = ", ".join(f"{batch.partitions[i]}:{batch.offsets[i]}" for i in rows[:shown])
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return (
        f"{len(rows)} row(s) of this batch get no finite output from the served model ({where}{more}, "
        "partition:offset): their values overflow its float32 arithmetic (far beyond what the features have "
        "shown). They were learned (clipped); a scorer refuses such an event (422 over HTTP, the DLQ on "
        "Kafka). Parity was checked on the other rows"
    )


def learn_from_head(
    registry: ModelRegistry, spec: StreamSpec, batch: MicroBatch, settings: KafkaSettings | None = None
) -> TrainedModel:
    """Test-then-train the head (or a fresh model) on the batch's labelled rows (a quarantine replay).

    A windowed family takes the replayed batch among its batches in offset order: within its window
    it is fitted at the next refit (this one, when one is due; the rest of the window, newer batches
    too, read back from Kafka with `settings`), older than the window it is left out."""
    from dagster_project.learning.learner import rows_of, test_then_learn
    from dagster_project.learning.prequential import test_then_train
    from dagster_project.learning.windowed import kafka_reader

    def no_broker(ranges: Ranges) -> Any:
        raise ValueError(
            f"{spec.name}: replaying into a windowed model reads its window ({ranges}) back from Kafka: "
            "set STREAMFIT_KAFKA_BOOTSTRAP (or pass the broker's settings)"
        )

    read = kafka_reader(settings, spec, registry=registry) if settings is not None else no_broker
    head = registry.head(spec.name)
    fresh = head is None or model_changed(head.meta, spec) is not None  # another estimator: a model of it
    estimator = None if fresh else registry.load_estimator(spec.name, head.name)
    labelled = batch.labelled
    started = time.perf_counter()
    X, y = batch.X[labelled], batch.y[labelled]
    if spec.model.candidates or spec.model.windowed:
        rows = rows_of(X, y, batch.partitions[labelled], batch.offsets[labelled])
        learned = test_then_learn(estimator, spec, rows, batch.learned_ranges, read, replayed=True)
        model, metrics = learned.model, learned.metrics
    else:
        model, metrics, _ = test_then_train(estimator, spec, X, y)
    return TrainedModel(
        model, head.name if head else None, metrics.as_metadata(), int(labelled.sum()), time.perf_counter() - started
    )


def retrain_lost(decision: dict[str, Any]) -> bool:
    """A retrained version lost its promotion gate: refused on a number (a deferred decision, with
    no rows to score, is not a loss, so the retrain carries on). Shared with the learning-quality
    benchmark, which simulates the gate."""
    return not decision.get("promote") and decision.get("candidate_value") is not None


def continue_from(registry: ModelRegistry, stream: str) -> tuple[str | None, dict[str, Any] | None]:
    """Which version's estimator the next batch starts from: the head, unless the head is a
    retrained version that lost its promotion gate, in which case the champion (the better of the
    two on the same unseen rows) carries on. Offsets always follow the head: the choice is about
    the estimator, so no row is learned twice or skipped by the registry's offsets."""
    head = registry.head(stream)
    if head is None:
        return None, None
    champion = registry.champion(stream)
    if not champion or champion == head.name or not head.meta.get("retrain"):
        return head.name, {"from": head.name, "why": "the head"}
    gates = [
        d for d in registry.decisions(stream) if d.get("kind") == "promotion_gate" and d.get("candidate") == head.name
    ]
    if not gates or not retrain_lost(gates[-1]):
        return head.name, {"from": head.name, "why": "the head (a retrain not beaten by the champion)"}
    return champion, {
        "from": champion,
        "head": head.name,
        "why": f"{head.name} (a retrain) lost the promotion gate to {champion}: {gates[-1].get('reason')}",
    }


def learn_export_register(
    registry: ModelRegistry,
    spec: StreamSpec,
    batch: MicroBatch,
    run_id: str,
    learn: Callable[[], TrainedModel],
    number_after: int = 0,
    **extra: Any,
) -> Version:
    """Learn (however the caller does it), export, refuse on a parity failure, register.

    `extra` goes into the version's meta.json (`replay=...`, `retrain=...`); versions that re-learn
    rows behind the head keep the head's learned offsets (see `register_batch`).
    """
    from dagster_project.registry.versioning import register_batch

    trained = learn()
    artifact = export_checked(spec, trained.estimator, batch.X)
    if artifact.unscorable:  # a retrain or replay runs outside an asset: its process log says it
        log.warning("%s: %s", spec.name, unscorable_warning(batch, artifact.unscorable))
    if not artifact.passed:
        raise ParityFailed(f"{spec.name}: the model failed ONNX parity: {artifact.reason}")
    return register_batch(
        registry, spec, batch, trained, artifact.onnx_bytes, artifact.parity, run_id, number_after, **extra
    )
