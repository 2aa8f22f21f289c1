"""A linear pipeline's next version exported without re-running skl2onnx: its graph, converted
once, with the new weights written in.

Successive versions of a stream whose model is `StandardScaler` + `SGDClassifier`/`SGDRegressor`
(adaptive SGD's serving copy is one) differ only in numbers: the scaler's mean and scale, the
coefficients and intercepts. The graph
around them depends only on what `graph_key` lists (step types and parameters, the classes, the
shapes, the input width, the opset and the category encoding), so each process converts a key once
and keeps the result as a template (`MAX_GRAPHS` of them, least recently used first out). A key is
only kept if writing the converted model's own weights into its template gives back skl2onnx's
bytes exactly, so the rewrite is known to match this skl2onnx on that graph. Anything else (other
estimators, other steps, a changed key) is converted in full, as before.

The parity check still runs on every version against scikit-learn (`learning.pipeline.export_checked`),
and a reused graph that fails it is converted in full and checked again, so a wrong template can
cost one conversion but never a wrong model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from dagster_project.onnx.export import TARGET_OPSET, export_onnx, servable

MAX_GRAPHS = 8  # templates kept per process: one per stream a process trains is the usual case
_LINEAR = (SGDClassifier, SGDRegressor)
_graphs: OrderedDict[tuple, Any] = OrderedDict()  # graph_key -> onnx.ModelProto
_lock = threading.Lock()  # steps of one process may export on several threads


class _NotRewritable(Exception):
    """The template does not hold the places `_rewrite` writes, exactly once each."""


@dataclass(frozen=True)
class Export:
    onnx_bytes: bytes
    reused: bool  # True: the weights were written into a graph converted earlier in this process


def export_reusing(
    model: Pipeline, n_features: int, target_opset: int = TARGET_OPSET, encoding: str | None = None
) -> Export:
    """`export.export_onnx`'s bytes, from a template of the same graph when this process has one."""
    import onnx

    model = servable(model)  # adaptive SGD serves one plain SGD copy: that copy's graph
    key = graph_key(model, n_features, target_opset, encoding)
    proto = None
    with _lock:
        template = _graphs.get(key) if key is not None else None
        if template is not None:
            _graphs.move_to_end(key)
            proto = onnx.ModelProto()
            proto.CopyFrom(template)
    if proto is not None:
        try:
            return Export(_rewrite(proto, model).SerializeToString(), reused=True)
        except _NotRewritable:
            forget(model, n_features, target_opset, encoding)
    onnx_bytes = export_onnx(model, n_features, target_opset, encoding)
    if key is not None:
        _keep_if_rewritable(key, onnx_bytes, model)
    return Export(onnx_bytes, reused=False)


def forget(model: Pipeline, n_features: int, target_opset: int = TARGET_OPSET, encoding: str | None = None) -> None:
    """Drop the template `model` would reuse (its output failed the parity check)."""
    key = graph_key(servable(model), n_features, target_opset, encoding)
    if key is not None:
        with _lock:
            _graphs.pop(key, None)


def graph_key(model: Any, n_features: int, target_opset: int, encoding: str | None) -> tuple | None:
    """Everything the converted graph's structure depends on, or None for a pipeline not handled here."""
    if not isinstance(model, Pipeline) or not 1 <= len(model.steps) <= 2:
        return None
    *first, (_, estimator) = model.steps
    if type(estimator) not in _LINEAR or (first and type(first[0][1]) is not StandardScaler):
        return None
    coef, intercept = getattr(estimator, "coef_", None), getattr(estimator, "intercept_", None)
    if not isinstance(coef, np.ndarray) or not isinstance(intercept, np.ndarray):
        return None
    steps = tuple(
        (name, type(step).__qualname__, repr(sorted(step.get_params(deep=False).items()))) for name, step in model.steps
    )
    classes = getattr(estimator, "classes_", None)
    scaler = first[0][1] if first else None
    scaler_state = None
    if scaler is not None:
        mean, scale = getattr(scaler, "mean_", None), getattr(scaler, "scale_", None)
        scaler_state = (None if mean is None else np.shape(mean), None if scale is None else np.shape(scale))
    return (
        steps,
        None if classes is None else (str(classes.dtype), tuple(classes.tolist())),
        coef.shape,
        intercept.shape,
        scaler_state,
        n_features,
        target_opset,
        encoding,
    )


def _keep_if_rewritable(key: tuple, onnx_bytes: bytes, model: Pipeline) -> None:
    import onnx

    template = onnx.load_from_string(onnx_bytes)
    probe = onnx.ModelProto()
    probe.CopyFrom(template)
    try:
        rewritten = _rewrite(probe, model).SerializeToString()
    except _NotRewritable:
        return
    if rewritten == onnx_bytes:  # the rewrite reproduces skl2onnx's own conversion of this model
        with _lock:
            _graphs[key] = template
            while len(_graphs) > MAX_GRAPHS:
                _graphs.popitem(last=False)


def _rewrite(proto: Any, model: Pipeline) -> Any:
    """Write `model`'s scaler statistics and linear weights into the graph, as skl2onnx writes them."""
    *first, (_, estimator) = model.steps
    f32 = np.float32
    if first:
        scaler = first[0][1]
        width = len(scaler.scale_ if scaler.scale_ is not None else scaler.mean_)
        offset = scaler.mean_ if scaler.with_mean else np.zeros(width)
        scale = 1.0 / scaler.scale_ if scaler.with_std else np.ones(width)  # skl2onnx: float64, then float32
        node = _one(n for n in proto.graph.node if n.op_type == "Scaler")
        _set_floats(_one(a for a in node.attribute if a.name == "offset").floats, offset.astype(f32))
        _set_floats(_one(a for a in node.attribute if a.name == "scale").floats, scale.astype(f32))
    elif any(n.op_type == "Scaler" for n in proto.graph.node):
        raise _NotRewritable("a Scaler node without a scaler step")
    regressors = [n for n in proto.graph.node if n.op_type == "LinearRegressor"]
    if regressors:  # SGDRegressor: weights as the node's attributes
        node = _one(iter(regressors))
        coefficients = _one(a for a in node.attribute if a.name == "coefficients")
        intercepts = _one(a for a in node.attribute if a.name == "intercepts")
        _set_floats(coefficients.floats, estimator.coef_.astype(f32).ravel())
        _set_floats(intercepts.floats, np.asarray([estimator.intercept_], dtype=f32).ravel())
        if any(i.name in ("coef", "intercept") for i in proto.graph.initializer):
            raise _NotRewritable("weights both as attributes and as initializers")
        return proto
    coef = _one(i for i in proto.graph.initializer if i.name == "coef")
    intercept = _one(i for i in proto.graph.initializer if i.name == "intercept")
    values = estimator.coef_.T
    if tuple(coef.dims) != values.shape or tuple(intercept.dims) != estimator.intercept_.shape:
        raise _NotRewritable(f"initializer shapes {list(coef.dims)}, {list(intercept.dims)}")
    if coef.raw_data or intercept.raw_data:
        raise _NotRewritable("weights stored as raw bytes")
    _set_floats(coef.float_data, values.astype(f32).ravel())
    _set_floats(intercept.float_data, estimator.intercept_.astype(f32).ravel())
    return proto


def _one(items: Any) -> Any:
    found = list(items)
    if len(found) != 1:
        raise _NotRewritable(f"expected one place to write, found {len(found)}")
    return found[0]


def _set_floats(field: Any, values: np.ndarray) -> None:
    if len(field) != len(values):
        raise _NotRewritable(f"{len(field)} values in the graph, {len(values)} in the model")
    field[:] = values.tolist()
