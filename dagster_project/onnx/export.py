"""ONNX export, ONNX inference, and the sklearn-vs-onnxruntime parity gate.

A model version is only registered for serving if onnxruntime reproduces scikit-learn's outputs
on real rows. skl2onnx and onnxruntime are imported inside the functions that need them, because
Dagster's code location imports this module and skl2onnx alone costs well over a second to import.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from dagster_project.learning.estimators import is_fitted
from dagster_project.learning.outputs import predicted_classes
from dagster_project.onnx.tolerance import output_scale, scaled_failure

# Highest ONNX opset an export may use: within skl2onnx 1.20's tested range (<= 22) and loadable by
# onnxruntime >= 1.18, so serving hosts may run an older runtime than the trainer. convert_sklearn
# treats it as a ceiling and stamps the lowest opset the graph actually needs (14 for these models);
# to_onnx would instead stamp exactly this value, needlessly narrowing which runtimes can load it.
TARGET_OPSET = 21
INPUT_NAME = "input"
# Model metadata key holding the category encoding the model was trained with (see
# `ingest.categories.encoding_signature`): a scorer refuses a model whose codes mean other values.
ENCODING_KEY = "streamfit.encoding"


def export_onnx(
    model: Pipeline, n_features: int, target_opset: int = TARGET_OPSET, encoding: str | None = None
) -> bytes:
    """Serialize a fitted pipeline to ONNX bytes taking float32 input of shape (rows, n_features).

    Classifiers are exported without ZipMap so ``probabilities`` is a plain (rows, classes) tensor.
    For hinge-loss SGD (no ``predict_proba``) that output holds decision scores instead. A
    category stream's `encoding` is stored in the model's metadata under `ENCODING_KEY`.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if not is_fitted(model):
        raise ValueError("cannot export an unfitted model")
    read_onnx_schemas_once()
    model = servable(model)
    estimator = model.steps[-1][1]
    options = {id(estimator): opts} if (opts := converter_options(estimator)) else None
    onx = convert_sklearn(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options=options,
        target_opset=target_opset,
    )
    if encoding:
        entry = onx.metadata_props.add()
        entry.key, entry.value = ENCODING_KEY, encoding
    return onx.SerializeToString()


def servable(model: Pipeline) -> Pipeline:
    """The pipeline as it serves: an estimator that serves one of its members (adaptive SGD serves
    its copy with the lowest recent loss) is replaced by that member, which skl2onnx converts."""
    estimator = model.steps[-1][1]
    if not hasattr(estimator, "served_estimator"):
        return model
    return Pipeline([*model.steps[:-1], (model.steps[-1][0], estimator.served_estimator())])


