"""Each spec compared with what its stream's registry versions learned, before the edit is deployed.

A spec edited after versions exist halts its stream at the first sensor tick (`SPEC CHANGED`), and
the scorer refuses the champion. Deployed, the edit costs a halted stream; found here, it costs a
line in a pull request. A changed estimator is not a halt: the next batch learns a fresh model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster_project.registry.contract import model_changed, settings_changed, spec_changed
from dagster_project.registry.store import BrokenRegistryFile, ModelRegistry, RegistryError, RegistryUnavailable
from dagster_project.spec import StreamSpec


@dataclass
class RegistryComparison:
    """What deploying the spec would do to a stream that has versions: what halts, and what only changes."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compare_with_registry(spec: StreamSpec, registry: ModelRegistry) -> RegistryComparison:
    """The spec against the head (training continues from it) and the champion (scorers serve it).

    A registry that cannot be read (no answer, an unreadable head) propagates: the caller says the
    comparison was not made rather than passing a spec nobody compared. A champion that cannot be
    read (its version deleted, a broken alias) or loaded (its model file deleted or damaged) is this stream's
    note: scorers serve a fallback, or will when they restart."""
    found = RegistryComparison()
    head = registry.head(spec.name)
    if head is None:
        return found
    try:
        champion = registry.champion(spec.name)
        served = None if champion in (None, head.name) else registry.get(spec.name, champion)
    except RegistryUnavailable:
        raise
    except BrokenRegistryFile as exc:  # the alias itself
        champion = served = None
        found.notes.append(
            f"its champion alias is broken ({exc}): running scorers keep their model, one started now serves "
            "nothing until the alias is repaired"
        )
    except RegistryError as exc:  # the version the alias names (deleted)
        champion = served = None
        found.notes.append(f"its champion cannot be read ({exc}); scorers serve a fallback meanwhile")
    if champion is not None and (why := registry.unservable(spec.name, champion)):
        found.notes.append(_unloadable_champion(spec.name, champion, why))
    changed = spec_changed(spec, head)
    if changed:
        scorers = " and scorers would refuse it (the champion)" if champion == head.name else ""
        found.problems.append(f"training would halt{scorers}: {changed}")
    else:
        fresh = f"the next batch learns a fresh model, from {head.name}'s offsets on"
        if why := model_changed(head.meta, spec):
            found.notes.append(f"{why} since {head.name}: {fresh}")
        for family, how in _families_changed(head.meta, spec):
            found.notes.append(
                f"candidate family {family} changed since {head.name} ({how}): the next batch learns a fresh "
                f"{family}; the other families go on"
            )
    if served is not None and (refused := spec_changed(spec, served)):
        found.problems.append(f"scorers would refuse the champion {served.name}: {refused}")
    return found


def _unloadable_champion(stream: str, champion: str, why: str) -> str:
    """The champion's model file is gone or damaged: nothing fails until a scorer starts, which is why it is said."""
    return (
        f"its champion {champion} cannot be loaded ({' '.join(why.split())}): running scorers serve it from memory, "
        f"one started now serves an older version. Restore its files from a backup, or move the champion: "
        f"`streamfit models rollback {stream}` or `streamfit models promote {stream} <version>`"
    )


def _families_changed(meta: dict, spec: StreamSpec) -> list[tuple[str, str]]:
    """A candidate set's families whose estimator, parameters or scaling changed under their label."""
    recorded = meta.get("models") or {}
    if not spec.model.candidates or not isinstance(meta.get("estimator"), list):
        return []
    return [(f.label, how) for f in spec.model.families if (how := settings_changed(recorded.get(f.label), f))]


def specless_streams(registry: ModelRegistry, specified: set[str]) -> list[str]:
    """Notes for the registry's streams with a champion but no spec among `specified` (a deleted or
    renamed file): nothing trains them and a scorer started for one refuses to start, while running
    scorers keep serving. Retiring a stream is legitimate, so this is said, not failed."""
    notes = []
    for stream in registry.streams():
        if stream in specified:
            continue
        try:
            champion = registry.champion(stream)
        except RegistryUnavailable:
            raise
        except RegistryError:
            continue  # not a stream this registry can read: nothing to say about it here
        if champion:
            notes.append(
                f"stream {stream!r} has a champion ({champion}) but no spec here: nothing trains it, a scorer "
                f"started for it refuses to start (unknown stream), running ones keep serving {champion}. "
                "Restore its spec file if it was deleted or renamed by mistake; if the stream is retired, "
                "stop its scorers"
            )
    return notes
