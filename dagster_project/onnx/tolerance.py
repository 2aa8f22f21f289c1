"""Parity's absolute tolerance in the units of what is compared: a regressor's outputs are in label units.

Why: `parity.atol` was an absolute 1e-4. On labels around 1e-9 any ONNX output within 1e-4 of
scikit-learn's, so any output at all, passed parity: a graph that served zeros or garbage was
registered. On labels spread around zero by 1e9, the honest float32 rounding of an output near zero
(about 1e9 * 6e-8) is far beyond 1e-4 + rtol * |output|, so a correct export failed. A regressor's
`atol` is therefore a fraction of the root mean square of scikit-learn's outputs on the batch (the
labels' scale as the model sees it): ``|onnx - sklearn| <= atol * scale + rtol * |sklearn|``. At unit
scale that is the absolute check it was; 1e-4 of the scale stays about 1,000 times float32's
rounding at any scale. Classifiers compare probabilities or decision scores, which have no label
units, so theirs stays absolute (scale 1), as does the distance to the decision boundary.
"""

from __future__ import annotations

import numpy as np

# Outputs all 0 (or none finite) say nothing of the scale: the smallest normal float32 leaves the
# check exact there, which an honest export of such a model is (float32 holds nothing smaller anyway).
SMALLEST_SCALE = float(np.finfo(np.float32).tiny)
# The root mean square is at most this many times the outputs' median magnitude: a few extreme rows (one
# output of 1e6 among outputs about 1) set the RMS alone, and atol of it then let any output pass on the rest.
TYPICAL_FACTOR = 10.0


def output_scale(sk_outputs: np.ndarray) -> float:
    """Root mean square of scikit-learn's finite outputs, at most `TYPICAL_FACTOR` times their median
    magnitude (when that is not 0), at least `SMALLEST_SCALE`."""
    values = np.asarray(sk_outputs, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not len(values):
        return SMALLEST_SCALE
    peak = float(np.max(np.abs(values)))  # divided out first: squares of 1e200 overflow
    if peak == 0.0:
        return SMALLEST_SCALE
    rms = peak * float(np.sqrt(np.mean((values / peak) ** 2)))
    typical = float(np.median(np.abs(values)))  # 0 when most outputs are: the RMS stands then
    return max(SMALLEST_SCALE, min(rms, TYPICAL_FACTOR * typical) if typical > 0 else rms)


def scaled_failure(atol: float, rtol: float, scale: float) -> str:
    """What a regressor's parity failure means at its scale, and what to do about it."""
    return (
        f"atol={atol:g} is a fraction of {scale:.3g}, the root mean square of scikit-learn's outputs (the "
        "labels' scale), so the ONNX model does not reproduce scikit-learn at that scale. Fix: if the export "
        "is at fault, choose another estimator (`streamfit check` tries each family's export); if float32 "
        "cannot hold these outputs (labels near 1e-38 or 1e38, or a large offset over a small spread), produce "
        f"the labels in other units; to accept the difference, raise parity.atol (now {atol:g} of the scale) "
        f"or parity.rtol ({rtol:g})"
    )
