"""The stream report: what a person reads to know how a stream has been doing (markdown)."""

from __future__ import annotations

from dagster_project.registry.store import ModelRegistry
from dagster_project.spec import StreamSpec


def stream_report(registry: ModelRegistry, spec: StreamSpec, last: int = 20) -> tuple[str, dict[str, float]]:
    """Markdown for the UI and numeric headline figures (plotted over time by Dagster)."""
    name = spec.name
    versions = registry.versions(name)
    champion = registry.champion(name)
    decisions = registry.decisions(name)
    lines = [f"# {name}", "", spec.description or "", ""]
    halt = registry.halt(name)
    if halt:  # the report read as if the stream were learning: nothing said it had stopped
        cause = "a failed run" if halt.get("kind") == "failed_run" else "data quality"
        summary = halt.get("summary", "")
        lines += [f"**HALTED** by {cause}: {summary}. Nothing after it is learned until it is resolved.", ""]
    if not versions:
        return "\n".join([*lines, "No versions yet."]), {"versions": 0, "halted": float(bool(halt))}
    head = versions[-1]
    retrains = [d for d in decisions if d.get("kind") == "drift_action" and d["action"] == "retrain"]
    rollbacks = [d for d in decisions if d.get("kind") == "drift_action" and d["action"] == "rollback"]
    quality = [d for d in decisions if d.get("kind") == "quality"]
    lines += [
        f"**Champion** {champion} · **head** {head.name} · **rows learned** {head.meta['rows_learned_total']:,} · "
        f"**versions** {len(versions)} · **retrains** {len(retrains)} · **rollbacks** {len(rollbacks)} · "
        f"**data-quality failures** {len(quality)}",
        "",
        f"## Last {min(last, len(versions))} versions",
        "",
        "| version | created | rows | accuracy | roc_auc | mae | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in versions[-last:]:
        m = v.meta.get("metrics", {})
        note = "retrain" if v.meta.get("retrain") else "replay" if v.meta.get("replay") else ""
        note += " ★ champion" if v.name == champion else ""

        def fmt(key: str, metrics: dict = m) -> str:
            return f"{metrics[key]:.3f}" if key in metrics else "-"

        lines.append(
            f"| {v.name} | {v.meta['created_at'][:19]} | {v.meta['rows']['trained']} | {fmt('accuracy')} | "
            f"{fmt('roc_auc')} | {fmt('mae')} | {note} |"
        )
    events = [d for d in decisions if d.get("kind") in ("drift_action", "quality", "halt_cleared")]
    history = registry.champion_history(name)
    lines += ["", "## Champion changes", ""]
    lines += [f"- {h['at'][:19]} {h.get('previous') or '-'} → {h['version']}: {h['reason']}" for h in history[-last:]]
    lines += ["", "## Drift, data-quality and operator events", ""]
    lines += [
        f"- {d['at'][:19]} {d['kind']}: {d.get('action', '')} {'; '.join(d.get('reasons', [])) or d.get('summary', '')}"
        for d in events[-last:]
    ] or ["- none"]
    figures = {
        "versions": float(len(versions)),
        "rows_learned": float(head.meta["rows_learned_total"]),
        "retrains": float(len(retrains)),
        "rollbacks": float(len(rollbacks)),
        "quality_failures": float(len(quality)),
        "halted": float(bool(halt)),
    }
    for key in ("accuracy", "roc_auc", "mae"):
        if key in head.meta.get("metrics", {}):
            figures[key] = float(head.meta["metrics"][key])
    return "\n".join(lines), figures
