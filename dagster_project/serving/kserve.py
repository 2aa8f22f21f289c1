"""The Open Inference Protocol (KServe V2) REST routes beside `/predict`, for standard clients.

The stream is the model: `GET /v2/models/<stream>` describes one input tensor named `input`
(FP32, shape [-1, n_features], columns in the spec's feature order, named in `parameters`) and the
outputs `label` and `probabilities` (classification: class values, and class probabilities or
decision scores for models without predict_proba) or `value` (regression). `POST
/v2/models/<stream>[/versions/<v>]/infer` takes that tensor, `data` flat (row-major) or nested, and
answers with `model_version` = the version that scored it. Values follow the event contract's
rules, like `/predict`. Errors are `{"error": ...}`: 400 a malformed request, 401 the token, 404
another model or a version not served, 413 over the limits, 503 no model loaded.

`/v2/health/ready` and `/v2/models/<stream>/ready` mean "ready to infer over HTTP": a model is
loaded. They do not follow the Kafka link; the scorer's own readiness is `/readyz`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dagster_project.ingest.events import InvalidEvent, coerce_feature
from dagster_project.ingest.quoting import quoted
from dagster_project.serving.api import ScoringContext, answering_errors, json_response
from dagster_project.serving.limits import RequestError
from dagster_project.spec import StreamSpec

INPUT_NAME = "input"
ACCEPTED_DATATYPES = ("FP32", "FP64")  # JSON numbers either way; scored as float32
MAX_VALUE_ERRORS = 20


def label_datatype(classes: list[Any]) -> str:
    """The V2 datatype of the spec's class values (they may be strings, booleans or numbers)."""
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return "FP64"
    return "BYTES"


def output_metadata(spec: StreamSpec) -> list[dict[str, Any]]:
    if spec.task == "classification":
        classes = list(spec.label.classes or [])
        return [
            {"name": "label", "datatype": label_datatype(classes), "shape": [-1]},
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": [-1, len(classes)],
                "parameters": {"classes": classes},
            },
        ]
    return [{"name": "value", "datatype": "FP32", "shape": [-1]}]


def model_metadata(spec: StreamSpec, versions: list[str]) -> dict[str, Any]:
    return {
        "name": spec.name,
        "versions": versions,
        "platform": "onnx",
        "inputs": [
            {
                "name": INPUT_NAME,
                "datatype": "FP32",
                "shape": [-1, len(spec.inputs)],
                "parameters": {"features": spec.input_names},
            }
        ],
        "outputs": output_metadata(spec),
    }


def _row_major(data: list[Any], rows: int, width: int) -> list[Any]:
    """`data` as one row-major list: flat (rows * width values) or nested (rows lists of width values)."""
    if not any(isinstance(item, list) for item in data):
        if len(data) != rows * width:
            raise RequestError(400, f"'data' has {len(data)} values, shape [{rows}, {width}] needs {rows * width}")
        return data
    if len(data) != rows or not all(isinstance(row, list) and len(row) == width for row in data):
        raise RequestError(400, f"nested 'data' must be {rows} lists of {width} numbers (shape [{rows}, {width}])")
    return [value for row in data for value in row]


def parse_infer_request(spec: StreamSpec, body: Any, max_rows: int) -> tuple[np.ndarray, list[str] | None]:
    """The input tensor as float32 rows in the spec's feature order, and the outputs asked for (None: all)."""
    width = len(spec.inputs)
    expected = (
        f'{{"inputs": [{{"name": "{INPUT_NAME}", "datatype": "FP32", "shape": [rows, {width}], "data": [...]}}]}}'
    )
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise RequestError(400, f"the body must be an inference request {expected}")
    inputs = body["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"expected exactly one input tensor named '{INPUT_NAME}', got {len(inputs)} inputs")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise RequestError(
            400, f"unknown input {quoted(tensor.get('name'))}; this model takes one input named '{INPUT_NAME}'"
        )
    if tensor.get("datatype") not in ACCEPTED_DATATYPES:
        raise RequestError(400, f"input datatype must be FP32, got {quoted(tensor.get('datatype'))}")
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise RequestError(400, f"input shape must be [rows, {width}], got {quoted(shape)}")
    rows, columns = shape
    if columns != width:
        raise RequestError(400, f"input shape must be [rows, {width}] (features {spec.input_names}), got {shape}")
    if rows < 1:
        raise RequestError(400, "input has no rows: send at least one")
    if rows > max_rows:
        raise RequestError(413, f"too many rows: {rows} > {max_rows}; split the request")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise RequestError(400, f"input 'data' must be a list of numbers, got {type(data).__name__}")
    flat = _row_major(data, rows, width)
    X = np.empty((rows, width), dtype=np.float32)
    problems: list[str] = []
    bad = 0
    features = spec.inputs
    for i in range(rows):
        for j, feature in enumerate(features):
            try:
                X[i, j] = coerce_feature(feature, flat[i * width + j])
            except InvalidEvent as exc:
                bad += 1
                if len(problems) < MAX_VALUE_ERRORS:
                    problems.append(f"row {i}: {exc}")
    if bad:
        raise RequestError(400, f"{bad} invalid value(s) in input 'data': {'; '.join(problems)}", errors=problems)
    return X, _requested_outputs(spec, body.get("outputs"))


