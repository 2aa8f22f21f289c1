"""Shared fixtures: a real Kafka-protocol broker per session, isolated streams and Dagster homes."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dagster_project.factory import build_stream_definitions
from dagster_project.kafka.brokers.tansu import EmbeddedBroker
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.resources import KafkaResource, RegistryResource
from dagster_project.spec import StreamSpec

os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


BROKER_ENV = "STREAMFIT_TEST_BROKER"
# The one setting the suite's Apache Kafka needs beyond the launcher's defaults: some tests use 2 s
# group sessions to rebalance quickly, below Kafka's default floor of 6 s.
TEST_BROKER_CONFIG = {"group.min.session.timeout.ms": "1000"}
BROKERS = ("tansu", "kafka")
# The daily scheduled full retrain of the test streams, half a day from when the suite started: a
# test with a real daemon never sees it fire. At its shipped 03:00 UTC it fired in CI during the
# Postgres deployment test and registered a retrain as v3, where the test expected a batch.
QUIET_RETRAIN_CRON = f"0 {(datetime.now(UTC).hour + 12) % 24} * * *"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=BROKERS,
        default=os.environ.get(BROKER_ENV, "tansu"),
        help=f"start this broker for the session: the embedded Tansu (default) or Apache Kafka (or set {BROKER_ENV})",
    )
    parser.addoption(
        "--kafka-bootstrap",
        default=None,
        help=f"run against this running broker instead of starting one (or set {BOOTSTRAP_ENV})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "apache_kafka: starts its own Apache Kafka cluster; runs in the --broker kafka session only"
    )
    config.addinivalue_line(
        "markers",
        "one_broker: needs a broker, but its subject is not how Streamfit talks to one (a benchmark's report, the"
        " web UI, the Postgres instance, MLflow): runs once, in the Tansu session; the --broker kafka session skips it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start their own Apache Kafka cluster run once, in the Apache Kafka session; the
    Apache Kafka session runs only the tests that talk to the session's broker (the others, which
    use no broker or start a Tansu of their own, ran in the Tansu session already), except those
    marked `one_broker`: their subject is not the broker, and running them twice only made CI longer."""
    if config.getoption("--broker") == "kafka" and not (
        config.getoption("--kafka-bootstrap") or os.environ.get(BOOTSTRAP_ENV)
    ):
        keep = [
            i
            for i in items
            if ("kafka_bootstrap" in i.fixturenames and not i.get_closest_marker("one_broker"))
            or i.get_closest_marker("apache_kafka")
        ]
        dropped = [i for i in items if i not in keep]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    if os.environ.get("STREAMFIT_SKIP_APACHE_KAFKA") == "1":
        reason = "STREAMFIT_SKIP_APACHE_KAFKA=1"
    elif config.getoption("--broker") != "kafka":
        reason = "starts its own Apache Kafka cluster: runs in the Apache Kafka session (make test-kafka)"
    else:
        return
    for item in items:
        if item.get_closest_marker("apache_kafka"):
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_report_header(config: pytest.Config) -> str:
    external = config.getoption("--kafka-bootstrap") or os.environ.get(BOOTSTRAP_ENV)
    return f"streamfit broker: {external or config.getoption('--broker')}"


@pytest.fixture(scope="session")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """Which broker the session runs on: 'tansu', 'kafka', or 'external' (a bootstrap address was given)."""
    if request.config.getoption("--kafka-bootstrap") or os.environ.get(BOOTSTRAP_ENV):
        return "external"
    return request.config.getoption("--broker")


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest, broker_kind: str, tmp_path_factory: pytest.TempPathFactory):
    if broker_kind == "external":
        yield request.config.getoption("--kafka-bootstrap") or os.environ[BOOTSTRAP_ENV]
        return
    directory = tmp_path_factory.mktemp("broker")
    if broker_kind == "kafka":
        from dagster_project.kafka.brokers.apache import ApacheKafkaCluster, ensure_kafka_jars

        ensure_kafka_jars()
        with ApacheKafkaCluster(
            nodes=1, data_dir=directory / "data", log_dir=directory, broker_config=TEST_BROKER_CONFIG
        ) as cluster:
            yield cluster.bootstrap
        return
    with EmbeddedBroker(log_path=directory / "tansu.log") as broker:
        yield broker.bootstrap


@pytest.fixture
def on_tansu(broker_kind: str) -> bool:
    """Tests that prove a Tansu workaround (or need what only Tansu lacks) branch on this."""
    return broker_kind == "tansu"


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings.from_env(kafka_bootstrap)


@pytest.fixture
def streamfit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "streamfit"
    monkeypatch.setenv("STREAMFIT_HOME", str(home))
    return home


