"""docker-compose.yaml agrees with the project (no Docker engine runs here, so nothing is started).

Checked against the code and the installed tools, not against a copy of the compose file: every
command is a real entry point with real options (the `streamfit` click tree, the venv's dagster
CLIs, Debian's prometheus), every environment variable a Streamfit container sets is read by the
code or by the instance config it loads, ports agree between commands, mappings, the Prometheus
targets, the Grafana datasource and the Dagster workspace, every mounted file exists and parses,
`promtool` accepts the Prometheus config and the dashboard's PromQL, the dashboard only queries
metric names the exporter and the scorer export, every image is pinned, and the MLflow service is the
MLflow the tests run, on its own database in the postgres service, where the Streamfit services look.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

from dagster_project.cli import main as streamfit_cli
from dagster_project.instance import postgres_instance_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
VENV_BIN = Path(sys.executable).parent
SOURCE_PACKAGES = ("dagster_project", "assets", "sensors", "monitors")
REQUIRE_PROMETHEUS_ENV = "STREAMFIT_REQUIRE_PROMETHEUS"

# Third-party images read their own variables; these are the ones this stack may set, each mapped to
# what it configures, so a typo (KAFKA_LISTENER instead of KAFKA_LISTENERS) fails here, not at 3 am.
KAFKA_ENV_EXTRA = {"CLUSTER_ID"}  # apache/kafka: the KRaft cluster id the image formats storage with
KAFKA_BROKER_PROPERTIES = {  # KAFKA_<PROPERTY> -> <property> in the Kafka 4.x broker configuration reference
    "node.id",
    "process.roles",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "controller.listener.names",
    "controller.quorum.voters",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "default.replication.factor",
    "min.insync.replicas",
    "group.initial.rebalance.delay.ms",
    "num.partitions",
    "log.dirs",
    "log.retention.hours",
    "auto.create.topics.enable",
}
POSTGRES_IMAGE_ENV = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA", "POSTGRES_INITDB_ARGS"}
POSTGRES_CLIENT_ENV = {"PGPASSWORD"}  # libpq: the one-shot psql that creates MLflow's database
MLFLOW_IMAGE = "ghcr.io/mlflow/mlflow"
GRAFANA_ENV = {  # GF_<SECTION>_<KEY> -> [section] key in grafana.ini
    "GF_SECURITY_ADMIN_USER",
    "GF_SECURITY_ADMIN_PASSWORD",
    "GF_USERS_ALLOW_SIGN_UP",
    "GF_AUTH_ANONYMOUS_ENABLED",
    "GF_AUTH_ANONYMOUS_ORG_ROLE",
    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
    "GF_SERVER_HTTP_PORT",
    "GF_SERVER_ROOT_URL",
}
NON_STREAMFIT_METRICS = {"up"}  # Prometheus' own per-target series, allowed in the dashboard


# --------------------------------------------------------------------------- loading


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


@cache
def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@cache
def pyproject_dagster() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]


def own_image() -> str:
    return f"streamfit:{project_version()}"


def is_own(service: dict[str, Any]) -> bool:
    return service.get("image") == own_image()


def own_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if is_own(s)}


def image_repo(service: dict[str, Any]) -> str:
    return service["image"].rsplit(":", 1)[0]


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def env(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(k): "" if v is None else str(v) for k, v in raw.items()}


def option(args: list[str], *names: str) -> str | None:
    """The value of an option given as `-p 4000`, `--port 4000` or `--port=4000`."""
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, is_bind) for every short-syntax volume entry."""
    found = []
    for entry in service.get("volumes", []):
        assert isinstance(entry, str), f"use the short volume syntax (src:dst[:mode]); got {entry!r}"
        source, target = entry.split(":")[:2]
        found.append((source, target, source.startswith((".", "/", "~"))))
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file bind-mounted at `container_path`, if any."""
    for source, target, is_bind in mounts(service):
        if is_bind and (container_path == target or container_path.startswith(target.rstrip("/") + "/")):
            return (ROOT / source).resolve() / PurePosixPath(container_path).relative_to(target)
    return None


@cache
def dockerfile() -> dict[str, Any]:
    """FROM images, WORKDIR, ENV and COPY (sources, destination) of the Dockerfile."""
    lines = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    parsed: dict[str, Any] = {"from": [], "workdir": "/", "env": {}, "copy": []}
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        keyword, rest = words[0].upper(), words[1:]
        if keyword == "FROM":
            parsed["from"].append(rest[0])
        elif keyword == "WORKDIR":
            parsed["workdir"] = rest[0]
        elif keyword == "ENV":
            parsed["env"].update(w.split("=", 1) for w in rest if "=" in w)
        elif keyword == "COPY":
            paths = [w for w in rest if not w.startswith("--")]
            destination = paths[-1]
            if not destination.startswith("/"):
                destination = str(PurePosixPath(parsed["workdir"]) / destination)
            parsed["copy"].append((paths[:-1], destination))
    return parsed


def container_path(path: str) -> str:
    return path if path.startswith("/") else str(PurePosixPath(dockerfile()["workdir"]) / path)


def file_in_container(service: dict[str, Any], path: str) -> Path | None:
    """The repository file that `path` is inside the container: bind-mounted, else copied by the Dockerfile."""
    path = container_path(path)
    mounted = host_path(service, path)
    if mounted is not None:
        return mounted
    if is_own(service):
        for sources, destination in dockerfile()["copy"]:
            if destination == path and len(sources) == 1:
                return ROOT / sources[0]
    return None


# --------------------------------------------------------------------------- what the code offers


def streamfit_context(args: list[str]) -> click.Context:
    """Parse `streamfit <args>` with the real click tree: unknown commands or options raise."""
    command: click.Command = streamfit_cli
    path = ["streamfit"]
    args = list(args)
    while isinstance(command, click.Group):
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name = args.pop(0)
        sub = command.get_command(click.Context(command), name)
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {name!r}: {sorted(command.list_commands(None))}"
        command, path = sub, [*path, name]
    return command.make_context(" ".join(path), args)


@cache
def cli_help(*command: str) -> str:
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"`{' '.join(command)} --help` failed: {result.stderr[-2000:]}"
    return result.stdout


def cli_invocation(executable: str, args: list[str]) -> tuple[str, ...]:
    """The installed executable and its subcommand words (the arguments before the first option)."""
    path = VENV_BIN / executable if (VENV_BIN / executable).exists() else shutil.which(executable)
    assert path, f"{executable} is not installed (looked in {VENV_BIN} and PATH)"
    words = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return (str(path), *words)


def prefetch_help(invocations: list[tuple[str, ...]]) -> None:
    """Run the --help calls side by side (each dagster CLI start costs seconds of imports)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda invocation: cli_help(*invocation), set(invocations)))


