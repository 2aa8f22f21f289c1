"""The Open Inference Protocol (KServe V2) routes: health, metadata, inference, and every error."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import Client, onnx_of, synthetic_rows, train_version
from tests.dagster_project.serving.test_http import ROW, http_server


def tensor(rows: list[list[float]], **overrides) -> dict:
    return {"name": "input", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "data": rows} | overrides


def infer(client: Client, path: str, body: object) -> tuple[int, dict]:
    """POST `body`; the string DEEP in it is sent as a list nested 1,000 deep (orjson writes at most 254)."""
    status, answer, _ = client.request("POST", path, orjson.dumps(body).replace(b'"DEEP"', b"[" * 1000 + b"]" * 1000))
    return status, answer


def test_health_metadata_and_inference(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    model, infer_path = f"/v2/models/{spec.name}", f"/v2/models/{spec.name}/infer"
    with http_server(spec, registry) as (server, watcher):
        client = Client(server.url)
        assert client.request("GET", "/v2/health/live")[:2] == (200, {"live": True})
        status, body, _ = client.request("GET", "/v2/health/ready")
        assert (status, body["ready"]) == (503, False)
        assert body["error"].startswith(f"waiting for a champion in {registry.root.resolve()} ")
        status, body, _ = client.request("GET", f"{model}/ready")
        assert (status, body["ready"]) == (503, False)
        status, body, _ = client.request("GET", model)
        assert (status, body["versions"]) == (200, [])  # the interface is known before any version
        status, body = infer(client, infer_path, {"inputs": [tensor([list(ROW.values())])]})
        assert (status, body) == (503, {"error": "no champion model loaded yet; retry later"})

        train_version(registry, spec)
        assert watcher.check()
        assert client.request("GET", "/v2/health/ready")[:2] == (200, {"ready": True})
        assert client.request("GET", f"{model}/ready")[:2] == (200, {"name": spec.name, "ready": True})
        assert client.request("GET", "/v2")[:2] == (200, {"name": "streamfit-scorer", "version": "2", "extensions": []})
        status, metadata, _ = client.request("GET", model)
        assert status == 200
        assert metadata == {
            "name": spec.name,
            "versions": ["v1"],
            "platform": "onnx",
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [-1, 5], "parameters": {"features": spec.feature_names}}
            ],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [-1]},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [-1, 2],
                    "parameters": {"classes": ["neg", "pos"]},
                },
            ],
        }
        assert client.request("GET", f"{model}/versions/v1")[:2] == (200, metadata)

        features = [f for _, f, _ in synthetic_rows(20)]
        X = [[f[name] for name in spec.feature_names] for f in features]
        expected = onnx_of(registry, spec, "v1").predict(np.array(X))
        labels = [spec.label.classes[i] for i in expected.labels]
        flat = [v for row in X for v in row]
        for data in (X, flat):  # nested rows or flat row-major
            status, body = infer(client, infer_path, {"id": "req-1", "inputs": [tensor(X, data=data)]})
            assert status == 200, body
            assert (body["model_name"], body["model_version"], body["id"]) == (spec.name, "v1", "req-1")
            label, probabilities = body["outputs"]
            assert label == {"name": "label", "datatype": "BYTES", "shape": [20], "data": labels}
            assert probabilities["shape"] == [20, 2] and probabilities["datatype"] == "FP32"
            assert probabilities["data"] == expected.scores.ravel().tolist()

        status, body = infer(client, infer_path, {"inputs": [tensor(X)], "outputs": [{"name": "probabilities"}]})
        assert status == 200 and [o["name"] for o in body["outputs"]] == ["probabilities"] and "id" not in body
        status, body = infer(client, f"{model}/versions/v1/infer", {"inputs": [tensor(X)]})
        assert (status, body["model_version"]) == (200, "v1")

        # Large requests are parsed and scored off the event loop; same answers.
        many = [list(ROW.values())] * 2000
        status, body = infer(client, infer_path, {"inputs": [tensor(many)]})
        assert status == 200 and body["outputs"][0]["shape"] == [2000]

        for path in (
            "/v2/models/other",
            "/v2/models/other/ready",
            f"{model}/versions/v9",
            f"{model}/versions/v9/ready",
        ):
            status, body, _ = client.request("GET", path)
            assert status == 404 and body["error"], path
        status, body = infer(client, "/v2/models/other/infer", {"inputs": [tensor(X)]})
        assert (status, body["error"]) == (404, f"unknown model 'other'; this scorer serves '{spec.name}'")
        status, body = infer(client, f"{model}/versions/v9/infer", {"inputs": [tensor(X)]})
        assert (status, body["error"]) == (404, f"version 'v9' of {spec.name} is not served; this scorer serves v1")
        status, body, response = client.request("GET", infer_path)
        assert (status, response.getheader("Allow"), body["error"]) == (405, "POST", f"use POST for {infer_path}")


DEEP = "DEEP"  # see infer


def test_inference_errors(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    path = f"/v2/models/{spec.name}/infer"
    row = list(ROW.values())
    with http_server(spec, registry, max_rows=5, max_body_bytes=4096) as (server, _):
        client = Client(server.url)
        status, body, _ = client.request("POST", path, b'{"inputs": [')
        assert status == 400 and body["error"].startswith("invalid JSON")
        cases = [
            ([1, 2], 400, "the body must be an inference request"),
            ({"inputs": []}, 400, "expected exactly one input tensor named 'input', got 0 inputs"),
            ({"inputs": [tensor([row]), tensor([row])]}, 400, "expected exactly one input tensor"),
            ({"inputs": [tensor([row], name="x")]}, 400, "unknown input 'x'"),
            ({"inputs": [tensor([row], datatype="BYTES")]}, 400, "input datatype must be FP32, got 'BYTES'"),
            ({"inputs": [tensor([row], shape=[5])]}, 400, "input shape must be [rows, 5], got [5]"),
            ({"inputs": [tensor([row], shape=[1, 4])]}, 400, "input shape must be [rows, 5] (features"),
            ({"inputs": [tensor([row], shape=[1, True])]}, 400, "input shape must be [rows, 5]"),
            ({"inputs": [tensor([row], shape=[0, 5], data=[])]}, 400, "input has no rows"),
            ({"inputs": [tensor([row] * 6)]}, 413, "too many rows: 6 > 5; split the request"),
            ({"inputs": [tensor([row], data="1,2")]}, 400, "input 'data' must be a list of numbers, got str"),
            ({"inputs": [tensor([row], data=row[:4])]}, 400, "'data' has 4 values, shape [1, 5] needs 5"),
            ({"inputs": [tensor([row, row], data=[row, row[:4]])]}, 400, "nested 'data' must be 2 lists of 5 numbers"),
            ({"inputs": [tensor([row], data=[[row]])]}, 400, "nested 'data' must be 1 lists of 5 numbers"),
            (
                {"inputs": [tensor([row, row], data=[row, ["a", *row[1:]]])]},
                400,
                "1 invalid value(s) in input 'data': row 1: feature 'x0' must be a number, got str 'a'",
            ),
            ({"inputs": [tensor([row], data=[None, *row[1:]])]}, 400, "1 invalid value(s) in input 'data': row 0:"),
            ({"inputs": [tensor([row])], "outputs": [{"name": "score"}]}, 400, "unknown output(s) ['score']"),
            ({"inputs": [tensor([row])], "outputs": "label"}, 400, "'outputs' must be a list"),
            # Nested 1,000 deep (valid JSON; Python's repr of it raised RecursionError: a 500)
            ({"inputs": [tensor([row], name=DEEP)]}, 400, "unknown input [[[[...]]]]"),
            ({"inputs": [tensor([row], datatype=DEEP)]}, 400, "input datatype must be FP32, got [[[[...]]]]"),
            ({"inputs": [tensor([row], shape=DEEP)]}, 400, "input shape must be [rows, 5], got [[[[...]]]]"),
            ({"inputs": [tensor([row])], "outputs": [{"name": DEEP}]}, 400, "unknown output(s) [[[[...]]]]; "),
            ({"inputs": [tensor([row], data=[DEEP, *row[1:]])]}, 400, "nested 'data' must be 1 lists of 5 numbers"),
        ]
        for request, code, message in cases:
            status, body = infer(client, path, request)
            assert (status, body["error"][: len(message)]) == (code, message), request
        status, body, _ = client.request("POST", path, b" " * 5000)
        assert (status, body["error"]) == (413, "body of 5000 bytes exceeds the limit of 4096 bytes")
        assert infer(client, path, {"inputs": [tensor([row])]})[0] == 200  # after the closed connection


def test_regression_outputs_value(registry: FilesystemRegistry) -> None:
    spec = synthetic_spec(task="regression", label={}, model={"estimator": "sgd_regressor"})
    train_version(registry, spec)
    with http_server(spec, registry) as (server, _):
        client = Client(server.url)
        status, metadata, _ = client.request("GET", f"/v2/models/{spec.name}")
        assert metadata["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [-1]}]
        row = [ROW[n] for n in spec.feature_names]
        status, body = infer(client, f"/v2/models/{spec.name}/infer", {"inputs": [tensor([row, row])]})
    assert status == 200, body
    (value,) = body["outputs"]
    expected = float(onnx_of(registry, spec, "v1").predict(np.array([row])).values[0])
    assert (value["name"], value["shape"], value["datatype"]) == ("value", [2], "FP32")
    assert value["data"] == [pytest.approx(expected), pytest.approx(expected)]


def test_token_guards_inference_only(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    model = f"/v2/models/{spec.name}"
    request = orjson.dumps({"inputs": [tensor([list(ROW.values())])]})
    with http_server(spec, registry, token="s3cret-token") as (server, _):
        anonymous = Client(server.url)
        status, body, response = anonymous.request("POST", f"{model}/infer", request)
        assert status == 401 and response.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert anonymous.request("POST", f"{model}/infer", request, {"Authorization": "Bearer nope"})[0] == 401
        for path in ("/v2/health/live", "/v2/health/ready", model, f"{model}/ready", "/livez", "/readyz"):
            assert anonymous.request("GET", path)[0] == 200, path
        status, body, _ = Client(server.url, token="s3cret-token").request("POST", f"{model}/infer", request)
        assert (status, body["model_version"]) == (200, "v1")
