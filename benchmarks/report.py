"""The results as a readable table (stdout and README), and as a PNG chart when matplotlib is there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.throughput import STAGES, SYSTEMS

COLUMNS = ("streamfit", "river_loop", "floor", "floor_kafka_python", "sklearn_partial_fit")  # table column order


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _range(s: dict[str, Any] | None, digits: int = 0, scale: float = 1.0) -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{_n(s['median'] * scale, digits)} [{_n(s['min'] * scale, digits)}-{_n(s['max'] * scale, digits)}]"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return lines


def machine_line(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    p = m.get("packages", {})
    pkgs = ", ".join(f"{k} {v}" for k, v in p.items() if v)
    return (
        f"{m.get('nproc')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM, Python {m.get('python')}, "
        f"load average at start {m.get('loadavg_at_start')}; {pkgs}"
    )


def render(results: dict[str, Any]) -> str:
    out: list[str] = []
    meta = results.get("meta", {})
    out.append(
        f"Streamfit benchmarks, {meta.get('mode')} mode, {meta.get('started')}, {_n(meta.get('duration_s'))} s; "
        "figures are median [min-max] over repeats"
    )
    out.append("machine: " + machine_line(results))
    loads = [
        f"{name} {v['loadavg_1min_before_after'][0]:.1f}->{v['loadavg_1min_before_after'][1]:.1f}"
        for name, v in results.items()
        if isinstance(v, dict) and "loadavg_1min_before_after" in v
    ]
    if loads:
        out.append("1-minute load average before->after each section (2 cores = 2.0 busy): " + ", ".join(loads))

    training = results.get("training")
    if training and "sizes" in training:
        out += ["", "1. Training throughput (rows/s), same offset range for every system"]
        rows = []
        for size, r in training["sizes"].items():
            rps = r["rows_per_s"]
            ratios = r["ratios"]
            rows.append(
                [
                    f"{int(size):,} x{r['repeats']}",
                    *(_range(rps[s]) for s in COLUMNS),
                    _range(ratios["streamfit_vs_river_loop"], 2),
                    _range(ratios["streamfit_vs_floor"], 2),
                    _range(ratios.get("streamfit_vs_floor_kafka_python"), 2),
                ]
            )
        out += _table(
            [
                "batch",
                "streamfit (real path)",
                "River loop",
                f"floor ({training.get('range_reader_client', 'kafka-python')})",
                "floor (kafka-python)",
                "sklearn partial_fit",
                "SF/River",
                "SF/floor",
                "SF/floor kafka-python",
            ],
            rows,
        )
        out += ["", "   Streamfit's time per stage (ms, median; share of the total)"]
        sizes = list(training["sizes"])
        stage_rows = []
        totals = {s: sum((training["sizes"][s]["stages_s"][st]["median"] or 0) for st in STAGES) for s in sizes}
        for stage in STAGES:
            cells = []
            for s in sizes:
                med = training["sizes"][s]["stages_s"][stage]["median"] or 0
                cells.append(f"{med * 1000:,.1f} ({med / totals[s] * 100:.0f}%)" if totals[s] else "n/a")
            stage_rows.append([stage, *cells])
        stage_rows.append(["total", *(f"{totals[s] * 1000:,.1f}" for s in sizes)])
        out += _table(["stage", *(f"{int(s):,} rows" for s in sizes)], stage_rows)
        out.append(
            f"   (first batch in a fresh process, imports included: {_n(training.get('cold_first_batch_s'), 2)} s)"
        )

    fresh = results.get("freshness")
    if fresh and "head_learned_s" in fresh:
        out += [
            "",
            f"2. Freshness (s), real dagster-daemon, batch.rows {fresh['batch_rows']}, {fresh['batches']} batches",
        ]
        rows = []

        def frow(label: str, d: dict[str, Any]) -> list[str]:
            return [label, _n(d.get("p50"), 2), _n(d.get("p95"), 2), _n(d.get("min"), 2), _n(d.get("max"), 2)]

        rows.append(frow("produced -> head version learned it", fresh["head_learned_s"]))
        labels = {
            "waiting_s": "  waiting: produced -> sensor tick enqueues the run",
            "launch_s": "  run launch: enqueued -> RUN_START",
            "queue_s": "    queue: enqueued -> dequeued and launched",
            "process_start_s": "    worker process start (python + dagster imports)",
            "code_load_s": "    worker loads the code location -> RUN_START",
            "compute_s": "  compute: steps incl. in-step imports -> version written",
            "head_swap_s": "  swap: version visible in the registry",
        }
        for key, label in labels.items():
            rows.append(frow(label, fresh["head_breakdown_s"][key]))
        rows.append(frow("  (rest of the run after the version)", fresh["head_breakdown_s"]["run_tail_s"]))
        rows.append(
            frow(
                f"produced -> scorer serves a champion that learned it (n={fresh['champion_samples']})",
                fresh["champion_served_s"],
            )
        )
        for part, label in (
            ("head_learned", "  head learned it"),
            ("promotion", "  its own run's gate promotes it"),
            ("next_batch_until_promotion", "  next batch's run promotes it (results before the same-run gate)"),
            ("scorer_swap", "  scorer hot-swap (/healthz)"),
        ):
            if part not in fresh["champion_breakdown_s"]:
                continue
            d = fresh["champion_breakdown_s"][part]
            rows.append([label, _n(d.get("median"), 2), "", _n(d.get("min"), 2), _n(d.get("max"), 2)])
        out += _table(["", "p50", "p95", "min", "max"], rows)
        steps = ", ".join(f"{k} {_n(v['median'], 2)}" for k, v in fresh.get("steps_s", {}).items())
        out.append(f"   step durations (median s, from the event log): {steps}")

    inference = results.get("inference")
    if inference and "single_row_us" in inference:
        single = inference["single_row_us"]
        batch = inference["batch_rows_per_s"]
        out += ["", "3. Inference"]
        rows = [
            [
                "onnxruntime (OnnxModel, 1 thread)",
                _n(single["onnxruntime"]["p50"], 1),
                _n(single["onnxruntime"]["p99"], 1),
                _range(batch["onnxruntime"]),
            ],
            [
                "scikit-learn (Pipeline)",
                _n(single["sklearn"]["p50"], 1),
                _n(single["sklearn"]["p99"], 1),
                _range(batch["sklearn"]),
            ],
            [
                "River predict_proba_one",
                _n(single["river"]["p50"], 1),
                _n(single["river"]["p99"], 1),
                _range(batch["river_loop"]) + " (loop); " + _range(batch["river_many"]) + " (_many)",
            ],
        ]
        out += _table(["", "1 row p50 (us)", "1 row p99 (us)", f"batch of {batch['batch_rows']:,} (rows/s)"], rows)
        r = single["ratios"]
        out.append(
            f"   sklearn/onnx single row: p50 {_n(r['sklearn_p50_over_onnx_p50'], 1)}x, "
            f"p99 {_n(r['sklearn_p99_over_onnx_p99'], 1)}x; "
            f"batch onnx/sklearn {_range(batch['ratios']['onnx_over_sklearn'], 1)}x"
        )
        sc = inference.get("scorer") or {}
        if "events_per_s" in sc:
            rows = [["bare range read (kafka-python, no decode)", _range(sc["bare_read_events_per_s"]), ""]]
            rows.append(["bare range read + orjson decode", _range(sc["bare_read_decode_events_per_s"]), ""])
            if "floor_events_per_s" in sc:
                rows.append(
                    [
                        "floor: confluent group consume + decode + produce + commit",
                        _range(sc["floor_events_per_s"]),
                        "no scoring; no wait between batches",
                    ]
                )
            if "floor_flush_per_batch_events_per_s" in sc:
                rows.append(
                    [
                        "  same, flush + sync commit per poll batch",
                        _range(sc["floor_flush_per_batch_events_per_s"]),
                        "the scorer's at-least-once cycle, no scoring",
                    ]
                )
            for key, s in sc["events_per_s"].items():
                runs = sc["runs"].get(key, [])
                split = "; ".join("/".join(str(x) for x in run["per_replica_events"]) for run in runs)
                cores = _get_median(sc, "scorer_cores", key)
                busy = _get_median(sc, "machine_busy_fraction", key)
                use = f"; {cores:.2f} cores, machine {busy:.0%} busy" if cores is not None and busy is not None else ""
                rows.append([f"scorer {key.replace('_', ' ')}", _range(s), f"events per replica: {split}{use}"])
            out += ["", f"   Scorer end to end, {sc['events']:,} events, {sc['partitions']} partitions (events/s)"]
            out += _table(["", "events/s", ""], rows)
            out.append(
                f"   scorer per replica / bare read: {_n(sc.get('per_replica_vs_bare_read'), 2)}; "
                + (f"2 replicas / 1: {_n(sc.get('two_vs_one_replica'), 2)}; " if sc.get("two_vs_one_replica") else "")
                + "".join(
                    f"{client} per replica / floor: {_n(value, 2)}; "
                    for client, value in (sc.get("per_replica_vs_floor") or {}).items()
                )
                + "".join(
                    f"{client} 2 replicas / 1: {_n(value, 2)}; "
                    for client, value in (sc.get("two_vs_one_replica_by_client") or {}).items()
                )
                + f"scorer peak RSS {_range(sc.get('peak_rss_mib'))} MiB; "
                + f"process start -> /healthz {_range(sc.get('start_to_healthy_s'), 1)} s"
            )

    quality = results.get("quality")
    if quality and "phishing" in quality:
        ph = quality["phishing"]
        out += ["", f"4. Quality: Phishing ({ph['rows']} rows, arrival order), prequential"]
        rows = [
            [
                f"{int(b):,}",
                str(r["scored_rows"]),
                _n(r["streamfit_roc_auc"], 4),
                _n(r["river_roc_auc_same_rows"], 4),
                f"{r['auc_difference']:+.4f}",
                _n(r["streamfit_accuracy"], 3),
                _n(r["river_accuracy_same_rows"], 3),
            ]
            for b, r in ph["batches"].items()
        ]
        out += _table(
            ["batch", "rows scored", "Streamfit AUC", "River AUC", "diff", "Streamfit acc", "River acc"], rows
        )
        rv = ph["river"]
        out.append(
            f"   River over all {ph['rows']} rows: AUC {_n(rv['roc_auc_all_rows_exact'], 4)} exact, "
            f"{_n(rv['roc_auc_all_rows_river_metric'], 4)} River's approximate metric"
        )
        cc = quality.get("concept_change")
        if cc:
            out += ["", f"   Concept change at row {cc['change_at']:,} (accuracy per {cc['window_rows']:,}-row window)"]
            rows = []
            series = {f"Streamfit, batch {int(b):,}": r for b, r in cc["streamfit"].items()}
            series["River, per row"] = cc["river"]
            for label, r in series.items():
                w = r["accuracy_per_window"]
                change = cc["change_at"] // cc["window_rows"]
                after = " ".join(_n(a, 2) for a in w[change : change + 4])
                rows.append([label, _n(r["pre_change_accuracy"], 3), after, str(r["rows_to_recover"]), _n(w[-1], 3)])
            out += _table(["", "before", "4 windows after", "rows to recover", "last window"], rows)

    decisions = (quality or {}).get("decisions")
    if decisions and "settings" in decisions:
        from benchmarks.decision_noise import table

        out += ["", f"   Champion decisions under noise (paired test at {decisions['level']:g}; rates of action)"]
        out += ["   " + line for line in table(decisions)]

    features = (quality or {}).get("features")
    if features and "census" in features:
        from benchmarks.feature_quality import table as feature_table

        out += ["", f"   Category and rolling features (prequential accuracy, {features['rows']:,} events per stream)"]
        out += ["   " + line for line in feature_table(features)]

    cost = results.get("cost")
    if cost and "imports" in cost:
        out += ["", "5. Cost (fresh processes)"]
        rows = [
            [label, _range(d["process_wall_s"], 2), _range(d["import_s"], 2), _range(d["peak_rss_mib"])]
            for label, d in cost["imports"].items()
        ]
        out += _table(["import", "process wall (s)", "import (s)", "peak RSS (MiB)"], rows)
        for size, d in (cost.get("training_step") or {}).items():
            if isinstance(d, dict) and "peak_rss_mib" in d:
                out.append(
                    f"   one cold training step of {int(size):,} rows: peak RSS {_n(d['peak_rss_mib'])} MiB, "
                    f"{_n(d['process_wall_s'], 1)} s wall ({_n(d['batch_s'], 1)} s for the step incl. GX/skl2onnx "
                    "first imports)"
                )
        sc = (results.get("inference") or {}).get("scorer") or {}
        if sc.get("peak_rss_mib"):
            out.append(f"   scorer (streamfit serve) peak RSS after scoring: {_range(sc['peak_rss_mib'])} MiB")

    scale = results.get("scale_out")
    if scale and "end_to_end" in scale:
        out += ["", *scale_out_lines(scale)]

    brokers = results.get("brokers")
    if brokers and "kafka_vs_tansu" in brokers:
        out += ["", f"Tansu vs Apache Kafka {brokers.get('kafka_version')} (same run, medians)"]
        rows = [
            [key, _n(brokers["tansu"].get(key)), _n(brokers["kafka"].get(key)), _n(value, 2) + "x"]
            for key, value in brokers["kafka_vs_tansu"].items()
            if value is not None
        ]
        out += _table(["figure", "Tansu", "Apache Kafka", "Kafka/Tansu"], rows)
    from benchmarks.sustained_report import lines as sustained_lines  # it imports this module's helpers

    out += sustained_lines(results.get("sustained"))
    targets = results.get("targets")
    if targets:
        out += ["", "Targets (issues 7 and 15), each a ratio or figure from this run"]
        rows = []
        for t in targets:
            met = "n/a" if t["met"] is None else ("MET" if t["met"] else "missed")
            measured = t["measured"]
            value = (
                "n/a"
                if measured is None
                else (f"{measured:+.4f}" if t["unit"] == "AUC difference" else f"{measured:.2f}")
            )
            rows.append([t["target"], value, f"{t['goal']:g}", met, t["note"]])
        out += _table(["target", "measured", "goal", "", "note"], rows)

    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    for section, error in errors.items():
        out += ["", f"SECTION {section} FAILED: {error.splitlines()[-1] if error else ''}"]
    return "\n".join(out)


def chart(results: dict[str, Any], path: Path) -> Path | None:
    """A six-panel PNG; None (and no file) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle(
        f"Streamfit benchmarks ({results.get('meta', {}).get('mode')} mode) - {machine_line(results)[:150]}", fontsize=9
    )

    ax = axes[0][0]
    training = results.get("training") or {}
    if "sizes" in training:
        sizes = [int(s) for s in training["sizes"]]
        for system in SYSTEMS:
            meds = [training["sizes"][str(s)]["rows_per_s"][system]["median"] for s in sizes]
            ax.plot(sizes, meds, marker="o", label=system)
        ax.set(xscale="log", yscale="log", xlabel="batch rows", ylabel="rows/s", title="1. Training throughput")
        ax.legend(fontsize=8)

        ax = axes[0][1]
        bottoms = [0.0] * len(sizes)
        for stage in STAGES:
            values = [training["sizes"][str(s)]["stages_s"][stage]["median"] or 0 for s in sizes]
            totals = [sum(training["sizes"][str(s)]["stages_s"][st]["median"] or 0 for st in STAGES) for s in sizes]
            shares = [v / t * 100 if t else 0 for v, t in zip(values, totals, strict=True)]
            ax.bar([f"{s:,}" for s in sizes], shares, bottom=bottoms, label=stage)
            bottoms = [b + v for b, v in zip(bottoms, shares, strict=True)]
        ax.set(ylabel="% of Streamfit's batch time", title="1. Stage split")
        ax.legend(fontsize=7)

    ax = axes[0][2]
    fresh = results.get("freshness") or {}
    if fresh.get("samples"):
        parts = [
            ("waiting_s", "waiting"),
            ("launch_s", "run launch"),
            ("compute_s", "compute"),
            ("head_swap_s", "swap"),
        ]
        labels = [str(s["batch"]) for s in fresh["samples"]]
        bottoms = [0.0] * len(labels)
        for key, label in parts:
            values = [s.get(key) or 0 for s in fresh["samples"]]
            ax.bar(labels, values, bottom=bottoms, label=label)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        champ = [(str(s["batch"]), s["champion_s"]) for s in fresh["samples"] if "champion_s" in s]
        if champ:
            ax.plot([c[0] for c in champ], [c[1] for c in champ], "k^", label="champion served")
        ax.axhline(15, color="red", linestyle="--", linewidth=1, label="target 15 s")
        ax.set(xlabel="batch", ylabel="s after produce", title="2. Freshness (head learned it)")
        ax.legend(fontsize=8)

    ax = axes[1][0]
    single = (results.get("inference") or {}).get("single_row_us")
    if single:
        names = ["onnxruntime", "sklearn", "river"]
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [single[n]["p50"] for n in names], width=0.4, label="p50")
        ax.bar([i + 0.2 for i in x], [single[n]["p99"] for n in names], width=0.4, label="p99")
        ax.set_xticks(list(x), names)
        ax.set(yscale="log", ylabel="microseconds", title="3. Single-row latency")
        ax.legend(fontsize=8)

    quality = results.get("quality") or {}
    ax = axes[1][1]
    if "phishing" in quality:
        b = quality["phishing"]["batches"]
        xs = [int(k) for k in b]
        ax.plot(xs, [b[str(k)]["streamfit_roc_auc"] for k in xs], marker="o", label="Streamfit (sgd_classifier)")
        ax.plot(xs, [b[str(k)]["river_roc_auc_same_rows"] for k in xs], marker="s", label="River LR, same rows")
        ax.set(xscale="log", xlabel="batch rows", ylabel="prequential ROC AUC", title="4. Phishing")
        ax.legend(fontsize=8)
    ax = axes[1][2]
    if "concept_change" in quality:
        cc = quality["concept_change"]
        for label, r in [(f"Streamfit batch {k}", v) for k, v in cc["streamfit"].items()] + [("River", cc["river"])]:
            w = r["accuracy_per_window"]
            ax.plot(range(len(w)), [a if a is not None else float("nan") for a in w], marker=".", label=label)
        ax.axvline(cc["change_at"] // cc["window_rows"], color="red", linestyle="--", linewidth=1)
        ax.set(xlabel=f"window of {cc['window_rows']} rows", ylabel="prequential accuracy", title="4. Concept change")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> None:
    """Re-render a results JSON: `python -m benchmarks.report results/latest.json [--chart out.png]`."""
    import argparse

    import orjson

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("json", type=Path)
    parser.add_argument("--chart", type=Path, default=None)
    args = parser.parse_args()
    results = orjson.loads(args.json.read_bytes())
    print(render(results))
    if args.chart:
        print(chart(results, args.chart) or "matplotlib is not installed")


if __name__ == "__main__":
    main()


def _get_median(section: dict, field: str, key: str) -> float | None:
    return ((section.get(field) or {}).get(key) or {}).get("median")


def scale_out_lines(scale: dict[str, Any]) -> list[str]:
    """Section 6: the training job with one model step vs a step per partition group, end to end."""
    out = [
        f"6. Scale-out as Dagster steps: workers 1 (one in-process model step) vs {scale['workers']} "
        f"(a step per partition group, multiprocess executor), real runs, {scale['partitions']} partitions"
    ]
    rows = []
    for estimator, r in scale["end_to_end"].items():
        for batch, s in r["sizes"].items():
            rows.append(
                [
                    estimator,
                    f"{int(batch):,} x{s['repeats']}",
                    _range(s["run_s"]["sequential"], 1),
                    _range(s["run_s"]["fan_out"], 1),
                    _range(s["speedup_run"], 2),
                    _range(s["read_s"]["sequential"], 1),
                    _range(s["read_s"]["fan_out"], 1),
                    _range(s["speedup_read"], 2),
                    _range(s["model_s"]["sequential"], 1),
                    _range(s["model_s"]["fan_out"], 1),
                    _range(s["speedup_model"], 2),
                    f"{_n(s['holdout']['sequential']['roc_auc'], 4)} / {_n(s['holdout']['fan_out']['roc_auc'], 4)}",
                    f"{s['auc_difference']:+.4f}",
                    f"{s['accuracy_difference']:+.4f}",
                ]
            )
    out += _table(
        [
            "estimator",
            "batch rows",
            "run 1 step (s)",
            "run fan-out (s)",
            "run speed-up",
            "read 1 step (s)",
            "read fan-out (s)",
            "read speed-up",
            "model 1 step (s)",
            "model fan-out (s)",
            "model speed-up",
            "holdout AUC 1 step / fan-out",
            "AUC diff",
            "acc diff",
        ],
        rows,
    )
    for estimator, r in scale["end_to_end"].items():
        first = r["first_run"]
        out.append(
            f"   {estimator}: first run ({r['warmup_rows']:,} rows, cold forkserver for the fan-out): "
            f"1 step {_n(first['sequential']['run_s'], 1)} s, fan-out {_n(first['fan_out']['run_s'], 1)} s"
        )
    for estimator, acc in scale["prequential"].items():
        out.append(
            f"   prequential, one process, {acc['batches']} batches of {acc['batch_rows']:,} rows from a fresh model: "
            f"{estimator} AUC {_n(acc['sequential']['roc_auc'], 4)} / {_n(acc['fan_out']['roc_auc'], 4)} "
            f"({acc['auc_difference']:+.4f}), accuracy {acc['accuracy_difference']:+.4f}"
        )
    if "load_1min" in scale:
        out.append(
            f"   1-minute load average before -> after: {scale['load_1min'][0]:.1f} -> {scale['load_1min'][1]:.1f}"
        )
    return out
