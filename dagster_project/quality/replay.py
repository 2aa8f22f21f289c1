"""Training a quarantined batch after an operator looked at it: exactly once, on top of the head."""

from __future__ import annotations

from dagster_project.kafka.settings import KafkaSettings
from dagster_project.quality.quarantine import QuarantineError, QuarantineStore
from dagster_project.registry.store import ModelRegistry, Version
from dagster_project.spec import StreamSpec


def replay_quarantined(
    registry: ModelRegistry,
    store: QuarantineStore,
    spec: StreamSpec,
    qid: str,
    by: str,
    force: bool = False,
    settings: KafkaSettings | None = None,
    number_after: int = 0,
) -> Version:
    """Validate again (unless forced), test-then-train the stored rows, register, mark replayed.

    The version's learned offsets do not move (the stream advanced past the batch when it was
    quarantined); the version records which quarantined batch it replayed and who asked. A windowed
    family reads the rest of its window back from Kafka with `settings`.
    """
    from dagster_project.learning.pipeline import ParityFailed, learn_export_register, learn_from_head
    from dagster_project.quality.suite import validate_batch

    entry = store.get(spec.name, qid)
    earlier = _replayed_by(registry, spec.name, qid)
    if earlier is not None and not entry.meta.get("replayed_by"):  # a replay died before marking the batch
        store.mark_replayed(spec.name, qid, earlier.name, earlier.meta["replay"].get("by", "unknown"))
        entry = store.get(spec.name, qid)
    if entry.meta.get("replayed_by"):
        raise QuarantineError(f"{qid} was already replayed by {entry.meta['replayed_by']['version']}; nothing to do")
    batch = entry.batch
    if not force:
        result = validate_batch(batch, spec)
        if not result.passed:
            raise QuarantineError(f"{qid} still fails its checks ({result.summary}); fix the spec or pass --force")
    if not batch.labelled.any():
        raise QuarantineError(f"{qid} has no labelled rows to train")
    try:
        version = learn_export_register(
            registry,
            spec,
            batch,
            f"replay by {by}",
            lambda: learn_from_head(registry, spec, batch, settings),
            number_after,
            replay={"quarantine": qid, "by": by},
        )
    except ParityFailed as exc:
        raise QuarantineError(f"replayed model failed ONNX parity: {exc}") from exc
    store.mark_replayed(spec.name, qid, version.name, by)
    return version


def _replayed_by(registry: ModelRegistry, stream: str, qid: str) -> Version | None:
    """The version that replayed `qid` (its id is unique: it ends in a random suffix), if any."""
    return next((v for v in registry.versions(stream) if (v.meta.get("replay") or {}).get("quarantine") == qid), None)
