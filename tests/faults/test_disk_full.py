"""The registry's disk fills up: the run fails with the fix named, nothing half-written, and resumes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dagster_project.registry.store import FilesystemRegistry
from tests.helpers import defs_for, high_waters, produce_synthetic, run_batch


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: root can mount one (CI runs as root); anywhere else the test is skipped."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    """Take every free byte but a few hundred: too little for a model version."""
    ballast = directory / "ballast"
    stat = os.statvfs(directory)
    with open(ballast, "wb") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - 512))
    return ballast


def _first_half_learned(kafka_settings, kafka_bootstrap, spec, instance, small_disk):
    """600 events, the first half learned as v1 into a registry on `small_disk`; the second half waits."""
    registry = FilesystemRegistry(small_disk / "registry")
    defs = defs_for(spec, kafka_bootstrap, registry)
    produce_synthetic(kafka_settings, spec, 600)
    ends = high_waters(kafka_settings, spec.events_topic)
    assert run_batch(defs, spec, {p: (0, e // 2) for p, e in ends.items()}, instance).success
    return registry, defs, ends, {p: (e // 2, e) for p, e in ends.items()}


def test_a_full_registry_disk_fails_the_run_cleanly_and_training_resumes(
    kafka_settings, kafka_bootstrap, spec, instance, small_disk
):
    registry, defs, ends, second = _first_half_learned(kafka_settings, kafka_bootstrap, spec, instance, small_disk)

    ballast = _fill(small_disk)
    full = run_batch(defs, spec, second, instance, raise_on_error=False)
    assert not full.success
    failure = next(e for e in full.all_events if e.event_type_value == "STEP_FAILURE")
    assert "out of space" in str(failure.event_specific_data.error) and "Free space" in str(
        failure.event_specific_data.error
    )
    stream_dir = small_disk / "registry" / spec.name
    assert [p.name for p in stream_dir.iterdir() if p.name.startswith(".tmp")] == []  # nothing half-written
    assert [v.name for v in registry.versions(spec.name)] == ["v1"]

    ballast.unlink()
    assert run_batch(defs, spec, second, instance).success  # the same batch, exactly once
    v1, v2 = registry.versions(spec.name)
    assert v2.learned == ends and v2.meta["rows_learned_total"] == 600


def test_a_read_only_registry_fails_the_run_naming_the_fix_and_training_resumes(
    kafka_settings, kafka_bootstrap, spec, instance, small_disk
):
    registry, defs, ends, second = _first_half_learned(kafka_settings, kafka_bootstrap, spec, instance, small_disk)

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        refused = run_batch(defs, spec, second, instance, raise_on_error=False)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    error = str(failure.event_specific_data.error)
    assert "nothing was registered" in error and "is not writable" in error and "Make it writable" in error, error
    assert [v.name for v in registry.versions(spec.name)] == ["v1"]

    assert run_batch(defs, spec, second, instance).success  # the same batch, exactly once
    v1, v2 = registry.versions(spec.name)
    assert v2.learned == ends and v2.meta["rows_learned_total"] == 600
