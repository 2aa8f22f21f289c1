"""benchmarks/sgd_steps.py: the SGD settings against River LR, batch size by batch size."""

from __future__ import annotations

import pytest

from benchmarks import sgd_steps


def _row(metric: float, retrains: int = 0, us: float = 10.0) -> dict:
    return {"metric": metric, "retrains": retrains, "us_per_row": us}


def _report(name: str, kind: str, task: str, metrics: dict[str, float], p_values: dict[str, list], **extra) -> dict:
    table = {m: _row(v) for m, v in metrics.items()}
    for config, retrains in extra.get("retrains", {}).items():
        table[config]["retrains"] = retrains
    out = {"stream": name, "kind": kind, "task": task, "table": table, "p_values": p_values}
    return out | ({"versus_first": extra["versus_first"]} if "versus_first" in extra else {})


def test_the_summary_counts_target_3_misses_significance_and_stationary_retrains_per_setting() -> None:
    reports = [
        _report(
            "noisy",
            "stationary",
            "classification",
            {"default": 0.66, "sgd_p2": 0.68, "river_lr": 0.67, "river_lr_b": 0.67},
            {"default": [0.001, 0.01], "sgd_p2": [None, None]},
            retrains={"sgd_p2": 1},
            versus_first={"sgd_p2": [0.6, 0.01]},  # significantly better than the default here
        ),
        _report(
            "clean",
            "abrupt",
            "classification",
            {"default": 0.96, "sgd_p2": 0.94, "river_lr": 0.95, "river_lr_b": 0.93},
            {"default": [None, None], "sgd_p2": [0.04, 0.2]},
            retrains={"default": 2},  # a retrain after a change is no false alarm
            versus_first={"sgd_p2": [0.04, 0.99]},  # and significantly worse here
        ),
        _report(
            "friedman",
            "stationary",
            "regression",  # MAE: lower is better
            {"default": 2.1, "sgd_p2": 2.3, "river_lr": 2.2, "river_lr_b": 2.25},
            {"default": [None, None], "sgd_p2": [None, None]},
        ),
    ]
    summary = sgd_steps.summarize(reports, ["default", "sgd_p2"])
    default, p2 = summary["default"], summary["sgd_p2"]
    assert default["below_lr"] == ["noisy"]
    assert default["significantly_below_lr"] == ["noisy"] and default["significantly_below_lr_batched"] == ["noisy"]
    assert default["stationary_retrains"] == 0
    assert p2["below_lr"] == ["clean", "friedman"]
    assert p2["significantly_below_lr"] == ["clean"] and p2["significantly_below_lr_batched"] == []
    assert p2["stationary_retrains"] == 1
    assert default["worst_gap"] == {"gap": pytest.approx(-0.01), "stream": "noisy"}
    assert default["mean_rank"] == pytest.approx(1 + 1 / 3)  # better on 2 of 3 streams
    assert "worse_than_first" not in default  # the first setting is the one the others are judged against
    assert p2["worse_than_first"] == ["clean"] and p2["better_than_first"] == ["noisy"]
    sgd_steps.print_summary(500, summary, len(reports))


def test_a_short_sweep_runs_every_setting_and_river_lr_through_the_training_path(capsys) -> None:
    out = sgd_steps.main(
        [
            "--batches",
            "500",
            "250",
            "--streams",
            "hyperplane_stationary_s1",
            "--rows",
            "2000",
            "--configs",
            "default",
            "sgd_p2",
            "sgd_gate2",
        ]
    )
    assert set(out["batches"]) == {"500", "250"}
    for batch in ("500", "250"):
        (report,) = out["batches"][batch]["reports"]
        table = report["table"]
        for model in ("default", "sgd_p2", "sgd_gate2", "river_lr", "river_lr_b"):
            assert 0.5 < table[model]["metric"] <= 1.0, (batch, model, table[model])
            assert table[model]["us_per_row"] > 0
        assert table["default"]["metric"] != table["sgd_p2"]["metric"], "two passes learn differently from eight"
        assert all(p is None or 0.0 <= p <= 1.0 for p in report["p_values"]["default"])
        assert set(report["versus_first"]) == {"sgd_p2", "sgd_gate2"}
        assert all(p is not None and 0.0 <= p <= 1.0 for p in report["versus_first"]["sgd_p2"])
    printed = capsys.readouterr().out
    assert "batches of 500" in printed and "batches of 250" in printed and "sgd_gate2" in printed
    assert "against default: significantly worse on" in printed
