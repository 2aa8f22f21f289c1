"""The fast path answers `/predict` and `/v2/models/<stream>/infer` exactly as the Starlette routes do.

Two servers on one registry, one with the fast path (as shipped) and one without (every request
through Starlette), get the same requests, good and bad; each answer must match byte for byte
(status, headers but the date, body), and so must the request counters they leave behind.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving import ChampionWatcher, ScorerHTTPServer, ScorerMetrics
from dagster_project.serving.api import INLINE_BODY_BYTES, predict_payload
from dagster_project.serving.champion import ServedModel
from dagster_project.serving.coalesce import Scored
from dagster_project.serving.fastpath import FastInference, predict_json
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import synthetic_rows, train_version
from tests.dagster_project.serving.test_http import ROW
from tests.dagster_project.serving.test_http_fuzz import infer_bodies, predict_bodies

TOKEN = "s3cret-token"
Answer = tuple[int, list[tuple[str, str]], bytes]


@contextmanager
def twin_servers(spec: StreamSpec, registry: FilesystemRegistry, **options) -> Iterator[dict]:
    """{"fast": ..., "starlette": ...}: the same options and registry, each with its own metrics."""
    servers = {}
    try:
        for name in ("fast", "starlette"):
            metrics = ScorerMetrics(spec.name)
            watcher = ChampionWatcher(registry, spec, metrics)
            watcher.check()
            server = ScorerHTTPServer(
                ("127.0.0.1", 0), spec, watcher, metrics, fast_path=name == "fast", **options
            ).start()
            servers[name] = (server, watcher, metrics)
        assert isinstance(servers["fast"][0].app, FastInference)
        assert not isinstance(servers["starlette"][0].app, FastInference)
        yield servers
    finally:
        for server, _, _ in servers.values():
            server.stop()


def exchange(server: ScorerHTTPServer, method: str, path: str, body: bytes | None, headers: dict) -> Answer:
    conn = http.client.HTTPConnection(*server.server_address, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": "scorer", **headers})  # not the port: redirects match
        response = conn.getresponse()
        answer = response.read()
        kept = sorted((k.lower(), v) for k, v in response.getheaders() if k.lower() != "date")
        return response.status, kept, answer
    finally:
        conn.close()


def same_answer(servers: dict, method: str, path: str, body: bytes | None, headers: dict | None = None) -> Answer:
    answers = {name: exchange(s, method, path, body, dict(headers or {})) for name, (s, _, _) in servers.items()}
    assert answers["fast"] == answers["starlette"], (path, body, answers)
    return answers["fast"]


def request_counts(metrics: ScorerMetrics) -> dict[tuple[str, str], float]:
    text = metrics.exposition().decode()
    samples = [line for line in text.splitlines() if line.startswith("streamfit_http_requests_total{")]
    return {tuple(line.split("{", 1)[1].split("}", 1)[0].split(",")): float(line.rsplit(" ", 1)[1]) for line in samples}


def tensor(rows: list[list], **overrides) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": rows} | overrides


def corpus(spec: StreamSpec) -> list[tuple[str, bytes]]:
    """Good and bad bodies for both routes: every 4xx the contract names, and successes of several sizes."""
    rows = [f for _, f, _ in synthetic_rows(40)]
    X = [[r[n] for n in spec.feature_names] for r in rows]
    infer = f"/v2/models/{spec.name}/infer"
    predict = [
        {"rows": [ROW]},
        {"rows": rows[:5]},
        {"rows": [ROW | {"x0": 3}, ROW | {"x1": 2**40}, ROW | {"x2": -0.0}]},  # integers are numbers
        {"rows": [ROW] * 6},  # over max_rows
        {"rows": []},
        {"rows": {"x0": 1}},
        {"row": []},
        [1, 2],
        "rows",
        None,
        {"rows": [ROW, {k: v for k, v in ROW.items() if k != "x3"}, ROW | {"colour": 1.0}]},
        {"rows": [ROW | {"x1": "high"}, ROW | {"x2": True}, ROW | {"x4": None}, "x", [1, 2, 3, 4, 5]]},
        {"rows": [ROW | {"x0": 1e38}, ROW | {"x0": -1e38}, ROW | {"x3": 2**70}]},  # beyond the magnitude limit
        {"rows": [ROW | {"x0": [1.0]}, ROW | {"x0": {"v": 1}}, {}]},
    ]
    bodies = [("/predict", json.dumps(b).encode()) for b in predict]  # the standard library writes 2**70
    bodies += [("/predict", raw) for raw in (b'{"rows": [', b"", b"nan", b'{"rows": [{"x0": NaN}]}', b" " * 5000)]
    # number texts JSON refuses or a float cannot hold, where the typed decode of plain bodies could differ
    tail = '"x1": 0, "x2": 0, "x3": 0, "x4": 0}]}'
    for x0 in ("01", "1e400", "+1", ".5", "1e-400"):
        bodies.append(("/predict", f'{{"rows": [{{"x0": {x0}, {tail}'.encode()))
    v2 = [
        {"id": "r1", "inputs": [tensor(X[:3])]},
        {"inputs": [tensor(X[:2], data=[v for r in X[:2] for v in r])], "outputs": [{"name": "label"}]},
        {"inputs": [tensor(X[:1], name="x")]},
        {"inputs": [tensor(X[:1], datatype="INT64")]},
        {"inputs": [tensor(X[:1], shape=[1, 4])]},
        {"inputs": [tensor(X[:2], data=X[0])]},
        {"inputs": [tensor([[*X[0][:4], "a"]])]},
        {"inputs": [tensor(X[:1])], "outputs": [{"name": "nope"}]},
        {"inputs": [tensor(X[:6])]},
        {"inputs": []},
        {"outputs": []},
    ]
    bodies += [(infer, orjson.dumps(b)) for b in v2]
    bodies += [(infer, b"{"), (f"/v2/models/{spec.name}x/infer", orjson.dumps(v2[0]))]
    return bodies


@pytest.mark.parametrize("coalesce", [True, False])
def test_the_fast_path_answers_as_starlette_does(
    spec: StreamSpec, registry: FilesystemRegistry, coalesce: bool
) -> None:
    with twin_servers(spec, registry, max_rows=5, max_body_bytes=4096, coalesce=coalesce) as servers:
        for path, body in corpus(spec)[:4]:  # no champion yet: 503, after the row checks (413 first), as before
            status, _, answer = same_answer(servers, "POST", path, body)
            assert status in (503, 413), answer

        train_version(registry, spec)
        for _, watcher, _ in servers.values():
            assert watcher.check()
        statuses = set()
        for path, body in corpus(spec):
            statuses.add(same_answer(servers, "POST", path, body)[0])
        assert statuses >= {200, 400, 404, 413, 422}, statuses

        # Not a hot route, or not POST: the Starlette app answers for both.
        for method, path in [("GET", "/predict"), ("PUT", f"/v2/models/{spec.name}/infer"), ("POST", "/predict/")]:
            same_answer(servers, method, path, b"{}")
        same_answer(servers, "POST", "/predict", orjson.dumps({"rows": [ROW]}), {"Content-Length": "-1"})

        assert request_counts(servers["fast"][2]) == request_counts(servers["starlette"][2])
        ok = ('code="200"', 'path="/predict"', f'stream="{spec.name}"')
        assert request_counts(servers["fast"][2])[ok] == 4  # with x0 = 1e-400, which is 0.0


def test_token_length_and_deadline_errors_match(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    body = orjson.dumps({"rows": [ROW]})
    with twin_servers(spec, registry, token=TOKEN, body_timeout_s=0.3) as servers:
        for path in ("/predict", f"/v2/models/{spec.name}/infer"):
            for header in (None, "Bearer wrong", f"Basic {TOKEN}", TOKEN, f"bearer {TOKEN}", f"Bearer {TOKEN}"):
                status, headers, _ = same_answer(
                    servers, "POST", path, body, {"Authorization": header} if header else {}
                )
                assert (status == 401) == (header not in (f"bearer {TOKEN}", f"Bearer {TOKEN}")), header

        # Raw sockets: a chunked body (no Content-Length) and a body that never finishes arriving.
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\n"
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        trickle = head + b"Content-Length: 100\r\n\r\n{"
        for raw in (chunked, trickle):
            answers = {name: raw_exchange(server, raw) for name, (server, _, _) in servers.items()}
            assert answers["fast"] == answers["starlette"], answers
            assert answers["fast"].split(b" ", 2)[1] in (b"411", b"408"), answers
        assert request_counts(servers["fast"][2]) == request_counts(servers["starlette"][2])


def raw_exchange(server: ScorerHTTPServer, raw: bytes) -> bytes:
    """The whole answer to `raw` until the server closes, without its date header."""
    with socket.create_connection(server.server_address, timeout=10) as sock:
        sock.sendall(raw)
        chunks, started = [], time.monotonic()
        while (chunk := sock.recv(65536)) and time.monotonic() - started < 10:
            chunks.append(chunk)
    return b"\r\n".join(line for line in b"".join(chunks).split(b"\r\n") if not line.lower().startswith(b"date:"))


def test_random_bodies_get_the_same_answer(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with twin_servers(spec, registry, max_rows=6) as servers:
        paths = ["/predict", f"/v2/models/{spec.name}/infer"]

        @settings(
            max_examples=150,
            deadline=timedelta(seconds=2),
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            st.one_of(
                st.tuples(st.just(0), predict_bodies.map(lambda b: json.dumps(b).encode())),
                st.tuples(st.just(1), infer_bodies.map(lambda b: json.dumps(b).encode())),
            )
        )
        def post(case: tuple[int, bytes]) -> None:
            which, body = case
            same_answer(servers, "POST", paths[which], body)

        post()


def test_large_bodies_answered_in_a_thread_match(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    rows = [f for _, f, _ in synthetic_rows(400)]
    with twin_servers(spec, registry, coalesce=False) as servers:
        for body in ({"rows": rows}, {"rows": [*rows[:200], rows[0] | {"x2": "high"}, *rows[200:]]}):
            raw = orjson.dumps(body)
            assert len(raw) > INLINE_BODY_BYTES  # past the loop's limit: parsed and scored in a worker thread
            status, _, answer = same_answer(servers, "POST", "/predict", raw)
            assert (status, len(orjson.loads(answer).get("predictions", []))) in ((200, 400), (422, 0)), answer


@settings(max_examples=300, deadline=None, database=None)
@given(
    classes=st.sampled_from([("neg", "pos"), (0, 1, 2), ('a"b', "\u00e9", "x")]),
    scores=st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False) | st.sampled_from([0.0, -0.0, 1e-45, 3.4e38]),
        min_size=1,
        max_size=40,
    ),
    data=st.data(),
)
def test_the_encoded_answer_is_the_payloads_bytes(classes: tuple, scores: list[float], data: st.DataObject) -> None:
    """`predict_json` writes the score matrix with orjson's numpy path: the same digits as the payload's floats."""
    width = len(classes)
    rows = max(1, len(scores) // width)
    matrix = np.resize(np.array(scores, dtype=np.float32), (rows, width))
    labels = np.array(data.draw(st.lists(st.integers(0, width - 1), min_size=rows, max_size=rows)), dtype=np.int64)
    served = ServedModel("s", data.draw(st.sampled_from(["v1", "v12"])), None, classes, 0.0)  # type: ignore[arg-type]
    scored = Scored(served, labels, matrix)
    assert predict_json(scored) == orjson.dumps(predict_payload(served.version, *scored.lists()))
