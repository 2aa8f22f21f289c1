"""Issue 7's targets, each checked against a figure measured in the same run."""

from __future__ import annotations

from typing import Any


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = []

    def add(name: str, measured: float | None, goal: float, higher_is_better: bool, unit: str, note: str) -> None:
        met = None
        if measured is not None:
            met = measured >= goal if higher_is_better else measured <= goal
        gap = None
        if measured is not None and goal:
            gap = measured / goal
        targets.append(
            {
                "target": name,
                "goal": goal,
                "measured": measured,
                "unit": unit,
                "met": met,
                "measured_over_goal": gap,
                "note": note,
            }
        )

    sizes = _get(results, "training", "sizes") or {}
    if sizes:
        largest = max(sizes, key=int)
        at = f"at batch {int(largest):,}" + ("" if int(largest) >= 100_000 else " (quick mode: 100k not measured)")
        add(
            "training path >= 3x River consumer loop",
            _get(sizes, largest, "ratios", "streamfit_vs_river_loop", "median"),
            3.0,
            True,
            "x",
            at,
        )
        client = _get(results, "training", "range_reader_client") or "kafka-python"
        add(
            f"training path >= 70% of the floor (read + decode, {client})",
            _get(sizes, largest, "ratios", "streamfit_vs_floor", "median"),
            0.70,
            True,
            "fraction",
            f"{at}; Streamfit reads with {client}",
        )
        if client != "kafka-python":
            add(
                "training path >= 70% of the kafka-python floor",
                _get(sizes, largest, "ratios", "streamfit_vs_floor_kafka_python", "median"),
                0.70,
                True,
                "fraction",
                f"{at}; the River loop's client",
            )
    fresh = results.get("freshness") or {}
    if "champion_served_s" in fresh:
        add(
            "freshness p95 <= 15 s: produced -> the scorer serves a champion that learned it",
            _get(fresh, "champion_served_s", "p95"),
            15.0,
            False,
            "s",
            f"default settings, {fresh.get('batches')} batches; the registry head learned it at "
            f"p95 {_fmt(_get(fresh, 'head_learned_s', 'p95'))} s",
        )
    single = _get(results, "inference", "single_row_us") or {}
    if single:
        add(
            "onnxruntime single-row p99 >= 20x faster than scikit-learn",
            _get(single, "ratios", "sklearn_p99_over_onnx_p99"),
            20.0,
            True,
            "x",
            f"p99 {_fmt(_get(single, 'onnxruntime', 'p99'))} us vs {_fmt(_get(single, 'sklearn', 'p99'))} us",
        )
    scorer = _get(results, "inference", "scorer") or {}
    if scorer:
        add(
            "scorer (kafka-python) per replica >= 80% of its client's bare read",
            scorer.get("per_replica_vs_bare_read"),
            0.80,
            True,
            "fraction",
            "issue 7's target, for the kafka-python scorer (`--client kafka-python`; the default is confluent "
            "whenever installed, judged against the floor of its job below); bare read = kafka-python assign+seek "
            "range read, no decode",
        )
    for client, value in (scorer.get("per_replica_vs_floor") or {}).items():
        add(
            f"scorer ({client}) per replica >= 70% of the floor of its job",
            value,
            0.70,
            True,
            "fraction",
            "floor = confluent-kafka in a group: consume, orjson decode, produce one record per event (acks=all), "
            "commit without waiting, one flush at the end; no scoring",
        )
    for client, value in (scorer.get("two_vs_one_replica_by_client") or {}).items():
        add(
            f"scorer ({client}) 2 replicas >= 1.8x one on 2 partitions",
            value,
            1.8,
            True,
            "x",
            f"{scorer.get('cores')} cores; while 2 replicas scored the machine was "
            f"{_fmt(100 * (_get(scorer, 'machine_busy_fraction', f'2_replicas{_suffix(client)}', 'median') or 0), 0)} "
            f"% busy and the replicas used "
            f"{_fmt(_get(scorer, 'scorer_cores', f'2_replicas{_suffix(client)}', 'median'), 2)} cores (1 replica: "
            f"{_fmt(_get(scorer, 'scorer_cores', f'1_replica{_suffix(client)}', 'median'), 2)}); load average "
            f"{_fmt(_get(scorer, 'load_average_1m', 'before'))} before the scorer runs",
        )
    phishing = _get(results, "quality", "phishing", "batches") or {}
    for batch, row in phishing.items():
        add(
            f"Phishing prequential ROC AUC >= River's (batch {batch})",
            row.get("auc_difference"),
            0.0,
            True,
            "AUC difference",
            f"Streamfit {_fmt(row.get('streamfit_roc_auc'), 4)} vs River {_fmt(row.get('river_roc_auc_same_rows'), 4)} "
            "on the same rows",
        )
    _sustained(results.get("sustained") or {}, add)
    return targets


def _sustained(section: dict[str, Any], add) -> None:
    """Issue 15's targets at the highest rate where Streamfit held, default settings."""
    rates = section.get("rates") or {}
    held = _get(section, "highest_holding_rate", "streamfit")
    if not rates:
        return
    at = rates.get(str(held)) if held else None
    learned = _get(at, "streamfit", "learned_rows_per_s") if at else None
    river_held = _get(section, "highest_holding_rate", "river_loop")
    note = f"highest rate that held: {held}/s" if held else "no rate held"
    if learned is not None:
        note += f" ({_fmt(learned, 0)} rows/s learned there: a held rate is learned as fast as it is produced)"
    # A system that holds a rate learns exactly what is produced, so learned rows/s at that rate are the
    # producer's pace, not a ceiling: the rates held are what compares the systems.
    add("sustained: keeps up with >= 20,000 events/s (default settings)", held, 20_000, True, "events/s", note)
    add(
        "sustained: keeps up with the River loop's highest rate",
        held,
        river_held or 0,
        True,
        "events/s",
        f"{note}; River held {river_held or 'no rate'} on the same ladder",
    )
    add(
        "sustained freshness p95 <= 30 s (produced -> served champion)",
        _get(at, "streamfit", "freshness_served_s", "p95") if at else None,
        30.0,
        False,
        "s",
        note,
    )


def _suffix(client: str) -> str:
    """The scorer section's run-key suffix of a consumer client."""
    return "" if client == "kafka-python" else f"_{client}"


def _fmt(value: Any, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
