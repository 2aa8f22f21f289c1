"""Estimator factory and incremental fitting for stream models.

Every stream model is a scikit-learn ``Pipeline`` of an optional ``StandardScaler`` followed by an
estimator that supports ``partial_fit``. A stream with category features starts with an
``encode`` step instead: a ``ColumnTransformer`` that scales the numeric columns and one-hot
encodes each category column's codes (dagster_project/ingest/categories.py) with an encoder whose
categories come from the spec, so nothing about the encoding is learned from a batch and every
batch (and the exported ONNX graph) sees the same columns.

The defaults (in the estimator table) are chosen to learn well online, not to match
scikit-learn's batch-oriented defaults; a spec overrides any of them through ``spec.model.params``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from dagster_project.ingest.categories import encoder_categories
from dagster_project.learning.estimator_table import entry
from dagster_project.learning.outliers import clip_outliers, learn_feature_range, learn_labels
from dagster_project.learning.scaled_mlp import target_held
from dagster_project.spec import StreamSpec


def default_params(estimator: str, seed: int = 0) -> dict[str, Any]:
    """The online-learning defaults for an estimator name (before spec overrides)."""
    return entry(estimator).defaults(seed)


def checked_estimator(name: str, seed: int, params: dict[str, Any], where: str = "model.params") -> Any:
    """The table's estimator with its online defaults and ``params`` on top, its parameters checked.

    A key the estimator does not take, or a value it refuses, is a ValueError that names the spec's
    field (``where``) and what would be accepted, instead of a TypeError deep inside the first fit.
    """
    import inspect

    cls = entry(name).estimator_class()
    accepted = {p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]} is not a parameter of {name!r} ({cls.__name__}): remove it or use one of "
            f"{', '.join(sorted(accepted))}"
        )
    estimator = cls(**{**default_params(name, seed), **params})
    try:
        estimator._validate_params()  # scikit-learn's own checks (adaptive SGD adds its own)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where} of {name!r}: {exc}") from exc
    if not entry(name).windowed and not hasattr(estimator, "partial_fit"):  # e.g. an MLP's solver: lbfgs
        raise ValueError(
            f"{where} of {name!r}: with these parameters it cannot learn incrementally (no partial_fit): "
            f"remove the parameter that turns it off (an MLP learns batch by batch with solver sgd or adam)"
        )
    return estimator


def check_model_params(spec: StreamSpec) -> None:
    """Every family's estimator parameters, checked as a training run would build them, and an
    incremental family's by one trial `partial_fit` on a row of each class: scikit-learn checks some values
    (an MLP's layer sizes, naive Bayes' priors) only when it first fits. Last, every family is fit on a
    small synthetic batch, exported and parity-checked (`exportable`): skl2onnx converts only some options."""
    from sklearn.utils import get_tags

    # A numeric feature's null is NaN to the model: trained only when the quality rule lets nulls through.
    nulls = [f.name for f in spec.features if f.nullable and f.type != "category"]
    nulls_train = bool(nulls) and spec.quality.max_null_fraction > 0
    for family in spec.model.families:
        where = f"model.candidates[{family.label}].params" if spec.model.candidates else "model.params"
        estimator = checked_estimator(family.estimator, family.seed, family.params, where)
        if nulls_train and not get_tags(estimator).input_tags.allow_nan:
            raise ValueError(
                f"{family.estimator!r} cannot take the nulls of nullable feature(s) {nulls}, which "
                f"quality.max_null_fraction {spec.quality.max_null_fraction:g} lets into training (every such "
                "batch would fail): use an estimator that accepts missing values (hist_gradient_boosting_*, "
                "random_forest_*, extra_trees_*) or set quality.max_null_fraction: 0"
            )
        if spec.promotion.metric == "log_loss" and not hasattr(estimator, "predict_proba"):
            # Its log loss is never computed: every gate was deferred, and no version after v1 was promoted.
            raise ValueError(
                f"promotion.metric log_loss needs probabilities, and {family.estimator!r} with {where} "
                f"{family.params or {}} gives none: use a loss that gives them (log_loss, modified_huber) or "
                "promotion.metric accuracy or roc_auc"
            )
        if not entry(family.estimator).windowed:
            _trial_fit(estimator, f"{where} of {family.estimator!r}", max(2, len(spec.label.classes or [])))
    from dagster_project.learning.exportable import export_problem

    if problem := export_problem(spec):  # skl2onnx converts only some options: found here, not at every export
        raise ValueError(problem)


def _trial_fit(estimator: Any, where: str, classes: int) -> None:
    import warnings

    from sklearn.base import clone

    X, y = np.arange(classes, dtype=np.float64).reshape(-1, 1), np.arange(classes)  # a row of each class
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_classifier(estimator):
                clone(estimator).partial_fit(X, y, classes=y)
            else:
                clone(estimator).partial_fit(X, y.astype(float))
    except Exception as exc:  # noqa: BLE001 - whatever the first fit raises, the spec's parameters caused it
        raise ValueError(f"{where}: its first fit would fail ({type(exc).__name__}: {exc})") from exc


_PARAMS_CHECKED: dict[str, str | None] = {}


def model_params_problem(spec: StreamSpec) -> str | None:
    """`check_model_params`' error for the spec's model, or None; remembered per model (the sensor
    asks every tick, and building estimators imports their libraries once)."""
    # Everything the check reads: the model, and for the NaN rule the features and the null fraction.
    key = "|".join(
        (
            spec.model.model_dump_json(),
            ",".join(f"{f.name}:{f.type}:{f.nullable}" for f in spec.features),
            repr(spec.quality.max_null_fraction),
            repr(spec.label.classes),
            spec.parity.model_dump_json(),  # the export probe's tolerances
            repr(spec.promotion.metric),  # log_loss needs a model with probabilities
        )
    )
    if key not in _PARAMS_CHECKED:
        try:
            check_model_params(spec)
            _PARAMS_CHECKED[key] = None
        except ValueError as exc:
            _PARAMS_CHECKED[key] = str(exc)
    return _PARAMS_CHECKED[key]


def build_model(spec: StreamSpec) -> Pipeline:
    """A fresh, unfitted pipeline for the stream: optional scaler, then the configured estimator.

    ``spec.model.params`` override the online defaults key by key, so a spec only states what differs.
    """
    estimator = checked_estimator(spec.model.estimator, spec.model.seed, spec.model.params)
    steps: list[tuple[str, Any]] = []
    if any(f.type == "category" for f in spec.inputs):
        steps.append(("encode", build_encoder(spec)))
    elif scaled(spec):
        steps.append(("scaler", StandardScaler()))
    steps.append(("estimator", estimator))
    return Pipeline(steps)


def scaled(spec: StreamSpec) -> bool:
    """Whether numeric inputs are standardized (the table's `scaled`). Never for windowed trees: they
    do not depend on a feature's scale, and a float32 scaler in ONNX moved rows across gradient-boosting
    bin thresholds (25 of 900 rows off by up to 0.11 in probability; exact parity without it). Always
    for kNN, whose distances would otherwise be ruled by the feature with the widest range."""
    return spec.model.scale and entry(spec.model.estimator).scaled


def build_encoder(spec: StreamSpec) -> ColumnTransformer:
    """Numeric columns scaled (or passed through), each category column one-hot over its spec's codes.

    ``handle_unknown="ignore"`` is what makes an unseen value (``unseen: zero``) and a null encode
    as all zeros; ``unseen: other`` has a column for the unseen code, so it is never unknown here.
    """
    numeric = [j for j, f in enumerate(spec.inputs) if f.type != "category"]
    transformers: list[tuple[str, Any, list[int]]] = []
    if numeric:
        transformers.append(("numeric", StandardScaler() if scaled(spec) else "passthrough", numeric))
    for j, feature in enumerate(spec.inputs):
        if feature.type == "category":
            encoder = OneHotEncoder(
                categories=[encoder_categories(feature)], handle_unknown="ignore", sparse_output=False
            )
            transformers.append((f"category_{j}", encoder, [j]))
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)


def _update(step: Any, X: np.ndarray) -> None:
    """Learn one batch into a preprocessing step: a scaler's running moments, or the encoder's
    numeric scaler (its one-hot encoders are fixed by the spec; the first batch only fits them)."""
    if not isinstance(step, ColumnTransformer):
        step.partial_fit(X)
    elif not hasattr(step, "transformers_"):
        step.fit(X)
    elif isinstance(scaler := step.named_transformers_.get("numeric"), StandardScaler):
        scaler.partial_fit(X[:, step.transformers_[0][2]])


def partial_fit(
    model: Pipeline,
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray | None,
    passes: int = 1,
    clip_sigmas: float | None = None,
) -> Pipeline:
    """Update ``model`` in place with one micro-batch and return it.

    ``Pipeline`` has no ``partial_fit``, so each step is updated in turn: the scaler first (so this
    batch already counts towards the running mean/variance), then the estimator on the transformed
    rows, ``passes`` times (``spec.model.passes_per_batch``; the scaler counts the rows once).
    ``classes`` (all class indices, needed up front because a batch may lack some) is passed to
    classifiers only. Works on fresh and previously fitted pipelines alike. ``clip_sigmas``
    (``spec.model.clip_sigmas``): outlying features, and a regressor's outlying labels, are clipped
    first (`clip_outliers`, `clip_labels`).
    """
    X, _ = clip_outliers(model, np.asarray(X, dtype=np.float64), clip_sigmas)
    y = np.asarray(y)
    if classes is None and len(y) == len(X):  # regression
        y = learn_labels(model, y, clip_sigmas)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, got shape {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    if len(X) == 0:
        raise ValueError("cannot partial_fit an empty batch")
    Xt = X
    for _, step in model.steps[:-1]:
        _update(step, Xt)
        Xt = step.transform(Xt)
    learn_feature_range(model, X)
    fit_estimator(model.steps[-1][1], Xt, y, classes, passes)
    return model


def fit_estimator(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    classes: np.ndarray | None,
    passes: int = 1,
    target_learned: bool = False,
) -> None:
    """``passes`` partial_fit passes of a bare estimator over rows already in its feature space.

    A target-scaled regressor counts the batch's labels towards its units once, whatever the passes,
    and not at all with ``target_learned`` (scale-out's groups: the whole batch was counted)."""
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    if is_classifier(estimator) and classes is None:
        raise ValueError("classifiers need the full list of class indices for partial_fit")
    from sklearn.linear_model import SGDClassifier, SGDRegressor  # imported already: the estimator is one of its

    fit_kwargs = {"classes": np.asarray(classes)} if is_classifier(estimator) else {}
    if (
        isinstance(estimator, SGDClassifier | SGDRegressor)
        and (weights := stable_step_weights(estimator, np.asarray(X), passes, y, classes)) is not None
    ):
        fit_kwargs["sample_weight"] = weights
    if passes > 1 and isinstance(estimator, SGDClassifier | SGDRegressor) and not estimator.early_stopping:
        _stacked_sgd_passes(estimator, np.asarray(X), np.asarray(y), fit_kwargs, passes)
        return
    if not target_learned and hasattr(estimator, "learn_target"):
        estimator.learn_target(y)
    with target_held(estimator):
        for _ in range(passes):
            estimator.partial_fit(X, y, **fit_kwargs)


# How fast a loss's gradient grows with the error (the margin's shortfall, for squared_hinge and
# modified_huber's quadratic part): the step's `k`. Other losses' gradients are bounded.
_GRADIENT_FACTOR = {
    "squared_error": 1.0,
    "squared_epsilon_insensitive": 2.0,
    "squared_hinge": 2.0,
    "modified_huber": 2.0,
}


def stable_step_weights(
    estimator: Any, X: np.ndarray, passes: int = 1, y: np.ndarray | None = None, classes: np.ndarray | None = None
) -> np.ndarray | None:
    """Per-row weights that keep a squared-loss SGD step from overshooting: min(1, 1 / product), with
    product = k eta (|x|^2 + 1), k the loss's gradient factor (1 for squared_error, 2 for
    squared_epsilon_insensitive and a classifier's squared_hinge and modified_huber).

    Why: such a step moves a row's prediction by that product times its error (the 1 is the
    intercept), so a row with a product above 2 overshoots by more than it corrects, and every pass
    over the batch makes it worse. A 0/1 flag set on 1 row in 500 scales to about 22, which put the
    product at 2.5: a regression stream whose label the flag moved by 30 reached an MAE of 5.7e9.
    Weighted so the product is at most 1 (normalized LMS), such a row is learned in one critically
    damped step. Rows with |x|^2 below 1 / (k eta) - 1 (199 standardized features' worth at the
    default eta0 0.005) keep weight 1; wider rows are weighted too, which lowered the error on
    streams of 200-300 features (those steps were stable but over-relaxed). `eta` is the largest
    step of this call: eta0 for the constant and adaptive schedules (adaptive lowers it only over
    epochs a partial_fit never runs), eta0 / t^power_t for invscaling at the call's first step (its
    last when power_t is negative). None for losses whose step does not grow with the error (huber,
    epsilon_insensitive, log_loss, hinge) and for the 'optimal' schedule. A classifier is guarded
    alike: `sgd_classifier` with `loss: squared_error` fell to 0.44 accuracy on that flag (0.91 with).
    A classifier's `class_weight` multiplies the step of its class's rows (`_class_gain`): weighting
    the flag's class 3x diverged again (0.67 accuracy, weights 5e10) until it counted.
    """
    factor = _GRADIENT_FACTOR.get(estimator.loss)
    if factor is None or estimator.learning_rate not in ("constant", "invscaling", "adaptive"):
        return None
    eta = estimator.eta0
    if estimator.learning_rate == "invscaling":
        t = float(getattr(estimator, "t_", 1.0))  # scikit-learn's step counter: 1 before the first row
        if estimator.power_t < 0:
            t += len(X) * passes
        eta = estimator.eta0 / t**estimator.power_t
    product = factor * eta * (np.einsum("ij,ij->i", X, X) + 1.0) * _class_gain(estimator, y, classes)
    if not (product > 1.0).any():
        return None
    return np.minimum(1.0, 1.0 / product)


def _class_gain(estimator: Any, y: np.ndarray | None, classes: np.ndarray | None) -> np.ndarray | float:
    """How much a classifier's `class_weight` multiplies each row's step: its class's weight in a
    two-class problem; in one-vs-rest, the larger of that and 1 (the row is a negative, weight 1, in
    the other classes' problems). 1 without class weights."""
    if getattr(estimator, "class_weight", None) is None or y is None or classes is None:
        return 1.0
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.asarray(classes)
    weights = compute_class_weight(estimator.class_weight, classes=classes, y=np.asarray(y))
    order = np.argsort(classes)
    gain = weights[order[np.searchsorted(classes, y, sorter=order)]]
    return gain if len(classes) <= 2 else np.maximum(1.0, gain)


# At most this many bytes of rows are stacked into one SGD call (a 100 k x 5 batch takes 8 passes
# in one call; a batch of 1 M x 20 one pass per call).
STACK_BYTES = 32 * 1024 * 1024


def _stacked_sgd_passes(estimator: Any, X: np.ndarray, y: np.ndarray, fit_kwargs: dict, passes: int) -> None:
    """SGD's ``passes`` epochs as one ``partial_fit`` over the batch's rows repeated ``passes`` times.

    scikit-learn's SGD keeps nothing per call but its step count ``t_``, which grows by one a row
    either way, so epochs over stacked copies update the model exactly as one call per epoch in the
    same row order. Each call costs ~0.4 ms of validation and set-up, and its in-place shuffle
    visits the rows at random (~2 ms a pass at 100 k rows): 8 passes took 4.5 ms at 1 k rows instead
    of 1.2 ms, 85 instead of 70 ms at 100 k. So the rows are shuffled once here, in the kind of
    order sklearn's epochs had: with an int ``random_state`` every call of sklearn shuffles alike,
    so every epoch here visits one seeded permutation too; otherwise each epoch draws its own.
    ``shuffle=False`` keeps the given order. At most ``STACK_BYTES`` of rows go into one call.
    """
    n = len(X)
    if not estimator.shuffle:
        orders = [None] * passes
    elif isinstance(estimator.random_state, int | np.integer):
        orders = [np.random.RandomState(estimator.random_state).permutation(n)] * passes
    else:
        rng = check_random_state(estimator.random_state)
        orders = [rng.permutation(n) for _ in range(passes)]
    per_call = max(1, STACK_BYTES // max(1, X.nbytes + y.nbytes))
    shuffle = estimator.shuffle
    estimator.shuffle = False
    try:
        for first in range(0, passes, per_call):
            chunk = orders[first : first + per_call]
            weights = fit_kwargs.get("sample_weight")
            kwargs = {k: v for k, v in fit_kwargs.items() if k != "sample_weight"}
            if all(order is chunk[0] for order in chunk):  # one order: tile it (cheaper than indexing k times)
                Xo, yo = (X, y) if chunk[0] is None else (X[chunk[0]], y[chunk[0]])
                Xs, ys = (np.tile(Xo, (len(chunk), 1)), np.tile(yo, len(chunk))) if len(chunk) > 1 else (Xo, yo)
                if weights is not None:
                    wo = weights if chunk[0] is None else weights[chunk[0]]
                    kwargs["sample_weight"] = np.tile(wo, len(chunk))
            else:
                Xs, ys = np.concatenate([X[order] for order in chunk]), np.concatenate([y[order] for order in chunk])
                if weights is not None:
                    kwargs["sample_weight"] = np.concatenate([weights[order] for order in chunk])
            estimator.partial_fit(Xs, ys, **kwargs)
    finally:
        estimator.shuffle = shuffle


def is_fitted(model: Pipeline) -> bool:
    """True once every step of the pipeline has seen at least one batch."""
    for _, step in model.steps:
        try:
            check_is_fitted(step)
        except NotFittedError:
            return False
    return True
