"""Windowed learners and competing families on a non-linear stream with an abrupt change.

River's Agrawal generator (a rule-based concept over nine loan-applicant attributes, seeded) with
an abrupt switch of its classification function halfway (function 0, then 2). Every
configuration learns through Streamfit's own path, `learning.learner.test_then_learn`, in
micro-batches: scored before it learns each batch (prequential), with a window reader over the
rows already seen standing in for Kafka (the same offsets a refit would read back). Configurations:

- `sgd`: the default `sgd_classifier` (incremental, linear);
- `hgb`: `hist_gradient_boosting_classifier` refit every batch on its default window (10,000 rows);
- `hgb_2k`: the same on a 2,000-row window (faster recovery, less data per fit);
- `hgb_drift`: `hgb` plus the product's error-rate detector (`monitors.detectors.detect_batch_change`,
  ADWIN, on the served model's per-batch error rates since the last action): at a detection the
  model is retrained as a drift retrain would (`learner.retrained`), on the rows since the batch
  where the rise began only;
- `gate`: both `sgd` and `hgb` as candidates. As in the product, each batch ends in a tail (20 %,
  at most 250 rows) that no family learns: every family is scored on it and the leader changes
  only when another family is better by more than `promotion.margin` with a significant paired
  test; the next batch learns the tail. Its prequential accuracy is the leader's, i.e. what
  would have been served.

Reported per configuration: prequential accuracy over all rows after the first batch, before and
after the change, rows after the change until the accuracy over the last 1,000 rows is back within
2 points of its level just before the change, and training seconds per 1,000 rows with the ratio
to `sgd` measured in the same run. Without `_drift` a windowed model recovers by its window sliding
past the change. The drift sensor's hysteresis, cooldown and the retrain's own gate are not
simulated: `hgb_drift` shows what a refit on post-change rows buys.

`--cost` instead prints what one refit costs per windowed classifier at its default window and its
cap (10,000 and 100,000 rows; kNN: 5,000, its cap): fit seconds (one thread), export + parity
seconds, ONNX bytes, and onnxruntime's time to score one row and a batch of 1,000 (one thread).
A tree's scoring cost is bounded by its size; a kNN's grows with its window.

`python -m benchmarks.windowed_quality [--rows N] [--batch N] [--seed N] [--cost [--quick]]` prints the table.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FEATURES = ("salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan")
RECOVERY_ROWS = 1_000  # the trailing span whose accuracy must be back near the pre-change level
RECOVERY_POINTS = 0.02


def agrawal(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Agrawal function 0 until rows/2, then function 2 (abrupt), seeded."""
    from river.datasets import synth

    # Concatenated, not ConceptDriftStream: its sigmoid overflows at width 1 (river 0.2x).
    before = itertools.islice(synth.Agrawal(classification_function=0, seed=seed), rows // 2)
    after = itertools.islice(synth.Agrawal(classification_function=2, seed=seed + 1), rows - rows // 2)
    stream = itertools.chain(before, after)
    pairs = list(itertools.islice(stream, rows))
    X = np.array([[x[f] for f in FEATURES] for x, _ in pairs], dtype=float)
    return X, np.array([label for _, label in pairs], dtype=float)


def spec_for(config: str):
    from dagster_project.spec import StreamSpec

    model = {
        "sgd": {"estimator": "sgd_classifier"},
        "hgb": {"estimator": "hist_gradient_boosting_classifier"},
        "hgb_2k": {"estimator": "hist_gradient_boosting_classifier", "window_rows": 2000},
        "hgb_drift": {"estimator": "hist_gradient_boosting_classifier"},
        "gate": {
            "candidates": [
                {"estimator": "sgd_classifier", "name": "sgd"},
                {"estimator": "hist_gradient_boosting_classifier", "name": "hgb"},
            ]
        },
    }[config]
    return StreamSpec(
        name="agrawal",
        features=[{"name": f} for f in FEATURES],
        label={"classes": [0, 1]},
        model=model,
        promotion={"metric": "accuracy"},
    )


@dataclass
class Run:
    correct: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first row, per-row correctness)
    seconds: float = 0.0
    leaders: list[str] = field(default_factory=list)
    retrains: list[int] = field(default_factory=list)  # the rows where a drift retrain refit


def run(config: str, X: np.ndarray, y: np.ndarray, batch: int) -> Run:
    """Batch by batch through `test_then_learn`; the gate configuration holds out each batch's tail."""
    from dagster_project.learning.families import choose_leader
    from dagster_project.learning.learner import retrained, rows_of, test_then_learn
    from dagster_project.registry.promotion import tail_split
    from monitors.detectors import detect_batch_change

    spec = spec_for(config)
    offsets = np.arange(len(y))
    partitions = np.zeros(len(y), dtype=np.int32)

    def read(ranges):
        s, e = ranges[0]
        return rows_of(X[s:e], y[s:e], partitions[s:e], offsets[s:e])

    out, model, start = Run(), None, 0
    errors: list[float] = []  # the served model's error rate per batch since the last action
    starts: list[int] = []  # the first row of each of those batches
    while start < len(y):
        end = min(len(y), start + batch)
        learn_end = end
        if config == "gate":
            p = spec.promotion
            learn_end = tail_split({0: (start, end)}, p.tail_rows, p.tail_fraction, p.min_rows)[0]
        if model is not None:
            hits = model.predict(X[start:learn_end]) == y[start:learn_end]
            out.correct.append((start, hits))
            errors.append(1.0 - float(hits.mean()))
            starts.append(start)
        began = time.perf_counter()
        model = test_then_learn(model, spec, read({0: (start, learn_end)}), {0: (start, learn_end)}, read).model
        if learn_end < end:
            choose_leader(model, spec, "accuracy", X[learn_end:end], y[learn_end:end])
        if config.endswith("_drift") and errors:
            found = detect_batch_change(errors, [len(c) for _, c in out.correct[-len(errors) :]], "adwin")
            if found is not None:
                since = starts[found.start_index or found.index]
                window = {0: (since, learn_end)}
                model = retrained(spec, model, read(window), window, f"drift: {found.describe()}", replay=None)
                out.retrains.append(learn_end)
                errors, starts = [], []
        out.seconds += time.perf_counter() - began
        if config == "gate":
            out.leaders.append(model.leader)
        start = learn_end
    return out


def summary(result: Run, change: int) -> dict[str, float | int | None]:
    starts = np.concatenate([np.arange(s, s + len(c)) for s, c in result.correct])
    hits = np.concatenate([c for _, c in result.correct]).astype(float)
    before = hits[starts < change]
    level = before[-RECOVERY_ROWS:].mean()
    after = hits[starts >= change]
    recovered = None
    trailing = np.convolve(after, np.ones(RECOVERY_ROWS) / RECOVERY_ROWS, mode="valid")
    back = np.flatnonzero(trailing >= level - RECOVERY_POINTS)
    if len(back):
        recovered = int(back[0] + RECOVERY_ROWS)
    return {
        "accuracy": float(hits.mean()),
        "before": float(before.mean()),
        "after": float(after.mean()),
        "recovery_rows": recovered,
        "seconds": result.seconds,
    }


def refit_cost(seed: int, quick: bool = False) -> list[dict]:
    """One refit per windowed classifier at the default window and at its cap (`quick`: 1,000 rows
    only), on Agrawal rows: fit seconds, export + parity seconds, ONNX bytes, and onnxruntime's
    scoring time for one row and for a batch of 1,000 (the scorer's two shapes of request)."""
    from dagster_project.learning import windowed
    from dagster_project.learning.estimator_table import WINDOWED_ESTIMATORS
    from dagster_project.learning.learner import rows_of
    from dagster_project.learning.pipeline import export_checked
    from dagster_project.onnx.export import OnnxModel
    from dagster_project.spec import StreamSpec

    def spec_for(name: str, rows: int | None = None) -> StreamSpec:
        model = {"estimator": name} | ({"window_rows": rows} if rows else {})
        return StreamSpec(name="cost", features=[{"name": f} for f in FEATURES], label={"classes": [0, 1]}, model=model)

    names = sorted(name for name in WINDOWED_ESTIMATORS if name.endswith("classifier"))
    plan = {
        name: [1_000] if quick else sorted({spec_for(name).model.window, spec_for(name).model.window_cap})
        for name in names
    }
    X, y = agrawal(max(max(r) for r in plan.values()) + 1_000, seed)
    queries = X[-1_000:].astype(np.float32)
    print(
        f"{'estimator':36} {'rows':>8} {'fit s':>7} {'export+parity s':>16} {'onnx KiB':>9} "
        f"{'ort us/row':>11} {'ort ms/1k':>10}"
    )
    out = []
    for name in names:
        for rows in plan[name]:
            spec = spec_for(name, rows)
            model = windowed.new_model(spec)
            current = rows_of(X[:rows], y[:rows], np.zeros(rows, dtype=np.int32), np.arange(rows))
            model.batches = [{0: (0, rows)}]
            windowed.refit(model, spec, current, {0: (0, rows)}, lambda r, current=current: current, "cost")
            artifact = export_checked(spec, model, X[:1000])
            assert artifact.passed, artifact.reason
            onnx = OnnxModel(artifact.onnx_bytes)
            one = _median_seconds(lambda onnx=onnx: [onnx.predict(queries[i : i + 1]) for i in range(100)]) / 100
            batch = _median_seconds(lambda onnx=onnx: onnx.predict(queries))
            row = {
                "estimator": name,
                "rows": rows,
                "fit_s": model.fitted_on["seconds"],
                "export_s": artifact.parity["export_seconds"],
                "onnx_bytes": len(artifact.onnx_bytes),
                "ort_us_per_row": 1e6 * one,
                "ort_ms_per_1k": 1e3 * batch,
            }
            out.append(row)
            print(
                f"{name:36} {rows:8,} {row['fit_s']:7.2f} {row['export_s']:16.2f} {row['onnx_bytes'] / 1024:9.0f} "
                f"{row['ort_us_per_row']:11.1f} {row['ort_ms_per_1k']:10.2f}",
                flush=True,
            )
    return out


def _median_seconds(call: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cost", action="store_true", help="one refit's cost per windowed estimator instead")
    parser.add_argument("--quick", action="store_true", help="with --cost: 1,000-row windows only")
    args = parser.parse_args()
    if args.cost:
        refit_cost(args.seed, args.quick)
        return
    X, y = agrawal(args.rows, args.seed)
    change = args.rows // 2
    print(f"Agrawal f0 -> f2 at row {change:,}, {args.rows:,} rows, batches of {args.batch:,}, seed {args.seed}")
    rows = {}
    for config in ("sgd", "hgb", "hgb_2k", "hgb_drift", "gate"):
        result = run(config, X, y, args.batch)
        rows[config] = summary(result, change)
        if result.leaders:
            switches = sum(a != b for a, b in itertools.pairwise(result.leaders))
            counts = {leader: result.leaders.count(leader) for leader in sorted(set(result.leaders))}
            rows[config]["leaders"] = f"{counts} ({switches} switches)"
        if result.retrains:
            rows[config]["retrains"] = result.retrains
    base = rows["sgd"]["seconds"]
    print(
        f"{'config':9} {'accuracy':>9} {'before':>7} {'after':>7} {'recovery rows':>14} {'s/1k rows':>10} {'x sgd':>7}"
    )
    for config, r in rows.items():
        recovery = "never" if r["recovery_rows"] is None else f"{r['recovery_rows']:,}"
        per_k = 1000 * r["seconds"] / args.rows
        print(
            f"{config:9} {r['accuracy']:9.4f} {r['before']:7.4f} {r['after']:7.4f} {recovery:>14} "
            f"{per_k:10.4f} {r['seconds'] / base:7.1f}"
        )
    if "leaders" in rows["gate"]:
        print(f"gate leaders by batch: {rows['gate']['leaders']}")
    for config, r in rows.items():
        if "retrains" in r:
            print(f"{config}: drift retrains after rows {r['retrains']}")


if __name__ == "__main__":
    main()
