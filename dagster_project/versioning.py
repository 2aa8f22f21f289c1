"""Turning a trained batch into a registered version: the meta.json every version carries."""

from __future__ import annotations

from typing import Any

from dagster_project.batches import MicroBatch
from dagster_project.registry import ModelRegistry, Version, expected_offsets
from dagster_project.spec import StreamSpec
from monitors.profiles import profile_features, profile_labels


def register_batch(
    registry: ModelRegistry,
    spec: StreamSpec,
    batch: MicroBatch,
    model: Any,
    onnx_bytes: bytes,
    parity: dict[str, Any],
    run_id: str,
) -> Version:
    """Register `model` as the head's child, recording exactly which offsets it has learned.

    The registry refuses the write if another version appeared since the parent (stale parent),
    so a batch can never be counted twice. Until the promotion gate exists, every version that
    passed its checks becomes champion.
    """
    head, expected, reset = expected_offsets(registry, spec.name)
    if (head.name if head else None) != model.parent:
        from dagster_project.registry import StaleParent

        raise StaleParent(f"{spec.name}: trained on {model.parent} but the head is now {head.name if head else None}")
    learned = dict(expected)
    learned.update({p: end for p, (_, end) in batch.ranges.items()})
    meta = {
        "estimator": spec.model.estimator,
        "task": spec.task,
        "features": spec.feature_names,
        "classes": spec.label.classes,
        "offsets": {
            "topic": spec.events_topic,
            "batch": {str(p): [s, e] for p, (s, e) in sorted(batch.ranges.items())},
            "learned": {str(p): o for p, o in sorted(learned.items())},
        },
        "offset_reset_applied": reset,
        "rows": {"read": batch.range_rows, "valid": batch.rows, "trained": model.rows_trained, "dlq": batch.dlq},
        "rows_learned_total": (head.meta["rows_learned_total"] if head else 0) + model.rows_trained,
        "metrics": model.metrics,
        "parity": parity,
        "timings": {"train_seconds": model.train_seconds, "export_seconds": parity.get("export_seconds")},
        "profile": {
            "features": profile_features(batch.X, spec.feature_names),
            "label": profile_labels(batch.y, spec.task),
        },
        "run_id": run_id,
    }
    version = registry.register(spec.name, model.parent, onnx_bytes, model.estimator, meta)
    if reset:
        registry.clear_offset_reset(spec.name, version.name)
    registry.set_champion(spec.name, version.name, reason="passed data and parity checks (no promotion gate yet)")
    return version