def check_cli_options(executable: str, args: list[str]) -> None:
    """`executable` exists; its subcommands (leading words) exist; every option used is in its --help."""
    invocation = cli_invocation(executable, args)
    words = list(invocation[1:])
    text = cli_help(*invocation)
    for arg in args[len(words) :]:
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"`{executable} {' '.join(words)}` has no option {flag}"
            )


def check_command(service_name: str, args: list[str]) -> None:
    assert args, f"{service_name}: no command"
    if args[0] == "streamfit":
        try:
            streamfit_context(args[1:])
        except click.ClickException as exc:
            pytest.fail(f"{service_name}: `{' '.join(args)}` is not a valid streamfit command: {exc.format_message()}")
    elif args[0].startswith("dagster"):
        check_cli_options(args[0], args[1:])
    else:
        pytest.fail(f"{service_name}: {args[0]!r} is not a Streamfit or Dagster entry point")


def listen_ports(service: dict[str, Any]) -> set[int]:
    """The ports the service's process listens on, from its command or its image's documented default."""
    args = argv(service)
    if is_own(service):
        if args and args[0] == "streamfit":
            port = streamfit_context(args[1:]).params.get("port")
            return {int(port)} if port else set()
        if args[:3] == ["dagster", "code-server", "start"] or args[:3] == ["dagster", "api", "grpc"]:
            return {int(option(args, "-p", "--port"))}
        if args and args[0] == "dagster-webserver":
            return {int(option(args, "-p", "--port") or 3000)}
        return set()
    repo = image_repo(service)
    variables = env(service)
    if repo == "apache/kafka":
        return {int(listener.rsplit(":", 1)[1]) for listener in variables["KAFKA_LISTENERS"].split(",")}
    if repo == "postgres":
        return {5432}
    if repo == "prom/prometheus":
        address = option(args, "--web.listen-address") or ":9090"
        return {int(address.rsplit(":", 1)[1])}
    if repo == "grafana/grafana":
        return {int(variables.get("GF_SERVER_HTTP_PORT", 3000))}
    if repo == MLFLOW_IMAGE:
        if args[:2] != ["mlflow", "server"]:
            return set()
        return {int(option(args, "-p", "--port") or 5000)}
    raise AssertionError(f"no port rule for image {service['image']}")