@pytest.fixture
def registry(streamfit_home: Path) -> FilesystemRegistry:
    return FilesystemRegistry(streamfit_home / "registry")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server (SQLite backend store, local artifacts), started on first use and
    stopped by its PID at the end of the session. Tests share it: each uses streams of its own."""
    from dagster_project.dev.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def synthetic_spec(name: str | None = None, **overrides) -> StreamSpec:
    """A small synthetic stream with a unique name, so tests never share topics."""
    raw = {
        "name": name or f"t{uuid.uuid4().hex[:10]}",
        "task": "classification",
        "partitions": 2,
        "features": [{"name": f"x{i}"} for i in range(5)],
        "label": {"classes": [0, 1]},
        "batch": {"rows": 200, "max_rows": 1000, "max_wait_s": 3600, "sensor_interval_s": 5},
        # No promotion tail by default: most tests plan back-to-back ranges by hand. Tests of the
        # gate and of exactly-once across tails turn it on (`promotion={"tail_rows": ...}`).
        "promotion": {"tail_rows": 0},
    }
    raw.update(overrides)
    # Step retries stay on (as in production) but wait a tenth as long, so fault tests stay short.
    raw["batch"] = {"retry_delay_s": 0.1, **raw["batch"]}
    raw["drift"] = {"full_retrain_cron": QUIET_RETRAIN_CRON, **raw.get("drift", {})}
    return StreamSpec.model_validate(raw)


def census_spec(name: str | None = None, **overrides) -> StreamSpec:
    """The shipped census stream (category features) under a unique name, batched like `synthetic_spec`."""
    raw = yaml.safe_load((Path(__file__).resolve().parent.parent / "streams" / "census.yaml").read_text())
    raw |= {
        "name": name or f"c{uuid.uuid4().hex[:10]}",
        "batch": {"rows": 200, "max_rows": 2000, "max_wait_s": 3600, "sensor_interval_s": 5, "retry_delay_s": 0.1},
        "promotion": {"tail_rows": 0},
    }
    raw.update(overrides)
    raw["drift"] = {"full_retrain_cron": QUIET_RETRAIN_CRON, **(raw.get("drift") or {})}
    return StreamSpec.model_validate(raw)


@pytest.fixture
def spec() -> StreamSpec:
    return synthetic_spec()


@pytest.fixture
def specs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: StreamSpec) -> Path:
    directory = tmp_path / "streams"
    directory.mkdir()
    (directory / f"{spec.name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    monkeypatch.setenv("STREAMFIT_STREAMS", str(directory))
    return directory


@pytest.fixture(scope="session")
def empty_dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAGSTER_HOME whose SQLite storages are created and migrated, once per test process: creating
    them took 0.55 s of every test with an instance, opening a copy takes 0.12 s."""
    home = tmp_path_factory.mktemp("empty_dagster_home")
    with dg.instance_for_test(temp_dir=str(home)):
        pass
    return home


@pytest.fixture
def instance(tmp_path: Path, empty_dagster_home: Path):
    """A real Dagster instance with SQLite storage in a temporary DAGSTER_HOME (a copy of an empty one)."""
    home = tmp_path / "dagster_home"
    shutil.copytree(empty_dagster_home, home)
    with dg.instance_for_test(temp_dir=str(home)) as inst:
        yield inst
        _assert_no_instance_left_open(inst)


def _assert_no_instance_left_open(inst: dg.DagsterInstance) -> None:
    """Fail the test that opened an instance and left it open (a schedule or sensor context not
    used as a `with`): the garbage collector closes it later, in whatever test runs then, and puts
    back Dagster's current defs-state storage of an instance that is gone; that test's next
    Definitions load fails with "Attempted to resolve undefined DagsterInstance weakref"."""
    from dagster._core.storage.defs_state.base import DefsStateStorage

    assert DefsStateStorage.get() is inst.defs_state_storage, (
        "this test left a Dagster instance open: use the schedule or sensor context it built as a `with`"
    )


@pytest.fixture
def stream_defs(spec: StreamSpec, kafka_bootstrap: str, registry: FilesystemRegistry) -> dg.Definitions:
    return dg.Definitions.merge(
        build_stream_definitions(spec),
        dg.Definitions(
            resources={
                "kafka": KafkaResource(bootstrap=kafka_bootstrap),
                "registry": RegistryResource(root=str(registry.root)),
            }
        ),
    )


@pytest.fixture(params=["kafka-python", "confluent"])
def scorer_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once per scorer consumer client (the scorer and `streamfit serve` read $STREAMFIT_SCORER_CLIENT)."""
    from dagster_project.serving.consumers import CLIENT_ENV

    monkeypatch.setenv(CLIENT_ENV, request.param)
    return request.param
