"""Apache Kafka itself (the JVM broker), a single node or an N-node KRaft cluster on 127.0.0.1.

Tansu (tansu.py) is the fast default; this is the reference broker, for the tests that need real
replication, leader failover and crash recovery, for benchmarks, and for `streamfit broker --kafka`.

Nothing is downloaded by pip: the pinned broker and its runtime jars are resolved from Maven Central
by Maven (apache_kafka.pom.xml, next to this file) into a cache the first time, then reused.
Every node is a combined broker+controller with a static quorum (controller.quorum.voters), so a
cluster needs no bootstrap dance: format each node's log dir with kafka.tools.StorageTool, then
start `java -cp '<libs>/*' kafka.Kafka server.properties` per node.

By default every node has one client listener, PLAINTEXT. With `security=ClusterSecurity(...)` it also
gets native TLS (`SSL`) and `SASL_SSL` (SCRAM) listeners from a PEM key pair, and ACLs are enforced
(StandardAuthorizer); PLAINTEXT and CONTROLLER stay plaintext on loopback as the admin's way in.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KAFKA_VERSION = "4.3.2"  # must equal <kafka.version> in apache_kafka.pom.xml (a test checks)
# No wait before the first rebalance of a new group: scorers and joiners start consuming at once.
# docker-compose.yaml sets the same (a test compares them).
GROUP_INITIAL_REBALANCE_DELAY_MS = "0"


def durability_config(nodes: int) -> dict[str, str]:
    """Replication and ISR settings for a cluster of `nodes`: 3 copies and acks=all needing 2 when it can.

    docker-compose.yaml's single node uses the 1-node values (a test compares them).
    """
    return {
        "default.replication.factor": str(min(3, nodes)),
        "min.insync.replicas": "2" if nodes >= 3 else "1",
        "offsets.topic.replication.factor": str(min(3, nodes)),
        "transaction.state.log.replication.factor": str(min(3, nodes)),
        "transaction.state.log.min.isr": str(min(2, nodes)),
    }


POM_PATH = Path(__file__).with_name("apache_kafka.pom.xml")
MIN_JAVA = 17  # Kafka 4.x brokers need Java 17+
JAVA_HINT = "apt-get install openjdk-17-jre-headless"
MAVEN_HINT = "apt-get install maven"

# Small heap for 2-core test machines. Serial GC and C1-only JIT (TieredStopAtLevel=1) roughly halve
# start-up CPU against Kafka's G1 + C2 defaults; replace with STREAMFIT_KAFKA_JVM_OPTS for benchmarks
# that care about peak broker throughput, e.g. "-Xms1g -Xmx1g -XX:+UseG1GC".
DEFAULT_JVM_OPTS = ("-Xms256m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")

# Console output goes to the node's log file (the process's stdout), one file per node. The root level
# is a system property so that the StorageTool runs can be quiet.
LOG4J2_PROPERTIES = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:streamfit.kafka.log.level:-INFO}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def default_cache_dir() -> Path:
    """$STREAMFIT_KAFKA_CACHE, else a per-version directory under ~/.cache/streamfit."""
    env = os.environ.get("STREAMFIT_KAFKA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "streamfit" / f"kafka-{KAFKA_VERSION}"


def find_java() -> str:
    """The `java` on PATH, checked to be Java 17+; one-line RuntimeError with the install hint otherwise."""
    java = shutil.which("java")
    if not java:
        raise RuntimeError(f"Apache Kafka needs Java {MIN_JAVA}+ (no java on PATH): {JAVA_HINT}")
    major = _java_major(java)
    if major < MIN_JAVA:
        raise RuntimeError(f"Apache Kafka needs Java {MIN_JAVA}+, {java} is Java {major}: {JAVA_HINT}")
    return java


@functools.cache
def _java_major(java: str) -> int:
    """Major version from `java -version` ("1.8.0_292" -> 8, "17.0.15" -> 17); cached, it costs a JVM start."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not found:
        raise RuntimeError(f"could not read the Java version from `{java} -version`: {out.strip()[:200]}")
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


