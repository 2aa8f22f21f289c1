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
    label = outliers.measure(outliers.with_label_outlier(build("friedman_stationary_s1", 2000)), 250, after=500)
    feature = outliers.measure(outliers.with_outlier(build("friedman_stationary_s1", 2000)), 250, after=500)
    assert label["clipped"] < 2.5 and label["baseline"] > 4 * label["clipped"], label
    assert feature["clipped"] < 2.5 and feature["baseline"] > 1.1 * feature["clipped"], feature
