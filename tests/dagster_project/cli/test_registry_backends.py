"""The operator commands on both registry backends, and `streamfit registry migrate --to mlflow`.

The commands reach the registry through `cli/common.registry()`, so $STREAMFIT_REGISTRY and
$MLFLOW_TRACKING_URI alone decide where they read and write; the output must not depend on it.
"""

from __future__ import annotations

import orjson
import pytest

from dagster_project.cli.common import OPERATOR_ENV
from dagster_project.registry.store import FilesystemRegistry, ModelRegistry
from dagster_project.spec import StreamSpec
from tests.dagster_project.registry.test_contract import fitted_scaler, meta, scaler_onnx


@pytest.fixture(params=["filesystem", "mlflow"])
def store(request: pytest.FixtureRequest, streamfit_home, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """The registry the commands will find through the environment."""
    monkeypatch.delenv("STREAMFIT_MLFLOW_URI", raising=False)
    monkeypatch.setenv("STREAMFIT_REGISTRY", request.param)
    if request.param == "filesystem":
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return FilesystemRegistry(streamfit_home / "registry")
    from dagster_project.registry.mlflow_store import MlflowRegistry

    server = request.getfixturevalue("mlflow_server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    return MlflowRegistry(server.uri, root=streamfit_home / "registry")


def test_models_list_show_promote_and_rollback(
    cli, spec: StreamSpec, store: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OPERATOR_ENV, "dana")
    assert (cli("models", "list", spec.name).exit_code, cli("models", "list", spec.name).output) == (0, "")
    store.register(spec.name, None, scaler_onnx(1), fitted_scaler(1), meta({0: 12, 1: 8}))
    store.register(spec.name, "v1", scaler_onnx(2), fitted_scaler(2), meta({0: 20, 1: 8}))

    for version in ("v1", "v2"):
        result = cli("models", "promote", spec.name, version, "--reason", "checked by hand")
        assert (result.exit_code, result.output) == (0, f"{spec.name}: champion is now {version}\n")
    lines = cli("models", "list", spec.name).output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("*") and "parent    v1" in lines[1] and "accuracy" in lines[1]
    result = cli("models", "rollback", spec.name)
    assert (result.exit_code, result.output) == (0, f"{spec.name}: rolled back; champion is now v1\n")
    assert store.champion(spec.name) == "v1"
    assert [(h["reason"], h["evidence"]["by"]) for h in store.champion_history(spec.name)] == [
        ("manual: checked by hand", "dana"),
        ("manual: checked by hand", "dana"),
        ("rollback: manual rollback", "dana"),
    ]

    shown = orjson.loads(cli("models", "show", spec.name, "v2").output)
    assert (shown["version"], shown["parent"], shown["offsets"]["learned"]) == ("v2", "v1", {"0": 20, "1": 8})
    assert shown["profile"]["features"]["x0"]["sample"] == [0.1, 0.2, 0.3]  # MLflow: read from the run artifact

    result = cli("models", "promote", spec.name, "v9")
    assert result.exit_code == 1 and f"{spec.name} has no version 'v9'" in result.output
    assert "Traceback" not in result.output


def test_batches_skip(cli, spec: StreamSpec, store: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPERATOR_ENV, "erin")
    store.set_halt(spec.name, {"ranges": {"0": [10, 30]}, "summary": "2 expectations failed", "run_id": "r"})
    result = cli("batches", "skip", spec.name, "--reason", "bad upstream data")
    assert result.exit_code == 0, result.output
    assert store.halt(spec.name) is None
    assert store.pending_offset_reset(spec.name)["offsets"] == {"0": 30}
    assert store.decisions(spec.name)[-1]["by"] == "erin"


def test_migrate_copies_versions_champion_history_and_state(
    cli, spec: StreamSpec, streamfit_home, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project.registry.mlflow_store import MlflowRegistry

    for name in ("STREAMFIT_REGISTRY", "STREAMFIT_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    stream = spec.name
    source = FilesystemRegistry(streamfit_home / "registry")
    parent = None
    for n, learned in enumerate(({0: 10}, {0: 20}, {0: 35}), 1):
        parent = source.register(stream, parent, scaler_onnx(n), fitted_scaler(n), meta(learned, seed=n)).name
    source.set_champion(stream, "v1", reason="first version")
    source.set_pending_offsets(stream, {0: 20}, reason="replay", by="fred")
    source.clear_offset_reset(stream, applied_by_version="v3")
    source.set_champion(stream, "v3", reason="gate", evidence={"roc_auc": 0.9})
    source.rollback(stream, reason="live accuracy dropped")
    source.record_decision(stream, {"kind": "promotion", "promoted": True})
    source.set_halt(stream, {"ranges": {"0": [35, 50]}, "summary": "nulls"})
    source.set_pending_offsets(stream, {0: 50}, reason="skip", by="gina")
    fs_list = cli("models", "list", stream).output

    result = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert f"{stream}: 3 versions (3 copied, 0 already there), champion v1, 3 champion changes" in result.output
    again = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri, "--stream", stream)
    assert again.exit_code == 0 and "3 versions (0 copied, 3 already there)" in again.output  # idempotent

    copy = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry")
    for original, copied in zip(source.versions(stream), copy.versions(stream), strict=True):
        assert copied.meta["mlflow"]["model_version"] == original.number  # MLflow's numbers match here
        assert {k: v for k, v in copied.meta.items() if k != "mlflow"} == {
            k: v for k, v in original.meta.items() if k != "profile"
        }
        assert copy.profile(stream, copied.name) == original.meta["profile"]
        assert copy.load_onnx(stream, copied.name) == source.load_onnx(stream, original.name)
    assert copy.champion(stream) == "v1"
    assert copy.champion_history(stream) == source.champion_history(stream)
    assert copy.decisions(stream) == source.decisions(stream)
    assert copy.halt(stream) == source.halt(stream)
    assert copy.pending_offset_reset(stream) == source.pending_offset_reset(stream)
    assert copy.applied_offset_resets(stream) == source.applied_offset_resets(stream)

    monkeypatch.setenv("STREAMFIT_REGISTRY", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    assert cli("models", "list", stream).output == fs_list  # the same listing from MLflow
    assert cli("models", "rollback", stream).exit_code == 1  # v1 has nothing earlier: same refusal as before
