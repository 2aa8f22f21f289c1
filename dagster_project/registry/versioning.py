"""Turning trained rows into a registered version: the meta.json every version carries."""

from __future__ import annotations

import json
from typing import Any

from dagster_project.features.checkpoint import expected_state_bytes
from dagster_project.ingest.categories import encoding_signature, level_labels, unseen_counts
from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.kafka.exactly_once import BatchRefused, Decision, decide
from dagster_project.kafka.offsets import Ranges, ranges_text
from dagster_project.names import version_name
from dagster_project.registry.contract import SpecChanged, contract_of, estimator_of, families_of, spec_changed
from dagster_project.registry.store import (
    FIRST_VERSION_REASON,
    ModelRegistry,
    StaleParent,
    Version,
    expected_offsets,
    without_state,
)
from dagster_project.spec import StreamSpec
from monitors.profiles import profile_features, profile_labels


def version_meta(
    spec: StreamSpec,
    batch: MicroBatch,
    learned: dict[int, int],
    rows_trained: int,
    rows_learned_total: int,
    metrics: dict[str, Any],
    parity: dict[str, Any],
    timings: dict[str, float | None],
    run_id: str,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata shared by every way a version is made (a batch, a retrain, a replay)."""
    return {
        "estimator": estimator_of(spec),
        "models": families_of(spec),  # each family's estimator, parameters and scaling (contract.settings_of)
        "task": spec.task,
        "features": spec.input_names,
        "classes": spec.label.classes,
        "contract": contract_of(spec),  # what its columns and classes mean (registry.contract)
        "offsets": {
            "topic": spec.events_topic,
            "batch": {str(p): [s, e] for p, (s, e) in sorted(batch.ranges.items())},
            "learned": {str(p): o for p, o in sorted(learned.items())},
        },
        # read/valid/dlq count the offsets this version learns; the tail is counted by the next one
        "rows": {
            "read": batch.range_rows,
            "valid": batch.rows,
            "trained": rows_trained,
            "dlq": batch.dlq,
            "tail": batch.tail_rows,
        },
        "rows_learned_total": rows_learned_total,
        "metrics": metrics,
        "parity": parity,
        "timings": timings,
        "profile": {
            "features": profile_features(batch.X, spec.input_names, categories=_profiled_categories(spec)),
            "label": profile_labels(batch.y, spec.task),
            **({"filling": list(batch.filling)} if batch.filling else {}),
        },
        **_category_meta(spec, batch),
        "run_id": run_id,
        **extra,
    }


def _profiled_categories(spec: StreamSpec) -> dict[str, list[str] | None]:
    """Category features for the profile: vocabulary labels by code, None for hashed ones."""
    return {f.name: level_labels(f) if f.categories is not None else None for f in spec.inputs if f.type == "category"}


def _category_meta(spec: StreamSpec, batch: MicroBatch) -> dict[str, Any]:
    """A category stream's encoding and how many of the batch's rows held unseen values, per feature."""
    encoding = encoding_signature(spec)
    if encoding is None:
        return {}
    return {
        "categories": {
            "encoding": json.loads(encoding),
            "unseen_rows": unseen_counts(spec, batch.X),
            "unseen_examples": batch.unseen_examples,
        }
    }


def register_batch(
    registry: ModelRegistry,
    spec: StreamSpec,
    batch: MicroBatch,
    model: Any,
    onnx_bytes: bytes,
    parity: dict[str, Any],
    run_id: str,
    number_after: int = 0,
    **extra: Any,
) -> Version:
    """Register `model` as the head's child, recording exactly which offsets it has learned.

        Every version goes through here: a batch, a quarantine replay (`replay=...`: offsets stay where
        the stream moved on) and a retrain (`retrain=...`: rows behind the head, offsets unchanged).

        The registry refuses the write if another version appeared since the parent (stale parent),
        so a batch can never be counted twice. A pending offset reset is applied and recorded. The
        first version becomes champion; later ones must pass the promotion gate (on the batch's tail,
    in the same run).
    """
    from dagster_project.learning.learner import describe  # scikit-learn: only where a version is made

    registry.settle_offset_reset(spec.name)  # a crash after an earlier version applied a reset, before it was kept
    head, expected, reset = expected_offsets(registry, spec.name)
    changed = spec_changed(spec, head)
    if changed:  # a replay or retrain too: recorded under the new contract, the old meanings would go on unseen
        raise SpecChanged(changed)
    if (head.name if head else None) != model.parent:
        raise StaleParent(f"{spec.name}: trained on {model.parent} but the head is now {head.name if head else None}")
    head_identity = head.meta["offsets"].get("identity") if head else None
    if extra.get("retrain"):  # re-learns rows behind the head: neither offsets nor the row count move
        learned, reset, new_rows, identity = dict(head.learned) if head else {}, None, 0, head_identity
    else:
        learned, new_rows, identity = dict(expected), model.rows_trained, head_identity
        if not extra.get("replay"):  # a replayed quarantine batch lies behind the head: offsets stay
            _starts_at_the_head(spec.name, head, expected, batch.learned_ranges)
            learned.update(batch.learned_ends)  # where the tail begins: the next batch learns it
            identity = getattr(batch, "identity", None)
    meta = version_meta(
        spec,
        batch,
        learned,
        model.rows_trained,
        (head.meta["rows_learned_total"] if head else 0) + new_rows,
        model.metrics,
        parity,
        {"train_seconds": model.train_seconds, "export_seconds": parity.get("export_seconds")},
        run_id,
        offset_reset_applied=without_state(reset),
        **extra,
    )
    meta["offsets"]["identity"] = identity
    meta.update(describe(model.estimator))  # a windowed model's window, a candidate set's families
    for key in ("served", "lineage"):  # what was served meanwhile, and which estimator this grew from
        if getattr(model, key, None):
            meta[key] = getattr(model, key)
    feature_state = None
    if spec.derived:
        # The checkpoint's feature state follows its offsets: a batch's is the state after the rows
        # it learns; a retrain or replay does not move them, so it keeps the state at the offsets it
        # records (the head's, or a pending quarantine skip's, which a replay applies).
        moved = not extra.get("retrain") and not extra.get("replay")
        feature_state = batch.feature_state if moved else expected_state_bytes(registry, spec, head, reset)
        if moved and feature_state is None:
            raise ValueError(f"{spec.name}: the batch carries no feature state; read it with read_batch(state=...)")
        meta["feature_state"] = {"moved": moved, **((batch.feature_counters or {}) if moved else {})}
    head_number = head.number if head else 0
    if number_after > head_number:  # names the registry lost (a restore) are not given again; the run logs it
        meta["names_skipped"] = {
            "from": version_name(head_number + 1),
            "to": version_name(number_after),
            "why": "given before to versions that are not in the registry (restored from an older backup?)",
        }
    version = registry.register(
        spec.name, model.parent, onnx_bytes, model.estimator, meta, feature_state, number_after=number_after
    )
    if reset:
        registry.clear_offset_reset(spec.name, version.name, applied=reset)
    halt = registry.halt(spec.name)
    if halt and not extra and halt.get("ranges") == {str(p): list(r) for p, r in batch.ranges.items()}:
        registry.clear_halt(spec.name, {"resolution": f"the batch was learned by {version.name}", "run_id": run_id})
    if registry.champion(spec.name) is None:
        registry.set_champion(spec.name, version.name, reason=FIRST_VERSION_REASON)
    return version


def _starts_at_the_head(stream: str, head: Version | None, expected: dict[int, int], learned: Ranges) -> None:
    """The last check before a batch's version is written: it learns from where the head stopped.

    The batch step checks this too, but a run re-executed from its model step (the UI's "from
    selected step", or from failure after another run learned the batch) reuses a batch read
    against an older head, and its version recorded rows the head had already learned."""
    if decide(expected, learned) is Decision.ALREADY_LEARNED:
        raise BatchRefused(
            f"{stream}: {ranges_text(learned)} was already learned ({head.name if head else 'an offset reset'}); "
            "nothing was registered. A re-execution of an older run cannot learn its batch again: "
            "the sensor plans the next one from the head"
        )


def already_registered(registry: ModelRegistry, stream: str, parent: str | None, ranges: Ranges) -> Version | None:
    """The version an earlier attempt registered for exactly this batch on top of `parent`, if any.

    A run that crashed after the registry write (or whose Kafka commit timed out) is retried from
    the failed step, past the micro-batch's "already learned" check: this is that check there.
    """
    head = registry.head(stream)
    if head is None or head.parent != parent or head.meta.get("retrain") or head.meta.get("replay"):
        return None
    learned_batch = {int(p): (int(s), int(e)) for p, (s, e) in head.meta["offsets"]["batch"].items()}
    return head if learned_batch == {int(p): (int(s), int(e)) for p, (s, e) in ranges.items()} else None
