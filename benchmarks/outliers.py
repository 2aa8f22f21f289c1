"""Outlier clipping (`model.clip_sigmas`) against no clipping, through the product's learner, in one run.

For each stream, the default configuration's prequential accuracy (or MAE) through
`learning_quality.run_streamfit` (test-then-train batch by batch, the product's gate and drift
retrains) with clipping as shipped and with `clip_sigmas: null` (the baseline):

- the learning-quality benchmark's streams (`learning_streams.full_set`), as they are: clipping
  must change nothing where no value is far out;
- heavy-tailed streams (lognormal features, classification and regression; lognormal labels), a
  rare 0/1 flag, a sparse count (mostly 0-2, rarely 10-60), a feature whose level jumps 50 standard
  deviations (a unit change), one whose spread grows a hundredfold at once and one whose spread grows
  thirty-fold over the stream, a label whose level jumps 30 standard deviations: where a legitimate
  value may be far out;
- a few of those streams with one value 1,000 standard deviations out at a quarter of the stream,
  and two regression streams with one such label: the error over the rows after it.

`python -m benchmarks.outliers [--rows N] [--batch N]` (no broker; under a minute at 20,000 rows).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from benchmarks import learning_quality
from benchmarks.common import progress
from benchmarks.learning_streams import Stream, build, full_set

OUTLIER_SIGMAS = 1_000.0
OUTLIER_STREAMS = ("sea_stationary_s1", "hyperplane_stationary_s1", "rbf_stationary_s1", "friedman_stationary_s1")
LABEL_OUTLIER_STREAMS = ("friedman_stationary_s1", "friedman_abrupt_s1")


@contextmanager
def clipping(on: bool) -> Iterator[None]:
    """`run_streamfit` with the spec as shipped (`on`) or with `model.clip_sigmas: null`."""
    original = learning_quality.spec_for

    def unclipped(*args, **kwargs):
        spec = original(*args, **kwargs)
        families = [c.model_copy(update={"clip_sigmas": None}) for c in spec.model.candidates]
        model = spec.model.model_copy(update={"clip_sigmas": None, "candidates": families})
        return spec.model_copy(update={"model": model})

    learning_quality.spec_for = original if on else unclipped
    try:
        yield
    finally:
        learning_quality.spec_for = original


def wide_streams(rows: int, seed: int) -> list[Stream]:
    """Streams where a legitimate value may be far from a feature's learned mean."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=5)
    streams = []
    for sigma in (1.0, 2.0):
        X = rng.lognormal(0, sigma, (rows, 5))
        y = ((np.log(X) @ weights + rng.normal(0, 0.5, rows)) > 0).astype(float)
        streams.append(Stream(f"lognormal{sigma:g}_s{seed}", "lognormal", "stationary", "classification", X, y, None))
        target = np.log(X) @ weights * 3 + rng.normal(0, 0.5, rows)
        name = f"lognormal_reg{sigma:g}_s{seed}"
        streams.append(Stream(name, "lognormal", "stationary", "regression", X, target, None))
    X = rng.normal(size=(rows, 5))
    target = np.exp(X @ weights * 0.6 + rng.normal(0, 0.3, rows))  # heavy-tailed (lognormal) labels
    streams.append(Stream(f"lognormal_label_s{seed}", "lognormal_label", "stationary", "regression", X, target, None))
    X = rng.normal(size=(rows, 5))
    y = ((X @ weights) > 0).astype(float)
    X[rows // 2 :, 0] += 50.0  # the concept stays; the feature's level jumps
    streams.append(Stream(f"level_jump_s{seed}", "level_jump", "abrupt", "classification", X, y, rows // 2))
    X = np.c_[(rng.random(rows) < 0.005).astype(float), rng.normal(size=(rows, 4))]  # a flag on 1 row in 200
    target = 5.0 * X[:, 0] + X[:, 1:] @ weights[1:] + rng.normal(0, 0.1, rows)
    streams.append(Stream(f"rare_flag_s{seed}", "rare_flag", "stationary", "regression", X, target, None))
    rare = (rng.random(rows) < 0.002) * rng.integers(10, 60, rows)
    counts = rng.poisson(0.2, rows) + rare  # mostly 0-2, rarely 10-60
    X = np.c_[counts.astype(float), rng.normal(size=(rows, 4))]
    y = ((0.3 * X[:, 0] + X[:, 1:] @ weights[1:] + rng.normal(0, 0.3, rows)) > 0.5).astype(float)
    streams.append(Stream(f"sparse_count_s{seed}", "sparse_count", "stationary", "classification", X, y, None))
    X = rng.normal(size=(rows, 5))
    X[rows // 2 :, 0] *= 100.0  # a regime change: the feature's spread grows a hundredfold
    target = X @ weights + rng.normal(0, 0.3, rows)
    streams.append(Stream(f"spread_jump_s{seed}", "spread_jump", "abrupt", "regression", X, target, rows // 2))
    X = rng.normal(size=(rows, 5))
    target = X @ weights + rng.normal(0, 0.3, rows)
    target[rows // 2 :] += 30 * target.std()  # the label's level jumps 30 standard deviations
    streams.append(Stream(f"label_jump_s{seed}", "label_jump", "abrupt", "regression", X, target, rows // 2))
    X = rng.normal(size=(rows, 5))
    X[:, 1] *= np.linspace(1.0, 30.0, rows)
    y = ((X @ weights) > 0).astype(float)
    streams.append(Stream(f"growing_spread_s{seed}", "growing_spread", "gradual", "classification", X, y, None))
    return streams


def with_outlier(stream: Stream) -> Stream:
    """`stream` with feature 0 of the row at a quarter of it `OUTLIER_SIGMAS` standard deviations out."""
    X = stream.X.copy()
    column = X[:, 0]
    X[len(X) // 4, 0] = column.mean() + OUTLIER_SIGMAS * column.std()
    return dataclasses.replace(stream, name=f"{stream.name}+outlier", X=X)


def with_label_outlier(stream: Stream) -> Stream:
    """A regression `stream` whose label at a quarter of it is `OUTLIER_SIGMAS` standard deviations out."""
    y = stream.y.copy()
    y[len(y) // 4] = y.mean() + OUTLIER_SIGMAS * y.std()
    return dataclasses.replace(stream, name=f"{stream.name}+label_outlier", y=y)


def measure(stream: Stream, batch: int, after: int = 0) -> dict[str, float]:
    """The prequential measure from row `after` on, clipped and not (the outlier row itself excluded)."""
    figures = {}
    for on in (True, False):
        with clipping(on):
            outcome = learning_quality.run_streamfit("default", stream, batch, 100.0).outcome
        figures["clipped" if on else "baseline"] = float(np.nanmean(outcome[after + 1 :] if after else outcome))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    cases: list[tuple[Stream, int]] = []
    for name in full_set():
        cases.append((build(name, args.rows), 0))
    for seed in (1, 2):
        cases += [(s, 0) for s in wide_streams(args.rows, seed)]
    cases += [(with_outlier(build(name, args.rows)), args.rows // 4) for name in OUTLIER_STREAMS]
    cases += [(with_label_outlier(build(name, args.rows)), args.rows // 4) for name in LABEL_OUTLIER_STREAMS]
    print(f"{'stream':34s} {'measure':8s} {'baseline':>10s} {'clipped':>10s} {'ratio':>7s}")
    for i, (stream, after) in enumerate(cases, 1):
        progress(f"{i}/{len(cases)} {stream.name}")
        figures = measure(stream, args.batch, after)
        what = "accuracy" if stream.task == "classification" else "mae"
        ratio = figures["clipped"] / figures["baseline"] if figures["baseline"] else float("nan")
        base, clipped = figures["baseline"], figures["clipped"]
        print(f"{stream.name:34s} {what:8s} {base:10.4f} {clipped:10.4f} {ratio:7.3f}", flush=True)


if __name__ == "__main__":
    main()
