"""`streamfit batches skip --dry-run`: what a skip would pass over, before any row is given up."""

from __future__ import annotations

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec


def test_skip_dry_run_says_what_would_be_skipped_and_changes_nothing(
    cli, spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    """A skip gives up a batch's rows for good, and the only way to see what it would skip was to do it."""
    halt = {"kind": "data_quality", "summary": "mean out of bounds", "run_id": "r" * 32}
    registry.set_halt(spec.name, {**halt, "ranges": {"0": [100, 150], "1": [200, 230]}})

    dry = cli("batches", "skip", spec.name, "--reason", "poison batch", "--dry-run")

    assert dry.exit_code == 0, dry.output
    assert f"{spec.name}: would skip {{'0': [100, 150], '1': [200, 230]}} (80 rows, never learned" in dry.output
    assert "training would resume at {0: 150, 1: 230}" in dry.output and "nothing changed" in dry.output
    assert registry.halt(spec.name) is not None  # still halted
    assert registry.pending_offset_reset(spec.name) is None
    assert not [d for d in registry.decisions(spec.name) if d.get("kind") == "halt_cleared"]

    skipped = cli("batches", "skip", spec.name, "--reason", "poison batch")
    assert skipped.exit_code == 0, skipped.output
    assert registry.halt(spec.name) is None
    assert registry.pending_offset_reset(spec.name)["offsets"] == {"0": 150, "1": 230}
