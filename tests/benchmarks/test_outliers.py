"""`python -m benchmarks.outliers`'s pieces: the baseline really is unclipped, and the outlier is where it says."""

from __future__ import annotations

import numpy as np

from benchmarks import learning_quality, outliers
from benchmarks.learning_streams import build


def test_the_baseline_learns_without_clipping_and_the_shipped_spec_with_it() -> None:
    stream = build("sea_stationary_s1", 400)
    with outliers.clipping(False):
        assert learning_quality.spec_for("default", stream).model.clip_sigmas is None
    assert learning_quality.spec_for("default", stream).model.clip_sigmas == 10.0


def test_an_outlier_stream_moves_one_value_of_feature_0_far_out() -> None:
    stream = build("sea_stationary_s1", 400)
    wild = outliers.with_outlier(stream)
    changed = np.argwhere(wild.X != stream.X)
    assert changed.tolist() == [[100, 0]]
    assert wild.X[100, 0] > stream.X[:, 0].mean() + 999 * stream.X[:, 0].std()


def test_clipping_keeps_a_regression_stream_s_error_after_one_outlier() -> None:
    stream = outliers.with_outlier(build("friedman_stationary_s1", 2000))
    figures = outliers.measure(stream, 250, after=500)
    assert figures["clipped"] < 5 and figures["baseline"] > 10 * figures["clipped"], figures
