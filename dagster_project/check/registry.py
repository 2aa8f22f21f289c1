"""Each spec compared with what its stream's registry versions learned, before the edit is deployed.

A spec edited after versions exist halts its stream at the first sensor tick (`SPEC CHANGED`), and
the scorer refuses the champion. Deployed, the edit costs a halted stream; found here, it costs a
line in a pull request. A changed estimator is not a halt: the next batch learns a fresh model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagster_project.registry.contract import model_changed, spec_changed
from dagster_project.registry.store import ModelRegistry
from dagster_project.spec import StreamSpec


@dataclass
class RegistryComparison:
    """What deploying the spec would do to a stream that has versions: what halts, and what only changes."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def compare_with_registry(spec: StreamSpec, registry: ModelRegistry) -> RegistryComparison:
    """The spec against the head (training continues from it) and the champion (scorers serve it).

    A RegistryError (an unreadable version, a registry that does not answer) propagates: the caller
    says the comparison was not made rather than passing a spec nobody compared."""
    found = RegistryComparison()
    head = registry.head(spec.name)
    if head is None:
        return found
    champion = registry.champion(spec.name)
    changed = spec_changed(spec, head)
    if changed:
        scorers = " and scorers would refuse it (the champion)" if champion == head.name else ""
        found.problems.append(f"training would halt{scorers}: {changed}")
    elif why := model_changed(head.meta, spec):
        found.notes.append(
            f"{why} since {head.name}: the next batch learns a fresh model, from {head.name}'s offsets on"
        )
    if champion is not None and champion != head.name:
        served = spec_changed(spec, registry.get(spec.name, champion))
        if served:
            found.problems.append(f"scorers would refuse the champion {champion}: {served}")
    return found