def converter_options(estimator: Any) -> dict[str, Any]:
    """skl2onnx options for the final estimator: classifiers without ZipMap; nearest neighbours with
    onnxruntime's CDist operator (domain com.microsoft) for their distances. skl2onnx's default builds
    them with a Scan over the query rows: 5.2 ms to score one row against a 5,000-row window,
    against 42 us with CDist, with the same outputs (max difference 2e-8)."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    options: dict[str, Any] = {}
    if is_classifier(estimator):
        options["zipmap"] = False
    if isinstance(estimator, KNeighborsClassifier | KNeighborsRegressor):
        options["optim"] = "cdist"
    return options


def read_onnx_schemas_once() -> None:
    """Make skl2onnx read the installed onnx's operator schemas once per process, not per export.

    Each conversion rebuilds skl2onnx's table of operator versions from every schema onnx knows
    (`onnx.defs.get_all_schemas_with_history`): 3-4 ms of a 5 ms export of the linear pipeline, on
    every batch. The schemas cannot change while the process runs. Where skl2onnx no longer looks
    them up by that name, nothing is changed.
    """
    from skl2onnx.common import _container

    lookup = getattr(_container, "get_all_schemas_with_history", None)
    if callable(lookup) and not hasattr(lookup, "cache_info"):
        _container.get_all_schemas_with_history = functools.cache(lookup)


@dataclass(frozen=True)
class Prediction:
    """ONNX outputs for a batch of rows.

    ``labels`` is always what scikit-learn's ``predict`` returns: class indices for classifiers,
    predicted values for regressors. ``scores`` (classifiers) is (rows, classes): probabilities, or
    decision scores for hinge models. ``values`` (regressors) is the 1-D prediction.
    """

    labels: np.ndarray
    scores: np.ndarray | None = None
    values: np.ndarray | None = None


class OnnxModel:
    """An onnxruntime session over exported model bytes.

    One intra-op thread by default: serving runs many small requests side by side, where extra
    threads per request only add contention.
    """

    def __init__(self, onnx_bytes: bytes, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"expected a single input tensor, got {[i.name for i in inputs]}")
        self.input_name: str = inputs[0].name
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        self.n_features: int | None = width if isinstance(width, int) else None
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self.encoding: str | None = self.session.get_modelmeta().custom_metadata_map.get(ENCODING_KEY)
        # skl2onnx classifiers emit (label, probabilities); regressors a single (rows, 1) tensor.
        self.is_classifier: bool = len(self.output_names) == 2

    def predict(self, X: Any) -> Prediction:
        """Run the model on rows (2-D, or one 1-D row); inputs are converted to float32."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D, got shape {X.shape}")
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise ValueError(f"model expects {self.n_features} features, got {X.shape[1]}")
        outputs = self.session.run(None, {self.input_name: X})
        if self.is_classifier:
            return Prediction(labels=np.asarray(outputs[0]), scores=np.asarray(outputs[1]))
        values = np.asarray(outputs[0]).reshape(len(X))
        return Prediction(labels=values, values=values)


@dataclass(frozen=True)
class ParityResult:
    """Outcome of comparing scikit-learn with onnxruntime on the same rows."""

    passed: bool
    max_abs_diff: float
    label_mismatches: int
    rows: int
    atol: float
    rtol: float
    reason: str = ""
    # Rows of finite inputs the float32 model gave no finite output for (scikit-learn, in float64,
    # did): judged apart, see `float32_overflows`
    unscorable: tuple[int, ...] = ()
    scale: float = 1.0  # what atol is a fraction of: a regressor's output scale (`onnx.tolerance`), else 1


def sklearn_scores(model: Pipeline, X: np.ndarray) -> np.ndarray:
    """The sklearn outputs that the ONNX graph reproduces, shaped like the ONNX output.

    Classifiers: ``predict_proba``; without it, ``decision_function`` — for binary models widened
    from (rows,) to (rows, 2) as ``[-d, d]``, which is what skl2onnx emits. Regressors: ``predict``.
    """
    if not is_classifier(model.steps[-1][1]):
        return np.asarray(model.predict(X), dtype=np.float64)
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)
    decision = np.asarray(model.decision_function(X), dtype=np.float64)
    if decision.ndim == 1:
        decision = np.column_stack([-decision, decision])
    return decision


