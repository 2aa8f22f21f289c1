"""The shipped specs' learner against the product's default learner, on the shipped streams' own data.

The specs in `streams/` name `sgd_classifier` (plain SGD, eight passes a batch), while a spec that names
no estimator gets adaptive SGD (`DEFAULT_ESTIMATORS`, chosen over 66 benchmark streams in parts 21-22).
Whether the examples should follow the default is a question about these four streams, so this runs
each stream's own quality measure with the spec as shipped and with its estimator left out (the
default filled in, the spec's `params` kept, and once more without them), in one run:

- `phishing`: prequential ROC AUC in batches of 10, 50, 100 and 250 (`model_quality`'s measure);
- `synthetic`: rows to recover after its abrupt concept change, learner alone, no drift retrain
  (`model_quality.concept_change`'s measure; the product's drift path retrains on top of it);
- `census` and `sensors`: prequential accuracy through parse, derive and test-then-train
  (`feature_quality`'s measure).

Each variant's cost is the median wall time of its measure per row learned (parsing, deriving and
test-then-train; the rows are read or generated once, untimed) over three runs interleaved with the
other variants', after one untimed call that pays for imports.

`python -m benchmarks.shipped_learners [--rows N] [--default-params JSON] [--json FILE]` (no broker;
about 15 s). `--default-params` measures a candidate setting of the default learner the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import feature_quality, model_quality
from benchmarks.common import progress
from benchmarks.data import arrays, events, shipped_spec
from dagster_project.spec import StreamSpec

VARIANTS = ("shipped", "default", "default_no_params")
REPEATS = 3  # timed runs per variant; the cost is their median


def variant(spec: StreamSpec, name: str, default_params: dict[str, Any] | None = None) -> StreamSpec:
    """The spec as shipped, or with its estimator left out (the task's default fills it); the default's
    variants get `default_params` on top (a candidate setting of the default learner, say)."""
    if name == "shipped":
        return spec
    raw = spec.model_dump(mode="json")
    raw["model"].pop("estimator", None)
    if name == "default_no_params":
        raw["model"].pop("params", None)
    elif name != "default":
        raise ValueError(f"unknown variant {name!r}: one of {VARIANTS}")
    if default_params:
        raw["model"]["params"] = (raw["model"].get("params") or {}) | default_params
    return StreamSpec.model_validate(raw)


def _timed(measure: Callable[[], dict[str, Any]], rows: int) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    out = measure()
    return out, (time.perf_counter() - started) / rows * 1e6


def phishing(spec: StreamSpec, data: tuple[Any, Any]) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    X, y = data
    out: dict[str, Any] = {}
    for batch in model_quality.PHISHING_BATCHES:
        scores, _ = model_quality._prequential_batches(spec, X, y, batch)
        out[f"roc_auc_batch_{batch}"] = float(roc_auc_score(y[batch:], scores))
    return out


def synthetic(spec: StreamSpec, data: tuple[Any, Any]) -> dict[str, Any]:
    X, y = data
    change_at = len(X) // 2
    _, accuracy = model_quality._prequential_batches(spec, X, y, spec.batch.rows)
    windows = model_quality._windows(accuracy, spec.batch.rows)
    recovery = model_quality._recovery(windows, change_at)
    return {
        "rows_to_recover": recovery["rows_to_recover"],
        "pre_change_accuracy": recovery["pre_change_accuracy"],
        "windows_after_change": windows[change_at // model_quality.WINDOW :][:4],
    }


def featured(spec: StreamSpec, data: list) -> dict[str, Any]:
    return {"accuracy": feature_quality._streamfit(spec, data, spec.batch.rows)}


def _data(name: str, spec: StreamSpec, rows: int, feature_rows: int) -> tuple[Any, int]:
    """A stream's rows, read or generated once (outside the timing), and how many rows a measure learns."""
    from dagster_project.dev.datasets import census_events, sensor_events

    if name == "phishing":
        _, X, y, _, _ = model_quality._phishing()
        return (X, y), len(X) * len(model_quality.PHISHING_BATCHES)
    if name == "synthetic":
        return arrays(events(rows, change_at=rows // 2), spec.feature_names), rows
    source = {"census": census_events, "sensors": sensor_events}[name]
    return list(source(rows=feature_rows)), feature_rows


MEASURES: dict[str, Callable[[StreamSpec, Any], dict[str, Any]]] = {
    "phishing": phishing,
    "synthetic": synthetic,
    "census": featured,
    "sensors": featured,
}


def run(
    rows: int = 20_000, feature_rows: int = 6_000, repeats: int = REPEATS, default_params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every shipped stream's measure for each variant; the cost is the median of `repeats` timed runs."""
    out: dict[str, Any] = {"rows": rows, "feature_rows": feature_rows, "default_params": default_params, "streams": {}}
    for name, measure in MEASURES.items():
        shipped = shipped_spec(name)
        data, measured_rows = _data(name, shipped, rows, feature_rows)
        measure(shipped, data)  # untimed: the first call pays for imports
        specs = {v: variant(shipped, v, default_params) for v in VARIANTS}
        costs: dict[str, list[float]] = {v: [] for v in VARIANTS}
        out["streams"][name] = {}
        for repeat in range(repeats):  # interleaved, so a slow moment of the machine hits every variant
            for v, spec in specs.items():
                if repeat == 0:
                    params = spec.model.params or {}
                    progress(f"shipped learners: {name}, {v} ({spec.model.estimator}, params {params})")
                figures, cost = _timed(lambda spec=spec, measure=measure, data=data: measure(spec, data), measured_rows)
                costs[v].append(cost)
                out["streams"][name].setdefault(v, figures)  # the figures are deterministic: the first run's
        for v, spec in specs.items():
            out["streams"][name][v] |= {
                "us_per_row": statistics.median(costs[v]),
                "estimator": spec.model.estimator,
                "params": spec.model.params or {},
            }
    return out


def table(result: dict[str, Any]) -> list[str]:
    """One line per stream and measure: each variant's figure and its difference from the shipped one."""
    header = ("stream", "measure", "shipped", "default", "diff", "default, no params", "diff", "us/row, each")
    lines = [header]
    for name, by_variant in result["streams"].items():
        shipped = by_variant["shipped"]
        for key, value in shipped.items():
            if key in ("us_per_row", "estimator", "params", "windows_after_change", "pre_change_accuracy"):
                continue
            cells = [name, key, _fmt(value)]
            for v in VARIANTS[1:]:
                other = by_variant[v][key]
                cells += [_fmt(other), _diff(other, value)]
            cells.append(" / ".join(f"{by_variant[v]['us_per_row']:.0f}" for v in VARIANTS))
            lines.append(tuple(cells))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
    estimators = {v: next(iter(result["streams"].values()))[v]["estimator"] for v in VARIANTS}
    text.append(f"   shipped: the spec's estimator and params; default: {estimators['default']} with the spec's params")
    return text


def _fmt(value: float | int | None) -> str:
    if value is None:
        return "never"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def _diff(value: float | int | None, base: float | int | None) -> str:
    if value is None or base is None:
        return "-"
    return f"{value - base:+,}" if isinstance(value, int) else f"{value - base:+.4f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shipped_learners", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="synthetic rows (the change at half); default 20,000")
    parser.add_argument("--feature-rows", type=int, default=6_000, help="census and sensors events; default 6,000")
    parser.add_argument("--repeats", type=int, default=REPEATS, help=f"timed runs per variant (default {REPEATS})")
    parser.add_argument(
        "--default-params",
        type=json.loads,
        default=None,
        help="JSON params added to the default learner's variants, e.g. "
        '\'{"passes_options": [8, 2, 32], "max_passes": 8}\'',
    )
    parser.add_argument("--json", default=None, help="write the figures here as well")
    args = parser.parse_args(argv)
    result = run(args.rows, args.feature_rows, args.repeats, args.default_params)
    print("\n".join(table(result)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