def container_ports(entries: list[Any]) -> set[int]:
    ports = set()
    for entry in entries:
        text = str(entry).split("/")[0]
        ports.add(int(text.rsplit(":", 1)[-1]))
    return ports


@cache
def project_env_names() -> frozenset[str]:
    """STREAMFIT_* (and MLFLOW_*) names the code reads: string literals in the project's packages."""
    names = set()
    for package in SOURCE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            names.update(re.findall(r"""["']((?:STREAMFIT|MLFLOW)_[A-Z0-9_]+)["']""", path.read_text()))
    return frozenset(names)


@cache
def mlflow_reads(name: str) -> bool:
    """Whether the installed mlflow package (the version the tests run) mentions the variable as a string literal."""
    import mlflow

    needle = f'"{name}"'
    return any(needle in path.read_text(errors="ignore") for path in Path(mlflow.__file__).parent.rglob("*.py"))


def instance_env_names(config: Any) -> set[str]:
    """Every `env:` entry in a Dagster instance config."""
    if isinstance(config, dict):
        if set(config) == {"env"}:
            return {config["env"]}
        return set().union(*(instance_env_names(v) for v in config.values())) if config else set()
    if isinstance(config, list):
        return set().union(*(instance_env_names(v) for v in config)) if config else set()
    return set()


@cache
def dagster_reads(name: str) -> bool:
    """Whether the installed dagster package mentions the variable as a string literal."""
    import dagster

    needle = f'"{name}"'
    return any(needle in path.read_text(errors="ignore") for path in Path(dagster.__file__).parent.rglob("*.py"))


SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
}


@cache
def declared_metric_families() -> dict[str, str]:
    """streamfit_* metric families declared anywhere in the code: name -> type (grep-based).

    Static, because some collectors only yield a family once there is data (the label joiner's).
    """
    found = {}
    pattern = re.compile(r"""\b(Counter|Gauge|Summary|Histogram)(?:MetricFamily)?\(\s*["'](streamfit_\w+)["']""")
    for package in SOURCE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for kind, name in pattern.findall(path.read_text()):
                found[name] = kind.lower()
    return found


def exported_metric_names() -> set[str]:
    """Sample names the code exposes (counters get _total, histograms _bucket, and so on)."""
    return {name + suffix for name, kind in declared_metric_families().items() for suffix in SAMPLE_SUFFIXES[kind]}


