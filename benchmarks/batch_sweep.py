"""Issue 17's targets against the micro-batch size: one line per `learning_quality --json` run.

`python -m benchmarks.learning_quality --batch B --json F` measures the targets at one batch size; a
user choosing `batch.rows` needs them side by side. This reads several such files and prints, per
batch size, how many streams miss each target (and how many of those misses remain against River
fed in the same batches, the learner gaps of part 15), the median training cost per row of each
model, and the misses left at the smallest batch with their gap. Counts come from the per-stream
verdicts, over the streams every size holds, so a run on a declared subset compares like with like;
files of one size on disjoint streams are joined.

`python -m benchmarks.batch_sweep results/learning_quality/batch_sweep_*.json`
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

LEVEL = 0.05  # the McNemar level learning_quality's summary uses (promotion.significance's default)
TARGETS = ("best", "recovery", "default", "stationary")
# Per target: the verdict that says it is met, and the one that says it is met against River in the
# same batches (None: that target has no batched reference).
VERDICTS = {
    "best": ("best_beats_river", "best_beats_batched_river"),
    "recovery": ("recovers_before_arf", "recovers_as_fast_as_arf_batched"),
    "default": ("default_beats_lr", "default_beats_lr_batched"),
}


def _significant(verdict: dict, key: str) -> bool:
    """McNemar one-sided p < LEVEL for the default against River LR (`default_vs_lr`) or its batched twin."""
    test = verdict.get(key) or {}
    return test.get("p_value") is not None and test["p_value"] < LEVEL


def misses(reports: Sequence[dict]) -> dict[str, dict[str, list[str]]]:
    """Per target, the streams that miss it ("all"), those that miss it against River in the same
    batches too ("learner"), and for "default" the significant misses of both kinds."""
    out: dict[str, dict[str, list[str]]] = {t: {"all": [], "learner": []} for t in TARGETS}
    out["default"] |= {"significant": [], "learner_significant": []}
    for r in reports:
        v, name = r["verdict"], r["stream"]
        for target, (met, met_batched) in VERDICTS.items():
            if v.get(met) is False:
                out[target]["all"].append(name)
                if v.get(met_batched) is False:
                    out[target]["learner"].append(name)
        if v.get("default_beats_lr") is False and _significant(v, "default_vs_lr"):
            out["default"]["significant"].append(name)
        if v.get("default_beats_lr_batched") is False and _significant(v, "default_vs_lr_b"):
            out["default"]["learner_significant"].append(name)
        if v.get("false_alarms"):
            out["stationary"]["all"].append(name)
    return out


def median_costs(reports: Sequence[dict]) -> dict[str, float]:
    """Median microseconds per row of each model over the streams (test, learn, drift logic; River:
    predict + learn)."""
    models = list(reports[0]["table"]) if reports else []
    return {m: float(np.median([r["table"][m]["us_per_row"] for r in reports])) for m in models}


def gaps(reports: Sequence[dict], found: dict[str, dict[str, list[str]]]) -> list[str]:
    """One line per miss: the stream and how far it is off (accuracy, MAE: lower is better; recovery
    rows; retrains on a stationary stream)."""
    by_name = {r["stream"]: r for r in reports}
    lines = []
    for name in found["best"]["all"]:
        t, v = by_name[name]["table"], by_name[name]["verdict"]
        sf, rv = v["best_streamfit"], v["best_river"]
        sign = 1.0 if by_name[name]["task"] == "classification" else -1.0
        gap = sign * (t[sf]["metric"] - t[rv]["metric"])
        lines.append(f"best: {name} {sf} {t[sf]['metric']:.4f} vs {rv} {t[rv]['metric']:.4f} ({gap:+.4f})")
    for name in found["recovery"]["all"]:
        t, v = by_name[name]["table"], by_name[name]["verdict"]
        mine, arf = t[v["best_streamfit"]]["recovery"], t["river_arf"]["recovery"]
        lines.append(f"recovery: {name} {v['best_streamfit']} {mine} rows vs ARF {arf}")
    for name in found["default"]["all"]:
        t, v = by_name[name]["table"], by_name[name]["verdict"]
        sign = 1.0 if by_name[name]["task"] == "classification" else -1.0
        p = (v.get("default_vs_lr") or {}).get("p_value")
        lines.append(
            f"default: {name} {t['default']['metric']:.4f} vs River LR {t['river_lr']['metric']:.4f} "
            f"({sign * (t['default']['metric'] - t['river_lr']['metric']):+.4f}"
            + (f", p {p:.2g})" if p is not None else ")")
        )
    for name in found["stationary"]["all"]:
        t = by_name[name]["table"]
        which = ", ".join(f"{m} {row['retrains']}" for m, row in t.items() if row["retrains"])
        lines.append(f"stationary: {name} retrains {which}")
    return lines


def merged(runs: Sequence[dict]) -> list[dict]:
    """One run per batch size: runs of one size on disjoint stream subsets (a long size run in parts)
    are joined; a stream measured twice at one size is refused rather than counted twice."""
    out: dict[int, dict] = {}
    for run in runs:
        batch = int(run["batch"])
        joined = out.setdefault(batch, {"batch": batch, "reports": []})
        seen = {r["stream"] for r in joined["reports"]}
        twice = seen & {r["stream"] for r in run["reports"]}
        if twice:
            raise ValueError(f"batch {batch}: {sorted(twice)} measured in more than one file")
        joined["reports"] = [*joined["reports"], *run["reports"]]
    return list(out.values())


def common(runs: Sequence[dict]) -> list[dict]:
    """Each run restricted to the streams every run holds, in the first run's order."""
    shared = set.intersection(*({r["stream"] for r in run["reports"]} for run in runs)) if runs else set()
    return [run | {"reports": [r for r in run["reports"] if r["stream"] in shared]} for run in runs]


