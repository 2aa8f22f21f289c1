"""Part 20's decision: does an SGD setting replace the default at every batch size (issue 17, target 3)?

Reads `learning_quality --json` files, one per batch size, of the same configs (`--river lr` is
enough: target 3's references are River LR row by row and in the same batches) and prints, per batch
size and config, the significant target-3 misses against River LR and against `river_lr_b` (as the
summary counts them), retrains on stationary and real streams, the mean accuracy rank among the
configs and the median cost per row; then applies the adoption rule written down before the runs
(benchmarks/README.md, Part 20) to each config against `default`.

`python -m benchmarks.sgd_rule benchmarks/results/learning_quality/sgd_batch_*.json`
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence

BASE = "default"
RANKED_AT = (1000, 500)  # the sizes part 5 chose the default on: a replacement must rank no worse there
STRICT_RETRAINS_FROM = 250  # at this size and above a replacement must never retrain a stationary stream


def figures(run: dict) -> dict[str, dict[str, float]]:
    """Per config of one run: significant misses vs LR and vs LR batched, stationary retrains, mean
    rank, median us per row."""
    summary, reports = run["summary"], run["reports"]
    out = {}
    for config, c in summary["candidates_below_lr"].items():
        out[config] = {
            "vs_lr": len(c["significantly"]),
            "vs_lr_b": len(c["significantly_batched"]),
            "stationary": c["stationary_retrains"],
            "rank": summary["mean_rank"][config],
            "us_per_row": statistics.median(r["table"][config]["us_per_row"] for r in reports),
        }
    return out


def adopted(table: dict[int, dict[str, dict[str, float]]], config: str) -> tuple[bool, list[str]]:
    """The pre-written rule for `config` against the default; returns the verdict and the clauses it
    fails."""
    failed = []
    for batch, row in sorted(table.items(), reverse=True):
        mine, base = row[config], row[BASE]
        for key in ("vs_lr", "vs_lr_b"):
            if mine[key] > base[key]:
                failed.append(f"{batch}: more significant misses {key} ({mine[key]} > {base[key]})")
        limit = 0 if batch >= STRICT_RETRAINS_FROM else base["stationary"]
        if mine["stationary"] > limit:
            failed.append(f"{batch}: stationary retrains {mine['stationary']} > {limit}")
        if batch in RANKED_AT and mine["rank"] > base["rank"]:
            failed.append(f"{batch}: mean rank {mine['rank']:.2f} worse than {base['rank']:.2f}")
    total = sum(row[config]["vs_lr"] + row[config]["vs_lr_b"] for row in table.values())
    base_total = sum(row[BASE]["vs_lr"] + row[BASE]["vs_lr_b"] for row in table.values())
    if total >= base_total:
        failed.append(f"total significant misses {total} not fewer than the default's {base_total}")
    missing = {1000, 500, 250, 100} - set(table)
    if missing:
        failed.append(f"batch sizes not measured: {sorted(missing)}")
    return not failed, failed


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="learning_quality --json files, one per batch size")
    args = parser.parse_args(argv)
    table: dict[int, dict[str, dict[str, float]]] = {}
    for path in args.files:
        with open(path) as f:
            run = json.load(f)
        table[int(run["batch"])] = figures(run)
    print("| batch | config | signif. vs LR | signif. vs LR_b | stationary retrains | mean rank | us/row |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, row in sorted(table.items(), reverse=True):
        for config, f in row.items():
            print(
                f"| {batch} | {config} | {f['vs_lr']} | {f['vs_lr_b']} | {f['stationary']} | {f['rank']:.2f} "
                f"| {f['us_per_row']:.1f} |"
            )
    verdicts = {}
    configs = [c for c in next(iter(table.values())) if c != BASE]
    for config in configs:
        ok, failed = adopted(table, config)
        verdicts[config] = {"adopted": ok, "failed": failed}
        print(f"{config}: {'MEETS the rule' if ok else 'fails the rule'}" + ("".join(f"\n  {f}" for f in failed)))
    return {"table": table, "verdicts": verdicts}


if __name__ == "__main__":
    main()
