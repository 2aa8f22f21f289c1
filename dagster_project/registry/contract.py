"""What a version's inputs and outputs mean, recorded with it and compared with the spec.

A model learns columns by position and classes by index. When a spec is edited after versions
exist (features reordered, one replaced by another of the same width, classes reordered, a
category added, a rolling mean made a max), continuing or serving an old version reads the new
columns with the old meanings: predictions inverted or wrong with no error anywhere. So every
version records its contract, and training, the sensors and the scorer compare it with the spec.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from dagster_project.ingest.categories import encoding_signature
from dagster_project.learning.estimator_table import DEFAULTS_CHANGED_ON, former_default_of
from dagster_project.spec import StreamSpec, label_key

FIX = (
    "Restore the spec as {version} learned it; a spec whose columns or classes mean something else "
    "is a new stream: declare it under a new name (its own topics) and produce to it"
)


def contract_of(spec: StreamSpec) -> dict[str, Any]:
    """The meaning of a model's input columns and outputs under `spec`."""
    encoding = encoding_signature(spec)
    return {
        "task": spec.task,
        "inputs": spec.input_names,
        "classes": list(spec.label.classes) if spec.task == "classification" and spec.label.classes else None,
        # A digest: the vocabulary may be long, and meta.json keeps it whole under categories.
        "encoding": hashlib.sha256(encoding.encode()).hexdigest()[:16] if encoding else None,
        # Without defaults: a field added to derived features later must not read as a change.
        "derived": [d.model_dump(mode="json", exclude_defaults=True) for d in spec.derived],
    }


def estimator_of(spec: StreamSpec) -> str | list[str]:
    """The model a version records: the estimator's name, or a candidate set's family labels."""
    return spec.model.estimator if not spec.model.candidates else [f.label for f in spec.model.families]


def settings_of(family: Any) -> dict[str, Any]:
    """What a model learns with and keeps once fitted (a ModelSpec): its estimator, parameters and
    scaling. A continued estimator keeps the ones it was built with, so a change to any of them
    needs a fresh model; `passes`, windows and seeds are read from the spec at every batch."""
    return {"estimator": family.estimator, "params": _as_json(family.params), "scale": family.scale}


def families_of(spec: StreamSpec) -> dict[str, dict[str, Any]]:
    """Each family's label and `settings_of`, as a version records them (`meta["models"]`)."""
    return {family.label: settings_of(family) for family in spec.model.families}


def settings_changed(recorded: Any, family: Any) -> str | None:
    """How `family` (a ModelSpec) differs from the settings recorded for its label, or None.

    `recorded` is `settings_of`'s dict, or an estimator's name (what versions recorded before)."""
    if recorded is None:
        return None
    now = settings_of(family)
    was = recorded if isinstance(recorded, dict) else {"estimator": recorded}
    if was.get("estimator", now["estimator"]) != now["estimator"]:
        return f"from {was['estimator']} to {now['estimator']}"
    changes = [
        f"{key} {_short(was[key])} -> {_short(now[key])}"
        for key in ("params", "scale")
        if key in was and was[key] != now[key]
    ]
    return f"{family.label}'s {', '.join(changes)}" if changes else None


def model_changed(meta: dict[str, Any], spec: StreamSpec) -> str | None:
    """Why a version's estimator cannot be continued under `spec` (another estimator, other
    parameters or scaling now), or None.

    A candidate set continues another candidate set: its families are matched by label
    (`CandidateSet.member_of`)."""
    was, now = meta.get("estimator"), estimator_of(spec)
    if was is None or (isinstance(was, list) and isinstance(now, list)):
        return None
    if was != now:
        return f"the spec's model changed from {was} to {now}{_default_change_hint(was, now)}"
    changed = settings_changed((meta.get("models") or {}).get(spec.model.label), spec.model)
    return f"the spec's model changed: {changed}" if changed else None


def _default_change_hint(was: Any, now: Any) -> str:
    """The pin that keeps a model when the change is the default's, not the spec's (an upgrade)."""
    if not isinstance(now, str) or former_default_of(now) != was:
        return ""
    return (
        f" (the default estimator became {now} on {DEFAULTS_CHANGED_ON}: a spec that names none gets it; "
        f"`model: {{estimator: {was}}}` keeps learning the model it had)"
    )


def recorded_contract(meta: dict[str, Any]) -> dict[str, Any]:
    """A version's contract; older versions recorded only their task, input names and classes."""
    if isinstance(meta.get("contract"), dict):
        return meta["contract"]
    older = {"task": meta.get("task"), "inputs": meta.get("features"), "classes": meta.get("classes")}
    return {key: value for key, value in older.items() if value is not None}


