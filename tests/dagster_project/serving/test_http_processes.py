"""`streamfit serve --http-processes 2` as a real process: both children answer on the one port, /metrics
counts both, each hot-swaps, every limit holds, and a kill -9 of the main process leaves no child."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import orjson
import pytest

from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving.scorer import TOKEN_ENV
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import Client, synthetic_rows, train_version, wait_for
from tests.helpers import StreamfitProcess

# The HTTP processes' supervision is the subject; the scorer's broker code is test_scorer.py's: once, on Tansu.
pytestmark = pytest.mark.one_broker
ROW = synthetic_rows(1)[0][1]


class MultiServe(StreamfitProcess):
    """`streamfit serve <stream> --http-processes 2` on a free port."""

    def __init__(self, spec: StreamSpec, bootstrap: str, *options: str, env: dict[str, str] | None = None) -> None:
        args = ["serve", spec.name, "--port", "0", "--http-processes", "2", *options]
        super().__init__(args, env=os.environ | {BOOTSTRAP_ENV: bootstrap} | (env or {}))
        self.url = self.wait_for("; HTTP on ", timeout_s=60).rsplit("HTTP on ", 1)[1]

    @property
    def children(self) -> set[int]:
        tasks = Path(f"/proc/{self.proc.pid}/task").glob("*/children")  # a replacement is its spawning thread's
        return {int(pid) for children in tasks for pid in children.read_text().split()}


def by_process(url: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, int, object]:
    """One request on a fresh connection, and the pid of the process that answered (/healthz on that connection)."""
    client = Client(url)
    try:
        _, health, _ = client.request("GET", "/healthz")
        status, answer, _ = client.request("POST" if body is not None else "GET", path, body, headers or None)
        return health["pid"], status, answer
    finally:
        client.close()


def predicts_total(metrics: str, code: str = "200") -> float:
    found = re.search(
        rf'streamfit_http_requests_total{{[^}}]*code="{code}"[^}}]*path="/predict"[^}}]*}} (\S+)', metrics
    )
    return float(found.group(1)) if found else 0.0


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_two_processes_answer_count_together_and_both_hot_swap(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    train_version(registry, spec)
    serve = MultiServe(spec, kafka_settings.bootstrap)
    try:
        children = serve.children
        assert len(children) == 2, children
        body = orjson.dumps({"rows": [ROW]})
        answered: dict[int, int] = {}
        sent = 0

        def both_answered() -> bool:
            nonlocal sent
            pid, status, answer = by_process(serve.url, "/predict", body)
            sent += 1
            assert (status, answer["model_version"]) == (200, "v1"), answer
            answered[pid] = answered.get(pid, 0) + 1
            return set(answered) == children

        wait_for(both_answered, 60, "an answer from each HTTP process")
        assert serve.proc.pid not in answered  # the main process runs the Kafka loop only
        for _ in range(4):  # any process's /metrics counts every process's requests
            pid, status, metrics = by_process(serve.url, "/metrics")
            assert status == 200 and pid in children
            assert predicts_total(metrics) == sent, (answered, metrics)
        # the Kafka loop's state reaches the children's health answers
        wait_for(lambda: by_process(serve.url, "/healthz")[2]["kafka"]["state"] == "running", 60, "kafka state")

        train_version(registry, spec, seed=1, drifted=True)  # v2 becomes champion: each process swaps on its own
        swapped: set[int] = set()

        def both_swapped() -> bool:
            pid, status, answer = by_process(serve.url, "/predict", body)
            assert status == 200, answer  # no failed request during the swap
            if answer["model_version"] == "v2":
                swapped.add(pid)
            return swapped == children

        wait_for(both_swapped, 60, "both HTTP processes serving v2")
    finally:
        serve.kill()


def test_every_limit_holds_in_the_http_processes(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    serve = MultiServe(
        spec, kafka_settings.bootstrap, "--max-rows", "2", "--max-body-bytes", "2000", env={TOKEN_ENV: "s3cret"}
    )
    auth = {"Authorization": "Bearer s3cret"}
    one = orjson.dumps({"rows": [ROW]})
    try:
        children = serve.children
        _, status, _ = by_process(serve.url, "/predict", one, **auth)
        assert status == 503  # no champion yet
        train_version(registry, spec)
        wait_for(lambda: by_process(serve.url, "/predict", one, **auth)[1] == 200, 30, "the champion")
        seen: set[int] = set()
        for _ in range(200):
            pid, status, _ = by_process(serve.url, "/predict", one)
            assert status == 401  # no token
            pid, status, answer = by_process(serve.url, "/predict", orjson.dumps({"rows": [ROW, {"x": 1}]}), **auth)
            assert (status, answer["rows"][0]["row"]) == (422, 1), answer  # the bad row named
            _, status, _ = by_process(serve.url, "/predict", orjson.dumps({"rows": [ROW] * 3}), **auth)
            assert status == 413
            _, status, _ = by_process(serve.url, "/predict", orjson.dumps({"rows": [ROW] * 40}), **auth)
            assert status == 413
            _, status, answer = by_process(serve.url, f"/v2/models/{spec.name}", None)
            assert status == 200 and answer["name"] == spec.name
            seen.add(pid)
            if seen == children:
                break
        assert seen == children
    finally:
        serve.kill()


def test_kill_9_of_the_main_process_leaves_no_http_process(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    train_version(registry, spec)
    serve = MultiServe(spec, kafka_settings.bootstrap)
    children = serve.children
    assert len(children) == 2 and all(alive(pid) for pid in children)
    os.kill(serve.proc.pid, signal.SIGKILL)
    serve.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in children), 20, "the HTTP processes to exit")


def test_a_dead_http_process_is_replaced_and_the_port_keeps_answering(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings, registry: FilesystemRegistry
) -> None:
    train_version(registry, spec)
    serve = MultiServe(spec, kafka_settings.bootstrap)
    try:
        before = serve.children
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(serve.children - before) == 1 and len(serve.children) == 2, 60, "a replacement process")
        serve.wait_for("exited (code -9); starting another", timeout_s=5)
        body = orjson.dumps({"rows": [ROW]})
        answered: set[int] = set()

        def both_answer() -> bool:
            pid, status, answer = by_process(serve.url, "/predict", body)
            assert (status, answer["model_version"]) == (200, "v1"), answer  # nobody is sent to the dead one
            answered.add(pid)
            return answered == serve.children

        wait_for(both_answer, 60, "an answer from the replacement and the survivor")
        assert victim not in answered
    finally:
        serve.kill()


def test_busy_port_fails_at_once_naming_the_address(
    spec: StreamSpec, specs_dir: Path, kafka_settings: KafkaSettings
) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = StreamfitProcess(
            ["serve", spec.name, "--port", str(port), "--http-processes", "2"],
            env=os.environ | {BOOTSTRAP_ENV: kafka_settings.bootstrap},
        )
        process.wait_for(f"Error: cannot serve HTTP on 127.0.0.1:{port}: Address already in use")
        assert process.proc.wait(timeout=30) == 1


def test_a_stream_with_derived_features_is_refused_naming_the_fix(kafka_settings, registry) -> None:
    from dagster_project.serving.scorer import ScoringService
    from tests.dagster_project.features.support import sensors_spec

    with pytest.raises(ValueError, match="derived features.*--http-processes 1"):
        ScoringService(sensors_spec(), kafka_settings, registry, port=0, http_processes=2)


class _CountingCloses:
    """A child's stdin that counts `close` calls (closing a pipe twice hides which close ended the child)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.closes = 0

    def close(self) -> None:
        self.closes += 1
        self.pipe.close()


def test_stop_closes_each_lifeline_once_and_every_child_exits(
    spec: StreamSpec, registry: FilesystemRegistry, tmp_path: Path
) -> None:
    from dagster_project.serving.http import reserve_reuse_port
    from dagster_project.serving.http_processes import HttpProcesses, WorkerPlan

    train_version(registry, spec)
    plan = WorkerPlan(spec, registry, str(tmp_path), str(tmp_path / "state.json"), watch_interval_s=0.25)
    group = HttpProcesses(reserve_reuse_port(("127.0.0.1", 0)), 2, plan, kafka=None, delivery=None).start()
    children = list(group.children)
    pipes = [_CountingCloses(child.stdin) for child in children]
    for child, pipe in zip(children, pipes, strict=True):
        child.stdin = pipe
    group.stop()
    assert [pipe.closes for pipe in pipes] == [1, 1]
    assert all(child.returncode == 0 for child in children), [child.returncode for child in children]
