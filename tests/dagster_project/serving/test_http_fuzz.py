"""Random JSON bodies never make the scorer answer 5xx: every bad request is the client's error (4xx)."""

from __future__ import annotations

import json
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.dagster_project.serving.support import Client, train_version
from tests.dagster_project.serving.test_http import http_server

FEATURES = ["x0", "x1", "x2", "x3", "x4"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too: serialized with the standard library, which allows them
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=30,
)
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
rows = st.lists(
    st.dictionaries(st.sampled_from([*FEATURES, "colour", ""]), scalars | numbers, max_size=7) | json_values,
    max_size=8,
)
predict_bodies = st.fixed_dictionaries({"rows": rows}) | json_values
shapes = st.lists(st.integers(-3, 12) | scalars, max_size=3)
tensors = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "x"]) | scalars,
        "datatype": st.sampled_from(["FP32", "FP64", "INT64", "BYTES"]) | scalars,
        "shape": shapes,
        "data": st.lists(numbers | st.lists(numbers | scalars, max_size=6) | scalars, max_size=12) | json_values,
    },
    optional={"parameters": json_values},
)
infer_bodies = (
    st.fixed_dictionaries(
        {"inputs": st.lists(tensors | json_values, max_size=2)},
        optional={"id": scalars, "outputs": st.lists(st.fixed_dictionaries({"name": scalars}), max_size=3) | scalars},
    )
    | json_values
)
raw_bodies = st.binary(max_size=64)


def test_random_bodies_get_no_5xx(spec: StreamSpec, registry: FilesystemRegistry) -> None:
    train_version(registry, spec)
    with http_server(spec, registry, max_rows=6) as (server, _):
        client = Client(server.url)
        paths = ["/predict", f"/v2/models/{spec.name}/infer"]

        @settings(
            max_examples=200,
            deadline=timedelta(seconds=2),
            database=None,  # nothing written into the work tree
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(
            st.one_of(
                st.tuples(st.just(0), predict_bodies.map(lambda b: json.dumps(b).encode())),
                st.tuples(st.just(1), infer_bodies.map(lambda b: json.dumps(b).encode())),
                st.tuples(st.integers(0, 1), raw_bodies),
            )
        )
        def post(case: tuple[int, bytes]) -> None:
            which, body = case
            status, answer, _ = client.request("POST", paths[which], body)
            assert status < 500, (paths[which], body, status, answer)
            if status != 200:
                assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer

        post()