def served_metric_families() -> dict[str, str]:
    """Families a scorer and the training exporter serve right away, collected from the real registries."""
    import tempfile

    import dagster_project.kafka.io as kafka_io
    from dagster_project.kafka.settings import KafkaSettings
    from dagster_project.observability.exporter import exporter_registry
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.serving.metrics import ScorerMetrics
    from tests.conftest import synthetic_spec

    def unreachable(*_: object, **__: object):
        raise kafka_io.BrokerUnavailable("no broker in this test")

    families = list(ScorerMetrics("s").registry.collect())
    original = kafka_io.probe_partitions
    kafka_io.probe_partitions = unreachable  # the lag families are still yielded, without a broker
    try:
        with tempfile.TemporaryDirectory() as tmp:
            exporter = exporter_registry(
                FilesystemRegistry(tmp), [synthetic_spec()], KafkaSettings(bootstrap="127.0.0.1:9")
            )
            families += list(exporter.collect())
    finally:
        kafka_io.probe_partitions = original
    return {family.name: family.type for family in families}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query."""
    queries = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", text or "")
        if match:
            queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def promtool() -> str | None:
    found = shutil.which("promtool")
    if not found:
        message = "promtool not installed (Debian package `prometheus`: apt-get install -y prometheus)"
        if os.environ.get(REQUIRE_PROMETHEUS_ENV):
            pytest.fail(f"{message}; {REQUIRE_PROMETHEUS_ENV} is set")
        pytest.skip(message)
    return found


# --------------------------------------------------------------------------- tests


def test_images_are_pinned():
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name}: no image (give built services an image name too, so the tag is explicit)"
        assert ":" in image.rsplit("/", 1)[-1], f"{name}: image {image} has no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag and tag != "latest", f"{name}: image {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} of {image} is not a version"
        if "build" in service:
            assert image == own_image(), f"{name}: built image should be {own_image()} (pyproject version)"
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            assert (ROOT / context / "Dockerfile").is_file()
    for base in dockerfile()["from"]:
        tag = base.split("@")[0].rsplit(":", 1)
        assert len(tag) == 2 and tag[1] != "latest" and re.search(r"\d+\.\d+", tag[1]), f"Dockerfile FROM {base}"


def test_dockerfile_copies_what_exists_and_runs_non_root():
    for sources, _ in dockerfile()["copy"]:
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M), "the image should not run as root"
    env_names = set(dockerfile()["env"])
    for name in env_names - {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK", "DAGSTER_HOME"}:
        assert name in project_env_names(), f"Dockerfile sets {name}, which the code never reads"


def test_every_command_is_a_real_entry_point():
    commands = [argv(s) for s in own_services().values()]
    commands += [s["healthcheck"]["test"][1:] for s in own_services().values() if s.get("healthcheck", {}).get("test")]
    prefetch_help([cli_invocation(c[0], c[1:]) for c in commands if c and c[0].startswith("dagster")])
    for name, service in own_services().items():
        check_command(name, argv(service))
        test = service.get("healthcheck", {}).get("test", [])
        if test and test[0] == "CMD":
            check_command(f"{name} healthcheck", test[1:])
    streamfit_commands = {argv(s)[1] for s in own_services().values() if argv(s)[0] == "streamfit"}
    assert {"serve", "exporter", "produce", "code-server"} <= streamfit_commands
    assert argv(services()["init"]) == ["streamfit", "instance", "migrate"]  # migrate + run-retry cursors
    dagster_commands = {" ".join(argv(s)[:3]) for s in own_services().values() if argv(s)[0].startswith("dagster")}
    assert any(c.startswith("dagster-webserver") for c in dagster_commands)
    assert any(c.startswith("dagster-daemon run") for c in dagster_commands)
    for name, service in services().items():  # the MLflow server's options, against the MLflow the tests run
        if image_repo(service) == MLFLOW_IMAGE:
            args = argv(service)
            assert args[:2] == ["mlflow", "server"], f"{name}: {args}"
            check_cli_options("mlflow", args[1:])
    prometheus = services()["prometheus"]
    if shutil.which("prometheus"):  # Debian's prometheus 2.42; the flags used exist in every 2.x since
        text = cli_help(shutil.which("prometheus"))
        for flag in argv(prometheus):
            assert flag.split("=", 1)[0] in text, f"prometheus has no flag {flag}"


def test_specs_are_checked_before_the_code_location_loads_them():
    """A broken spec stops `up` in spec-check, naming the file, instead of failing every stream's load."""
    check, server = services()["spec-check"], services()["code-server"]
    # default: $STREAMFIT_STREAMS, the code server's specs; an edit since a stream's versions halts
    # only that stream, so it must not keep every stream from starting here
    assert argv(check) == ["streamfit", "check", "--no-registry"]
    assert env(check)["STREAMFIT_STREAMS"] == env(server)["STREAMFIT_STREAMS"]
    assert check["image"] == server["image"] and check["restart"] == "no"
    assert server["depends_on"]["spec-check"] == {"condition": "service_completed_successfully"}


def test_code_location_module_and_name_match_the_project():
    server = services()["code-server"]
    args = argv(server)
    assert option(args, "-m", "--module-name") == pyproject_dagster()["module_name"]
    assert option(args, "--location-name") == pyproject_dagster()["code_location_name"]


