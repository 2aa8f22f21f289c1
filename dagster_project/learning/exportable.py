"""Whether a family's configured estimator exports to ONNX and passes parity, found before any data.

Why: skl2onnx converts only some of scikit-learn's options, and training finds out at export, so
every run of the stream fails (or halts on parity) while `streamfit check` passed the spec. Seen:
`mlp_regressor` with `loss: poisson` (skl2onnx has no exp output: KeyError 'exp'),
`hist_gradient_boosting_regressor` with `loss: poisson` or `gamma` (the graph drops the exp link:
every prediction off), `k_neighbors_*` with `weights: distance` or a metric the CDist graph does
not run. Rather than list them, the check fits the family's own pipeline on a small synthetic batch,
exports it and compares onnxruntime with scikit-learn as training does (about 0.7 s to import
skl2onnx once, then 5-120 ms a family). When it fails, each parameter the spec sets is dropped in
turn to name the one that breaks the export.

A probe that scikit-learn itself cannot fit or score (its parameters need more rows than the probe
has, say) proves nothing about the export and is passed: the trial fit and training report those.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dagster_project.spec import ModelSpec, StreamSpec

PROBE_ROWS = 200  # enough for gradient boosting's default leaves of 20 rows to split


def probe_batch(spec: StreamSpec, rows: int = PROBE_ROWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the spec's inputs (a category column takes its codes) and learnable labels: every
    class in turn along the first input, or a positive label (Poisson and gamma losses need one)."""
    from dagster_project.ingest.categories import encoder_categories

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, len(spec.inputs)))
    for j, feature in enumerate(spec.inputs):
        if feature.type == "category":
            X[:, j] = rng.integers(0, max(1, len(encoder_categories(feature))), size=rows)
    signal = X[:, :2].sum(axis=1)
    if spec.task == "classification":
        k = len(spec.label.classes or [0, 1])
        return X, np.argsort(np.argsort(signal)) * k // rows  # quantile bins: every class, in order
    return X, np.exp(0.5 * np.tanh(signal)) + 1.0


def _fitted(spec: StreamSpec, X: np.ndarray, y: np.ndarray) -> Any | None:
    """The family's pipeline fit as training fits it, or None when scikit-learn refuses the probe."""
    from dagster_project.learning.estimator_table import entry
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.learning.windowed import _every_tree_one_leaf

    model = build_model(spec)
    classes = np.arange(len(spec.label.classes)) if spec.task == "classification" else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if entry(spec.model.estimator).windowed:
                model.fit(X, y)
            else:
                partial_fit(model, X, y, classes, clip_sigmas=spec.model.clip_sigmas)
            model.predict(X[:2])
    except Exception:  # noqa: BLE001 - not an export question (see the module)
        return None
    return None if _every_tree_one_leaf(model) else model  # training waits on such a fit, never exports it


def export_failure(spec: StreamSpec) -> str | None:
    """Why the spec's model (one family) would fail ONNX export or parity, or None."""
    from dagster_project.ingest.categories import encoding_signature
    from dagster_project.onnx.export import check_parity, export_onnx

    X, y = probe_batch(spec)
    model = _fitted(spec, X, y)
    if model is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_bytes = export_onnx(model, X.shape[1], encoding=encoding_signature(spec))
            parity = check_parity(model, onnx_bytes, X, spec.parity.atol, spec.parity.rtol)
    except Exception as exc:  # noqa: BLE001 - whatever the conversion raises, every export would
        return f"skl2onnx cannot export it ({type(exc).__name__}: {str(exc).strip()[:200]})"
    return None if parity.passed else f"its ONNX export does not match scikit-learn ({parity.reason})"


def culprits(spec: StreamSpec, family: ModelSpec) -> list[str]:
    """The parameters the family sets whose removal alone makes it export (all of them when none does)."""
    found = []
    for key in family.params:
        without = family.model_copy(update={"params": {k: v for k, v in family.params.items() if k != key}})
        if export_failure(spec.for_family(without)) is None:
            found.append(key)
    return found or list(family.params)


def export_problem(spec: StreamSpec) -> str | None:
    """The first family that cannot be exported and served, with the parameter(s) to change; None if all can."""
    for family in spec.model.families:
        why = export_failure(spec.for_family(family))
        if why is None:
            continue
        where = f"model.candidates[{family.label}].params" if spec.model.candidates else "model.params"
        keys = culprits(spec, family)
        if not keys:
            return (
                f"{family.estimator!r} with its defaults: {why}. Every training run would fail at export: "
                "choose another estimator"
            )
        named = ", ".join(f"{where}.{k}={family.params[k]!r}" for k in keys)
        return (
            f"{named} of {family.estimator!r}: {why}. Every training run would fail at export or parity: remove "
            f"{'it' if len(keys) == 1 else 'them'} or choose a value skl2onnx converts (the estimator's default does)"
        )
    return None
