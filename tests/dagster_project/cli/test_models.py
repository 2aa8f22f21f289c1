"""`streamfit models`: listing versions, and promote/rollback recording who acted, in the registry and
in the Dagster instance the UI reads."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from dagster_project.cli.common import OPERATOR_ENV
from dagster_project.instance import POSTGRES_ENV, write_postgres_instance_config
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec


def test_models_list(cli, spec: StreamSpec, registry: FilesystemRegistry) -> None:
    result = cli("models", "list", spec.name)  # a typo'd name or the wrong home: not an empty listing
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {spec.name}: no version registered in FilesystemRegistry(" in result.output
    assert "check the stream name, STREAMFIT_HOME and STREAMFIT_REGISTRY" in result.output

    meta = {"offsets": {"learned": {"0": 12, "1": 8}}, "metrics": {"roc_auc": 0.75}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="test")
    lines = cli("models", "list", spec.name).output.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("*") and "v1" in lines[0] and "roc_auc" in lines[0]
    assert lines[1].startswith(" ") and "parent    v1" in lines[1]


def test_promote_and_rollback_record_the_operator(
    cli, spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, "dana")
    meta = {"offsets": {"learned": {"0": 1}}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)

    for version in ("v1", "v2"):
        result = cli("models", "promote", spec.name, version, "--reason", "checked by hand")
        assert (result.exit_code, result.stdout) == (0, f"{spec.name}: champion is now {version}\n")
    result = cli("models", "rollback", spec.name)
    assert (result.exit_code, result.stdout) == (0, f"{spec.name}: rolled back; champion is now v1\n")

    history = registry.champion_history(spec.name)
    assert [h["reason"] for h in history] == [
        "manual: checked by hand",
        "manual: checked by hand",
        "rollback: manual rollback",
    ]
    assert [h["evidence"]["by"] for h in history] == ["dana"] * 3


def test_promote_an_unknown_version_is_a_clean_error(cli, spec: StreamSpec, registry: FilesystemRegistry) -> None:
    result = cli("models", "promote", spec.name, "v9")
    assert result.exit_code == 1
    assert f"Error: {spec.name} has no version 'v9'" in result.output and "Traceback" not in result.output
    assert registry.champion(spec.name) is None


def test_promote_a_version_scorers_would_refuse_is_refused(cli, spec: StreamSpec, registry: FilesystemRegistry) -> None:
    meta = {"offsets": {"learned": {"0": 1}}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="test")
    (registry.root / spec.name / "v2" / "model.onnx").write_bytes(b"")  # truncated

    result = cli("models", "promote", spec.name, "v2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{spec.name} v2 cannot be served, so the champion stays v1" in result.output
    assert "does not match its sha256" in result.output and "Promote another version" in result.output
    assert registry.champion(spec.name) == "v1" and len(registry.champion_history(spec.name)) == 1


def test_a_promotion_the_history_cannot_record_changes_nothing(
    cli, spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    """An error must mean nothing changed: the alias moved (scorers swapped) while the CLI printed a traceback."""
    meta = {"offsets": {"learned": {"0": 1}}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="test")
    history = registry.root / spec.name / "champion_history.jsonl"
    history.unlink()
    history.mkdir()  # unwritable as a file, whoever runs the test (root ignores permission bits)

    result = cli("models", "promote", spec.name, "v2")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{spec.name}: the champion stays v1" in result.output and "failed a write" in result.output
    assert registry.champion(spec.name) == "v1"


def test_promoting_the_champion_again_says_so_and_leaves_the_history_alone(
    cli, spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed "champion is now v2" and recorded v2 as replacing itself: a later rollback or the
    drift monitor's check then compared the champion with itself."""
    monkeypatch.setenv(OPERATOR_ENV, "dana")
    meta = {"offsets": {"learned": {"0": 1}}}
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta)
    registry.register(spec.name, "v1", b"onnx", {"any": "estimator"}, meta)
    for version in ("v1", "v2"):
        assert cli("models", "promote", spec.name, version).exit_code == 0

    result = cli("models", "promote", spec.name, "v2", "--reason", "after the repair")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{spec.name}: v2 is already the champion; nothing changed")
    assert "champion is now" not in result.output
    assert [(h["version"], h["previous"]) for h in registry.champion_history(spec.name)] == [("v1", None), ("v2", "v1")]
    decision = registry.decisions(spec.name)[-1]
    assert (decision["kind"], decision["reason"], decision["evidence"]["by"]) == (
        "champion_unchanged",
        "manual: after the repair",
        "dana",
    )
    result = cli("models", "rollback", spec.name)
    assert (result.exit_code, result.stdout) == (0, f"{spec.name}: rolled back; champion is now v1\n")