def sweep(runs: Sequence[dict]) -> dict[int, dict[str, object]]:
    """Per batch size (ascending): misses per target, median costs, abrupt streams counted."""
    out = {}
    for run in sorted(common(runs), key=lambda run: run["batch"]):
        reports = run["reports"]
        out[int(run["batch"])] = {
            "streams": len(reports),
            "abrupt": sum(1 for r in reports if r["verdict"].get("recovers_before_arf") is not None),
            "misses": misses(reports),
            "us_per_row": median_costs(reports),
        }
    return out


def print_sweep(table: dict[int, dict[str, object]], runs: Sequence[dict]) -> None:
    """The table, then the misses left at the smallest batch with their gaps."""
    if not table:
        return
    first = next(iter(table.values()))
    print(f"{first['streams']} streams common to every run; learner gap = missed against River in the same batches")
    print(
        f"{'batch':>6} {'best<River':>12} {'recovery>ARF':>13} {'default<LR':>11} {'signif.':>8} "
        f"{'stationary':>10}   (missed / of which a learner gap; signif.: vs River LR / vs LR batched)"
    )
    for batch, row in table.items():
        m = row["misses"]
        print(
            f"{batch:6d} {len(m['best']['all']):>6}/{len(m['best']['learner']):<5} "
            f"{len(m['recovery']['all']):>4}/{len(m['recovery']['learner'])} of {row['abrupt']:<2} "
            f"{len(m['default']['all']):>5}/{len(m['default']['learner']):<5} "
            f"{len(m['default']['significant']):>3}/{len(m['default']['learner_significant']):<4} "
            f"{len(m['stationary']['all']):>10}"
        )
    models = list(first["us_per_row"])
    print("\nmedian us per row over the streams:")
    print(f"{'batch':>6} " + " ".join(f"{m:>11}" for m in models))
    for batch, row in table.items():
        print(f"{batch:6d} " + " ".join(f"{row['us_per_row'][m]:11.1f}" for m in models))
    smallest = min(table)
    reports = next(r for r in common(runs) if int(r["batch"]) == smallest)["reports"]
    print(f"\nmissed at the smallest batch ({smallest}):")
    for line in gaps(reports, table[smallest]["misses"]):
        print(f"  {line}")


def main(argv: list[str] | None = None) -> dict[int, dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="learning_quality --json files, one per batch size")
    args = parser.parse_args(argv)
    runs = []
    for path in args.files:
        with open(path) as f:
            runs.append(json.load(f))
    runs = merged(runs)
    table = sweep(runs)
    print_sweep(table, runs)
    return table


if __name__ == "__main__":
    main()
