"""Part 17's verdicts on `early_cut_daemon` result files, by the criteria written down before the runs.

Reading the files by code, not by eye, so the table and the decision in benchmarks/README.md (Part 17,
"Repeats") follow from the JSON and the pre-written rule alone:

- *helped*: `on` cut, its retrained model was served from an earlier row than `off`'s, and its rows to
  recover are fewer;
- *worse*: `on`'s rows to recover are more than `off`'s (never recovered: more than any number), or its
  served accuracy after 1 or 2 batches is lower by more than `MARGIN`; a run that is both counts as worse;
- a run without a change must show no cut and no retrain;
- "on by default when `labels:` is configured": at most `MAX_WORSE` worse change-point runs, a majority
  helped, and no cut or retrain in any change-free `on` run.

    python -m benchmarks.early_cut_verdict benchmarks/results/early_cut_daemon/*_rep.json [...]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import orjson

MARGIN = 0.02  # served accuracy after 1 or 2 batches, `on` below `off`
MAX_WORSE = 1  # change-point runs `on` may be worse in, for a default


def retrained_from(result: dict[str, Any]) -> int | None:
    """The first row the first retrain's version served (None: no retrain, or it was never served)."""
    retrains = [a for a in result["drift_actions"] if a.get("action") != "rollback"]
    if not retrains:
        return None
    version = retrains[0]["to_version"]
    return next((row for row, served in result["served_from"] if served == version), None)


def _recover(summary: dict[str, Any]) -> float:
    value = summary.get("rows_to_recover")
    return math.inf if value is None else float(value)


def verdict(off: dict[str, Any], on: dict[str, Any]) -> str:
    """One change point's `off`/`on` pair: helped, worse or neither; a change-free pair: clean or cut."""
    if off["change"] is None:
        return "cut" if on["cuts"] or on["retrains"] else "clean"
    so, sn = off["summary"], on["summary"]
    worse = _recover(sn) > _recover(so) or any(
        (sn.get(k) or 0.0) < (so.get(k) or 0.0) - MARGIN for k in ("after_1_batch", "after_2_batches")
    )
    if worse:
        return "worse"
    on_from, off_from = retrained_from(on), retrained_from(off)
    earlier = on_from is not None and (off_from is None or on_from < off_from)
    return "helped" if on["cuts"] and earlier and _recover(sn) < _recover(so) else "neither"


def decision(verdicts: list[str]) -> str:
    """The pre-written rule over every run's verdict: "on when labels: is configured" or "opt-in"."""
    changes = [v for v in verdicts if v in ("helped", "worse", "neither")]
    ok = (
        sum(v == "worse" for v in changes) <= MAX_WORSE
        and 2 * sum(v == "helped" for v in changes) > len(changes)
        and "cut" not in verdicts
    )
    return "on when labels: is configured" if ok else "opt-in"


def _ranges(tag: str) -> str:
    """`{"0":[a,b]}` as `[a, b)`, partitions other than a lone 0 named."""
    ranges = orjson.loads(tag)
    if list(ranges) == ["0"]:
        return f"[{ranges['0'][0]}, {ranges['0'][1]})"
    return ", ".join(f"{p}: [{a}, {b})" for p, (a, b) in ranges.items())


def row(result: dict[str, Any]) -> str:
    """One line of the README's table for one configuration."""
    s = result["summary"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    name = "no change" if result["change"] is None else f"change at {result['change']:,}"
    if result["change"] is None:
        before, after, recover = f"{fmt(s['accuracy'])} (all rows)", "-", "-"
    else:
        before = fmt(s["before"])
        after = f"{fmt(s['after_1_batch'])} / {fmt(s['after_2_batches'])} / {fmt(s['after_to_end'])}"
        recover = "never" if s["rows_to_recover"] is None else f"{s['rows_to_recover']:,}"
    if result["early_cut"]:
        cuts = ", ".join(f"{c['early_cut']}, `{_ranges(c['ranges'])}`" for c in result["cuts"]) or "none"
    else:
        cuts = "-"
    retrains = [a for a in result["drift_actions"] if a.get("action") != "rollback"]
    if retrains:
        a = retrains[0]
        start = retrained_from(result)
        retrain = f"`{a['to_version']}` since `{a['since']}`{', `after_cut`' if a.get('after_cut') else ''}"
        retrain += f" ({'-' if start is None else f'{start:,}'})"
        if len(retrains) > 1:
            retrain += f", {len(retrains)} in all"
    else:
        retrain = "none"
    on = "on" if result["early_cut"] else "off"
    return f"| {name} | {on} | {before} | {after} | {recover} | {cuts} | {retrain} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="early_cut_daemon result files with an off and an on run")
    args = parser.parse_args(argv)
    verdicts = []
    for path in args.files:
        results = orjson.loads(path.read_bytes())["results"]
        off = next((r for r in results if not r["early_cut"]), None)
        on = next((r for r in results if r["early_cut"]), None)
        for result in results:
            print(row(result))
        if off is None or on is None:
            print(f"{path.name}: not a pair, no verdict")
            continue
        verdicts.append(verdict(off, on))
        print(f"{path.name}: {verdicts[-1]}")
    print(f"decision over {len(verdicts)} pairs: {decision(verdicts)}")


if __name__ == "__main__":
    main()
