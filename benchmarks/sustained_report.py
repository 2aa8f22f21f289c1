"""The sustained-load section as table lines (kept apart from report.py, which renders the rest)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _n, _table


def _fresh(f: dict[str, Any] | None) -> str:
    if not f or f.get("p50") is None:
        return "n/a"
    bound = ">=" if f.get("censored") else ""
    return f"{bound}{f['p50']:.1f} / {bound}{f['p95']:.1f}"


def lines(section: dict[str, Any] | None) -> list[str]:
    if not section or "rates" not in section:
        return []
    batch = section["batch"]
    out = [
        "",
        f"7. Sustained load: each rate produced for {section['seconds_per_phase']:g}s, real dagster-daemon + scorer "
        f"(batch.rows {batch['rows']:,}, max_rows {batch['max_rows']:,}, max_wait_s {batch['max_wait_s']:g}, "
        f"sensor {batch['sensor_interval_s']} s), then the River loop at the same rate",
    ]
    headers = [
        "rate/s",
        "system",
        "produced/s",
        "learned rows/s",
        "learned/produced",
        "lag mid -> end",
        "lag slope/s",
        "fresh p50 / p95 (s)",
        "batch rows med [max]",
        "holds",
    ]
    rows = []
    for rate, r in section["rates"].items():
        for system, fresh_key in (("streamfit", "freshness_served_s"), ("river_loop", "freshness_learned_s")):
            s = r[system]
            batches = (s.get("cycles") or {}).get("batch_rows") or {}
            rows.append(
                [
                    f"{int(rate):,}",
                    system,
                    _n(s["produced_per_s"]),
                    _n(s["learned_rows_per_s"]),
                    _n(s["learned_vs_produced"], 2),
                    f"{_n(s['lag_mid'])} -> {_n(s['lag_end'])}",
                    _n(s["lag_slope_rows_per_s"]),
                    _fresh(s.get(fresh_key)),
                    f"{_n(batches.get('median'))} [{_n(batches.get('max'))}]" if batches else "-",
                    "yes" if s["holds"] else "NO",
                ]
            )
    out += _table(headers, rows)
    ratios = ", ".join(
        f"{int(rate):,}/s {_n(r['streamfit_vs_river_learned'], 2)}x" for rate, r in section["rates"].items()
    )
    out.append(f"   Streamfit / River learned rows/s: {ratios}")
    out.append(f"   highest rate that holds: {section['highest_holding_rate']}")
    parts = []
    for rate, r in section["rates"].items():
        c = r["streamfit"].get("cycles") or {}

        def med(key: str, c: dict[str, Any] = c) -> str:
            return _n((c.get(key) or {}).get("median"), 1)

        parts.append(
            f"{int(rate):,}/s: cycle {med('cycle_s')} = waiting {med('waiting_s')} + launch {med('launch_s')}"
            f" + compute {med('compute_s')}"
        )
    out.append("   Streamfit run cycle, median s (2nd half): " + "; ".join(parts))
    out.append(
        "   fresh = produced -> served champion covers it (Streamfit) / learned it (River); '>=' = some samples were"
        " still waiting when observation stopped"
    )
    return out
