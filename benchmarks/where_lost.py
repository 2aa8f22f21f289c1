"""Where one configuration loses to another on a stream: the rows only it gets wrong, by place.

`learning_quality` says *how much* a configuration is below another; this says *where*: of the rows
only the first gets wrong (classification), how many lie near the stream's change (from 200 rows
before it to 1,500 after), and each candidate set's leader changes (which family served the rows
around the change). Part 25's trace of the recommended set on rare-positive SEA came from it.

`python -m benchmarks.where_lost --streams searare_abrupt_s1 --configs gate default --batch 1000`
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from benchmarks import learning_quality, learning_streams

BEFORE, AFTER = 200, 1_500  # the rows counted as "at the change": [change - BEFORE, change + AFTER)


def where_lost(stream: learning_streams.Stream, config: str, other: str, batch: int, rate: float) -> dict:
    """`config` against `other` on one stream, batch by batch through the product's learner."""
    if stream.task != "classification":
        raise ValueError(f"{stream.name}: rows only one config gets wrong need a classification stream")
    ours = learning_quality.run_streamfit(config, stream, batch, rate)
    theirs = learning_quality.run_streamfit(other, stream, batch, rate)
    both = np.isfinite(ours.outcome) & np.isfinite(theirs.outcome)
    only_ours = np.flatnonzero(both & (ours.outcome == 0) & (theirs.outcome == 1))
    only_theirs = np.flatnonzero(both & (ours.outcome == 1) & (theirs.outcome == 0))
    near = None
    if stream.change is not None:
        near = int(((only_ours >= stream.change - BEFORE) & (only_ours < stream.change + AFTER)).sum())
    return {
        "stream": stream.name,
        "batch": batch,
        "config": config,
        "other": other,
        "difference": float(np.nanmean(ours.outcome[batch:]) - np.nanmean(theirs.outcome[batch:])),
        "only_config_wrong": len(only_ours),
        "only_other_wrong": len(only_theirs),
        "only_config_wrong_at_change": near,
        "change": stream.change,
        "leader_changes": ours.leaders,
        "retrains": ours.retrains,
    }


def line(found: dict) -> str:
    at = "" if found["change"] is None else f" ({found['only_config_wrong_at_change']} at the change)"
    leaders = ", ".join(f"{c['leader']} at {c['after_row']:,}" for c in found["leader_changes"]) or "-"
    return (
        f"{found['stream']} batch {found['batch']:,}: {found['config']} - {found['other']} "
        f"{found['difference']:+.4f}; rows only {found['config']} gets wrong {found['only_config_wrong']}{at}, "
        f"only {found['other']} {found['only_other_wrong']}; leaders: {leaders}; "
        f"retrains after rows {found['retrains']}"
    )


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", nargs="+", required=True, help="stream names (see learning_streams.build)")
    parser.add_argument("--configs", nargs=2, default=["gate", "default"], help="the config and the one it loses to")
    parser.add_argument("--batch", type=int, nargs="+", default=[1_000], help="rows per micro-batch (several: each)")
    parser.add_argument("--rows", type=int, default=6_000, help="rows per synthetic stream")
    parser.add_argument("--rate", type=float, default=100.0, help="simulated rows/s for the drift cooldown")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    out = []
    for name in args.streams:
        stream = learning_streams.build(name, args.rows)
        for batch in args.batch:
            found = where_lost(stream, *args.configs, batch, args.rate)
            print(line(found), flush=True)
            out.append(found)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
