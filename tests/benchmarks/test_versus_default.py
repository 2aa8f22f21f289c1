"""The early-cut tables' figures without River's tree models (benchmarks/versus_default.py)."""

from __future__ import annotations

from benchmarks.versus_default import compare, run


def _report(stream: str, kind: str, default: float, candidate: float, lr: float, p: float = 1.0, sign: float = 1.0):
    return {
        "stream": stream,
        "kind": kind,
        "sign": sign,
        "metric": {"default": default, "cand": candidate, "river_lr": lr},
        "cuts": {"default": [], "cand": [3_500] if kind == "abrupt" else []},
        "retrains": {"default": [4_000], "cand": [3_500]} if kind == "abrupt" else {"default": [], "cand": []},
        "gates_lost": {"default": 0, "cand": 0},
        "p_value": {"default": p, "cand": p},
    }


def test_a_candidate_is_counted_against_the_default_to_four_decimals_and_against_river_lr() -> None:
    reports = [
        _report("stagger_abrupt_s1", "abrupt", 0.90, 0.95, 0.93, p=0.01),  # better, and no longer below LR
        _report("stagger_gradual_s1", "gradual", 0.93, 0.9069, 0.95, p=0.01),  # worse: below LR significantly
        _report("sea_stationary_s1", "stationary", 0.98, 0.98004, 0.97),  # equal to 4 decimals
        _report("friedman_abrupt_s1", "abrupt", 2.30, 2.40, 2.35, sign=-1.0),  # MAE: a rise is worse
    ]
    row = compare(reports, "cand")
    assert (row["better"], row["worse"], row["equal"]) == (1, 2, 1)
    assert row["worst"] == -0.1 and row["worst_stream"] == "friedman_abrupt_s1"
    assert row["below"] == ["stagger_gradual_s1", "friedman_abrupt_s1"] and row["significantly"] == [
        "stagger_gradual_s1"
    ]
    assert row["calm_cuts"] == row["calm_retrains"] == 0 and set(row["changes"]) == {
        "stagger_abrupt_s1",
        "stagger_gradual_s1",
        "friedman_abrupt_s1",
    }
    default = compare(reports, "default")
    assert default["worse"] == 0 and default["worst"] == 0.0 and default["worst_stream"] is None
    assert default["below"] == ["stagger_abrupt_s1", "stagger_gradual_s1"]  # MAE 2.30 < 2.35: not below


def test_cuts_and_retrains_on_streams_without_a_change_are_counted() -> None:
    calm = _report("phishing", "real", 0.9, 0.9, 0.9)
    calm["cuts"]["cand"], calm["retrains"]["cand"] = [2_000], [2_000, 3_000]
    row = compare([calm, _report("sea_abrupt_s1", "abrupt", 0.9, 0.9, 0.9)], "cand")
    assert row["calm_cuts"] == 1 and row["calm_retrains"] == 2


def test_the_figures_are_those_of_the_full_run_s_streamfit_and_river_lr() -> None:
    reports = run(["stagger_gradual_s1"], ("default", "default_cutslopefreesure2"), 6_000, 800, 100.0)
    (r,) = reports
    assert r["cuts"]["default_cutslopefreesure2"] == [2_900, 3_400] and r["retrains"]["default"] == [3_200]
    # `results/learning_quality/cut_second_batch800.txt` (the full run): default 0.9275, the second cut 0.9363.
    assert round(r["metric"]["default"], 4) == 0.9275 and round(r["metric"]["default_cutslopefreesure2"], 4) == 0.9363
