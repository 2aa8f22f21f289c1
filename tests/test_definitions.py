"""The code location as Dagster loads it: every shipped stream spec becomes its assets, blocking checks,
jobs, sensors and schedules, with the deployment's resources, and the whole location validates."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from dagster_project import names
from dagster_project.kafka.settings import (
    BOOTSTRAP_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    CHECK_HOSTNAME_ENV,
    CLIENT_ENV,
    KEYFILE_ENV,
    MECHANISM_ENV,
    PASSWORD_ENV,
    PROTOCOL_ENV,
    USERNAME_ENV,
)
from dagster_project.resources import KAFKA_ENV_FIELDS, KafkaResource, RegistryResource
from dagster_project.spec import load_specs
from tests.helpers import break_drift_sensor_of, full_retrain_tick, share_drift_sensor_of

ROOT = Path(__file__).resolve().parent.parent
STREAMS_DIR = ROOT / "streams"
STREAMS = [spec.name for spec in load_specs(STREAMS_DIR)]
SPECS = {spec.name: spec for spec in load_specs(STREAMS_DIR)}
BOOTSTRAP = "kafka.example.internal:9092"  # never contacted: loading the location talks to no broker
SECURITY_ENV = (
    PROTOCOL_ENV,
    CAFILE_ENV,
    CERTFILE_ENV,
    KEYFILE_ENV,
    CHECK_HOSTNAME_ENV,
    MECHANISM_ENV,
    USERNAME_ENV,
    PASSWORD_ENV,
    CLIENT_ENV,
)
DAGSTER = str(Path(sys.executable).with_name("dagster"))


@contextmanager
def _code_location(**env: str) -> Iterator[dg.Definitions]:
    """Import `dagster_project.definitions` afresh under this environment, as a code server would."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SECURITY_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("STREAMFIT_STREAMS", str(STREAMS_DIR))
        patch.setenv(BOOTSTRAP_ENV, BOOTSTRAP)
        for name, value in env.items():
            patch.setenv(name, value)
        module = importlib.reload(importlib.import_module("dagster_project.definitions"))
        yield module.defs


@pytest.fixture(scope="module")
def defs() -> Iterator[dg.Definitions]:
    with _code_location() as loaded:
        yield loaded


@pytest.fixture(scope="module")
def repo(defs: dg.Definitions) -> dg.RepositoryDefinition:
    return defs.get_repository_def()


def test_a_spec_file_that_does_not_load_leaves_the_other_streams_running(tmp_path: Path) -> None:
    """The shipped streams load beside a broken file, whose sensor says why its stream is not training."""
    import shutil

    for path in STREAMS_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "clicks.yaml").write_text("name: clicks\ntask: classification\nbatch: {rowz: 100}\n")
    with _code_location(STREAMFIT_STREAMS=str(tmp_path)) as loaded:
        repo = loaded.get_repository_def()
        sensors = {s.name for s in repo.sensor_defs}
        assert {f"{s}_kafka_sensor" for s in STREAMS} <= sensors and "invalid_spec_clicks_yaml" in sensors
        sensor = loaded.resolve_sensor_def("invalid_spec_clicks_yaml")
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
        with dg.instance_for_test() as instance:
            skipped = sensor(dg.build_sensor_context(instance=instance))
        assert skipped.skip_message.startswith(f"INVALID SPEC {tmp_path / 'clicks.yaml'}: invalid stream spec")
        assert "rowz" in skipped.skip_message and "streamfit check" in skipped.skip_message


def test_broken_spec_files_with_one_stem_are_each_reported_and_the_other_streams_load(tmp_path: Path) -> None:
    """synthetic.yaml copied to synthetic.yml (both refused: one stream, two files), and team-a.yaml
    beside team_a.yaml: each got the sensor `invalid_spec_<stem>`, and the duplicate name failed the
    whole location, so no stream trained."""
    import shutil

    for path in STREAMS_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(STREAMS_DIR / "synthetic.yaml", tmp_path / "synthetic.yml")
    for file_name in ("team-a.yaml", "team_a.yaml"):
        (tmp_path / file_name).write_text("name: team_a\ntask: classification\nbatch: {rowz: 100}\n")
    with _code_location(STREAMFIT_STREAMS=str(tmp_path)) as loaded:
        dg.Definitions.validate_loadable(loaded)
        repo = loaded.get_repository_def()
        others = [s for s in STREAMS if s != "synthetic"]
        assert {f"{s}_kafka_sensor" for s in others} <= {s.name for s in repo.sensor_defs}
        assert {names.training_job(s) for s in others} <= {j.name for j in repo.get_all_jobs()}
        assert "synthetic_kafka_sensor" not in {s.name for s in repo.sensor_defs}
        invalid = [s for s in repo.sensor_defs if s.name.startswith("invalid_spec_")]
        assert {s.name for s in invalid} >= {"invalid_spec_synthetic_yaml", "invalid_spec_synthetic_yml"}
        with dg.instance_for_test() as instance:
            messages = [s(dg.build_sensor_context(instance=instance)).skip_message for s in invalid]
    reported = {message.split(":")[0].removeprefix("INVALID SPEC ") for message in messages}
    assert reported == {str(tmp_path / f) for f in ("synthetic.yaml", "synthetic.yml", "team-a.yaml", "team_a.yaml")}


