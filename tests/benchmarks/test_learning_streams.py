"""The benchmark's streams: seeded, and their concept changes where they say."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import learning_streams


def test_a_seeded_stream_is_the_same_every_time_and_differs_between_seeds() -> None:
    a, b = learning_streams.build("rbf_stationary_s1", 500), learning_streams.build("rbf_stationary_s1", 500)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    assert not np.array_equal(a.X, learning_streams.build("rbf_stationary_s2", 500).X)


@pytest.mark.parametrize("kind", ["abrupt", "gradual"])
def test_a_drifting_stream_follows_the_stationary_one_until_its_change(kind: str) -> None:
    still = learning_streams.build("agrawal_stationary_s1", 4_000)
    moved = learning_streams.build(f"agrawal_{kind}_s1", 4_000)
    assert moved.change == 2_000 and still.change is None
    early = 1_000 if kind == "gradual" else 2_000  # a gradual change begins before its centre
    assert np.array_equal(moved.y[:early], still.y[:early])
    # Agrawal function 2 labels the same kind of applicant differently: the labels' rate moves.
    assert abs(moved.y[3_000:].mean() - still.y[3_000:].mean()) > 0.05


def test_friedman_is_a_regression_stream_and_real_datasets_ship_with_river() -> None:
    friedman = learning_streams.build("friedman_abrupt_s1", 1_000)
    assert friedman.task == "regression" and friedman.y.dtype == np.float64
    phishing = learning_streams.build("phishing", 10_000)
    assert phishing.task == "classification" and len(phishing.y) == 1_250 and set(phishing.y) == {0, 1}


def test_an_unknown_stream_name_says_what_names_exist() -> None:
    with pytest.raises(ValueError, match="<family>_"):
        learning_streams.build("agrawal_sudden_s1", 100)
