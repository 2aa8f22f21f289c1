"""MLflow-specific guarantees, on a real MLflow server: the commit point under a crash at every MLflow
call, concurrent writers, an unreachable server, and choosing the backend from the environment."""

from __future__ import annotations

import functools
import threading
import uuid
from pathlib import Path

import pytest

from dagster_project.dev.mlflow_server import free_port
from dagster_project.registry.backends import registry_from_env
from dagster_project.registry.mlflow_store import (
    ABANDONED_TAG,
    ATTEMPT_TAG,
    DISCARDED_TAG,
    VERSION_TAG,
    MlflowRegistry,
    without_credentials,
)
from dagster_project.registry.store import (
    FilesystemRegistry,
    RegistryError,
    RegistryUnavailable,
    StaleParent,
    without_state,
)
from dagster_project.registry.versioning import already_registered
from dagster_project.resources import RegistryResource
from tests.dagster_project.registry.test_contract import fitted_scaler, scaler_onnx


class Crash(RuntimeError):
    """The process died here (raised instead of a real kill: the next attempt is a fresh registry object)."""


class CrashingClient:
    """An MlflowClient whose call number `at` (1-based) crashes, before it reaches MLflow or right after."""

    def __init__(self, client, at: int, after: bool) -> None:
        self._client, self.at, self.after = client, at, after
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            self.calls.append(name)
            number = len(self.calls)
            if number == self.at and not self.after:
                raise Crash(f"crash before call {number} ({name})")
            try:
                result = attribute(*args, **kwargs)
            except Exception as exc:  # MLflow answered no (e.g. "already exists"): the crash still comes after
                if number == self.at and self.after:
                    raise Crash(f"crash after call {number} ({name}), which answered {exc!r}") from exc
                raise
            if number == self.at and self.after:
                raise Crash(f"crash after call {number} ({name})")
            return result

        return call


def new_stream() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def batch_meta(start: int, end: int, seed: int) -> dict:
    return {
        "offsets": {"topic": "t.events", "batch": {"0": [start, end]}, "learned": {"0": end}},
        "rows": {"read": end - start, "valid": end - start, "trained": end - start, "dlq": 0},
        "metrics": {"accuracy": 0.5 + seed / 100},
        "profile": {"features": {}},
        "seed": seed,
    }


def register_batch_at(registry: MlflowRegistry, stream: str, parent: str | None, start: int, end: int, seed: int):
    """What the training asset does on every attempt: find a version an earlier attempt made, else register."""
    found = already_registered(registry, stream, parent, {0: (start, end)})
    if found is not None:
        return found, "found committed"
    return registry.register(stream, parent, scaler_onnx(seed), fitted_scaler(seed), batch_meta(start, end, seed)), ""


@pytest.fixture
def mlflow_uri(mlflow_server) -> str:
    return mlflow_server.uri


