"""Training a quarantined batch after an operator looked at it: exactly once, on top of the head."""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagster_project.quality.quarantine import QuarantineError, QuarantineStore
from dagster_project.registry.store import FilesystemRegistry, Version
from dagster_project.registry.versioning import register_batch
from dagster_project.spec import StreamSpec


@dataclass
class _Trained:
    estimator: object
    parent: str | None
    metrics: dict
    rows_trained: int
    train_seconds: float


def replay_quarantined(
    registry: FilesystemRegistry, store: QuarantineStore, spec: StreamSpec, qid: str, by: str, force: bool = False
) -> Version:
    """Validate again (unless forced), test-then-train the stored rows, register, mark replayed.

    The version's learned offsets do not move (the stream advanced past the batch when it was
    quarantined); the version records which quarantined batch it replayed and who asked.
    """
    from dagster_project.learning.prequential import test_then_train
    from dagster_project.onnx.export import check_parity, export_onnx
    from dagster_project.quality.suite import validate_batch

    entry = store.get(spec.name, qid)
    if entry.meta.get("replayed_by"):
        raise QuarantineError(f"{qid} was already replayed by {entry.meta['replayed_by']['version']}; nothing to do")
    batch = entry.batch
    if not force:
        result = validate_batch(batch, spec)
        if not result.passed:
            raise QuarantineError(f"{qid} still fails its checks ({result.summary}); fix the spec or pass --force")
    labelled = batch.labelled
    if not labelled.any():
        raise QuarantineError(f"{qid} has no labelled rows to train")
    head = registry.head(spec.name)
    estimator = registry.load_estimator(spec.name, head.name) if head else None
    started = time.perf_counter()
    model, metrics, _ = test_then_train(estimator, spec, batch.X[labelled], batch.y[labelled])
    trained = _Trained(model, head.name if head else None, metrics.as_metadata(), int(labelled.sum()), 0.0)
    trained.train_seconds = time.perf_counter() - started
    onnx_bytes = export_onnx(model, len(spec.features))
    parity = check_parity(model, onnx_bytes, batch.X, spec.parity.atol, spec.parity.rtol)
    if not parity.passed:
        raise QuarantineError(f"replayed model failed ONNX parity: {parity.reason}")
    parity_meta = {"max_abs_diff": parity.max_abs_diff, "label_mismatches": parity.label_mismatches, "passed": True}
    version = register_batch(
        registry,
        spec,
        batch,
        trained,
        onnx_bytes,
        parity_meta,
        run_id=f"replay by {by}",
        replay={"quarantine": qid, "by": by},
    )
    store.mark_replayed(spec.name, qid, version.name, by)
    return version