def test_rolling_back_a_manual_demotion_restores_the_demoted_version_then_goes_further_back(
    cli, spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    meta = {"offsets": {"learned": {"0": 1}}}
    for parent in (None, "v1", "v2"):
        registry.register(spec.name, parent, b"onnx", {"any": "estimator"}, meta)
    for version in ("v1", "v2", "v3", "v2"):  # the last: v2 promoted by hand over v3
        assert cli("models", "promote", spec.name, version).exit_code == 0
    for expected in ("v3", "v1"):  # v2 was rolled back from: passed over
        result = cli("models", "rollback", spec.name)
        assert (result.exit_code, result.stdout) == (0, f"{spec.name}: rolled back; champion is now {expected}\n")
    result = cli("models", "rollback", spec.name)
    assert result.exit_code == 1 and "no earlier good champion" in result.output


def _champion_events(instance, stream: str) -> list[dict]:
    """Every materialization of `[stream, "champion"]` in `instance`, oldest first, as plain metadata."""
    records = instance.fetch_materializations(dg.AssetKey([stream, "champion"]), limit=100, ascending=True).records
    return [
        {key: getattr(value, "value", value) for key, value in r.asset_materialization.metadata.items()}
        for r in records
    ]


def test_promote_and_rollback_materialize_the_champion_in_the_dagster_instance(
    cli, spec: StreamSpec, registry: FilesystemRegistry, instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After `models rollback` the Dagster UI went on naming the champion rolled back from: commands run
    outside Dagster recorded nothing in its instance. A re-promotion, which moves nothing, records nothing."""
    monkeypatch.setenv(OPERATOR_ENV, "dana")
    assert os.environ["DAGSTER_HOME"] == instance.root_directory  # the instance the CLI opens
    meta = {"offsets": {"learned": {"0": 1}}}
    for parent in (None, "v1"):
        registry.register(spec.name, parent, b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="first version: nothing to compare against")

    promoted = cli("models", "promote", spec.name, "v2", "--reason", "checked by hand")
    assert (promoted.exit_code, promoted.stderr) == (0, ""), promoted.output
    again = cli("models", "promote", spec.name, "v2")
    assert again.exit_code == 0 and "already the champion" in again.stdout and again.stderr == ""
    rolled = cli("models", "rollback", spec.name, "--reason", "v2 misbehaves")
    assert (rolled.exit_code, rolled.stderr) == (0, ""), rolled.output

    by_hand = ("chosen by hand: `streamfit models promote`", "chosen by hand: `streamfit models rollback`")
    assert _champion_events(instance, spec.name) == [
        {
            "champion": "v2",
            "previous": "v1",
            "reason": "manual: checked by hand",
            "decision": by_hand[0],
            "by": "dana",
        },
        {
            "champion": "v1",
            "rolled_back_from": "v2",
            "reason": "rollback: v2 misbehaves",
            "decision": by_hand[1],
            "by": "dana",
        },
    ]
    latest = instance.get_latest_materialization_event(dg.AssetKey([spec.name, "champion"]))
    assert latest.run_id == "" and latest.asset_materialization.metadata["champion"].value == "v1"  # runless


def test_without_dagster_home_the_change_stands_and_the_command_says_how_to_record_it(
    cli, spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    meta = {"offsets": {"learned": {"0": 1}}}
    for parent in (None, "v1"):
        registry.register(spec.name, parent, b"onnx", {"any": "estimator"}, meta)
    registry.set_champion(spec.name, "v1", reason="first version: nothing to compare against")

    result = cli("models", "promote", spec.name, "v2")

    assert (result.exit_code, result.stdout) == (0, f"{spec.name}: champion is now v2\n")
    assert result.stderr == (
        f"{spec.name}: the Dagster UI will show the champion as of its last run, not v2: set DAGSTER_HOME to the "
        "deployment's instance directory to record the change there\n"
    )
    assert registry.champion(spec.name) == "v2"
    again = cli("models", "promote", spec.name, "v2")  # nothing moved: nothing to record, no hint
    assert again.exit_code == 0 and again.stderr == ""


def test_an_instance_that_cannot_be_written_leaves_the_rollback_standing(
    cli, spec: StreamSpec, registry: FilesystemRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The production instance (Postgres) unreachable: the rollback happened and scorers follow it, so the
    command succeeds and says what was not recorded."""
    home = tmp_path / "dagster_home"
    write_postgres_instance_config(home)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for name in POSTGRES_ENV.values():
        monkeypatch.delenv(name, raising=False)
    meta = {"offsets": {"learned": {"0": 1}}}
    for parent in (None, "v1"):
        registry.register(spec.name, parent, b"onnx", {"any": "estimator"}, meta)
    for version in ("v1", "v2"):
        registry.set_champion(spec.name, version, reason="test")

    result = cli("models", "rollback", spec.name)

    assert (result.exit_code, result.stdout) == (0, f"{spec.name}: rolled back; champion is now v1\n")
    assert result.stderr.startswith(
        f"{spec.name}: the champion is v1 in the registry (that stands), but recording it in the Dagster instance "
        f"in {home} failed: RuntimeError: the Dagster instance in {home}/dagster.yaml reads DAGSTER_PG_DB"
    )
    assert len(result.stderr.splitlines()) == 1 and registry.champion(spec.name) == "v1"
