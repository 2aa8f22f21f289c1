"""Requests ready together are scored in one onnxruntime call, yet each gets exactly its own answer.

A real uvicorn server of the scorer. To make requests arrive together on purpose, the first
scoring call holds the server's event loop (a wrapper around `ServedModel.outputs` that waits for the
test) while 15 more keep-alive connections send their requests; when it lets go, the loop reads all
of them in one iteration and the coalescer scores them in one call. Every row is different, so a
request given another's slice, or a version it was not scored by, gets visibly wrong numbers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving import ChampionWatcher, ScorerHTTPServer, ScorerMetrics, ServedModel
from dagster_project.serving.api import ScoringContext
from dagster_project.serving.coalesce import Coalescer
from dagster_project.serving.health import ScorerHealth
from dagster_project.serving.limits import BearerToken, HttpLimits, RequestError
from dagster_project.serving.rows import validate_rows
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import Client, feature_matrix, onnx_of, synthetic_rows, train_version

CLIENTS = 16
ROWS_EACH = 3


class HeldScoring:
    """Wraps `ServedModel.outputs` (the coalescer's call): records each call's (version, rows), can hold the next."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        self.held = threading.Event()
        self.release = threading.Event()
        self._hold_next = False
        real = ServedModel.outputs

        def outputs(served: ServedModel, X: np.ndarray) -> Any:
            self.calls.append((served.version, len(X)))
            if self._hold_next:
                self._hold_next = False
                self.held.set()
                assert self.release.wait(10), "the test never released the held scoring call"
            return real(served, X)

        monkeypatch.setattr(ServedModel, "outputs", outputs)

    def hold_next(self) -> None:
        self.held.clear()
        self.release.clear()
        self._hold_next = True


@contextmanager
def scorer(spec: StreamSpec, registry: FilesystemRegistry) -> Iterator[tuple[ScorerHTTPServer, ChampionWatcher]]:
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics)
    watcher.check()
    server = ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics).start()
    try:
        yield server, watcher
    finally:
        server.stop()


def send_together(
    clients: list[Client], requests: list[tuple[str, bytes]], scoring: HeldScoring, while_held: Any = None
) -> list[tuple[int, Any]]:
    """Client 0's request is scored while the loop is held; the others arrive meanwhile and are read together."""
    answers: list[tuple[int, Any] | None] = [None] * len(clients)

    def send(i: int) -> None:
        path, body = requests[i]
        status, answer, _ = clients[i].request("POST", path, body, {"Content-Type": "application/json"})
        answers[i] = (status, answer)

    scoring.hold_next()
    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert scoring.held.wait(10), "the first request was never scored"
    others = [threading.Thread(target=send, args=(i,)) for i in range(1, len(clients))]
    for thread in others:
        thread.start()
    if while_held is not None:
        while_held()
    threading.Event().wait(0.3)  # the requests reach the server's socket buffers (its loop is held)
    scoring.release.set()
    for thread in [first, *others]:
        thread.join(20)
    assert all(a is not None for a in answers), answers
    return answers  # type: ignore[return-value]


def warm(clients: list[Client]) -> None:
    """Open every keep-alive connection first, so the held loop only has requests to read, not connections."""
    for client in clients:
        assert client.request("GET", "/livez")[0] == 200