@functools.cache
def _java_fingerprint(java: str) -> str:
    """Short hash of `java -version`: a class-data archive is only valid for the JVM build that wrote it."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    return hashlib.sha256(f"{os.path.realpath(java)}\n{out}".encode()).hexdigest()[:12]


def _pom_digest() -> str:
    return hashlib.sha256(POM_PATH.read_bytes()).hexdigest()


def ensure_kafka_jars(cache_dir: Path | None = None, progress: Callable[[str], Any] = print) -> Path:
    """The directory of the broker's runtime jars, resolved by Maven into the cache on first use.

    Idempotent: a marker holding the POM's hash is written after a complete download, so later calls
    only check it (and Java). A changed POM (another Kafka version) re-resolves. Concurrent callers
    serialise on a lock file rather than downloading twice.
    """
    find_java()
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    libs, marker = cache / "libs", cache / "complete"
    digest = _pom_digest()
    if marker.is_file() and marker.read_text().strip() == digest and libs.is_dir():
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise RuntimeError(f"Apache Kafka needs Maven to fetch its jars (no mvn on PATH): {MAVEN_HINT}")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if marker.is_file() and marker.read_text().strip() == digest and libs.is_dir():
            return libs  # another process finished it while we waited
        progress(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {cache} (first use only, ~45 MB)")
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=cache))
        command = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(POM_PATH), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=cache, stdin=subprocess.DEVNULL)
        jars = sorted(staging.glob("*.jar"))
        if result.returncode != 0 or not jars:
            shutil.rmtree(staging, ignore_errors=True)
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"could not fetch Apache Kafka {KAFKA_VERSION} (mvn exit {result.returncode}):\n{tail}")
        size_mb = sum(jar.stat().st_size for jar in jars) / 1e6
        marker.unlink(missing_ok=True)
        shutil.rmtree(libs, ignore_errors=True)
        shutil.rmtree(cache / "cds", ignore_errors=True)  # class-data archives name the old jars
        staging.rename(libs)
        marker.write_text(digest + "\n")
        seconds = time.monotonic() - started
        progress(f"Apache Kafka {KAFKA_VERSION}: {len(jars)} jars, {size_mb:.0f} MB in {seconds:.1f}s")
    return libs


def random_cluster_id() -> str:
    """A cluster id as `kafka-storage random-uuid` makes one: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's Uuid.randomUuid, ids starting with '-' are avoided (they read as a CLI flag).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


STANDARD_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
SCRAM_LOGIN_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
SECURE_LISTENERS = ("SSL", "SASL_SSL")
ADMIN_PRINCIPAL = "User:ANONYMOUS"  # whoever connects to PLAINTEXT or CONTROLLER: the brokers themselves, the admin