def compare_outputs(
    sk_scores: np.ndarray,
    onnx_scores: np.ndarray,
    sk_labels: np.ndarray | None,
    onnx_labels: np.ndarray | None,
    atol: float,
    rtol: float,
    scale: float | None = None,
) -> ParityResult:
    """Parity of two sets of outputs; see ``check_parity`` for the tolerance semantics. `scale`: what
    `atol` is a fraction of (`onnx.tolerance.output_scale` for a regressor; None: atol is absolute)."""
    relative, scale = scale is not None, 1.0 if scale is None else scale
    sk_scores = np.asarray(sk_scores, dtype=np.float64)
    onnx_scores = np.asarray(onnx_scores, dtype=np.float64)
    rows = len(sk_scores)
    if rows == 0:
        return ParityResult(False, float("nan"), 0, 0, atol, rtol, "no rows to compare", scale=scale)
    if onnx_scores.size != sk_scores.size:
        reason = f"ONNX output has shape {onnx_scores.shape}, sklearn's {sk_scores.shape}"
        return ParityResult(False, float("nan"), 0, rows, atol, rtol, reason, scale=scale)
    onnx_scores = onnx_scores.reshape(sk_scores.shape)
    diff = np.abs(onnx_scores - sk_scores)
    max_abs_diff = float(np.max(diff))
    within = diff <= atol * scale + rtol * np.abs(sk_scores)  # False for NaN on either side
    reasons: list[str] = []
    if not within.all():
        bad = int(np.count_nonzero(~within.reshape(rows, -1).all(axis=1)))
        bound = f"atol={atol:g}*{scale:.3g}" if relative else f"atol={atol:g}"
        reasons.append(
            f"{bad}/{rows} rows differ beyond {bound} + rtol={rtol:g}*|sklearn| (max abs diff {max_abs_diff:.3g})"
        )
        if relative:
            reasons.append(scaled_failure(atol, rtol, scale))

    mismatches = 0
    if sk_labels is not None and onnx_labels is not None:
        mismatch = np.asarray(sk_labels) != np.asarray(onnx_labels)
        mismatches = int(np.count_nonzero(mismatch))
        if mismatches:
            # Distance to the decision boundary: half the gap between the two highest scores
            # (|p - 0.5| for binary probabilities, |d| for a binary decision value).
            top2 = np.sort(sk_scores.reshape(rows, -1), axis=1)[:, -2:]
            distance = (top2[:, 1] - top2[:, 0]) / 2 if top2.shape[1] == 2 else np.full(rows, np.inf)
            far = mismatch & ~(distance <= atol)
            if far.any():
                reasons.append(
                    f"{int(np.count_nonzero(far))} label mismatches farther than atol={atol:g} "
                    f"from the decision boundary"
                )
    return ParityResult(
        passed=not reasons,
        max_abs_diff=max_abs_diff,
        label_mismatches=mismatches,
        rows=rows,
        atol=atol,
        rtol=rtol,
        reason="; ".join(reasons),
        scale=scale,
    )


# Rows of a batch that may overflow the float32 model and still leave its parity to the other rows.
# A value far out (1e37 on a feature whose spread is 1e-3: scaled, past float32's 3.4e38) is
# accepted by the event contract, learned clipped, and refused by every scorer, which never answers
# a non-finite output; that one row failed the batch's parity at every retry and halted the stream.
# An export that is wrong gives wrong numbers on ordinary rows, so more than a few such rows fail.
OVERFLOW_SHARE = 0.05
# A row is set apart only when it holds a value this large, as sent or after the pipeline's
# transforms (in float64): times a weight of 1e8 it passes float32's 3.4e38. A NaN on a row of
# ordinary values is an export defect and fails parity like any other difference.
OVERFLOW_MAGNITUDE = 1e30


def float32_overflows(model: Any, X: np.ndarray, sk: np.ndarray, onnx_out: np.ndarray) -> np.ndarray:
    """Positions of the rows of finite inputs whose ONNX output is not finite where scikit-learn's
    is, and which hold a value of `OVERFLOW_MAGNITUDE` or more (as sent or transformed)."""
    rows = len(X)
    finite_in = np.isfinite(X).all(axis=1)
    onnx_bad = ~np.isfinite(np.asarray(onnx_out, dtype=np.float64).reshape(rows, -1)).all(axis=1)
    sk_ok = np.isfinite(np.asarray(sk, dtype=np.float64).reshape(rows, -1)).all(axis=1)
    suspects = np.flatnonzero(finite_in & onnx_bad & sk_ok)
    return np.array([i for i in suspects if _largest(model, X[i : i + 1]) >= OVERFLOW_MAGNITUDE], dtype=int)


def _largest(model: Any, row: np.ndarray) -> float:
    """The largest magnitude in `row` as sent and after each of the pipeline's transforms."""
    largest, values = float(np.max(np.abs(row))), row
    for _, step in getattr(model, "steps", [])[:-1]:
        with np.errstate(all="ignore"):
            values = np.asarray(step.transform(values), dtype=np.float64)
        largest = max(largest, float(np.nanmax(np.abs(values), initial=0.0)))
    return largest


