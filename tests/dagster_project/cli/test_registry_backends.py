"""The operator commands on both registry backends, and `streamfit registry migrate --to mlflow`.

The commands reach the registry through `cli/common.registry()`, so $STREAMFIT_REGISTRY and
$MLFLOW_TRACKING_URI alone decide where they read and write; the output must not depend on it.
"""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from dagster_project.cli.common import OPERATOR_ENV
from dagster_project.ingest.events import EventParser
from dagster_project.kafka.io import read_range
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
    empty = cli("models", "list", spec.name)
    assert empty.exit_code == 1 and f"{spec.name}: no version registered in {store!r}" in empty.output
    store.register(spec.name, None, scaler_onnx(1), fitted_scaler(1), meta({0: 12, 1: 8}))
    store.register(spec.name, "v1", scaler_onnx(2), fitted_scaler(2), meta({0: 20, 1: 8}))

    for version in ("v1", "v2"):
        result = cli("models", "promote", spec.name, version, "--reason", "checked by hand")
        assert (result.exit_code, result.stdout) == (0, f"{spec.name}: champion is now {version}\n")
    lines = cli("models", "list", spec.name).output.splitlines()
    assert len(lines) == 2 and lines[1].startswith("*") and "parent    v1" in lines[1] and "accuracy" in lines[1]
    result = cli("models", "rollback", spec.name)
    assert (result.exit_code, result.stdout) == (0, f"{spec.name}: rolled back; champion is now v1\n")
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


def test_batches_skip_says_what_it_skipped_and_that_the_held_out_tail_is_learned_next(
    cli, spec: StreamSpec, store: ModelRegistry
) -> None:
    """The batch's promotion tail is the next batch's first rows, so it is not skipped: the output
    said it skipped the whole batch, and a user whose tail held the same bad data had to skip again."""
    halt = {"ranges": {"0": [10, 110], "1": [5, 95]}, "learned_ends": {"0": 90, "1": 77}, "summary": "bad labels"}
    store.set_halt(spec.name, {**halt, "run_id": "r"})
    result = cli("batches", "skip", spec.name, "--reason", "int labels")
    assert result.exit_code == 0, result.output
    assert f"{spec.name}: skipped {{'0': [10, 90], '1': [5, 77]}} (bad labels); training resumes at" in result.output
    assert "the batch's last 38 rows (its promotion tail) were not skipped: the next batch learns them" in result.output
    assert f"`streamfit offsets reset {spec.name} --to latest --force`" in result.output
    assert store.pending_offset_reset(spec.name)["offsets"] == {"0": 90, "1": 77}