def test_environment_variables_are_ones_the_code_reads():
    instance_config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    instance_names = instance_env_names(instance_config)
    assert instance_names, "deploy/dagster.yaml should take its connection settings from env: entries"
    for name, service in services().items():
        variables = env(service)
        if is_own(service):
            for variable in variables:
                if variable.startswith(("STREAMFIT_", "MLFLOW_")):
                    assert variable in project_env_names(), f"{name} sets {variable}; no code reads it"
                elif variable in instance_names:
                    pass  # read by the instance config the service loads (checked below)
                else:
                    assert variable.startswith("DAGSTER_") and dagster_reads(variable), (
                        f"{name} sets {variable}, which neither Streamfit nor Dagster reads"
                    )
            args = argv(service)
            assert "STREAMFIT_KAFKA_BOOTSTRAP" in variables and "STREAMFIT_HOME" in variables, name
            # Services that load the instance: Dagster's own, the code server (`dagster api grpc`) and init.
            if args[0].startswith("dagster") or args[:2] in (["streamfit", "code-server"], ["streamfit", "instance"]):
                missing = (instance_names | {"DAGSTER_HOME"}) - set(variables)
                assert not missing, f"{name} runs Dagster but does not set {sorted(missing)}"
                config = file_in_container(service, f"{variables['DAGSTER_HOME']}/dagster.yaml")
                assert config == (DEPLOY / "dagster.yaml").resolve(), f"{name}: DAGSTER_HOME has no deploy/dagster.yaml"
            else:
                assert not set(variables) & instance_names, f"{name} gets Postgres credentials it does not need"
        elif image_repo(service) == "apache/kafka":
            for variable in variables:
                prop = variable.removeprefix("KAFKA_").lower().replace("_", ".")
                assert variable in KAFKA_ENV_EXTRA or prop in KAFKA_BROKER_PROPERTIES, f"kafka: unknown {variable}"
        elif image_repo(service) == "postgres":
            known = POSTGRES_IMAGE_ENV | POSTGRES_CLIENT_ENV
            assert set(variables) <= known, f"{name}: unknown {set(variables) - known}"
        elif image_repo(service) == MLFLOW_IMAGE:
            for variable in variables:
                assert variable.startswith("MLFLOW_") and mlflow_reads(variable), (
                    f"{name}: mlflow never reads {variable}"
                )
        elif image_repo(service) == "grafana/grafana":
            assert set(variables) <= GRAFANA_ENV, f"grafana: unknown {set(variables) - GRAFANA_ENV}"
        else:
            assert not variables, f"{name}: no rule for the environment of {service['image']}"