def test_concurrent_requests_each_get_their_own_rows_and_errors(
    spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_version(registry, spec)
    model = onnx_of(registry, spec, "v1")
    rows = [f for _, f, _ in synthetic_rows(CLIENTS * ROWS_EACH)]
    mine = [rows[i * ROWS_EACH : (i + 1) * ROWS_EACH] for i in range(CLIENTS)]
    bad = 5  # its third row has a string where a number belongs: it alone fails, naming that row
    infer = {7, 11}  # the Open Inference Protocol route, in the same flushes
    requests = []
    for i, own in enumerate(mine):
        if i == bad:
            own = [*own[:2], own[2] | {"x1": "high"}]
        if i in infer:
            X = feature_matrix(spec, own).tolist()
            tensor = {"name": "input", "datatype": "FP32", "shape": [len(X), len(X[0])], "data": X}
            requests.append((f"/v2/models/{spec.name}/infer", orjson.dumps({"id": f"req-{i}", "inputs": [tensor]})))
        else:
            requests.append(("/predict", orjson.dumps({"rows": own})))

    scoring = HeldScoring(monkeypatch)
    with scorer(spec, registry) as (server, _):
        clients = [Client(server.url) for _ in range(CLIENTS)]
        warm(clients)
        answers = send_together(clients, requests, scoring)

    # Coalesced: the first request alone, then the 14 good others in one call.
    assert scoring.calls == [("v1", ROWS_EACH), ("v1", (CLIENTS - 2) * ROWS_EACH)], scoring.calls
    for i, (status, answer) in enumerate(answers):
        if i == bad:
            assert status == 422, answer
            assert answer["rows"] == [{"row": 2, "errors": ["feature 'x1' must be a number, got str 'high'"]}], answer
            continue
        assert status == 200, (i, answer)
        expected = model.predict(feature_matrix(spec, mine[i]))
        if i in infer:
            assert answer["id"] == f"req-{i}" and answer["model_version"] == "v1"
            outputs = {o["name"]: o for o in answer["outputs"]}
            assert outputs["label"]["data"] == [spec.label.classes[k] for k in expected.labels.tolist()]
            probabilities = np.array(outputs["probabilities"]["data"]).reshape(ROWS_EACH, -1)
        else:
            assert answer["model_version"] == "v1"
            assert [p["prediction"] for p in answer["predictions"]] == [
                spec.label.classes[k] for k in expected.labels.tolist()
            ]
            probabilities = np.array([p["probabilities"] for p in answer["predictions"]])
        np.testing.assert_allclose(probabilities, expected.scores, rtol=1e-6, atol=1e-7, err_msg=f"request {i}")


def test_a_hot_swap_never_mixes_versions_within_an_answer(
    spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_version(registry, spec)
    rows = [f for _, f, _ in synthetic_rows(CLIENTS * ROWS_EACH, seed=13)]
    mine = [rows[i * ROWS_EACH : (i + 1) * ROWS_EACH] for i in range(CLIENTS)]
    requests = [("/predict", orjson.dumps({"rows": own})) for own in mine]

    scoring = HeldScoring(monkeypatch)
    with scorer(spec, registry) as (server, watcher):
        clients = [Client(server.url) for _ in range(CLIENTS)]
        warm(clients)
        train_version(registry, spec, seed=1, drifted=True, champion=False)  # v2: visibly different outputs

        def promote_v2() -> None:  # while v1 is scoring the first request and the others wait to be read
            registry.set_champion(spec.name, "v2", reason="test swap")
            assert watcher.check()

        answers = send_together(clients, requests, scoring, while_held=promote_v2)

    models = {v: onnx_of(registry, spec, v) for v in ("v1", "v2")}
    assert scoring.calls == [("v1", ROWS_EACH), ("v2", (CLIENTS - 1) * ROWS_EACH)], scoring.calls
    versions = [answer["model_version"] for _, answer in answers]
    assert versions == ["v1"] + ["v2"] * (CLIENTS - 1)  # the first was scored by v1 before the swap
    for i, (status, answer) in enumerate(answers):
        assert status == 200, answer
        got = np.array([p["probabilities"] for p in answer["predictions"]])
        X = feature_matrix(spec, mine[i])
        expected = models[answer["model_version"]].predict(X).scores
        other = models["v2" if answer["model_version"] == "v1" else "v1"].predict(X).scores
        assert not np.allclose(expected, other, rtol=1e-3)  # the check below can tell the versions apart
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=f"request {i}")


class KeyedFeatures:
    """Stands in for `ServingFeatures` (which needs a stream with derived features and its topic):
    refuses rows without a `device`, as a row without its key is refused, fails unexpectedly on
    device "boom" (a bug a hostile value could reach), and adds nothing."""

    def __init__(self) -> None:
        self.versions: list[str] = []

    def append_to(self, version: str, rows: list[dict], X: np.ndarray) -> np.ndarray:
        self.versions.append(version)
        if any("device" not in row for row in rows):
            raise RequestError(422, "no key: send the key and event-time fields beside the features")
        if any(row["device"] == "boom" for row in rows):
            raise RecursionError("maximum recursion depth exceeded")
        return X


def test_no_champion_and_derived_feature_errors_reach_only_their_requests(
    spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics)
    features = KeyedFeatures()
    ctx = ScoringContext(
        spec, watcher, metrics, ScorerHealth(spec.name, watcher), BearerToken(None), HttpLimits(), features
    )
    coalescer = Coalescer(ctx)
    rows = [f | {"device": f"d{i}"} for i, (_, f, _) in enumerate(synthetic_rows(6))]
    requests = [
        rows[0:2],
        [rows[2] | {}, {k: v for k, v in rows[3].items() if k != "device"}],
        rows[4:6],
        [rows[1] | {"device": "boom"}],
    ]

    async def together() -> list[Any]:
        checked = [[{n: row[n] for n in spec.feature_names} for row in r] for r in requests]  # the key aside
        calls = [
            coalescer.score(validate_rows(spec, {"rows": c}, 10), r) for c, r in zip(checked, requests, strict=True)
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    no_model = asyncio.run(together())  # no champion yet: every request of the flush gets 503
    assert [(type(e), e.status) for e in no_model] == [(RequestError, 503)] * 4

    train_version(registry, spec)
    watcher.check()
    scored = asyncio.run(together())
    assert (coalescer.flushes, coalescer.requests) == (1, 2)  # one call for the two good requests
    assert isinstance(scored[1], RequestError) and scored[1].status == 422  # its row without a key
    assert isinstance(scored[3], RecursionError)  # an unexpected failure fails its own request only
    expected = onnx_of(registry, spec, "v1").predict(feature_matrix(spec, rows[0:2] + rows[4:6])).scores
    got = np.array(scored[0].lists()[1] + scored[2].lists()[1])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert features.versions == ["v1"] * 4


def test_a_flush_hands_its_answers_over_at_once_and_a_failing_answer_fails_alone(
    spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    train_version(registry, spec)
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics)
    watcher.check()
    ctx = ScoringContext(spec, watcher, metrics, ScorerHealth(spec.name, watcher), BearerToken(None), HttpLimits())
    handed: list[list[tuple[str, Any]]] = []
    coalescer = Coalescer(ctx, handed.append)
    rows = [f for _, f, _ in synthetic_rows(3)]

    def broken(scored: Any) -> str:
        raise ValueError("a bug in one answer")

    async def together() -> list[Any]:
        finishes = [lambda s: ("first", s.served.version), broken, lambda s: ("third", len(s.labels))]
        calls = [
            coalescer.answer(validate_rows(spec, {"rows": [row]}, 10), None, finish, f"route{i}")
            for i, (row, finish) in enumerate(zip(rows, finishes, strict=True))
        ]
        return await asyncio.gather(*calls, return_exceptions=True)

    answers = asyncio.run(together())
    assert answers[0] == ("first", "v1") and answers[2] == ("third", 1)
    assert isinstance(answers[1], ValueError)
    assert handed == [[("route0", ("first", "v1")), ("route2", ("third", 1))]]  # one call, before they resumed
    assert (coalescer.flushes, coalescer.requests) == (1, 3)  # all three scored in one call