def _skip_messages(loaded: dg.Definitions, sensors: list[str]) -> dict[str, str]:
    with dg.instance_for_test() as instance:
        return {
            name: loaded.resolve_sensor_def(name)(dg.build_sensor_context(instance=instance)).skip_message
            for name in sensors
        }


def _assert_only_these_streams_train(loaded: dg.Definitions, training: list[str], stopped: list[str]) -> None:
    dg.Definitions.validate_loadable(loaded)
    repo = loaded.get_repository_def()
    sensors, jobs = {s.name for s in repo.sensor_defs}, {j.name for j in repo.get_all_jobs()}
    assert {f"{s}_{kind}_sensor" for s in training for kind in ("kafka", "drift")} <= sensors
    assert {names.training_job(s) for s in training} <= jobs
    assert not {f"{s}_kafka_sensor" for s in stopped} & sensors
    assert not {names.training_job(s) for s in stopped} & jobs
    for stream in stopped:
        assert loaded.resolve_sensor_def(f"invalid_spec_{stream}_yaml").default_status == dg.DefaultSensorStatus.RUNNING


def test_a_stream_whose_definitions_do_not_build_leaves_the_other_streams_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A spec that loads but whose build raised (here census's drift sensor) failed the whole code
    location: no stream trained. Now its file gets the `invalid_spec_<file>` sensor, skipping with the error."""
    break_drift_sensor_of(monkeypatch, "census")
    with _code_location() as loaded:
        _assert_only_these_streams_train(loaded, [s for s in STREAMS if s != "census"], ["census"])
        message = _skip_messages(loaded, ["invalid_spec_census_yaml"])["invalid_spec_census_yaml"]
    assert message.startswith(
        f"INVALID SPEC {STREAMS_DIR / 'census.yaml'}: stream 'census''s Dagster definitions do not build: "
        "RuntimeError: census's drift sensor does not build. Change the setting the error names (or undo the "
        "file's last change) until `streamfit check` passes it"
    )
    assert message.endswith("the stream it declares does not train until then, the others do")


def test_a_stream_whose_definitions_do_not_resolve_leaves_the_other_streams_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dagster raises some definition errors only when it resolves the location (here a job needing a
    resource the location lacks): building phishing's definitions passed, loading the location failed."""
    from dagster_project import factory

    build_remediation_jobs = factory.build_remediation_jobs

    def remediation_jobs(spec):
        rollback_job, retrain_job = build_remediation_jobs(spec)
        if spec.name != "phishing":
            return rollback_job, retrain_job

        @dg.op(name="phishing_rollback_champion", required_resource_keys={"no_such_resource"})
        def needs_a_missing_resource() -> None:
            pass

        @dg.job(name="phishing_rollback")
        def rollback() -> None:
            needs_a_missing_resource()

        return rollback, retrain_job

    monkeypatch.setattr(factory, "build_remediation_jobs", remediation_jobs)
    with _code_location() as loaded:
        _assert_only_these_streams_train(loaded, [s for s in STREAMS if s != "phishing"], ["phishing"])
        message = _skip_messages(loaded, ["invalid_spec_phishing_yaml"])["invalid_spec_phishing_yaml"]
    assert "stream 'phishing''s Dagster definitions do not build: DagsterInvalidDefinitionError:" in message
    assert "no_such_resource" in message


def test_streams_whose_definitions_collide_are_both_stopped_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two streams defining one name: Dagster's merge concatenates, and the duplicate failed the whole
    location when it resolved. Both are stopped (which one to train is not a guess), each naming the other."""
    share_drift_sensor_of(monkeypatch, "census", "phishing")
    with _code_location() as loaded:
        others = [s for s in STREAMS if s not in ("census", "phishing")]
        _assert_only_these_streams_train(loaded, others, ["census", "phishing"])
        messages = _skip_messages(loaded, ["invalid_spec_census_yaml", "invalid_spec_phishing_yaml"])
    census, phishing = messages["invalid_spec_census_yaml"], messages["invalid_spec_phishing_yaml"]
    assert f"collide with stream 'phishing' ({STREAMS_DIR / 'phishing.yaml'}): " in census
    assert f"collide with stream 'census' ({STREAMS_DIR / 'census.yaml'}): " in phishing
    assert all("shared_drift_sensor" in m and "Rename one of these streams" in m for m in (census, phishing))


def test_the_repo_ships_stream_specs() -> None:
    assert STREAMS, f"no stream specs in {STREAMS_DIR}"
    assert {"synthetic", "phishing"} <= set(STREAMS)


def test_the_code_location_validates(defs: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(defs)  # asset keys, names, asset jobs, resources: raises if not loadable
    assert {job.name for job in defs.resolve_all_job_defs()} >= {names.training_job(s) for s in STREAMS}


def test_the_asset_graph_has_every_streams_chain(defs: dg.Definitions) -> None:
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    expected = {
        f"{stream}/{asset}"
        for stream in STREAMS
        for asset in ("micro_batch", "model", "onnx_model", "model_version", "champion", "report")
    }
    assert keys == expected
    graph = defs.resolve_asset_graph()
    for stream in STREAMS:
        assert graph.get(dg.AssetKey([stream, "model_version"])).parent_keys == {
            dg.AssetKey([stream, "micro_batch"]),
            dg.AssetKey([stream, "model"]),
            dg.AssetKey([stream, "onnx_model"]),
        }
        assert {graph.get(dg.AssetKey([stream, a])).group_name for a in ("micro_batch", "report")} == {stream}


def test_quality_and_parity_checks_block_the_chain(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    checks = {
        (spec.asset_key.to_user_string(), spec.name): spec.blocking
        for spec in (graph.get_check_spec(key) for key in graph.asset_check_keys)
    }
    expected = {(f"{s}/micro_batch", "data_quality"): True for s in STREAMS} | {
        (f"{s}/onnx_model", "onnx_parity"): True for s in STREAMS
    }
    assert checks == expected


@pytest.mark.parametrize("stream", STREAMS)
def test_jobs_of_a_stream(defs: dg.Definitions, stream: str) -> None:
    training = defs.resolve_job_def(names.training_job(stream))
    assert {k.to_user_string() for k in training.asset_layer.selected_asset_keys} == {
        f"{stream}/{a}" for a in ("micro_batch", "model", "onnx_model", "model_version", "champion")
    }, "the training job learns one batch; the report has its own job"
    assert training.tags[names.STREAM_TAG] == stream  # the run queue serialises runs of a stream by this tag

    rollback = defs.resolve_job_def(names.rollback_job(stream))
    retrain = defs.resolve_job_def(names.retrain_job(stream))
    assert [n.name for n in rollback.nodes] == [names.rollback_op(stream)]
    assert [n.name for n in retrain.nodes] == [names.retrain_op(stream)]
    assert rollback.tags[names.STREAM_TAG] == retrain.tags[names.STREAM_TAG] == stream

    report = defs.resolve_job_def(f"{stream}_report")
    assert {k.to_user_string() for k in report.asset_layer.selected_asset_keys} == {f"{stream}/report"}


def test_no_unexpected_jobs(repo: dg.RepositoryDefinition) -> None:
    jobs = {job.name for job in repo.get_all_jobs() if not job.name.startswith("__ASSET_JOB")}
    expected = {
        name(stream)
        for stream in STREAMS
        for name in (names.training_job, names.rollback_job, names.retrain_job, lambda s: f"{s}_report")
    }
    assert jobs == expected | {"run_retention"}  # one for the location: old runs' retention


def test_run_retention_is_scheduled_daily_and_running(defs: dg.Definitions) -> None:
    schedule = defs.resolve_schedule_def("run_retention_schedule")
    assert schedule.job_name == "run_retention" and schedule.cron_schedule == "23 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize("stream", STREAMS)
def test_sensors_run_by_default_and_launch_the_right_jobs(defs: dg.Definitions, stream: str) -> None:
    kafka = defs.resolve_sensor_def(f"{stream}_kafka_sensor")
    assert kafka.default_status == dg.DefaultSensorStatus.RUNNING
    assert kafka.job_name == names.training_job(stream)
    assert kafka.required_resource_keys == {"kafka", "registry"}
    assert kafka.minimum_interval_seconds <= SPECS[stream].batch.sensor_interval_s

    drift = defs.resolve_sensor_def(f"{stream}_drift_sensor")
    assert drift.default_status == dg.DefaultSensorStatus.RUNNING
    assert {t.job_name for t in drift.targets} == {names.rollback_job(stream), names.retrain_job(stream)}
    assert drift.required_resource_keys == {"registry"}  # it reads durable state only, never Kafka


def test_only_the_two_sensors_per_stream(repo: dg.RepositoryDefinition) -> None:
    assert {s.name for s in repo.sensor_defs} == {f"{s}_{k}_sensor" for s in STREAMS for k in ("kafka", "drift")}


@pytest.mark.parametrize("stream", STREAMS)
def test_schedules_of_a_stream(defs: dg.Definitions, stream: str) -> None:
    spec = SPECS[stream]
    full = defs.resolve_schedule_def(names.full_retrain_schedule(stream))
    assert full.job_name == names.retrain_job(stream)
    assert full.cron_schedule == spec.drift.full_retrain_cron
    assert full.default_status == dg.DefaultScheduleStatus.RUNNING
    report = defs.resolve_schedule_def(f"{stream}_report_schedule")
    assert report.job_name == f"{stream}_report"
    assert report.cron_schedule == spec.drift.report_cron
    assert report.default_status == dg.DefaultScheduleStatus.RUNNING


def test_scheduled_retrain_config_is_valid_for_the_retrain_job(defs: dg.Definitions, instance, registry) -> None:
    for stream in STREAMS:
        registry.register(stream, None, b"onnx", {"fake": "estimator"}, {"offsets": {"learned": {"0": 10}}})
        request = full_retrain_tick(defs, SPECS[stream], instance, registry)
        dg.validate_run_config(defs.resolve_job_def(names.retrain_job(stream)), request.run_config)  # raises if not
        assert request.tags[names.ACTION_TAG] == "scheduled_retrain" and request.tags[names.STREAM_TAG] == stream


def test_resources_are_the_broker_and_the_registry(defs: dg.Definitions, repo: dg.RepositoryDefinition) -> None:
    assert set(repo.get_top_level_resources()) == {"kafka", "registry"}
    kafka = defs.resources["kafka"]
    assert isinstance(kafka, KafkaResource) and isinstance(defs.resources["registry"], RegistryResource)
    assert isinstance(kafka.bootstrap, dg.EnvVar) and kafka.bootstrap.env_var_name == BOOTSTRAP_ENV
    for field in KAFKA_ENV_FIELDS:  # none of the security variables is set: nothing to show
        assert getattr(kafka, field) is None, field


def test_kafka_resource_shows_the_security_variables_a_deployment_sets(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read while loading")
    env = {
        PROTOCOL_ENV: "SASL_SSL",
        CAFILE_ENV: str(ca),
        CHECK_HOSTNAME_ENV: "false",
        MECHANISM_ENV: "SCRAM-SHA-512",
        USERNAME_ENV: "streamfit",
        PASSWORD_ENV: "s3cret-value",
    }
    with _code_location(**env) as loaded:
        kafka = loaded.resources["kafka"]
        shown = {
            field: getattr(kafka, field).env_var_name
            for field in KAFKA_ENV_FIELDS
            if isinstance(getattr(kafka, field), dg.EnvVar)
        }
        assert shown == {
            "security_protocol": PROTOCOL_ENV,
            "ssl_cafile": CAFILE_ENV,
            "ssl_check_hostname": CHECK_HOSTNAME_ENV,
            "sasl_mechanism": MECHANISM_ENV,
            "sasl_username": USERNAME_ENV,
            "sasl_password": PASSWORD_ENV,
        }
        assert kafka.ssl_certfile is None and kafka.ssl_keyfile is None and kafka.client is None
        assert "s3cret-value" not in repr(kafka)  # the definition holds the variable's name, not the secret

        with dg.build_resources({"kafka": kafka}) as resolved:  # what a run gets: the variables' values
            settings = resolved.kafka.settings()
    assert settings.bootstrap == BOOTSTRAP
    assert settings.security_protocol == "SASL_SSL" and settings.sasl_mechanism == "SCRAM-SHA-512"
    assert settings.ssl_cafile == str(ca) and settings.ssl_check_hostname is False
    assert settings.sasl_username == "streamfit" and settings.sasl_password == "s3cret-value"


def _validate_cli(tmp_path: Path, streams: Path) -> subprocess.CompletedProcess:
    """`dagster definitions validate` on the repo's workspace.yaml, as a deployment would check it."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in SECURITY_ENV} | {
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(ROOT),
        "STREAMFIT_STREAMS": str(streams),
        BOOTSTRAP_ENV: BOOTSTRAP,
    }
    command = [DAGSTER, "definitions", "validate", "-w", str(ROOT / "workspace.yaml")]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    result = _validate_cli(tmp_path, STREAMS_DIR)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Validation successful for code location streamfit" in output


def test_dagster_cli_names_the_broken_spec_file_and_loads_the_others(tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    for path in STREAMS_DIR.glob("*.yaml"):
        (streams / path.name).write_text(path.read_text())
    broken = streams / "broken.yaml"
    broken.write_text(
        "name: broken\nfeatures: [{name: a}]\nlabel: {classes: [0, 1]}\nmodel: {estimator: sgd_regressor}\n"
    )

    result = _validate_cli(tmp_path, streams)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output  # the shipped streams still load and train
    assert f"{broken} does not load (its stream does not train): invalid stream spec {broken}" in output
    assert "'sgd_regressor' is a regressor but task is classification" in output