@dataclass(frozen=True)
class ClusterSecurity:
    """Native TLS and SASL_SSL client listeners, and ACL enforcement, for a test or local cluster.

    Each name in `listeners` becomes a listener of that security protocol on its own loopback port
    (`cluster.listener_bootstrap(name)`), sharing one PEM key pair. `SSL` requires a client certificate
    signed by `ca` (principal `User:<certificate subject>`, e.g. `User:CN=streamfit-client`); `SASL_SSL`
    authenticates with `sasl_mechanisms` (SCRAM users are created through the admin API, see
    `dagster_project.kafka.admin_security`), principal `User:<name>`.

    With `authorizer`, the StandardAuthorizer denies everything no ACL allows. Inter-broker and controller
    traffic stay on the PLAINTEXT and CONTROLLER listeners, plaintext on 127.0.0.1, as User:ANONYMOUS, which
    is therefore a super user: anyone who reaches the PLAINTEXT port is an admin. That is fine for tests on
    loopback, never for a broker other hosts can reach.
    """

    server_cert: Path  # PEM: the broker's certificate (then any intermediates), naming 127.0.0.1
    server_key: Path  # PEM: its private key, unencrypted PKCS#8 ("BEGIN PRIVATE KEY")
    ca: Path  # PEM: the CA certificate(s) trusted for client certificates on the SSL listener
    listeners: tuple[str, ...] = SECURE_LISTENERS
    sasl_mechanisms: tuple[str, ...] = ("SCRAM-SHA-512",)
    super_users: tuple[str, ...] = ()  # more principals allowed everything, beside User:ANONYMOUS
    ssl_client_auth: str = "required"  # on the SSL listener: "required", "requested" or "none"
    authorizer: bool = True

    def __post_init__(self) -> None:
        unknown = [name for name in self.listeners if name not in SECURE_LISTENERS]
        if unknown or len(set(self.listeners)) != len(self.listeners):
            raise ValueError(f"listeners must be distinct names from {list(SECURE_LISTENERS)}, not {self.listeners}")

    def broker_config(self) -> dict[str, str]:
        """server.properties entries for TLS, SASL and the authorizer (the listeners' addresses are per node)."""
        config = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": _pem_value(self.server_cert),
            "ssl.keystore.key": _pem_value(self.server_key),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": _pem_value(self.ca),
        }
        if "SSL" in self.listeners:
            config["listener.name.ssl.ssl.client.auth"] = self.ssl_client_auth
        if "SASL_SSL" in self.listeners:
            config["listener.name.sasl_ssl.sasl.enabled.mechanisms"] = ",".join(self.sasl_mechanisms)
            for mechanism in self.sasl_mechanisms:
                if not mechanism.startswith("SCRAM-"):
                    raise ValueError(f"only SCRAM mechanisms are set up here, not {mechanism}")
                # the broker side of SCRAM needs a login module but no credentials: users live in the metadata log
                key = f"listener.name.sasl_ssl.{mechanism.lower()}.sasl.jaas.config"
                config[key] = f"{SCRAM_LOGIN_MODULE} required;"
        if self.authorizer:
            config["authorizer.class.name"] = STANDARD_AUTHORIZER
            config["super.users"] = ";".join(dict.fromkeys((ADMIN_PRINCIPAL, *self.super_users)))
        return config


