"""The SGD default's step per batch against River LR, at several batch sizes (issue 17, target 3).

Part 18 found the default (eight passes at 0.005 over each micro-batch) significantly below River's
logistic regression on the Agrawal and Hyperplane streams at batches of 250 and 100, though not at
500 and 1,000. Step size trades noise against tracking: a noisy-label stream wants small steps, a
noise-free or changing one large steps, and a micro-batch learner's lag grows with the batch. This
runs the SGD settings that trade them differently through the same product training path as
`learning_quality` (test-then-train, drift decisions, retrains and their gate), with River LR only
(row by row and in the same batches: the two references of target 3), so a sweep over batch sizes
takes minutes instead of an hour of River's forests.

Per batch size and setting it prints: streams below River LR, significantly so (the product's
one-sided McNemar mid-p, p < 0.05) against River LR and against River LR in the same batches, drift
retrains on stationary streams (target 4), mean accuracy rank among the settings (1 = best), the
worst gap, and the median training cost per row.

`python -m benchmarks.sgd_steps [--batches 1000 500 250 100] [--configs ...] [--streams ...] [--json F]`
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

from benchmarks import learning_quality as lq
from benchmarks import learning_streams

SETTINGS = ("default", "sgd_old", "sgd_p2", "sgd_avg", lq.SGD_GATE, lq.SGD_ADAPTIVE)
RIVER_LR = ("river_lr", "river_lr" + lq.BATCHED)
STATIONARY = ("stationary", "real")


def run_stream(stream: learning_streams.Stream, configs: Sequence[str], batch: int, rate: float) -> dict:
    """Every setting and River LR (row by row, and in the same batches) on one stream."""
    results = {c: lq.run_streamfit(c, stream, batch, rate) for c in configs}
    results["river_lr"] = lq.run_river("river_lr", stream)
    results[RIVER_LR[1]] = lq.run_river("river_lr", stream, batch=batch)
    table = lq.score(stream, results, batch)
    tests = {
        c: [
            (lq.default_vs_lr(stream, results, batch, config=c, reference=ref) or {}).get("p_value") for ref in RIVER_LR
        ]
        for c in configs
    }
    return {
        "stream": stream.name,
        "kind": stream.kind,
        "task": stream.task,
        "table": table,
        "p_values": tests,
        "versus_first": versus_first(stream, results, configs, batch),
    }


def versus_first(
    stream: learning_streams.Stream, results: dict[str, lq.Result], configs: Sequence[str], batch: int
) -> dict[str, list[float | None]]:
    """Each later setting against the first on the same rows (part 22: a change judged against what it
    would replace): McNemar's one-sided mid-p that it is worse, then that it is better (None for
    regression)."""
    first = configs[0]
    return {
        c: [
            (lq.default_vs_lr(stream, results, batch, config=c, reference=first) or {}).get("p_value"),
            (lq.default_vs_lr(stream, results, batch, config=first, reference=c) or {}).get("p_value"),
        ]
        for c in configs[1:]
    }


def summarize(reports: Sequence[dict], configs: Sequence[str]) -> dict[str, dict[str, object]]:
    """Per setting: target 3's misses (all, and significant against each reference), stationary
    retrains, mean rank, worst gap to River LR (accuracy; MAE streams count as misses only), the
    median cost per row, and (every setting after the first) the streams where it is significantly
    worse / better than the first."""
    ranks = lq.mean_ranks([{"task": r["task"], "table": r["table"]} for r in reports], tuple(configs))
    out: dict[str, dict[str, object]] = {}
    for c in configs:
        below, gaps = [], []
        for r in reports:
            sign = 1.0 if r["task"] == "classification" else -1.0
            gap = sign * (r["table"][c]["metric"] - r["table"]["river_lr"]["metric"])
            if gap < 0:
                below.append(r["stream"])
            if r["task"] == "classification":
                gaps.append((gap, r["stream"]))
        significant = [
            [r["stream"] for r in reports if (p := r["p_values"][c][i]) is not None and p < lq.LEVEL] for i in (0, 1)
        ]
        worst = min(gaps) if gaps else (float("nan"), "-")
        out[c] = {
            "below_lr": below,
            "significantly_below_lr": significant[0],
            "significantly_below_lr_batched": significant[1],
            "stationary_retrains": sum(r["table"][c]["retrains"] for r in reports if r["kind"] in STATIONARY),
            "mean_rank": ranks[c],
            "worst_gap": {"gap": worst[0], "stream": worst[1]},
            "us_per_row": statistics.median(r["table"][c]["us_per_row"] for r in reports),
        }
        if c != configs[0]:
            for i, key in enumerate(("worse_than_first", "better_than_first")):
                out[c][key] = [
                    r["stream"]
                    for r in reports
                    if (p := r.get("versus_first", {}).get(c, [None, None])[i]) is not None and p < lq.LEVEL
                ]
    return out


def print_summary(batch: int, summary: dict[str, dict[str, object]], streams: int) -> None:
    print(f"\nbatches of {batch:,} ({streams} streams): target 3 = setting >= River LR")
    print(
        f"  {'setting':12} {'below LR':>8} {'signif.':>8} {'vs LR_b':>8} {'stationary':>10} {'mean rank':>9} "
        f"{'us/row':>7}  worst gap"
    )
    for c, s in summary.items():
        worst = s["worst_gap"]
        print(
            f"  {c:12} {len(s['below_lr']):8d} {len(s['significantly_below_lr']):8d} "
            f"{len(s['significantly_below_lr_batched']):8d} {s['stationary_retrains']:10d} {s['mean_rank']:9.2f} "
            f"{s['us_per_row']:7.1f}  {worst['gap']:+.4f} {worst['stream']}"
        )
        if s["significantly_below_lr"]:
            print(f"  {'':12} significantly below River LR on: {', '.join(s['significantly_below_lr'])}")
        if "worse_than_first" in s:
            first = next(iter(summary))
            print(
                f"  {'':12} against {first}: significantly worse on {len(s['worse_than_first'])} "
                f"({', '.join(s['worse_than_first']) or '-'}), better on {len(s['better_than_first'])} "
                f"({', '.join(s['better_than_first']) or '-'})"
            )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1000, 500, 250, 100])
    parser.add_argument("--configs", nargs="+", default=list(SETTINGS), help=f"default: {' '.join(SETTINGS)}")
    parser.add_argument("--streams", nargs="+", help="stream names (default: learning_quality's 34)")
    parser.add_argument("--rows", type=int, default=6_000, help="rows per synthetic stream")
    parser.add_argument("--rate", type=float, default=100.0, help="simulated rows/s for the drift cooldown")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    configs = list(dict.fromkeys(args.configs))
    names = args.streams or learning_streams.full_set()
    streams = [learning_streams.build(name, args.rows) for name in names]
    out: dict[str, object] = {"rows": args.rows, "configs": configs, "batches": {}}
    began = time.perf_counter()
    for batch in args.batches:
        reports = []
        for i, stream in enumerate(streams, 1):
            reports.append(run_stream(stream, configs, batch, args.rate))
            print(
                f"\r[batch {batch}: {i}/{len(streams)} streams, {time.perf_counter() - began:.0f}s]",
                end="",
                file=sys.stderr,
            )
        summary = summarize(reports, configs)
        print(file=sys.stderr)
        print_summary(batch, summary, len(streams))
        print(f"  ({time.perf_counter() - began:.0f} s since the start)")
        sys.stdout.flush()
        out["batches"][str(batch)] = {"reports": reports, "summary": summary}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return out


if __name__ == "__main__":
    main()