@functools.cache
def registration_calls(uri: str, root: Path) -> list[str]:
    """The MLflow calls one attempt makes (at a second version, by a process that just started): the
    training run's lookup of an earlier attempt's version, then the registration."""
    stream = new_stream()
    MlflowRegistry(uri, root=root).register(stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1))
    recording = MlflowRegistry(uri, root=root)
    recording.client = CrashingClient(recording.client, at=0, after=False)
    register_batch_at(recording, stream, "v1", 10, 30, seed=2)
    return recording.client.calls


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_at_any_mlflow_call_leaves_nothing_or_a_complete_version_and_the_retry_registers_once(
    mlflow_uri: str, tmp_path: Path, when: str
) -> None:
    """For every MLflow call a registration makes: crash just before it (or just after it answered), then
    look (no visible version, or a complete one), then retry as the training run does (find the version,
    else register): exactly one version of the batch, with its offsets, and no second model version."""
    calls = registration_calls(mlflow_uri, tmp_path)
    assert {"create_run", "log_model_artifacts", "create_model_version", "set_model_version_tag"} <= set(calls)
    assert calls[-1] == "set_model_version_tag"  # the commit point is the last call
    outcomes = []
    for at, name in enumerate(calls, 1):
        stream = new_stream()
        MlflowRegistry(mlflow_uri, root=tmp_path).register(
            stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1)
        )
        crashing = MlflowRegistry(mlflow_uri, root=tmp_path)
        crashing.client = CrashingClient(crashing.client, at=at, after=when == "after")
        with pytest.raises(Crash):
            register_batch_at(crashing, stream, "v1", 10, 30, seed=2)

        observer = MlflowRegistry(mlflow_uri, root=tmp_path)
        seen = [v.name for v in observer.versions(stream)]
        staged = len(observer.client.search_model_versions(f"name = '{stream}'")) == 2 and seen == ["v1"]
        assert seen in (["v1"], ["v1", "v2"]), f"crash {when} call {at} ({name}): {seen}"
        if seen == ["v1", "v2"]:  # visible means complete: offsets, both files, checksums
            assert observer.get(stream, "v2").learned == {0: 30}
            assert observer.load_onnx(stream, "v2") == scaler_onnx(2)
            assert observer.load_estimator(stream, "v2").n_features_in_ == 3

        retry = MlflowRegistry(mlflow_uri, root=tmp_path)
        version, how = register_batch_at(retry, stream, "v1", 10, 30, seed=2)
        assert (version.name, version.parent, version.learned) == ("v2", "v1", {0: 30}), f"{when} {at} ({name})"
        assert [v.name for v in retry.versions(stream)] == ["v1", "v2"]
        assert retry.load_onnx(stream, "v2") == scaler_onnx(2)

        model_versions = retry.client.search_model_versions(f"name = '{stream}'")
        live = [mv for mv in model_versions if DISCARDED_TAG not in mv.tags]
        assert len(live) == 2, f"crash {when} call {at} ({name}): {[(mv.version, mv.tags) for mv in live]}"
        assert sorted(mv.tags.get(VERSION_TAG) for mv in live) == ["v1", "v2"]
        sources = {mv.run_id for mv in live}
        experiment = retry._experiment(stream)
        for run in retry.client.search_runs([experiment], f"tags.`{ATTEMPT_TAG}` != ''"):
            assert run.info.run_id in sources or (run.info.status == "FAILED" and ABANDONED_TAG in run.data.tags), (
                f"crash {when} call {at} ({name}): run {run.info.run_id} is {run.info.status}, unexplained"
            )
        how = how or ("committed the staged version" if staged else "registered afresh")
        outcomes.append(f"{at:>2} {name:<28} head after the crash: {seen[-1]:<3} the retry {how}")
    print(f"\ncrash {when} each MLflow call of one registration:\n" + "\n".join(outcomes))


def staged_then_crashed(uri: str, root: Path, stream: str, start: int, end: int, seed: int) -> None:
    """An attempt that created its model version and died before the commit tag."""
    crashing = MlflowRegistry(uri, root=root)
    calls = registration_calls(uri, root)
    crashing.client = CrashingClient(crashing.client, at=calls.index("create_model_version") + 1, after=True)
    with pytest.raises(Crash):
        crashing.register(stream, "v1", scaler_onnx(seed), fitted_scaler(seed), batch_meta(start, end, seed))


def test_a_reset_with_a_feature_state_applied_by_a_version_is_not_applied_again(
    mlflow_uri: str, tmp_path: Path
) -> None:
    """A crash between the version's commit and the clearing of the pending reset it applied: the
    version's meta.json records the reset without its feature state, and that still settles it."""
    registry = MlflowRegistry(mlflow_uri, root=tmp_path)
    stream = new_stream()
    state = b'{"format":1,"columns":{"device":["temp"]},"partitions":{}}'
    pending = registry.set_pending_offsets(stream, {0: 40}, reason="quarantined q-1", by="dq", feature_state=state)
    meta = batch_meta(40, 60, seed=1) | {"offset_reset_applied": without_state(pending)}
    registry.register(stream, None, scaler_onnx(1), fitted_scaler(1), meta, feature_state=state)

    assert registry.pending_offset_reset(stream) is None  # the crash left it behind; it is not applied twice


def test_an_earlier_staged_registration_goes_first(mlflow_uri: str, tmp_path: Path) -> None:
    stream = new_stream()
    registry = MlflowRegistry(mlflow_uri, root=tmp_path)
    registry.register(stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1))
    staged_then_crashed(mlflow_uri, tmp_path, stream, 10, 30, seed=2)  # still within its timeout: in flight

    other = MlflowRegistry(mlflow_uri, root=tmp_path)
    with pytest.raises(StaleParent, match="another registration on top of v1 .* is in flight"):
        other.register(stream, "v1", scaler_onnx(3), fitted_scaler(3), batch_meta(10, 40, 3))
    assert [v.name for v in registry.versions(stream)] == ["v1"]

    version, _ = register_batch_at(MlflowRegistry(mlflow_uri, root=tmp_path), stream, "v1", 10, 30, seed=2)
    assert (version.name, version.learned) == ("v2", {0: 30})
    with pytest.raises(StaleParent, match="head is v2, not v1"):
        other.register(stream, "v1", scaler_onnx(3), fitted_scaler(3), batch_meta(10, 40, 3))
    assert [v.learned for v in registry.versions(stream)] == [{0: 10}, {0: 30}]


