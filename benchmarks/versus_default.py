"""Candidate Streamfit configs against the default on every stream, with River LR only: the figures of
the early-cut tables (`benchmarks/README.md`, "Learning quality over many streams", parts 12-16).

`benchmarks.learning_quality` runs River's tree models and their batched twins on every stream as well,
which is most of its time (ARF: about 2 ms a row); the early-cut tables read none of them. This runs
the same `run_streamfit` and River LR (`run_river`) on the same streams, so its figures equal the full
run's: per config, streams below River LR and significantly so (McNemar, `default_vs_lr`); better /
worse / equal against the default (to 4 decimals, as `head_to_head`) and the worst change; cuts and
retrains on stationary and real streams; drift retrains that lost their gate.

`python -m benchmarks.versus_default --configs default_cutslopefreesure ... [--rows N] [--batch N]
[--rate R] [--json FILE]`
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from benchmarks import learning_quality, learning_streams

CALM = ("stationary", "real")  # stream kinds without a change: a cut or retrain there is a false one


def compare(reports: list[dict], config: str) -> dict[str, object]:
    """One candidate's row of the table: below / significantly below River LR, better / worse / equal
    against the default, the worst change (accuracy fall, MAE rise, negative) and where, and its cuts
    and retrains on streams without a change."""
    below = [r["stream"] for r in reports if r["sign"] * (r["metric"][config] - r["metric"]["river_lr"]) < 0]
    significantly = [
        r["stream"] for r in reports if r["stream"] in below and r["p_value"][config] < learning_quality.LEVEL
    ]
    changes = {r["stream"]: round(r["sign"] * (r["metric"][config] - r["metric"]["default"]), 4) for r in reports}
    worst = min(changes, key=lambda s: changes[s])
    calm = [r for r in reports if r["kind"] in CALM]
    return {
        "below": below,
        "significantly": significantly,
        "better": sum(v > 0 for v in changes.values()),
        "worse": sum(v < 0 for v in changes.values()),
        "equal": sum(v == 0 for v in changes.values()),
        "worst": min(changes[worst], 0.0),
        "worst_stream": worst if changes[worst] < 0 else None,
        "changes": {s: v for s, v in changes.items() if v},
        "calm_cuts": sum(len(r["cuts"][config]) for r in calm),
        "calm_retrains": sum(len(r["retrains"][config]) for r in calm),
        "gates_lost": sum(r["gates_lost"][config] for r in reports),
    }


def run(names: list[str], configs: tuple[str, ...], rows: int, batch: int, rate: float) -> list[dict]:
    """Per stream: each config's metric, cuts, retrains, lost gates and McNemar p against River LR."""
    reports = []
    for name in names:
        stream = learning_streams.build(name, rows)
        results = {c: learning_quality.run_streamfit(c, stream, batch, rate) for c in configs}
        results["river_lr"] = learning_quality.run_river("river_lr", stream)
        p_value = {}
        for c in configs:
            test = learning_quality.default_vs_lr(stream, results, batch, c)
            p_value[c] = test["p_value"] if test else 1.0
        reports.append(
            {
                "stream": name,
                "kind": stream.kind,
                "sign": 1.0 if stream.task == "classification" else -1.0,
                "metric": {m: float(np.nanmean(r.outcome[batch:])) for m, r in results.items()},
                "cuts": {c: results[c].cuts for c in configs},
                "retrains": {c: results[c].retrains for c in configs},
                "gates_lost": {c: sum(not g["promote"] for g in results[c].gates) for c in configs},
                "p_value": p_value,
            }
        )
    return reports


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True, help="candidate configs (learning_quality's names)")
    parser.add_argument("--rows", type=int, default=6_000, help="rows per synthetic stream")
    parser.add_argument("--batch", type=int, default=1_000, help="rows per micro-batch")
    parser.add_argument("--rate", type=float, default=100.0, help="simulated rows/s for the drift cooldown")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    configs = tuple(dict.fromkeys(["default", *args.configs]))
    names = learning_streams.full_set()
    began = time.perf_counter()
    reports = run(names, configs, args.rows, args.batch, args.rate)
    print(
        f"{len(names)} streams, {args.rows:,} rows, batches of {args.batch:,}, {args.rate:g} rows/s "
        f"({time.perf_counter() - began:.0f} s)"
    )
    table = {c: compare(reports, c) for c in configs}
    for c, row in table.items():
        print(
            f"{c}: below River LR {len(row['below'])} / significantly {len(row['significantly'])}; vs default "
            f"better {row['better']} / worse {row['worse']} / equal {row['equal']}, worst {row['worst']:+.4f}"
            f" ({row['worst_stream'] or '-'}); on stationary/real: cuts {row['calm_cuts']}, retrains "
            f"{row['calm_retrains']}; drift retrains that lost their gate {row['gates_lost']}"
        )
        if c != "default":
            print("    " + ("; ".join(f"{s} {v:+.4f}" for s, v in row["changes"].items()) or "no change"))
    for r in reports:
        cuts = {c: r["cuts"][c] for c in configs if r["cuts"][c]}
        if cuts:
            print(f"  {r['stream']}: cuts {cuts}; retrains { {c: r['retrains'][c] for c in configs} }")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reports": reports, "table": table, "args": vars(args)}, f, indent=1)
    return table


if __name__ == "__main__":
    main()