def contract_changes(meta: dict[str, Any], spec: StreamSpec) -> list[str]:
    """How the spec now differs from what the version with `meta` learned ([] when it does not)."""
    recorded, now = recorded_contract(meta), contract_of(spec)
    if recorded.get("task") not in (None, now["task"]):
        return [f"task {recorded['task']} -> {now['task']}"]
    changes = []
    if "inputs" in recorded and recorded["inputs"] != now["inputs"]:
        changes.append(_list_change("input columns", recorded["inputs"], now["inputs"]))
    if (
        "classes" in recorded
        and now["task"] == "classification"
        and _classes_changed(recorded["classes"], now["classes"])
    ):
        changes.append(_list_change("classes", recorded["classes"], now["classes"], key=label_key))
    if "encoding" in recorded and recorded["encoding"] != now["encoding"]:
        changes.append(_encoding_change(meta, spec))
    if "derived" in recorded and recorded["derived"] != now["derived"]:
        changes.append(_by_name("derived feature", recorded["derived"], now["derived"]))
    return changes


GENERIC_ENCODING_CHANGE = "category encoding changed (a category added, removed or reordered, buckets, or `unseen`)"


def _encoding_change(meta: dict[str, Any], spec: StreamSpec) -> str:
    """Which category feature's encoding changed and how, from the encoding a version keeps whole
    (`meta.categories.encoding`; a version without category features had none). The contract holds
    only its digest, so a number made a category read as a vocabulary change."""
    signature = encoding_signature(spec)
    now = json.loads(signature) if signature else []
    if "categories" in meta:
        before = (meta.get("categories") or {}).get("encoding") or []
    elif recorded_contract(meta).get("encoding") is None:
        before = []
    else:  # recorded before the encoding was kept whole: only the digest says it changed
        return GENERIC_ENCODING_CHANGE
    return _by_name("category feature", before, now)


def _by_name(kind: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """How lists of named settings differ, per name: added, removed, and each changed setting."""
    was, now = {d["name"]: d for d in before}, {d["name"]: d for d in after}
    parts = [f"{name} became a {kind}" for name in now if name not in was]
    parts += [f"{name} is no longer a {kind}" for name in was if name not in now]
    for name in (n for n in now if n in was and was[n] != now[n]):
        old, new = was[name], now[name]
        settings = [
            f"{key} {_short(old.get(key), 80)} -> {_short(new.get(key), 80)}"
            for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key)
        ]
        parts.append(f"{kind} {name}: {', '.join(settings)}")
    if not parts and list(was) != list(now):
        parts.append(f"{kind}s reordered {list(was)} -> {list(now)}")
    return "; ".join(parts) or f"{kind}s changed"


def spec_changed(spec: StreamSpec, version: Any) -> str | None:
    """The error naming how `spec` changed since `version` (a registry Version, or None), or None."""
    changes = contract_changes(version.meta, spec) if version is not None else []
    if not changes:
        return None
    return f"SPEC CHANGED in {spec.name} since {version.name}: {'; '.join(changes)}. " + FIX.format(
        version=version.name
    )


class SpecChanged(RuntimeError):
    """The spec no longer means what the version learned: no run may continue from it."""


def _classes_changed(before: list | None, after: list | None) -> bool:
    """Whether the classes accept other labels, compared as labels are matched (`label_key`): with
    Python's ==, [0, 1] -> [false, true] was no change, then every label 1 was refused as not True."""
    return [label_key(c) for c in before or []] != [label_key(c) for c in after or []]


def _list_change(what: str, before: list | None, after: list | None, key: Callable[[Any], Any] = str) -> str:
    """How a list changed, its members compared by `key` (classes: `label_key`, so True is not 1)."""
    before, after = list(before or []), list(after or [])
    before_keys, after_keys = [key(x) for x in before], [key(x) for x in after]
    if Counter(before_keys) == Counter(after_keys):
        return f"{what} reordered {before} -> {after}"
    added = [x for x in after if key(x) not in before_keys]
    removed = [x for x in before if key(x) not in after_keys]
    parts = [f"{added} added"] * bool(added) + [f"{removed} removed"] * bool(removed)
    if not parts:  # same members, a different count of one
        parts = ["repeated differently"]
    return f"{what} {before} -> {after} ({', '.join(parts)})"


def _as_json(value: Any) -> Any:
    """`value` as it reads back from meta.json (tuples become lists), so a comparison sees no change."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any, limit: int = 300) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= limit else text[:limit] + "..."