def _pem_value(path: Path) -> str:
    """A PEM file as one server.properties value: newlines escaped (java.util.Properties reads \\n back)."""
    text = Path(path).read_text().strip()
    if "-----BEGIN" not in text:
        raise ValueError(f"{path} is not a PEM file")
    if "ENCRYPTED" in text or "BEGIN RSA PRIVATE KEY" in text or "BEGIN EC PRIVATE KEY" in text:
        raise ValueError(f"{path}: Kafka's PEM keystore needs an unencrypted PKCS#8 key (BEGIN PRIVATE KEY)")
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all sockets held open until every port is picked)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            return "\n".join(handle.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Node:
    """One broker+controller process: its fixed ports and directories, and the process once started."""

    def __init__(
        self,
        node_id: int,
        port: int,
        controller_port: int,
        data_dir: Path,
        log_path: Path,
        extra_ports: dict[str, int] | None = None,
    ) -> None:
        self.node_id = node_id
        self.port = port
        self.controller_port = controller_port
        self.extra_ports = extra_ports or {}  # secure listener name -> port
        self.data_dir = data_dir
        self.config_path = data_dir.parent / f"server-{node_id}.properties"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.expected_up = False  # False once we stop or kill it: its exit is then no error
        self.cds_dump: Path | None = None  # where this process writes a class-data archive on exit

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ApacheKafkaCluster:
    """N combined broker+controller Apache Kafka nodes (KRaft) on 127.0.0.1; a context manager.

    Ports are picked at start() and kept for restarts. Without data_dir, a temporary directory is used
    and removed by stop(); logs (one file per node) go to log_dir, default <data_dir>/logs. `security`
    adds SSL / SASL_SSL listeners and ACL enforcement (see ClusterSecurity); `bootstrap` stays PLAINTEXT.
    """

    use_class_data_archive = True  # AppCDS archive of Kafka's classes: start-up ~1.3s faster per node

    def __init__(
        self,
        nodes: int = 1,
        data_dir: Path | None = None,
        log_dir: Path | None = None,
        broker_config: dict[str, str] | None = None,
        security: ClusterSecurity | None = None,
        client_port: int | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, not {nodes}")
        self.nodes = nodes
        self.client_port = client_port  # node i's PLAINTEXT port is client_port + i - 1 (None: free ports)
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="streamfit-kafka-"))
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        self.broker_config = dict(broker_config or {})
        self.security = security
        self.cluster_id = random_cluster_id()
        self.startup_seconds: float | None = None
        self._nodes: dict[int, _Node] = {}
        self._libs: Path | None = None
        self._java: str | None = None
        self._formatted = False

    # -- public -----------------------------------------------------------------------------------------

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.nodes + 1))

    @property
    def bootstrap(self) -> str:
        """Comma-separated client addresses of every node (available once start() has picked the ports)."""
        if not self._nodes:
            raise RuntimeError("the cluster has no ports yet: call start() first")
        return ",".join(f"127.0.0.1:{node.port}" for node in self._nodes.values())

    def listener_bootstrap(self, listener: str) -> str:
        """Comma-separated addresses of every node's `listener` ("PLAINTEXT", or an "SSL" / "SASL_SSL" one
        that `security` added), once start() has picked the ports."""
        if listener == "PLAINTEXT":
            return self.bootstrap
        have = list(self.security.listeners) if self.security else []
        if listener not in have:
            raise KeyError(f"no {listener} listener on this cluster (it has {['PLAINTEXT', *have]})")
        if not self._nodes:
            raise RuntimeError("the cluster has no ports yet: call start() first")
        return ",".join(f"127.0.0.1:{node.extra_ports[listener]}" for node in self._nodes.values())

    @property
    def pids(self) -> dict[int, int]:
        """Node id -> pid of every node process that is running now."""
        return {n.node_id: n.process.pid for n in self._nodes.values() if n.process and n.running}

    def log_path(self, node_id: int) -> Path:
        return self._node(node_id).log_path

    def start(self, timeout_s: float = 120) -> ApacheKafkaCluster:
        """Format and start every node; return once all of them are registered and unfenced.

        Raises RuntimeError (with the node's log file and its last lines) if a node exits or the timeout
        passes; whatever was started is stopped again.
        """
        if self.pids:
            raise RuntimeError(f"the cluster is already running (nodes {sorted(self.pids)}); restart with stop() first")
        self._libs = ensure_kafka_jars()
        self._java = find_java()
        started = time.monotonic()
        try:
            self._prepare()
            if not self._formatted:
                self._format(timeout_s)
            for node in self._nodes.values():
                self._launch(node)
            self._wait_for(set(self.node_ids), started + timeout_s, "to form a cluster")
        except BaseException:
            self.stop(keep_logs=True)  # the error names a log file: keep it for reading
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, timeout_s: float = 30, keep_logs: bool = False) -> None:
        """Stop every node (SIGTERM, then SIGKILL after timeout_s) and remove a temporary data dir.

        Safe to call twice or after a failed start(); a cluster with a temporary data dir can start() afresh.
        keep_logs keeps the node logs even when they live in the temporary data dir.
        """
        try:
            self.stop_all_nodes(timeout_s)
        finally:
            if self._owns_data_dir:
                self._remove_data_dir(keep_logs)
                self._nodes, self._formatted = {}, False

    def stop_all_nodes(self, timeout_s: float = 30) -> None:
        """Stop every node, keeping their data, for a whole-cluster restart with start_all_nodes()."""
        for node in self._nodes.values():
            node.expected_up = False
            if node.running:
                node.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        for node in self._nodes.values():
            self._reap(node, max(0.1, deadline - time.monotonic()))

    def start_all_nodes(self, timeout_s: float = 120) -> None:
        """Start every stopped node again (same ports, same data) and wait for the cluster to re-form."""
        if not self._formatted:
            raise RuntimeError("start_all_nodes() restarts a cluster: call start() first")
        started = time.monotonic()
        for node in self._nodes.values():
            if not node.running:
                self._launch(node)
        self._wait_for(set(self.node_ids), started + timeout_s, "to re-form")

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node (a crash: no controlled shutdown, nothing flushed)."""
        node = self._node(node_id)
        node.expected_up = False
        if node.running:
            node.process.kill()  # type: ignore[union-attr]
        self._reap(node, 10)

    def stop_node(self, node_id: int, timeout_s: float = 30) -> None:
        """SIGTERM one node (controlled shutdown), SIGKILL after timeout_s."""
        node = self._node(node_id)
        node.expected_up = False
        if node.running:
            node.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        self._reap(node, timeout_s)

    def restart_node(self, node_id: int, timeout_s: float = 60) -> None:
        """Start a stopped or killed node again on its ports and data dir; wait until it serves and is unfenced.

        A running node is stopped first (SIGTERM).
        """
        node = self._node(node_id)
        self.stop_node(node_id)
        self._launch(node)
        # Bootstrapped through its own listener, which the broker opens to requests only once it has caught up
        # with the metadata log (its new registration included), so a crashed process's stale "unfenced" entry,
        # which lasts until broker.session.timeout.ms, cannot pass for the new process.
        self._wait_for({node_id}, time.monotonic() + timeout_s, f"for node {node_id} to rejoin", via=node)

    def leader_of(self, topic: str, partition: int, timeout_s: float = 15) -> int | None:
        """Node id of the partition's leader from fresh metadata; None without a leader (or topic)."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        with self._admin() as admin:
            while True:
                try:
                    topics = admin.describe_topics([topic])
                    break
                except KafkaError:
                    # the request went to a crashed node that the metadata still lists (it is fenced only after
                    # broker.session.timeout.ms); the client backs off from that node, so asking again picks another
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            for described in topics:
                if described.get("name") != topic or described.get("error_code"):
                    return None
                for part in described.get("partitions", []):
                    if part.get("partition_index") == partition:
                        leader = part.get("leader_id", -1)
                        return leader if leader is not None and leader >= 0 else None
        return None

    def under_replicated(self) -> dict[str, list[int]]:
        """Partitions (internal topics included) without a leader or with fewer in-sync replicas than replicas,
        by topic: empty once a restarted node has caught up everywhere."""
        with self._admin() as admin:
            described = admin.describe_topics()
        lagging: dict[str, list[int]] = {}
        for topic in described:
            for part in topic.get("partitions", []):
                leader = part.get("leader_id", -1)
                if leader is None or leader < 0 or len(part.get("isr_nodes", [])) < len(part.get("replica_nodes", [])):
                    lagging.setdefault(topic.get("name", "?"), []).append(part.get("partition_index", -1))
        return lagging

    def wait_fully_replicated(self, timeout_s: float = 60) -> None:
        """Wait until every partition has a leader and all its replicas in sync (after restarts, before the next
        failure test: a transaction or offsets partition whose ISR is still below min.insync.replicas refuses
        writes until the restarted node has caught up)."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        lagging: dict[str, list[int]] | str = "no answer"
        while time.monotonic() < deadline:
            try:
                lagging = self.under_replicated()
            except KafkaError as exc:  # a node still starting
                lagging = repr(exc)
            if not lagging:
                return
            time.sleep(0.25)
        raise RuntimeError(f"partitions still under-replicated after {timeout_s:g}s: {lagging}")

    def __enter__(self) -> ApacheKafkaCluster:
        return self.start() if not self._nodes else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------------------

    def _node(self, node_id: int) -> _Node:
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id} (nodes: {self.node_ids}; ports are picked by start())")
        return self._nodes[node_id]

    def _remove_data_dir(self, keep_logs: bool) -> None:
        if not (keep_logs and self.log_dir.parent == self.data_dir and self.data_dir.is_dir()):
            shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        for path in self.data_dir.iterdir():  # everything but the logs
            if path == self.log_dir:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _prepare(self) -> None:
        """Pick ports and write per-node configs (once; restarts reuse both)."""
        if self._nodes:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        extra = list(self.security.listeners) if self.security else []
        stride = 2 + len(extra)
        chosen = [self.client_port + i for i in range(self.nodes)] if self.client_port else []
        ports = _free_ports(stride * self.nodes)
        while set(ports) & set(chosen):  # a free port the OS offered may be one asked for
            ports = _free_ports(stride * self.nodes)
        taken = [p for p in chosen if _port_open(p)]
        if taken:
            raise RuntimeError(
                f"port {taken[0]} is in use ({self.nodes} node(s) listen on {chosen[0]}..{chosen[-1]}): "
                "stop what listens there or choose another --port"
            )
        for index, node_id in enumerate(self.node_ids):
            mine = ports[stride * index : stride * (index + 1)]
            self._nodes[node_id] = _Node(
                node_id,
                port=chosen[index] if chosen else mine[0],
                controller_port=mine[1],
                data_dir=self.data_dir / f"node-{node_id}",
                log_path=self.log_dir / f"kafka-node-{node_id}.log",
                extra_ports=dict(zip(extra, mine[2:], strict=True)),
            )
        (self.data_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        for node in self._nodes.values():
            config = self._config(node)
            node.config_path.write_text("".join(f"{key}={value}\n" for key, value in config.items()))

    def _config(self, node: _Node) -> dict[str, str]:
        n = self.nodes
        voters = ",".join(f"{other.node_id}@127.0.0.1:{other.controller_port}" for other in self._nodes.values())
        config = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,  # static quorum: formatted without --standalone/--initial-controllers
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            **durability_config(n),
            # defaults are 3 and 2, which a 1- or 2-node cluster cannot host (share groups would fail)
            "share.coordinator.state.topic.replication.factor": str(min(3, n)),
            "share.coordinator.state.topic.min.isr": str(min(2, n)),
            "group.initial.rebalance.delay.ms": GROUP_INITIAL_REBALANCE_DELAY_MS,
            "auto.create.topics.enable": "true",
        }
        if self.security is not None:
            # client listeners only: inter-broker (PLAINTEXT) and controller traffic stay plaintext on loopback
            extra = [f"{name}://127.0.0.1:{port}" for name, port in node.extra_ports.items()]
            config["listeners"] = ",".join([config["listeners"], *extra])
            config["advertised.listeners"] = ",".join([config["advertised.listeners"], *extra])
            config["listener.security.protocol.map"] += "".join(f",{name}:{name}" for name in node.extra_ports)
            config.update(self.security.broker_config())
        config.update({key: str(value) for key, value in self.broker_config.items()})
        return config

    def _class_data_archive(self) -> Path:
        assert self._libs is not None and self._java is not None
        return self._libs.parent / "cds" / f"kafka-{_java_fingerprint(self._java)}.jsa"

    def _java_command(self, main: str, *args: str, log_level: str = "INFO", dump_to: Path | None = None) -> list[str]:
        assert self._libs is not None and self._java is not None
        env_opts = os.environ.get("STREAMFIT_KAFKA_JVM_OPTS")
        options = shlex.split(env_opts) if env_opts else list(DEFAULT_JVM_OPTS)
        archive = self._class_data_archive()
        if self.use_class_data_archive and archive.is_file():
            options.append(f"-XX:SharedArchiveFile={archive}")  # a stale archive is ignored with a warning
        elif self.use_class_data_archive and dump_to is not None:
            options.append(f"-XX:ArchiveClassesAtExit={dump_to}")
        return [
            self._java,
            *options,
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dstreamfit.kafka.log.level={log_level}",
            "-cp",
            f"{self._libs}/*",
            main,
            *args,
        ]

    def _format(self, timeout_s: float) -> None:
        """kafka-storage format, all nodes at once (a JVM each): writes meta.properties and bootstrap.checkpoint."""
        running = []
        for node in self._nodes.values():
            args = ("format", "--cluster-id", self.cluster_id, "--config", str(node.config_path))
            command = self._java_command("kafka.tools.StorageTool", *args, log_level="WARN")
            running.append((node, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)))
        failures = []
        for node, process in running:
            try:
                output, _ = process.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            if process.returncode != 0:
                text = output.decode(errors="replace")[-2000:]
                failures.append(f"node {node.node_id} (exit {process.returncode}): {text}")
        if failures:
            raise RuntimeError("kafka.tools.StorageTool format failed for " + "\n".join(failures))
        self._formatted = True

    def _launch(self, node: _Node) -> None:
        dump_to = None
        archive = self._class_data_archive()
        if self.use_class_data_archive and node.node_id == self.node_ids[0] and not archive.is_file():
            # the first node records the classes it loads into an archive when it exits (kept by _reap)
            dump_to = archive.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            dump_to.parent.mkdir(exist_ok=True)
        command = self._java_command("kafka.Kafka", str(node.config_path), dump_to=dump_to)
        node.cds_dump = dump_to
        node.expected_up = True
        with open(node.log_path, "ab") as log:
            log.write(f"\n==== starting node {node.node_id}: {shlex.join(command)}\n".encode())
            log.flush()
            node.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.data_dir.parent,
                start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop the nodes in order
            )

    def _reap(self, node: _Node, timeout_s: float) -> None:
        """Wait for a signalled node, SIGKILL it past timeout_s; keep a class-data archive it wrote on a clean exit."""
        if node.process is None:
            return
        try:
            node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        dump, node.cds_dump = node.cds_dump, None
        if dump is not None:
            # 143: the JVM's exit status after SIGTERM and its shutdown hooks; the archive is written after them
            if node.process.returncode in (0, 143) and dump.is_file() and dump.stat().st_size > 0:
                os.replace(dump, self._class_data_archive())
            else:
                dump.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _admin(self, bootstrap: str | None = None, timeout_ms: int = 5000) -> Iterator[Any]:
        from kafka.admin import KafkaAdminClient

        live = [f"127.0.0.1:{n.port}" for n in self._nodes.values() if n.running]
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap or ",".join(live) or self.bootstrap,
            client_id="streamfit-apache-kafka",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
        try:
            yield admin
        finally:
            admin.close()

    def _registered(self, via: _Node | None = None) -> set[int]:
        """Ids of the registered, unfenced brokers, asked of `via` (else any live node); empty if nobody answers."""
        targets = [via] if via else [n for n in self._nodes.values() if n.running]
        if not all(_port_open(n.port) for n in targets):
            return set()
        try:
            with self._admin(",".join(f"127.0.0.1:{n.port}" for n in targets), timeout_ms=3000) as admin:
                brokers = admin.describe_cluster().get("brokers", [])
        except Exception:  # not up yet: connection refused, timeouts, "not controller", ...
            return set()
        return {b["broker_id"] for b in brokers if not b.get("is_fenced", False)}

    def _wait_for(self, ids: set[int], deadline: float, what: str, via: _Node | None = None) -> None:
        """Poll until every node in `ids` is registered and unfenced; fail fast if a node we started exits."""
        while True:
            for node in self._nodes.values():
                if node.expected_up and node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"Kafka node {node.node_id} exited with code {node.process.returncode} while waiting {what}; "
                        f"see {node.log_path}:\n{_tail(node.log_path)}"
                    )
            missing = ids - self._registered(via)
            if not missing:
                return
            if time.monotonic() > deadline:
                node = self._nodes[min(missing)]
                raise RuntimeError(
                    f"Apache Kafka {KAFKA_VERSION} timed out waiting {what}: node(s) {sorted(missing)} not registered; "
                    f"see {node.log_path}:\n{_tail(node.log_path)}"
                )
            time.sleep(0.2)
