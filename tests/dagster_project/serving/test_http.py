"""The scorer's HTTP API: predictions, every 4xx/503 case, token auth, health and metrics (no Kafka needed)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import orjson
import pytest

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.serving import ChampionWatcher, ScorerHTTPServer, ScorerMetrics
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import Client, onnx_of, synthetic_rows, train_version

ROW = {"x0": 0.5, "x1": -1.0, "x2": 0.25, "x3": 2.0, "x4": 0.0}


@contextmanager
def http_server(
    spec: StreamSpec, registry: FilesystemRegistry, **options
) -> Iterator[tuple[ScorerHTTPServer, ChampionWatcher]]:
    metrics = ScorerMetrics(spec.name)
    watcher = ChampionWatcher(registry, spec, metrics)
    watcher.check()
    server = ScorerHTTPServer(("127.0.0.1", 0), spec, watcher, metrics, **options).start()
    try:
        yield server, watcher
    finally:
        server.stop()


def test_predict_health_and_metrics(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    with http_server(spec, registry) as (server, watcher):
        client = Client(server.url)
        status, body = client.predict([ROW])
        assert (status, body["error"]) == (503, "no champion model loaded yet; retry later")
        status, body, _ = client.request("GET", "/healthz")
        assert (status, body["status"], body["model_version"] if "model_version" in body else None) == (
            503,
            "waiting for a champion",
            None,
        )

        assert client.request("GET", "/livez")[:2] == (200, {"live": True})
        status, body, _ = client.request("GET", "/readyz")
        assert (status, body["ready"]) == (503, False)
        assert body["error"].startswith(f"waiting for a champion in {registry.root.resolve()} ")

        train_version(registry, spec)
        assert watcher.check()
        status, body, _ = client.request("GET", "/healthz")
        assert (status, body["model_version"], body["ready"], body["kafka"]) == (200, "v1", True, None)
        assert client.request("GET", "/readyz")[:2] == (200, {"ready": True})  # no Kafka loop: the model suffices

        rows = [features for _, features, _ in synthetic_rows(50)]
        status, body = client.predict(rows)
        assert status == 200, body
        assert body["model_version"] == "v1"
        expected = onnx_of(registry, spec, "v1").predict(np.array([[r[n] for n in spec.feature_names] for r in rows]))
        assert [p["prediction"] for p in body["predictions"]] == [spec.label.classes[i] for i in expected.labels]
        assert [p["probabilities"] for p in body["predictions"]] == expected.scores.tolist()

        status, text, response = client.request("GET", "/metrics")
        assert status == 200 and response.getheader("Content-Type").startswith("text/plain")
        assert f'streamfit_predictions_total{{source="http",stream="{spec.name}",version="v1"}} 50.0' in text
        assert f'streamfit_model_version{{stream="{spec.name}"}} 1.0' in text
        assert f'streamfit_http_requests_total{{code="503",path="/predict",stream="{spec.name}"}} 1.0' in text
        assert "streamfit_inference_latency_seconds_bucket" in text


def test_regression_stream_returns_values(registry: FilesystemRegistry) -> None:
    spec = synthetic_spec(task="regression", label={}, model={"estimator": "sgd_regressor"})
    train_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        status, body = Client(server.url).predict([ROW, ROW])
    assert status == 200, body
    assert [p["probabilities"] for p in body["predictions"]] == [None, None]
    expected = onnx_of(registry, spec, "v1").predict(np.array([[ROW[n] for n in spec.feature_names]]))
    assert body["predictions"][0]["prediction"] == pytest.approx(float(expected.values[0]))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_null_the_model_cannot_score_is_a_422_not_a_made_up_prediction(
    registry: FilesystemRegistry, task: str
) -> None:
    """A nullable feature's null reaches a linear model as NaN: its scores (or value) are NaN, and the
    class choice answered the first class with null probabilities. The row is refused, named."""
    features = [{"name": "x0", "nullable": True}, *({"name": f"x{i}"} for i in range(1, 5))]
    options = {"label": {}, "model": {"estimator": "sgd_regressor"}} if task == "regression" else {}
    spec = synthetic_spec(task=task, features=features, **options)
    train_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        client = Client(server.url)
        status, body = client.predict([ROW, ROW | {"x0": None}])
        assert status == 422, body
        assert body["error"].startswith("1 of 2 rows cannot be scored: row 1: the model gives no finite prediction")
        assert body["rows"] == [{"row": 1, "errors": [body["error"].split("row 1: ", 1)[1]]}]
        assert "null 'x0'" in body["error"]
        data = [list(ROW.values()), [None, *list(ROW.values())[1:]]]
        request = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 5], "data": data}]}
        status, answer, _ = client.request("POST", f"/v2/models/{spec.name}/infer", orjson.dumps(request))
        assert status == 422 and "null 'x0'" in answer["error"], answer
        assert client.predict([ROW])[0] == 200


def test_validation_errors(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with http_server(spec, registry, max_body_bytes=4096, max_rows=5) as (server, _):
        client = Client(server.url)

        status, body, _ = client.request("POST", "/predict", b'{"rows": [')
        assert status == 400 and body["error"].startswith("invalid JSON")

        for bad_body, message in [
            (b"[1, 2]", 'the body must be a JSON object {"rows"'),
            (b'{"row": []}', 'the body must be a JSON object {"rows"'),
            (b'{"rows": {"x0": 1}}', "'rows' must be a list of objects, got dict"),
            (b'{"rows": []}', "'rows' is empty"),
        ]:
            status, body, _ = client.request("POST", "/predict", bad_body)
            assert (status, body["error"][: len(message)]) == (422, message)

        missing = {k: v for k, v in ROW.items() if k != "x3"}
        status, body = client.predict([ROW, missing, ROW | {"colour": 1.0}])
        assert status == 422
        assert body["missing"] == ["x3"] and body["unknown"] == ["colour"]
        assert body["rows"] == [{"row": 1, "missing": ["x3"]}, {"row": 2, "unknown": ["colour"]}]
        assert body["error"].startswith("2 of 3 rows are invalid: missing feature(s) ['x3']; unknown feature(s)")
        status, body = client.predict([ROW | {"label": 1}])  # an event's row copied whole, label and all
        assert status == 422 and body["unknown"] == ["label"]
        assert (
            "unknown feature(s) ['label'] (a row holds features only: /predict needs no label; labels for live "
            f"quality go to {spec.labels_topic})" in body["error"]
        )

        status, body = client.predict([ROW | {"x1": "high"}, ROW | {"x2": True}, ROW | {"x4": None}, "x"])
        assert status == 422
        assert [r["row"] for r in body["rows"]] == [0, 1, 2, 3]
        assert body["rows"][0]["errors"] == ["feature 'x1' must be a number, got str 'high'"]
        assert body["rows"][1]["errors"] == ["feature 'x2' must be a number, got bool True"]
        assert body["rows"][2]["errors"] == ["feature 'x4' is null but the spec does not allow nulls"]
        assert body["rows"][3]["errors"] == ["row must be an object, got str"]

        status, body = client.predict([ROW] * 6)
        assert (status, body["error"]) == (413, "too many rows: 6 > 5; split the request")
        status, body, _ = client.request("POST", "/predict", b" " * 5000)
        assert (status, body["error"]) == (413, "body of 5000 bytes exceeds the limit of 4096 bytes")

        status, body = client.predict([ROW] * 5)  # the connection closed after the 413 is reopened
        assert status == 200 and len(body["predictions"]) == 5

        status, body, response = client.request("GET", "/predict")
        assert (status, response.getheader("Allow"), body["error"]) == (405, "POST", "use POST for /predict")
        status, body, response = client.request("POST", "/healthz", b"{}")
        assert (status, body["error"]) == (405, "use GET for /healthz")
        status, body, _ = client.request("GET", "/nope")
        assert status == 404 and body["error"].startswith("no such path /nope; try POST /predict")

        for length in ("-1", "abc", "1e3"):  # refused by the HTTP parser itself (plain text), as malformed HTTP
            status, body, response = client.request("POST", "/predict", b"{}", {"Content-Length": length})
            assert (status, response.getheader("Connection")) == (400, "close"), length

        # A body without Content-Length (chunked) is refused, not read until the client gives up.
        with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=5) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 411 ")

        # Requests are counted per route (its template), unknown paths together.
        text = client.request("GET", "/metrics")[1]
        assert f'streamfit_http_requests_total{{code="413",path="/predict",stream="{spec.name}"}} 2.0' in text
        assert f'streamfit_http_requests_total{{code="404",path="other",stream="{spec.name}"}} 1.0' in text


def test_a_nan_or_infinity_in_a_body_is_named_as_training_names_it(
    spec: StreamSpec, registry: FilesystemRegistry
) -> None:
    """A client's json.dumps writes NaN by default; the 400 said only "unexpected character, expected a
    JSON value", where the same row on the events topic is refused naming the literal and the fix."""
    train_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        client = Client(server.url)
        for raw, token, position in [
            (b'{"rows": [{"x0": NaN}]}', "NaN", 17),
            (b'{"rows": [{"x0": -Infinity}]}', "Infinity", 18),
        ]:
            status, body, _ = client.request("POST", "/predict", raw)
            assert (status, body["error"]) == (
                400,
                f"invalid JSON: {token} at character {position} is not a JSON number (Python's json.dumps writes "
                "it unless allow_nan=False): send a finite number, or null for a nullable feature",
            )


def test_bearer_token(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with http_server(spec, registry, token="s3cret-token") as (server, _):
        anonymous = Client(server.url)
        status, body, response = anonymous.request("POST", "/predict", b'{"rows": []}')
        assert status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        for header in ("Bearer wrong", "Bearer s3cret-token-and-more", "Basic s3cret-token", "s3cret-token"):
            status, body = anonymous.predict([ROW], Authorization=header)
            assert status == 401, header
        assert anonymous.request("GET", "/healthz")[0] == 200  # probes and scrapers need no token
        assert anonymous.request("GET", "/metrics")[0] == 200

        status, body = Client(server.url, token="s3cret-token").predict([ROW])
        assert (status, body["model_version"]) == (200, "v1")


def test_a_bug_is_a_json_500(spec: StreamSpec, registry: FilesystemRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_project.serving import ServedModel

    def broken(self, X):
        raise RuntimeError("boom")

    train_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        monkeypatch.setattr(ServedModel, "outputs", broken)  # what every scoring path calls
        status, body = Client(server.url).predict([ROW])
        assert (status, body) == (500, {"error": "internal error (RuntimeError); see the scorer's log"})
        monkeypatch.undo()
        assert Client(server.url).predict([ROW])[0] == 200