def test_skipping_a_data_quality_halt_carries_its_feature_state(
    cli, spec: StreamSpec, store: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project.registry.store import carried_state, with_state

    monkeypatch.setenv(OPERATOR_ENV, "erin")
    state = b'{"format":1,"columns":{"device":["temp"]},"partitions":{}}'
    halt = {"ranges": {"0": [10, 30]}, "summary": "mean of temp out of bounds", "run_id": "r"}
    store.set_halt(spec.name, with_state(halt, state))
    assert cli("batches", "skip", spec.name, "--reason", "known sensor glitch").exit_code == 0
    assert carried_state(spec.name, store.pending_offset_reset(spec.name)) == state  # the next batch starts from it
    cleared = store.decisions(spec.name)[-1]
    assert cleared["halt"]["summary"] == halt["summary"] and "feature_state" not in cleared["halt"]


def test_migrate_names_a_stream_the_registry_does_not_hold(cli, spec: StreamSpec, streamfit_home) -> None:
    registry = FilesystemRegistry(streamfit_home / "registry")
    registry.register(spec.name, None, b"onnx", {"any": "estimator"}, meta({0: 5}))
    for wrong, why in (("nosuch", f"holds no stream nosuch (it holds: {spec.name})"), ("../x", "not a stream name")):
        result = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", "http://127.0.0.1:9", "--stream", wrong)
        assert result.exit_code != 0 and why in result.output and "Traceback" not in result.output


def test_migrate_copies_versions_champion_history_and_state(
    cli, spec: StreamSpec, streamfit_home, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster_project.registry.mlflow_store import MlflowRegistry

    for name in ("STREAMFIT_REGISTRY", "STREAMFIT_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    stream = spec.name
    source = FilesystemRegistry(streamfit_home / "registry")
    parent = None
    states = [None, *(b'{"format":1,"columns":{"device":["temp"]},"partitions":{"0":%d}}' % n for n in (2, 3))]
    for n, learned in enumerate(({0: 10}, {0: 20}, {0: 35}), 1):
        model = scaler_onnx(n), fitted_scaler(n), meta(learned, seed=n)
        parent = source.register(stream, parent, *model, feature_state=states[n - 1]).name
    source.set_champion(stream, "v1", reason="first version")
    source.set_pending_offsets(stream, {0: 20}, reason="replay", by="fred")
    source.clear_offset_reset(stream, applied_by_version="v3")
    source.set_champion(stream, "v3", reason="gate", evidence={"roc_auc": 0.9})
    source.rollback(stream, reason="live accuracy dropped")
    source.record_decision(stream, {"kind": "promotion", "promoted": True})
    source.set_halt(stream, {"ranges": {"0": [35, 50]}, "summary": "nulls"})
    source.set_pending_offsets(stream, {0: 50}, reason="quarantined q-1", by="gina", feature_state=b'{"format":1}')
    fs_list = cli("models", "list", stream).output

    result = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri)
    assert result.exit_code == 0, result.output
    assert f"{stream}: 3 versions (3 copied, 0 already there), champion v1, 3 champion changes" in result.output
    again = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri, "--stream", stream)
    assert again.exit_code == 0 and "3 versions (0 copied, 3 already there)" in again.output  # idempotent

    copy = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry")
    for original, copied in zip(source.scan(stream)[0], copy.versions(stream), strict=True):  # with profiles
        assert copied.meta["mlflow"]["model_version"] == original.number  # MLflow's numbers match here
        assert {k: v for k, v in copied.meta.items() if k != "mlflow"} == {
            k: v for k, v in original.meta.items() if k != "profile"
        }
        assert copy.profile(stream, copied.name) == original.meta["profile"]
        assert copy.load_onnx(stream, copied.name) == source.load_onnx(stream, original.name)
        # training and scorers on MLflow continue the derived features from the copied state
        assert copy.load_feature_state(stream, copied.name) == source.load_feature_state(stream, original.name)
    assert [copy.load_feature_state(stream, v) for v in ("v1", "v2", "v3")] == states
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


def test_migrate_into_a_namespace_names_it_and_says_to_set_it_everywhere(
    cli, spec: StreamSpec, streamfit_home, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Migrating with STREAMFIT_MLFLOW_NAMESPACE set said "-> registered model '<stream>'" and "set
    STREAMFIT_REGISTRY=mlflow and MLFLOW_TRACKING_URI=... everywhere": a deployment that did only that read
    the bare names, found no stream and trained from v1 beside the copy. Messages naming the model
    version (`models show`'s location) named the bare model too."""
    from dagster_project.registry.mlflow_store import MlflowRegistry

    for name in ("STREAMFIT_REGISTRY", "STREAMFIT_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STREAMFIT_MLFLOW_NAMESPACE", "team-a")
    source = FilesystemRegistry(streamfit_home / "registry")
    source.register(spec.name, None, scaler_onnx(1), fitted_scaler(1), meta({0: 10}, seed=1))

    result = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri)

    assert result.exit_code == 0, result.output
    assert f"-> registered model 'team-a.{spec.name}'" in result.output
    assert "STREAMFIT_MLFLOW_NAMESPACE=team-a everywhere" in result.output
    copy = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry", namespace="team-a")
    assert copy.location(spec.name, "v1").startswith(f"models:/team-a.{spec.name}/")


@pytest.mark.one_broker  # MLflow is the subject
def test_a_migrated_stream_continues_its_derived_features_on_mlflow(
    cli, kafka_settings, kafka_bootstrap, instance, streamfit_home, mlflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training and the scorer on MLflow start from the features.json the migration copied."""
    from dagster_project.registry.mlflow_store import MlflowRegistry
    from dagster_project.serving.features import ServingFeatures
    from tests.dagster_project.features.support import (
        learn_in_batches,
        produce_sensors,
        sensors_spec,
        training_inputs,
    )
    from tests.helpers import defs_for, high_waters

    for name in ("STREAMFIT_REGISTRY", "STREAMFIT_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    spec = sensors_spec()
    produce_sensors(kafka_settings, spec, rows=900)
    source = FilesystemRegistry(streamfit_home / "registry")
    learn_in_batches(defs_for(spec, kafka_bootstrap, source), spec, kafka_settings, source, instance, pieces=2)
    before = training_inputs(kafka_settings, source, spec)  # every event, the rest from v2's saved state

    result = cli("registry", "migrate", "--to", "mlflow", "--mlflow-uri", mlflow_server.uri, "--stream", spec.name)
    assert result.exit_code == 0, result.output
    copy = MlflowRegistry(mlflow_server.uri, root=streamfit_home / "registry")
    assert copy.load_feature_state(spec.name, "v2") == source.load_feature_state(spec.name, "v2")

    # A third batch on MLflow learns the rest of the topic with the values one pass gives.
    learn_in_batches(defs_for(spec, kafka_bootstrap, copy), spec, kafka_settings, copy, instance, pieces=1)
    assert [v.name for v in copy.versions(spec.name)] == ["v1", "v2", "v3"]
    after = training_inputs(kafka_settings, copy, spec)
    assert after.keys() == before.keys()
    assert max(np.abs(after[k] - before[k]).max() for k in before) < 1e-9

    # A scorer on MLflow serving v2 from v1's offsets restores v1's copied state: the values training gave.
    features = ServingFeatures(spec, kafka_settings, copy)
    start = copy.get(spec.name, "v1").learned
    records = list(
        read_range(
            kafka_settings,
            spec.events_topic,
            {p: (start[p], e) for p, e in high_waters(kafka_settings, spec.events_topic).items()},
        )
    )
    values = [r.value for r in records]
    out = features.derive(
        "v2", [r.partition for r in records], [r.offset for r in records], values, EventParser(spec).parse_many(values)
    )
    served = {(records[i].partition, records[i].offset): out.X[k] for k, i in enumerate(out.index.tolist())}
    assert len(served) > 100 and features.caught_up == 0
    assert max(np.abs(served[k] - before[k]).max() for k in served) < 1e-9