def test_kafka_cluster_id_is_a_base64_uuid():
    import base64

    cluster_id = env(services()["kafka"])["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64url-encoded UUID"


def test_dagster_yaml_is_the_code_postgres_instance():
    shipped = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    assert shipped == postgres_instance_config(), "regenerate deploy/dagster.yaml from postgres_instance_config()"
    limits = shipped["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert {"key": "streamfit/stream", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert shipped["run_retries"]["enabled"] and shipped["run_retries"]["max_retries"] >= 1
    assert "postgres" in shipped["storage"]
    text = (DEPLOY / "dagster.yaml").read_text()
    assert "password: change" not in text and not re.search(r"password:\s+\S+\s*$", text, re.M)


def test_ports_agree_with_the_commands():
    all_services = services()
    for name, service in all_services.items():
        ports = listen_ports(service)
        published = container_ports(service.get("ports", []))
        exposed = container_ports(service.get("expose", []))
        assert published <= ports, f"{name} publishes {published - ports}, but listens on {ports}"
        assert exposed <= ports, f"{name} exposes {exposed - ports}, but listens on {ports}"

    # Kafka: containers use the PLAINTEXT listener, the host the EXTERNAL one (published 1:1).
    kafka = env(all_services["kafka"])
    advertised = dict(a.split("://", 1) for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(a.split("://", 1) for a in kafka["KAFKA_LISTENERS"].split(","))
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    for listener, address in advertised.items():
        assert listener in listeners and address.rsplit(":", 1)[1] == listeners[listener].rsplit(":", 1)[1]
    external = [a for a in advertised.values() if a.startswith("localhost:")]
    assert external, "Kafka should advertise a host-reachable listener (localhost:PORT) for running tests"
    host_port = external[0].rsplit(":", 1)[1]
    assert f"{host_port}:{host_port}" in [str(p) for p in all_services["kafka"].get("ports", [])]
    for name, service in own_services().items():
        bootstrap = env(service)["STREAMFIT_KAFKA_BOOTSTRAP"]
        assert bootstrap in advertised.values(), f"{name}: {bootstrap} is not an advertised Kafka listener"
        assert bootstrap.split(":")[0] in all_services

    # Dagster: Postgres credentials agree with the postgres service; the workspace names the code server.
    pg = env(all_services["postgres"])
    for name, service in own_services().items():
        variables = env(service)
        if "DAGSTER_PG_HOST" in variables:
            assert variables["DAGSTER_PG_HOST"] in all_services
            assert int(variables["DAGSTER_PG_PORT"]) in listen_ports(all_services[variables["DAGSTER_PG_HOST"]])
            assert variables["DAGSTER_PG_USERNAME"] == pg["POSTGRES_USER"]
            assert variables["DAGSTER_PG_PASSWORD"] == pg["POSTGRES_PASSWORD"]
            assert variables["DAGSTER_PG_DB"] == pg["POSTGRES_DB"]
        args = argv(service)
        workspace = option(args, "-w", "--workspace")
        if workspace:
            path = file_in_container(service, workspace)
            assert path and path.is_file(), f"{name}: workspace {workspace} is neither mounted nor in the image"
            for entry in yaml.safe_load(path.read_text())["load_from"]:
                grpc = entry["grpc_server"]
                server = all_services[grpc["host"]]
                assert int(grpc["port"]) in listen_ports(server), f"{name}: workspace port {grpc['port']}"
                assert grpc["location_name"] == option(argv(server), "--location-name")
    server = all_services["code-server"]
    health = server["healthcheck"]["test"]
    assert int(option(health, "-p", "--port")) in listen_ports(server)

    # Scorers scale: no fixed name, no host port, so `--scale scorer=3` starts three.
    scorer = all_services["scorer"]
    assert "container_name" not in scorer and not scorer.get("ports"), "scorer must be scalable"

    # Prometheus scrapes what listens; Grafana reads that Prometheus.
    prometheus_file = file_in_container(all_services["prometheus"], "/etc/prometheus/prometheus.yml")
    prometheus_config = yaml.safe_load(prometheus_file.read_text())
    scraped = {}
    for job in prometheus_config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[job["job_name"]] = host
                if host != "localhost":
                    assert int(port) in listen_ports(all_services[host]), f"{job['job_name']}: {target}"
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                scraped[job["job_name"]] = host
                assert int(dns["port"]) in listen_ports(all_services[host]), f"{job['job_name']}: {host}:{dns['port']}"
    assert {"exporter", "scorer"} <= set(scraped.values())
    scorer_job = next(j for j in prometheus_config["scrape_configs"] if scraped.get(j["job_name"]) == "scorer")
    assert scorer_job.get("dns_sd_configs"), "scale-out scorers need DNS service discovery, not a static target"
    grafana = all_services["grafana"]
    datasources = file_in_container(grafana, "/etc/grafana/provisioning/datasources")
    urls = [d["url"] for f in sorted(datasources.glob("*.y*ml")) for d in yaml.safe_load(f.read_text())["datasources"]]
    assert urls, "Grafana has no provisioned datasource"
    for url in urls:
        host, port = url.split("://", 1)[1].rstrip("/").rsplit(":", 1)
        assert int(port) in listen_ports(all_services[host]), url


def test_registry_volume_is_shared():
    """STREAMFIT_HOME and Dagster's storage live on one named volume in every process that uses them."""
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for source, _, is_bind in mounts(service):
            if not is_bind:
                assert source in declared, f"{name}: volume {source} is not declared"

    def volume_of(service: dict[str, Any], path: str) -> str | None:
        best = None
        for source, target, is_bind in mounts(service):
            if not is_bind and (path == target or path.startswith(target.rstrip("/") + "/")):
                best = source
        return best

    users = ["code-server", "dagster-daemon", "dagster-webserver", "scorer", "exporter", "label-joiner"]
    homes = {volume_of(services()[n], env(services()[n])["STREAMFIT_HOME"]) for n in users}
    assert len(homes) == 1 and None not in homes, f"STREAMFIT_HOME is not on one shared volume: {homes}"
    for variable in ("DAGSTER_STORAGE_DIR", "DAGSTER_COMPUTE_LOGS_DIR"):
        volumes = {volume_of(services()[n], env(services()[n])[variable]) for n in users[:3]}
        assert volumes == homes, f"{variable} must be on the shared volume in the code server, daemon and webserver"


def test_mounted_files_exist_and_parse():
    checked = 0
    for name, service in services().items():
        for source, _, is_bind in mounts(service):
            if not is_bind:
                continue
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name} mounts {source}, which does not exist"
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            assert files, f"{name} mounts an empty directory {source}"
            for file in files:
                if file.suffix in (".yaml", ".yml"):
                    assert yaml.safe_load(file.read_text()) is not None, file
                elif file.suffix == ".json":
                    json.loads(file.read_text())
                else:
                    pytest.fail(f"{name} mounts {file}, which this test cannot parse")
                checked += 1
    assert checked >= 5


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    grafana = services()["grafana"]
    providers_dir = file_in_container(grafana, "/etc/grafana/provisioning/dashboards")
    providers = [p for f in sorted(providers_dir.glob("*.y*ml")) for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers
    for provider in providers:
        dashboards = file_in_container(grafana, provider["options"]["path"])
        assert dashboards and list(dashboards.glob("*.json")), f"provider {provider['name']} finds no dashboard"
    home = env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert file_in_container(grafana, home).is_file()


def test_promtool_accepts_the_prometheus_config():
    binary = promtool()
    result = subprocess.run(
        [binary, "check", "config", str(DEPLOY / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "streamfit.json").read_text())


def test_declared_metric_families_match_what_is_served():
    """The grep finds every family the scorer and the exporter really serve, with the right type."""
    served = served_metric_families()
    declared = declared_metric_families()
    assert served, "no metrics collected"
    for name, kind in served.items():
        assert declared.get(name) == kind, f"{name} ({kind}) is served, but the grep found {declared.get(name)}"


def test_dashboard_queries_only_exported_metrics():
    exported = exported_metric_names()
    assert "streamfit_batches_total" in exported and "streamfit_inference_latency_seconds_bucket" in exported
    queries = dashboard_queries(dashboard())
    used = set()
    for where, expr in queries:
        names = set(re.findall(r"\bstreamfit_\w+", expr))
        # Every selector is written `name{...}`, so this also catches a non-streamfit metric.
        selectors = set(re.findall(r"([A-Za-z_:][\w:]*)\{", expr))
        assert names | (selectors & NON_STREAMFIT_METRICS), f"{where}: {expr} queries no known metric"
        unknown = (names | selectors) - exported - NON_STREAMFIT_METRICS
        assert not unknown, f"panel {where!r} queries {sorted(unknown)}, which no Streamfit code exports"
        used |= names
    key = {
        "streamfit_batches_total",
        "streamfit_lag_rows",
        "streamfit_prequential_metric",
        "streamfit_model_version",
        "streamfit_predictions_total",
        "streamfit_inference_latency_seconds_bucket",
        "streamfit_scorer_lag",
        "streamfit_dlq_messages_total",
        "streamfit_live_accuracy",
        "streamfit_served_prequential_metric",
        "streamfit_adaptive_serving_passes",
        "streamfit_serving_fallback",
        "streamfit_registry_up",
        "streamfit_unseen_categories_total",
        "streamfit_feature_keys_evicted_total",
    }
    assert key <= used, f"the dashboard misses key metrics {sorted(key - used)}"


def test_dashboard_panels_fit_the_grid_without_overlapping():
    """Grafana's grid is 24 columns wide; overlapping panels are pushed down in an order the file does not say."""
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), f"panel ids repeat: {sorted(ids)}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{panel['title']}: {pos}"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r} at column {x}, row {y}"
                cells[(x, y)] = panel["title"]


def test_dashboard_uses_the_provisioned_datasource():
    datasources = DEPLOY / "grafana" / "provisioning" / "datasources"
    uids = {d["uid"] for f in datasources.glob("*.y*ml") for d in yaml.safe_load(f.read_text())["datasources"]}

    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard()["panels"]):
        if panel.get("type") == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] in uids, panel["title"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path):
    """PromQL syntax, checked by promtool as recording rules (Grafana's variables filled in)."""
    binary = promtool()
    rules = []
    for i, (_, expr) in enumerate(dashboard_queries(dashboard())):
        concrete = expr.replace("$__rate_interval", "1m").replace("$__range", "1h").replace("$stream", ".*")
        assert "$" not in concrete, f"unhandled Grafana variable in {expr}"
        rules.append({"record": f"streamfit:dashboard_query_{i}", "expr": concrete})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_kafka_is_the_broker_the_suite_runs_with_the_same_settings():
    """The Apache Kafka users run in compose and the one the tests prove the product on must agree."""
    from dagster_project.kafka.brokers.apache import (
        GROUP_INITIAL_REBALANCE_DELAY_MS,
        KAFKA_VERSION,
        durability_config,
    )

    kafka = services()["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    variables = env(kafka)
    expected = durability_config(1) | {"group.initial.rebalance.delay.ms": GROUP_INITIAL_REBALANCE_DELAY_MS}
    for prop, value in expected.items():
        assert str(variables["KAFKA_" + prop.upper().replace(".", "_")]) == value, prop


def test_mlflow_is_the_tested_version_on_its_own_database_where_streamfit_looks():
    """The MLflow service runs the MLflow the suite tests against, keeps its metadata in a database of its
    own in the postgres service (created by a one-shot service), and is where the Streamfit services'
    MLFLOW_TRACKING_URI points; STREAMFIT_REGISTRY defaults to a backend the code knows."""
    import mlflow

    from dagster_project.registry.backends import BACKENDS

    all_services = services()
    mlflow_services = {n: s for n, s in all_services.items() if image_repo(s) == MLFLOW_IMAGE}
    assert list(mlflow_services) == ["mlflow"]
    server = all_services["mlflow"]
    assert server["image"] == f"{MLFLOW_IMAGE}:v{mlflow.__version__}-full"

    uri = env(server)["MLFLOW_BACKEND_STORE_URI"]
    match = re.fullmatch(r"postgresql\+psycopg2://([^:]+):(.+)@([^:/]+):(\d+)/(\w+)", uri)
    assert match, f"the backend store should be Postgres through psycopg2: {uri}"
    user, password, host, port, database = match.groups()
    pg = env(all_services[host])
    assert (user, password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert int(port) in listen_ports(all_services[host])
    assert database != pg["POSTGRES_DB"], "MLflow gets its own database, not Dagster's"
    creators = [
        n
        for n, s in all_services.items()
        if image_repo(s) == "postgres" and f"CREATE DATABASE {database}" in " ".join(argv(s))
    ]
    assert creators, f"no service creates the {database} database"
    for creator in creators:
        assert env(all_services[creator])["PGPASSWORD"] == pg["POSTGRES_PASSWORD"]
        assert f"-h {host} -U {user}" in " ".join(argv(all_services[creator]))
    assert server["depends_on"][creators[0]] == {"condition": "service_completed_successfully"}

    artifacts = option(argv(server), "--artifacts-destination")
    assert artifacts and any(target == artifacts and not bind for _, target, bind in mounts(server)), artifacts
    allowed = option(argv(server), "--allowed-hosts").split(",")
    port = next(iter(listen_ports(server)))
    for name, service in own_services().items():
        variables = env(service)
        default = re.fullmatch(r"\$\{STREAMFIT_REGISTRY:-(\w+)\}", variables.get("STREAMFIT_REGISTRY", ""))
        assert default and default.group(1) in BACKENDS, (
            f"{name}: STREAMFIT_REGISTRY={variables.get('STREAMFIT_REGISTRY')}"
        )
        tracking = variables["MLFLOW_TRACKING_URI"].removeprefix("http://")
        assert tracking in allowed, f"{name}: the server refuses Host {tracking} (--allowed-hosts {allowed})"
        assert tracking == f"mlflow:{port}", f"{name}: MLFLOW_TRACKING_URI {tracking} is not the mlflow service"