def _requested_outputs(spec: StreamSpec, outputs: Any) -> list[str] | None:
    if outputs is None:
        return None
    known = [o["name"] for o in output_metadata(spec)]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise RequestError(400, "'outputs' must be a list of {\"name\": ...} objects")
    names = [o.get("name") for o in outputs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(400, f"unknown output(s) {quoted(unknown)}; this model has {known}")
    return names


def infer_response(
    spec: StreamSpec,
    version: str,
    predictions: list[Any],
    scores: list[list[float]] | None,
    wanted: list[str] | None,
    request_id: Any,
) -> dict[str, Any]:
    rows = len(predictions)
    outputs: list[dict[str, Any]] = []
    if spec.task == "classification":
        classes = list(spec.label.classes or [])
        outputs.append({"name": "label", "datatype": label_datatype(classes), "shape": [rows], "data": predictions})
        width = len(scores[0]) if scores else len(classes)
        flat = [v for row in scores or [] for v in row]
        outputs.append({"name": "probabilities", "datatype": "FP32", "shape": [rows, width], "data": flat})
    else:
        outputs.append({"name": "value", "datatype": "FP32", "shape": [rows], "data": predictions})
    if wanted is not None:
        outputs = [o for o in outputs if o["name"] in wanted]
    answer: dict[str, Any] = {"model_name": spec.name, "model_version": version, "outputs": outputs}
    if isinstance(request_id, str):
        answer["id"] = request_id
    return answer


def infer_answer(ctx: ScoringContext, body: Any, version: str | None = None) -> Response:
    """`POST /v2/models/<stream>[/versions/<version>]/infer` once its body is parsed and the model checked."""
    spec = ctx.spec
    X, wanted = parse_infer_request(spec, body, ctx.limits.max_rows)
    served = ctx.served()
    if version not in (None, served.version):  # swapped since check_model
        raise RequestError(404, f"version {version!r} is no longer served")
    predictions, scores = ctx.score(served, X)
    return json_response(200, infer_response(spec, served.version, predictions, scores, wanted, body.get("id")))


def infer_path(spec: StreamSpec) -> str:
    """The unversioned inference path of the stream's model (the one standard clients call)."""
    return f"/v2/models/{spec.name}/infer"


def kserve_routes(ctx: ScoringContext) -> list[Route]:
    spec = ctx.spec

    def check_model(request: Request) -> None:
        name = request.path_params["name"]
        if name != spec.name:
            raise RequestError(404, f"unknown model {name!r}; this scorer serves {spec.name!r}")
        version = request.path_params.get("version")
        if version is not None:
            served = ctx.served()
            if version != served.version:
                raise RequestError(
                    404,
                    f"version {version!r} of {spec.name} is not served; this scorer serves {served.version}",
                )

    async def server_metadata(request: Request) -> Response:
        return json_response(200, {"name": "streamfit-scorer", "version": "2", "extensions": []})

    async def live(request: Request) -> Response:
        return json_response(200, {"live": True})

    def model_problem() -> str | None:
        """Why no model can infer now (one health snapshot, so the answer is consistent), or None."""
        report = ctx.health.report()
        return report.reasons[0] if report.detail["model_version"] is None else None

    async def ready(request: Request) -> Response:
        problem = model_problem()
        if problem is not None:
            return json_response(503, {"ready": False, "error": problem})
        return json_response(200, {"ready": True})

    @answering_errors
    async def metadata(request: Request) -> Response:
        check_model(request)
        served = ctx.watcher.current
        return json_response(200, model_metadata(spec, [served.version] if served else []))

    @answering_errors
    async def model_ready(request: Request) -> Response:
        check_model(request)
        problem = model_problem()
        if problem is not None:
            return json_response(503, {"name": spec.name, "ready": False, "error": problem})
        return json_response(200, {"name": spec.name, "ready": True})

    @answering_errors
    async def infer(request: Request) -> Response:
        ctx.token.check(request)
        check_model(request)
        version = request.path_params.get("version")
        return await ctx.read_json(request, lambda body: infer_answer(ctx, body, version))

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(model, metadata, methods=["GET"]),
        Route(versioned, metadata, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{versioned}/ready", model_ready, methods=["GET"]),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{versioned}/infer", infer, methods=["POST"]),
    ]
