"""The sensor that names a spec file that does not load: one per file, whatever the files are called."""

from __future__ import annotations

import re

from dagster_project.orchestration.broken_specs import broken_spec_sensor_name


def test_every_file_name_gets_its_own_valid_sensor_name() -> None:
    """Two names for one file stem failed the code location: a Dagster name must be unique."""
    files = ["a.yaml", "a.yml", "a-b.yaml", "a_b.yaml", "a.b.yaml", "a_b.yml", "a.yaml_yml", "a_yaml.yml", "é.yaml"]
    sensors = [broken_spec_sensor_name(f) for f in files]
    assert len(set(sensors)) == len(files), sensors
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", s) for s in sensors)
    assert sensors[:2] == ["invalid_spec_a_yaml", "invalid_spec_a_yml"]  # readable where nothing is lost
    assert broken_spec_sensor_name("a-b.yaml") == broken_spec_sensor_name("a-b.yaml")  # stable across reloads
