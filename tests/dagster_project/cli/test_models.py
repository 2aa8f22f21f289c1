"""`streamfit models`: listing versions, and promote/rollback recording who acted."""

from __future__ import annotations

import pytest

from dagster_project.cli.common import OPERATOR_ENV
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
        assert (result.exit_code, result.output) == (0, f"{spec.name}: champion is now {version}\n")
    result = cli("models", "rollback", spec.name)
    assert (result.exit_code, result.output) == (0, f"{spec.name}: rolled back; champion is now v1\n")

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
    assert (result.exit_code, result.output) == (0, f"{spec.name}: rolled back; champion is now v1\n")


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
        assert (result.exit_code, result.output) == (0, f"{spec.name}: rolled back; champion is now {expected}\n")
    result = cli("models", "rollback", spec.name)
    assert result.exit_code == 1 and "no earlier good champion" in result.output