def _without(rows: np.ndarray, *arrays: np.ndarray | None) -> list[np.ndarray | None]:
    keep = np.ones(len(arrays[0]), dtype=bool)
    keep[rows] = False
    return [None if a is None else np.asarray(a)[keep] for a in arrays]


def check_parity(model: Pipeline, onnx_bytes: bytes, X: np.ndarray, atol: float, rtol: float) -> ParityResult:
    """Does onnxruntime on ``onnx_bytes`` reproduce ``model`` on the rows ``X``?

    Tolerance semantics: every score must satisfy ``|onnx - sklearn| <= atol * scale + rtol * |sklearn|``
    (as ``numpy.isclose``, with sklearn as the reference; NaN never passes). For a regressor ``scale`` is
    the root mean square of sklearn's outputs on the compared rows (`onnx.tolerance`: an absolute atol
    let any output pass on labels around 1e-9); for a classifier it is 1. Scores are compared like
    with like: probabilities for classifiers with ``predict_proba``, decision scores for those
    without (hinge), predictions for regressors. sklearn runs on ``X`` as given (float64) and ONNX on
    ``X`` cast to float32, so the float32 rounding that serving will do is part of what is checked.

    A predicted-label mismatch is tolerated only for rows whose sklearn score lies within ``atol`` of
    the decision boundary (half the gap between the two highest class scores is ``<= atol``), where
    float32 rounding may legitimately flip the label; any other mismatch fails parity. An empty ``X``
    fails: nothing was verified.

    Rows whose extreme values overflow float32 arithmetic (`float32_overflows`: a scorer refuses them) are
    left out of the comparison and returned in ``unscorable`` while they are at most
    `OVERFLOW_SHARE` of the rows (and at least one may be); more fail parity as any other difference.
    """
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, dtype=np.float64)
    if len(X) == 0:
        return ParityResult(False, float("nan"), 0, 0, atol, rtol, "no rows to compare")
    prediction = OnnxModel(onnx_bytes).predict(X)
    with threadpool_limits(limits=1):  # gradient boosting's OpenMP threads spin on a shared host
        sk = sklearn_scores(model, X)
    if is_classifier(model.steps[-1][1]):
        if prediction.scores is None or prediction.scores.shape != sk.shape:
            got = None if prediction.scores is None else prediction.scores.shape
            reason = f"ONNX scores have shape {got}, sklearn's {sk.shape}"
            return ParityResult(False, float("nan"), 0, len(X), atol, rtol, reason)
        # sklearn's labels from the scores above: predict() would score every row a second time
        labels = predicted_classes(model, X, sk)
        return _compared(model, X, sk, prediction.scores, labels, prediction.labels, atol, rtol)
    if prediction.values is None:
        return ParityResult(False, float("nan"), 0, len(X), atol, rtol, "ONNX model is a classifier")
    return _compared(model, X, sk, prediction.values, None, None, atol, rtol, relative=True)


def _compared(
    model: Any,
    X: np.ndarray,
    sk: np.ndarray,
    onnx_out: np.ndarray,
    sk_labels: np.ndarray | None,
    onnx_labels: np.ndarray | None,
    atol: float,
    rtol: float,
    relative: bool = False,
) -> ParityResult:
    """`compare_outputs` on the rows the float32 model can score, when the others are few; with
    `relative`, atol is a fraction of those rows' output scale (an overflow row's would inflate it)."""
    overflows = float32_overflows(model, X, sk, onnx_out) if np.size(onnx_out) == np.size(sk) else np.array([], int)
    if not len(overflows) or len(overflows) > max(1.0, OVERFLOW_SHARE * len(X)) or len(overflows) == len(X):
        return compare_outputs(sk, onnx_out, sk_labels, onnx_labels, atol, rtol, output_scale(sk) if relative else None)
    sk, onnx_out, sk_labels, onnx_labels = _without(overflows, sk, onnx_out, sk_labels, onnx_labels)
    result = compare_outputs(sk, onnx_out, sk_labels, onnx_labels, atol, rtol, output_scale(sk) if relative else None)
    return dataclasses.replace(result, unscorable=tuple(int(i) for i in overflows))