def test_an_abandoned_staged_version_is_discarded_by_the_next_writer(mlflow_uri: str, tmp_path: Path) -> None:
    stream = new_stream()
    registry = MlflowRegistry(mlflow_uri, root=tmp_path)
    registry.register(stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1))
    staged_then_crashed(mlflow_uri, tmp_path, stream, 10, 30, seed=2)

    impatient = MlflowRegistry(mlflow_uri, root=tmp_path, pending_timeout_s=0.0)
    v2 = impatient.register(stream, "v1", scaler_onnx(3), fitted_scaler(3), batch_meta(10, 40, 3))
    assert (v2.name, v2.learned) == ("v2", {0: 40})
    abandoned = [mv for mv in registry.client.search_model_versions(f"name = '{stream}'") if VERSION_TAG not in mv.tags]
    assert len(abandoned) == 1 and abandoned[0].tags[DISCARDED_TAG].startswith("abandoned")
    with pytest.raises(StaleParent):  # the abandoned attempt's retry: its batch was not learned on v1 after all
        register_batch_at(MlflowRegistry(mlflow_uri, root=tmp_path), stream, "v1", 10, 30, seed=2)
    assert [v.learned for v in registry.versions(stream)] == [{0: 10}, {0: 40}]


def test_two_writers_on_the_same_parent_one_wins(mlflow_uri: str, tmp_path: Path) -> None:
    stream = new_stream()
    MlflowRegistry(mlflow_uri, root=tmp_path).register(
        stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1)
    )
    results: dict[int, object] = {}
    start = threading.Barrier(2)

    def write(seed: int, end: int) -> None:
        registry = MlflowRegistry(mlflow_uri, root=tmp_path)
        registry.versions(stream)  # warm up, so both reach the registration together
        start.wait()
        try:
            results[seed] = registry.register(
                stream, "v1", scaler_onnx(seed), fitted_scaler(seed), batch_meta(10, end, seed)
            )
        except StaleParent as exc:
            results[seed] = exc

    threads = [threading.Thread(target=write, args=(seed, end)) for seed, end in ((2, 30), (3, 40))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winners = [r for r in results.values() if not isinstance(r, StaleParent)]
    assert len(results) == 2 and len(winners) == 1, results
    versions = MlflowRegistry(mlflow_uri, root=tmp_path).versions(stream)
    assert [v.name for v in versions] == ["v1", "v2"] and versions[1].learned == winners[0].learned


def test_an_unreachable_server_is_a_registry_unavailable_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    registry = MlflowRegistry(f"http://127.0.0.1:{free_port()}", root=tmp_path)
    for call in (
        lambda: registry.champion("s"),
        lambda: registry.versions("s"),
        lambda: registry.load_onnx("s", "v1"),
        lambda: registry.decisions("s"),
    ):
        with pytest.raises(RegistryUnavailable, match="is unreachable or failing while"):
            call()


def test_the_environment_picks_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("STREAMFIT_REGISTRY", "STREAMFIT_MLFLOW_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(registry_from_env(tmp_path), FilesystemRegistry)  # the default
    monkeypatch.setenv("STREAMFIT_REGISTRY", "mlflow")
    with pytest.raises(RegistryError, match="needs the tracking server: set MLFLOW_TRACKING_URI"):
        registry_from_env(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    chosen = registry_from_env(tmp_path)
    assert isinstance(chosen, MlflowRegistry) and chosen.tracking_uri == "http://tracking:5000"
    assert chosen.root == tmp_path
    monkeypatch.setenv("STREAMFIT_MLFLOW_URI", "http://streamfit-mlflow:5000")  # the specific one wins
    assert registry_from_env(tmp_path).tracking_uri == "http://streamfit-mlflow:5000"
    assert isinstance(registry_from_env(tmp_path, backend="filesystem"), FilesystemRegistry)
    monkeypatch.setenv("STREAMFIT_REGISTRY", "s3")
    with pytest.raises(RegistryError, match="expected one of filesystem, mlflow"):
        registry_from_env(tmp_path)

    monkeypatch.setenv("STREAMFIT_REGISTRY", "filesystem")
    resource = RegistryResource.of(MlflowRegistry("http://tracking:5000", root=tmp_path))
    reopened = resource.get()  # what a run worker does: the resource's fields, not the environment
    assert isinstance(reopened, MlflowRegistry) and (reopened.tracking_uri, reopened.root) == (
        "http://tracking:5000",
        tmp_path,
    )
    assert isinstance(RegistryResource.of(FilesystemRegistry(tmp_path)).get(), FilesystemRegistry)


def test_two_deployments_sharing_a_server_keep_same_named_streams_apart(mlflow_uri: str, tmp_path: Path) -> None:
    """Without a namespace two deployments' `orders` streams were one registered model: each saw the
    other's versions as its head (training from them, or halting on SPEC CHANGED) and moved its champion."""
    stream = new_stream()
    test = MlflowRegistry(mlflow_uri, root=tmp_path / "test", namespace="team-test")
    prod = MlflowRegistry(mlflow_uri, root=tmp_path / "prod", namespace="team-prod")
    plain = MlflowRegistry(mlflow_uri, root=tmp_path / "plain")

    test.register(stream, None, scaler_onnx(1), fitted_scaler(1), batch_meta(0, 10, 1))
    test.register(stream, "v1", scaler_onnx(2), fitted_scaler(2), batch_meta(10, 20, 2))
    prod.register(stream, None, scaler_onnx(3), fitted_scaler(3), batch_meta(0, 50, 3))
    test.set_champion(stream, "v2", reason="test")
    prod.set_champion(stream, "v1", reason="test")

    assert [v.name for v in test.versions(stream)] == ["v1", "v2"]
    assert [(v.name, v.meta["seed"]) for v in prod.versions(stream)] == [("v1", 3)]
    assert (test.champion(stream), prod.champion(stream)) == ("v2", "v1")
    assert [r["version"] for r in prod.champion_history(stream)] == ["v1"]
    assert plain.versions(stream) == [] and plain.champion(stream) is None
    assert stream in test.streams() and stream in prod.streams() and stream not in plain.streams()
    assert prod.get(stream, "v1").meta["mlflow"]["model_uri"].startswith(f"models:/team-prod.{stream}/")
    reopened = RegistryResource.of(prod).get()  # a run worker opens the same namespace
    assert [v.meta["seed"] for v in reopened.versions(stream)] == [3]


@pytest.mark.parametrize("namespace", ["team/a", "a.b", "-a", "x" * 64])
def test_a_namespace_mlflow_cannot_name_or_that_would_be_ambiguous_is_refused(
    namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFIT_REGISTRY", "mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    monkeypatch.setenv("STREAMFIT_MLFLOW_NAMESPACE", namespace)
    with pytest.raises(RegistryError, match=r"STREAMFIT_MLFLOW_NAMESPACE: MLflow namespace .*letters, digits"):
        registry_from_env(tmp_path)


def test_the_registry_cost_benchmark_runs(mlflow_uri: str, capsys: pytest.CaptureFixture) -> None:
    """`python -m benchmarks.registry_cost` works end to end (how fast is not checked: machines vary 2-3x)."""
    from benchmarks.registry_cost import main

    main(["--versions", "2", "--rows", "200", "--mlflow-uri", mlflow_uri])
    out = capsys.readouterr().out
    for op in ("register ", "register_batch", "head", "champion", "load_onnx", "load_estimator"):
        assert f"\n{op}" in out, out
    assert "MLflow/fs" in out and "MLflow calls per register: 13 (" in out


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://alice:s3cret-token@mlflow.example:443/", "https://mlflow.example:443/"),
        ("postgresql://user:pw@db:5432/mlflow?sslmode=require", "postgresql://db:5432/mlflow"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////var/lib/mlflow.db", "sqlite:////var/lib/mlflow.db"),
    ],
)
def test_the_registry_address_a_scorer_shows_carries_no_credentials(uri: str, shown: str, tmp_path: Path) -> None:
    """`/healthz` is open without a token and names the registry the scorer reads."""
    assert without_credentials(uri) == shown
    if uri.startswith("http"):
        assert MlflowRegistry(uri, root=tmp_path).address == f"MLflow at {shown}"
