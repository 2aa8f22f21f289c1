"""The learning-quality benchmark's quick mode: every model runs on every stream and the figures are sane."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import learning_quality, learning_streams


def test_quick_run_reports_every_model_on_every_stream_with_sane_figures(capsys) -> None:
    out = learning_quality.main(["--quick"])
    printed = capsys.readouterr().out
    reports = {r["stream"]: r for r in out["reports"]}
    assert set(reports) == set(learning_streams.QUICK)
    models = (*learning_quality.CONFIGS, *learning_quality.RIVER, *learning_quality.RIVER_BATCHED)
    for report in reports.values():
        assert set(report["table"]) == set(models), report["stream"]
        for name, row in report["table"].items():
            assert math.isfinite(row["metric"]) and row["us_per_row"] > 0, (report["stream"], name, row)
    # A linear concept: every model, River's adaptive random forest included, is well above chance.
    linear = reports["hyperplane_stationary_s1"]["table"]
    assert all(linear[m]["metric"] > 0.6 for m in models), linear
    # A rule-based concept: the windowed boosting beats the linear default by far, and its drift
    # retrain fires after the abrupt change (the stream's midpoint) on the product's detector.
    agrawal = reports["agrawal_abrupt_s1"]["table"]
    assert agrawal["hgb"]["metric"] > agrawal["default"]["metric"] + 0.1, agrawal
    assert agrawal["hgb"]["retrains"] >= 1, agrawal
    # Regression: MAE, lower is better, and the verdict picks the lowest.
    friedman = reports["friedman_stationary_s1"]
    best = friedman["verdict"]["best_streamfit"]
    assert all(friedman["table"][best]["metric"] <= friedman["table"][c]["metric"] for c in learning_quality.CONFIGS)
    # No drift action on a stationary stream, and the targets are printed with a verdict each.
    assert reports["hyperplane_stationary_s1"]["verdict"]["false_alarms"] == 0
    assert set(out["summary"]["targets"]) == {
        "best Streamfit >= best River on every stream",
        "recovers in fewer rows than ARF after abrupt changes",
        "default >= River LR everywhere",
        "no retrain on stationary streams",
    }
    assert "Targets (issue 17):" in printed and "river_arf" in printed
    below = out["summary"]["default_below_lr"]
    assert set(below["significantly"]) <= set(below["below"]) == set(out["summary"]["targets"][LR_TARGET])
    assert f"default below River LR on {len(below['below'])} of {len(reports)} streams, significantly" in printed
    assert reports["friedman_stationary_s1"]["verdict"]["default_vs_lr"] is None, "no McNemar test for MAE"
    tested = reports["hyperplane_stationary_s1"]["verdict"]["default_vs_lr"]
    assert tested["rows"] == 2_000 - 500 and 0 <= tested["p_value"] <= 1
    # Part 15: every missed target is split into "latency" and "learner" streams, and nothing else.
    latency = out["summary"]["batch_latency"]
    for key, target in (("best", BEST_TARGET), ("default", LR_TARGET)):
        assert sorted(latency[key]["latency"] + latency[key]["learner"]) == sorted(out["summary"]["targets"][target])
    assert "River in the same micro-batches" in printed and "river_arf_b" in printed


LR_TARGET = "default >= River LR everywhere"
BEST_TARGET = "best Streamfit >= best River on every stream"


def test_batched_river_scores_a_whole_batch_with_the_model_of_the_batch_start_then_learns_it() -> None:
    """The label flips from 0 to 1 at row 1,500, the middle of the second batch of 1,000: the batched
    models, which saw only zeros at the batch's start, err on every flipped row of that batch; row by
    row, LR and ARF adapt inside it. In the next batch the batched ones have learned the flip."""
    rng = np.random.default_rng(0)
    y = np.zeros(3000, dtype=int)
    y[1500:] = 1
    stream = learning_streams.Stream("flip", "flip", "abrupt", "classification", rng.random((3000, 2)), y, 1500)
    flipped = slice(1500, 2000)
    for name in learning_quality.RIVER:
        batched = learning_quality.run_river(name + learning_quality.BATCHED, stream, batch=1000)
        assert batched.outcome[1000:1500].sum() == 500, name  # the old concept: right
        assert batched.outcome[flipped].sum() == 0, name  # every flipped row of the batch counted wrong
    for name in ("river_lr", "river_arf"):
        rows = learning_quality.run_river(name, stream)
        batched = learning_quality.run_river(name + learning_quality.BATCHED, stream, batch=1000)
        assert rows.outcome[flipped].sum() > 100, name  # row by row: learned inside the batch
        assert batched.outcome[2000:].sum() == rows.outcome[2000:].sum() == 1000, name  # learned it after all


def _report(name: str, best_sf: float, river: float, river_b: float, default: float, lr: float, lr_b: float) -> dict:
    """A classification stream's table as `score` builds it (only the metrics that `verdicts` reads)."""
    metrics = {
        "default": default,
        "gate": best_sf,
        "river_lr": lr,
        "river_hat": 0.5,
        "river_arf": river,
        "river_lr_b": lr_b,
        "river_hat_b": 0.5,
        "river_arf_b": river_b,
    }
    table = {m: {"metric": v, "recovery": None, "retrains": 0} for m, v in metrics.items()}
    stream = learning_streams.Stream(name, "f", "stationary", "classification", np.zeros((1, 1)), np.zeros(1), None)
    verdict = learning_quality.verdicts(stream, table, ("default", "gate"))
    return {"stream": name, "task": "classification", "table": table, "verdict": verdict}


def test_a_missed_target_is_put_down_to_latency_only_where_streamfit_matches_river_in_the_same_batches(
    capsys,
) -> None:
    reports = [
        _report("latency", best_sf=0.93, river=0.99, river_b=0.92, default=0.90, lr=0.95, lr_b=0.90),
        _report("learner", best_sf=0.90, river=0.99, river_b=0.95, default=0.80, lr=0.85, lr_b=0.84),
        _report("met", best_sf=0.99, river=0.98, river_b=0.97, default=0.95, lr=0.94, lr_b=0.93),
    ]
    assert reports[0]["verdict"]["latency_cost"] == pytest.approx(0.07)
    targets = {
        BEST_TARGET: ["latency", "learner"],
        "recovers in fewer rows than ARF after abrupt changes": [],
        LR_TARGET: ["latency", "learner"],
    }
    out = learning_quality.batch_latency(reports, targets)
    assert out["best"] == {"latency": ["latency"], "learner": ["learner"]}
    assert out["default"]["latency"] == ["latency"] and out["default"]["learner"] == ["learner"]
    assert (
        "best Streamfit < best River on 2: >= best batched River (micro-batch latency) on 1" in capsys.readouterr().out
    )


def _stream(task: str = "classification") -> learning_streams.Stream:
    return learning_streams.Stream("s", "f", "stationary", task, np.zeros((1000, 2)), np.zeros(1000), None)


def test_the_default_is_called_significantly_below_river_lr_only_on_a_real_paired_shortfall() -> None:
    rng = np.random.default_rng(0)
    lr = (rng.random(1000) < 0.8).astype(float)
    lr[:100] = np.nan  # the first batch: not scored by the Streamfit configs
    slightly = lr.copy()
    slightly[np.flatnonzero(lr == 1)[:8]] = 0  # worse on 8 rows, better on 4 of 900: below, but noise
    slightly[np.flatnonzero(lr == 0)[:4]] = 1
    clearly = lr.copy()
    clearly[np.flatnonzero(lr == 1)[:60]] = 0  # 60 rows worse, none better: a real shortfall
    Result = learning_quality.Result
    for default, significant in ((slightly, False), (clearly, True)):
        paired = learning_quality.default_vs_lr(_stream(), {"river_lr": Result(lr), "default": Result(default)}, 100)
        assert paired["rows"] == 900 and (paired["p_value"] < 0.05) is significant
    assert (
        learning_quality.default_vs_lr(_stream(), {"river_lr": Result(lr), "default": Result(clearly)}, 100)["a_only"]
        == 60
    )
    same = learning_quality.default_vs_lr(_stream(), {"river_lr": Result(lr), "default": Result(lr)}, 100)
    assert same["p_value"] >= 0.05 and same["a_only"] == same["b_only"] == 0, "no discordant row: no evidence"
    assert learning_quality.default_vs_lr(_stream("regression"), {}, 100) is None

    def report(name: str, beats: bool, p: float | None) -> dict:
        return {"stream": name, "verdict": {"default_beats_lr": beats, "default_vs_lr": p and {"p_value": p}}}

    reports = [report("a", False, 0.01), report("b", False, 0.3), report("c", True, 0.9), report("d", False, None)]
    assert learning_quality.significantly_below_lr(reports) == (["a", "b", "d"], ["a"])


def test_head_to_head_counts_streams_each_default_wins_against_its_predecessor() -> None:
    def report(task: str, new: float, old: float) -> dict:
        return {"task": task, "table": {"default": {"metric": new}, "sgd_old": {"metric": old}}}

    reports = [
        report("classification", 0.91, 0.90),  # higher accuracy: better
        report("classification", 0.90, 0.90004),  # equal to 4 decimals
        report("regression", 2.1, 2.0),  # higher MAE: worse
        report("regression", 1.9, 2.0),
    ]
    versus = learning_quality.head_to_head(reports, ("default", "sgd_old"))
    assert versus == {("default", "sgd_old"): (2, 1, 1)}
    assert learning_quality.head_to_head(reports, ("default",)) == {}  # no predecessor in the run


def test_a_drift_retrain_from_the_located_change_beats_one_from_the_change_batch_s_first_row(capsys) -> None:
    """The gate's batches (learned rows + a held-out tail) do not line up with the change, so the
    batch the detector names holds old-concept rows first; `gate_whole` retrains from there."""
    args = ["--quick", "--streams", *QUICK_ABRUPT, "--configs", "gate", "gate_whole", "--trace"]
    out = learning_quality.main(args)
    printed = capsys.readouterr().out
    assert printed.count("around the change, per 250 rows:") == len(QUICK_ABRUPT)
    for report in out["reports"]:
        table = report["table"]
        assert table["gate"]["retrains"] == table["gate_whole"]["retrains"] == 1, report["stream"]
        assert table["gate"]["metric"] > table["gate_whole"]["metric"] + 0.03, (report["stream"], table)
        assert report["verdict"]["best_streamfit"] in ("default", "gate"), "a baseline is not a Streamfit config"
        spans = report["around_change"]  # 500 rows before the change to 1,500 after, every model
        assert list(spans) == list(range(500, 2000, 250)) and set(spans[1000]) == set(table)
        before = spans[500]
        assert before["gate"] == before["gate_whole"] > 0.9, before  # the same model until the change
    assert out["summary"]["versus"]["gate/gate_whole"] == (len(QUICK_ABRUPT), 0, 0)


def test_the_sloped_cut_waits_out_the_ramp_the_located_cut_took_and_keeps_its_abrupt_cut() -> None:
    """Part 15: at `--rows 7000` `stagger_gradual_s2`'s transition is under way at the 500-row tick;
    `_cutlocated` reads its halves as settled and cuts there (and loses), the slope over the same
    checkpoints still climbs and the batch stays whole, as the default's. The abrupt change a quarter
    into a batch (`--rows 6500`) is cut at the same tick by both."""
    ramp = learning_streams.build("stagger_gradual_s2", 7_000)
    default = learning_quality.run_streamfit("default", ramp, 1_000, 100.0)
    located = learning_quality.run_streamfit("default_cutlocated", ramp, 1_000, 100.0)
    sloped = learning_quality.run_streamfit("default_cutslope", ramp, 1_000, 100.0)
    assert located.cuts[0] == 3_500 and sloped.cuts == [] and sloped.retrains == default.retrains
    assert np.nanmean(sloped.outcome[1_000:]) > np.nanmean(located.outcome[1_000:]) + 0.005
    abrupt = learning_streams.build("stagger_abrupt_s2", 6_500)
    assert learning_quality.run_streamfit("default_cutslope", abrupt, 1_000, 100.0).cuts == [3_500]
    assert learning_quality.run_streamfit("default_cutslopefreesure", abrupt, 1_000, 100.0).cuts == [3_500]


QUICK_ABRUPT = ("stagger_abrupt_s1", "agrawal_abrupt_s1")


def _fitted(spec, X: np.ndarray, y: np.ndarray):
    from dagster_project.learning.retraining import replayed

    return replayed(spec, spec, None, X, y)


def test_a_drift_retrain_worse_than_the_adapted_model_on_unseen_rows_is_dropped_and_a_better_one_kept() -> None:
    stream = learning_streams.build("sea_stationary_s1", 2_000)
    spec = learning_quality.spec_for("default", stream)
    X, y = stream.X, stream.y.astype(int)
    good, bad = _fitted(spec, X[:1000], y[:1000]), _fitted(spec, X[:1000], 1 - y[:1000])  # bad: labels inverted
    unseen = slice(1000, 1250)

    carried, decision = learning_quality.settle_retrain(spec, bad, good, X[unseen], y[unseen])
    assert carried is good and not decision["promote"], decision
    assert decision["retrain"] < 0.1 < 0.9 < decision["adapted"] and decision["p_value"] < 0.05
    assert decision["rows"] == 250

    carried, decision = learning_quality.settle_retrain(spec, good, bad, X[unseen], y[unseen])
    assert carried is good and decision["promote"], decision
    carried, decision = learning_quality.settle_retrain(spec, good, good, X[unseen], y[unseen])
    assert carried is good and decision["promote"], "a tie goes to the retrain (non-inferiority)"
    # No unseen rows to score: the product defers the decision and the retrain carries on.
    carried, decision = learning_quality.settle_retrain(spec, bad, good, X[:0], y[:0])
    assert carried is bad and not decision["promote"] and decision["rows"] == 0


def test_the_benchmark_continues_from_the_winner_of_the_retrain_s_gate(monkeypatch) -> None:
    """A retrain that learned inverted labels loses its gate and the stream continues from the model
    that kept learning; an honest retrain wins and the run is the one without the gate."""
    from dagster_project.learning import retraining

    stream = learning_streams.build("sea_abrupt_s1", 4_000)  # change at row 2,000; batches of 500
    honest = {c: learning_quality.run_streamfit(c, stream, 500, 100.0) for c in ("default", "default_ungated")}
    assert [g["promote"] for g in honest["default"].gates] == [True] and honest["default"].retrains == [2500]
    assert honest["default_ungated"].gates == [] and honest["default_ungated"].retrains == [2500]
    np.testing.assert_array_equal(honest["default"].outcome, honest["default_ungated"].outcome)

    real = retraining.replayed

    def inverted(spec, member_spec, start, X, y):
        return real(spec, member_spec, start, X, 1 - y)

    monkeypatch.setattr(retraining, "replayed", inverted)
    sabotaged = {c: learning_quality.run_streamfit(c, stream, 500, 100.0) for c in ("default", "default_ungated")}
    gated, ungated = sabotaged["default"], sabotaged["default_ungated"]
    assert [g["promote"] for g in gated.gates] == [False] and gated.gates[0]["after_row"] == 2500
    assert learning_quality.gate_counts(gated) == {"won": 0, "lost": 1, "undecided": 0}
    # The batch after the retrain is served by the retrained model either way (the convention) ...
    np.testing.assert_array_equal(gated.outcome[:3000], ungated.outcome[:3000])
    # ... then the gated run learns on from the adapted model and scores better than the one that
    # continued from the inverted retrain.
    assert np.nanmean(gated.outcome[3000:]) > np.nanmean(ungated.outcome[3000:]) + 0.005


def test_early_cut_ends_a_batch_at_the_first_tick_where_the_served_model_s_errors_rose() -> None:
    """Part 8's candidate: a rise inside the waiting rows ends the batch at the next tick; the
    same noise without a rise, or a fall in errors, lets the batch fill up."""
    rng = np.random.default_rng(7)
    before = (rng.random(1_000) < 0.03).astype(float)
    calm = (rng.random(1_000) < 0.03).astype(float)
    risen = np.concatenate([calm[:200], (rng.random(800) < 0.6).astype(float)])
    assert learning_quality.early_cut(risen, before, 3_000, 4_000, 100) == 3_300  # 100 risen rows by then
    assert learning_quality.early_cut(calm, before, 3_000, 4_000, 100) == 4_000
    assert learning_quality.early_cut(calm, (rng.random(1_000) < 0.5).astype(float), 3_000, 4_000, 100) == 4_000
    assert learning_quality.early_cut(risen, before, 3_000, 4_000, 1_000) == 4_000  # no tick inside the batch
    # On totals only (one split, at the batch boundary) a late, smaller rise is diluted by the calm
    # rows before it inside the batch: found a tick later than by the split search.
    late = np.concatenate([calm[:600], (rng.random(400) < 0.25).astype(float)])
    assert learning_quality.early_cut(late, before, 3_000, 4_000, 100) == 3_700
    assert learning_quality.early_cut(late, before, 3_000, 4_000, 100, totals=True) == 3_800
    assert learning_quality.early_cut(risen, before, 3_000, 4_000, 100, totals=True) == 3_300
    assert learning_quality.early_cut(calm, before, 3_000, 4_000, 100, totals=True) == 4_000


def test_a_cut_config_learns_an_abrupt_change_half_a_batch_after_it_and_never_cuts_a_stationary_stream() -> None:
    """STAGGER, change at row 2,000 on a batch boundary, batches of 1,000, a tick every 500 rows:
    the default serves the whole batch holding the change with the old concept's model; `_cut` ends
    that batch at the tick, retrains, and serves the rest of it with the new concept."""
    stream = learning_streams.build("stagger_abrupt_s1", 4_000)
    runs = {c: learning_quality.run_streamfit(c, stream, 1_000, 100.0) for c in ("default", "default_cut")}
    plain, cut = runs["default"], runs["default_cut"]
    assert plain.cuts == [] and plain.retrains == [3_000]
    assert cut.cuts == [2_500] and cut.retrains == [2_500]
    np.testing.assert_array_equal(plain.outcome[:2_500], cut.outcome[:2_500])
    assert np.mean(cut.outcome[2_500:3_000]) > np.mean(plain.outcome[2_500:3_000]) + 0.5
    calm = learning_streams.build("stagger_stationary_s1", 4_000)
    assert learning_quality.run_streamfit("default_cut", calm, 1_000, 100.0).cuts == []


def test_the_safe_cut_waits_for_half_a_batch_and_skips_the_start_of_a_gradual_change() -> None:
    """Part 9's rule (`benchmarks.early_cut.should_cut` on totals): at a tick every 250 rows the totals
    test cuts STAGGER's abrupt change 250 rows after it, `_cutsafe` only once half a batch waits; early
    in a gradual transition (batches of 800, a diluted rise) `_cutagg` cuts and `_cutsafe` does not."""
    abrupt = learning_streams.build("stagger_abrupt_s1", 4_000)
    runs = {c: learning_quality.run_streamfit(c, abrupt, 1_000, 50.0) for c in ("default_cutagg", "default_cutsafe")}
    assert runs["default_cutagg"].cuts == [2_250] and runs["default_cutsafe"].cuts == [2_500]
    gradual = learning_streams.build("stagger_gradual_s1", 6_000)
    assert learning_quality.run_streamfit("default_cutagg", gradual, 800, 100.0).cuts[0] == 2_900
    assert learning_quality.run_streamfit("default_cutsafe", gradual, 800, 100.0).cuts == []


def test_a_deferred_cut_learns_the_short_batch_but_leaves_the_drift_retrain_to_the_next_full_one() -> None:
    """`_cutdefer` (part 9's measured and rejected next step): the same cut as `_cutagg`, but the short
    batch makes no drift decision, so the retrain follows the next full batch."""
    stream = learning_streams.build("stagger_abrupt_s1", 4_000)
    agg = learning_quality.run_streamfit("default_cutagg", stream, 1_000, 100.0)
    deferred = learning_quality.run_streamfit("default_cutdefer", stream, 1_000, 100.0)
    assert agg.cuts == deferred.cuts == [2_500]
    assert agg.retrains == [2_500] and deferred.retrains == [3_500]


def test_the_settled_cut_waits_out_a_transition_that_the_safe_cut_takes_half_way() -> None:
    """Part 10's rule (`should_cut_settled` on the label join's checkpoint totals, one a second): with
    the change mid-batch (`--rows 7000`), `_cutsafe` cuts STAGGER's gradual transition at its midpoint
    and its retrain learns half of it; `_cutsettled` sees the errors still rising and lets the batch
    fill up. A settled abrupt change it cuts as soon as two quarter-batch spans wait."""
    gradual = learning_streams.build("stagger_gradual_s2", 7_000)
    assert learning_quality.run_streamfit("default_cutsafe", gradual, 1_000, 100.0).cuts == [3_500]
    settled = learning_quality.run_streamfit("default_cutsettled", gradual, 1_000, 100.0)
    assert settled.cuts == [] and settled.retrains == [4_000]
    abrupt = learning_streams.build("stagger_abrupt_s1", 4_000)
    assert learning_quality.run_streamfit("default_cutsettled", abrupt, 1_000, 100.0).cuts == [2_500]
    calm = learning_streams.build("stagger_stationary_s1", 4_000)
    assert learning_quality.run_streamfit("default_cutsettled", calm, 1_000, 100.0).cuts == []


def test_a_pause_at_a_transition_s_start_looks_settled_and_only_the_size_floor_skips_it() -> None:
    """Part 10's loss: at batches of 800, STAGGER's gradual change steps to ~0.12 error and holds for 400
    rows before the main rise; `_cutsettled` cuts there (row 2,900) and its retrain learns the old
    concept, while `_cutsettledlarge` (part 9's d >= 0.8 as well) leaves the batch whole."""
    gradual = learning_streams.build("stagger_gradual_s1", 6_000)
    assert learning_quality.run_streamfit("default_cutsettled", gradual, 800, 100.0).cuts == [2_900]
    large = learning_quality.run_streamfit("default_cutsettledlarge", gradual, 800, 100.0)
    assert (
        large.cuts == [] and large.retrains == learning_quality.run_streamfit("default", gradual, 800, 100.0).retrains
    )


def test_the_knn_configs_learn_rbf_clusters_the_linear_default_cannot_and_gate_knn_runs_three_families() -> None:
    stream = learning_streams.build("rbf_stationary_s1", 3_000)
    accuracy = {
        c: float(np.nanmean(learning_quality.run_streamfit(c, stream, 500, 100.0).outcome[500:]))
        for c in ("default", "knn", "gate_knn")
    }
    assert accuracy["knn"] > accuracy["default"] + 0.05, accuracy  # Gaussian clouds around centres
    assert accuracy["gate_knn"] > accuracy["default"], accuracy
    families = learning_quality.spec_for("gate_knn", stream).model.families
    assert [f.estimator for f in families] == [
        "sgd_classifier",
        "hist_gradient_boosting_classifier",
        "k_neighbors_classifier",
    ]
    friedman = learning_streams.build("friedman_stationary_s1", 2_000)
    mae = {
        c: float(np.nanmean(learning_quality.run_streamfit(c, friedman, 500, 100.0).outcome[500:]))
        for c in ("default", "knn")
    }
    assert math.isfinite(mae["knn"]) and mae["knn"] > 0, mae  # the regressor family runs the same path


def test_configs_equal_on_a_stream_share_their_rank_whatever_their_order() -> None:
    def report(values: dict[str, float], task: str = "classification") -> dict:
        return {"task": task, "table": {c: {"metric": v} for c, v in values.items()}}

    reports = [
        report({"a": 0.9, "b": 0.9, "c": 0.8}),  # a and b tie for first
        report({"a": 0.8, "b": 0.9, "c": 0.7}),
        report({"a": 2.0, "b": 1.0, "c": 1.0}, task="regression"),  # MAE: lower is better
    ]
    ranks = learning_quality.mean_ranks(reports, ("a", "b", "c"))
    assert ranks == {"a": (1.5 + 2 + 3) / 3, "b": (1.5 + 1 + 1.5) / 3, "c": (3 + 3 + 1.5) / 3}


def test_the_located_cut_takes_a_change_inside_the_batch_that_fixed_spans_read_as_rising() -> None:
    """Part 12 (a): STAGGER's abrupt change a quarter into a batch (`--rows 6500`). Part 10's trailing
    spans read 0.2 -> 0.8 as a rise under way and leave the batch whole; located at the checkpoint
    holding the change, the rows after it are settled and the batch is cut at the 500-row tick."""
    abrupt = learning_streams.build("stagger_abrupt_s2", 6_500)
    settled = learning_quality.run_streamfit("default_cutsettled", abrupt, 1_000, 100.0)
    located = learning_quality.run_streamfit("default_cutlocated", abrupt, 1_000, 100.0)
    assert settled.cuts == [] and located.cuts == located.retrains == [3_500]
    assert np.nanmean(located.outcome[3_500:4_000]) > np.nanmean(settled.outcome[3_500:4_000]) + 0.5


def test_a_cut_s_retrain_leaves_the_cooldown_to_a_second_retrain_when_errors_rise_again() -> None:
    """Part 12 (b): part 10's pause (batches of 800) is cut at row 2,900 either way; the retrain that
    follows the cut spends the 900-s cooldown under `_cutlocated`, so no retrain follows it, and not
    under `_cutlocatedfree`, where the detector reads on from the short batch and retrains again."""
    gradual = learning_streams.build("stagger_gradual_s1", 6_000)
    spent = learning_quality.run_streamfit("default_cutlocated", gradual, 800, 100.0)
    free = learning_quality.run_streamfit("default_cutlocatedfree", gradual, 800, 100.0)
    assert spent.cuts == free.cuts == [2_900]
    assert spent.retrains == [2_900] and free.retrains[0] == 2_900 and len(free.retrains) == 2


def test_a_cut_no_retrain_would_follow_is_not_taken() -> None:
    """Part 12 (c): part 10's (b), `sea_gradual_s2` at batches of 1,200: the totals rule cuts at 3,400,
    the detector does not fire on the short batch, and the retrain waits until 4,600 (the default's:
    3,600). `_cutlocatedsure` asks the drift decision first and leaves the batch whole."""
    gradual = learning_streams.build("sea_gradual_s2", 6_000)
    located = learning_quality.run_streamfit("default_cutlocated", gradual, 1_200, 100.0)
    sure = learning_quality.run_streamfit("default_cutlocatedsure", gradual, 1_200, 100.0)
    assert located.cuts == [3_400] and located.retrains == [4_600]
    assert (
        sure.cuts == [] and sure.retrains == learning_quality.run_streamfit("default", gradual, 1_200, 100.0).retrains
    )
    calm = learning_streams.build("sea_stationary_s1", 4_000)
    assert learning_quality.run_streamfit("default_cutlocatedfreesure", calm, 1_000, 100.0).cuts == []


def test_the_second_cut_retrains_on_the_rows_since_a_cut_that_learned_a_pause() -> None:
    """Part 16: part 10's pause (`stagger_gradual_s1`, batches of 800) is cut at 2,900 and its retrain
    learns the pause; under `_cutslopefreesure` the retrained model then serves a whole batch before the
    detector retrains again (3,700), under `_cutslopefreesure2` it is cut again at the first tick
    (3,400) and retrained on the rows since the first cut, once: the model it gives is never cut again."""
    gradual = learning_streams.build("stagger_gradual_s1", 6_000)
    once = learning_quality.run_streamfit("default_cutslopefreesure", gradual, 800, 100.0)
    twice = learning_quality.run_streamfit("default_cutslopefreesure2", gradual, 800, 100.0)
    default = learning_quality.run_streamfit("default", gradual, 800, 100.0)
    assert once.cuts == [2_900] and once.retrains == [2_900, 3_700]
    assert twice.cuts == twice.retrains == [2_900, 3_400]
    assert np.nanmean(twice.outcome[3_400:4_200]) > np.nanmean(once.outcome[3_400:4_200]) + 0.05
    assert np.nanmean(twice.outcome[800:]) > np.nanmean(default.outcome[800:])
    # An abrupt change learned by the first cut's retrain: nothing to cut again.
    abrupt = learning_streams.build("stagger_abrupt_s2", 6_500)
    assert learning_quality.run_streamfit("default_cutslopefreesure2", abrupt, 1_000, 100.0).cuts == [3_500]
    calm = learning_streams.build("sea_stationary_s1", 4_000)
    assert learning_quality.run_streamfit("default_cutslopefreesure2", calm, 1_000, 100.0).cuts == []


def test_the_batch_sweep_counts_each_target_s_misses_per_batch_size_on_the_streams_every_run_holds(capsys) -> None:
    from benchmarks import batch_sweep

    def run(batch: int, reports: list[dict]) -> dict:
        for r in reports:
            for row in r["table"].values():
                row["us_per_row"] = 1000.0 / batch  # costs that move with the batch size
        return {"batch": batch, "reports": reports}

    large = [
        _report("latency", best_sf=0.93, river=0.99, river_b=0.92, default=0.90, lr=0.95, lr_b=0.90),
        _report("learner", best_sf=0.90, river=0.99, river_b=0.95, default=0.80, lr=0.85, lr_b=0.84),
        _report("only_here", best_sf=0.50, river=0.99, river_b=0.95, default=0.50, lr=0.95, lr_b=0.95),
    ]
    large[1]["verdict"] |= {"default_vs_lr": {"p_value": 0.01}, "default_vs_lr_b": {"p_value": 0.02}}
    large[0]["verdict"]["default_vs_lr"] = {"p_value": 0.2}
    small = [
        _report("latency", best_sf=0.99, river=0.99, river_b=0.97, default=0.96, lr=0.95, lr_b=0.94),
        _report("learner", best_sf=0.90, river=0.99, river_b=0.95, default=0.80, lr=0.85, lr_b=0.84),
    ]
    small[0]["verdict"]["false_alarms"] = 1  # a retrain where the stream is stationary
    table = batch_sweep.sweep([run(1000, large), run(100, small)])
    assert list(table) == [100, 1000], "ascending batch sizes"
    assert table[1000]["streams"] == table[100]["streams"] == 2, "a stream one run lacks is left out of both"
    big = table[1000]["misses"]
    assert big["best"] == {"all": ["latency", "learner"], "learner": ["learner"]}
    assert big["default"] == {
        "all": ["latency", "learner"],
        "learner": ["learner"],
        "significant": ["learner"],
        "learner_significant": ["learner"],
    }
    assert big["stationary"]["all"] == []
    few = table[100]["misses"]
    assert few["best"]["all"] == ["learner"] and few["default"]["all"] == ["learner"]
    assert few["stationary"]["all"] == ["latency"]
    assert table[100]["us_per_row"]["gate"] == pytest.approx(10.0)
    assert table[1000]["us_per_row"]["gate"] == pytest.approx(1.0)
    batch_sweep.print_sweep(table, [run(1000, large), run(100, small)])
    printed = capsys.readouterr().out
    assert "missed at the smallest batch (100):" in printed
    assert "best: learner gate 0.9000 vs river_arf 0.9900 (-0.0900)" in printed
    # A size run in two parts on disjoint streams counts as one run; a stream in both is refused.
    parts = batch_sweep.merged([run(100, small[:1]), run(100, small[1:]), run(1000, large)])
    assert [(p["batch"], len(p["reports"])) for p in parts] == [(100, 2), (1000, 3)]
    with pytest.raises(ValueError, match="more than one file"):
        batch_sweep.merged([run(100, small), run(100, small[:1])])


def test_a_change_first_seen_in_the_gate_s_held_out_tail_is_retrained_one_batch_later_not_on_no_rows() -> None:
    # At batches of 100 the candidate set holds out 50 rows (`tail_split`'s floor), so a series point
    # can be rows no model has learned yet; a rise starting there left the drift retrain an empty
    # window (and the located retrain crashed on it). It waits for the batch that learns them.
    stream = learning_streams.build("sea_abrupt_s2", 3_000)
    result = learning_quality.run_streamfit("gate", stream, 100, 100.0)
    assert len(result.retrains) == 1 and stream.change <= result.retrains[0] <= stream.change + 300, result.retrains


def test_river_lr_alone_runs_target_3_s_two_references_and_leaves_the_others_not_measured(capsys) -> None:
    """`--river lr`: only River LR, row by row and in the same batches; targets 1 and 2 (best River,
    ARF's recovery) are neither met nor missed, target 3 is judged for the default and each candidate."""
    args = ["--quick", "--streams", "agrawal_abrupt_s1", "--rows", "3000", "--configs", "default", "sgd_rows"]
    out = learning_quality.main([*args, "--river", "lr"])
    printed = capsys.readouterr().out
    (report,) = out["reports"]
    assert set(report["table"]) == {"default", "sgd_rows", "river_lr", "river_lr_b"}
    targets = out["summary"]["targets"]
    assert targets[BEST_TARGET] is None and targets["recovers in fewer rows than ARF after abrupt changes"] is None
    assert isinstance(targets[LR_TARGET], list) and isinstance(targets["no retrain on stationary streams"], list)
    assert printed.count("NOT MEASURED") == 2 and "river_arf" not in printed
    assert report["verdict"]["best_beats_river"] is None and report["verdict"]["recovers_before_arf"] is None
    candidates = out["summary"]["candidates_below_lr"]
    assert set(candidates) == {"default", "sgd_rows"}
    assert {"significantly", "significantly_batched", "stationary_retrains"} <= set(candidates["sgd_rows"])
    assert report["verdict"]["sgd_rows_vs_lr_b"]["rows"] == 3000 - 500


def test_the_row_rules_take_their_passes_from_the_rows_of_a_batch() -> None:
    rule = learning_quality.passes_by_rows
    assert learning_quality.model_spec("sgd_rows", "classification", 250) == {
        "estimator": "sgd_classifier",
        **rule(250),
    }
    passes = [rule(rows)["passes"] for rows in (1000, 500, 250, 100)]
    assert passes == [8, 4, 2, 1]
    assert learning_quality.model_spec("sgd_small", "classification", 500) == {"estimator": "sgd_classifier"}
    small = learning_quality.model_spec("sgd_small", "regression", 250)
    assert small == {"estimator": "sgd_regressor", "params": {"eta0": 0.01}, "passes": 1}
    with pytest.raises(ValueError, match="rows"):
        learning_quality.model_spec("sgd_rows", "classification")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_default_config_is_what_a_stream_that_names_no_model_gets(task: str) -> None:
    from dagster_project.learning.estimator_table import DEFAULT_ESTIMATORS

    y = np.array([0, 1] * 10) if task == "classification" else np.linspace(0.0, 1.0, 20)
    stream = learning_streams.Stream("s", "f", "stationary", task, np.zeros((20, 2)), y, None)
    assert learning_quality.spec_for("default", stream).model.estimator == DEFAULT_ESTIMATORS[task]
    assert learning_quality.spec_for("sgd", stream).model.estimator.startswith("sgd_")  # plain SGD, named
    for name in learning_quality.config_names():  # every config named in --configs' help builds a spec
        learning_quality.spec_for(name, stream, rows=500)
    with pytest.raises(ValueError, match="unknown config 'nope'; choose from .*gate_adaptive"):
        learning_quality.model_spec("nope", task)


def test_river_lr_on_many_classes_is_one_vs_rest_not_binary() -> None:
    """River's LogisticRegression is binary: on LED's ten classes it scored 0.12, no reference at all."""
    stream = learning_streams.build("led_stationary_s1", 3_000)
    ovr = learning_quality.run_river("river_lr", stream)
    assert ovr.outcome[1_000:].mean() > 0.6  # chance is 0.1
    binary = learning_quality.river_model("river_lr", "classification", 42, classes=2)
    assert type(binary["LogisticRegression"]).__name__ == "LogisticRegression"


def test_families_outside_the_set_are_many_classes_or_a_rare_positive() -> None:
    led, wave = learning_streams.build("led_abrupt_s1", 2_000), learning_streams.build("waveform_stationary_s1", 2_000)
    assert set(led.y) == set(range(10)) and led.X.shape == (2_000, 24) and led.change == 1_000
    assert set(wave.y) == {0, 1, 2} and wave.X.shape == (2_000, 21)
    rare = learning_streams.build("searare_stationary_s1", 4_000)
    assert set(rare.y) == {0, 1} and 0.02 < rare.y.mean() < 0.08
    gradual = learning_streams.build("searare_gradual_s1", 4_000)  # mixed by hand: River's mixer takes datasets
    assert gradual.change == 2_000 and np.array_equal(gradual.y[:1_000], rare.y[:1_000])
    with pytest.raises(ValueError, match="waveform has no second concept"):
        learning_streams.build("waveform_abrupt_s1", 100)
    assert not set(learning_streams.OTHER_FAMILIES) & {n.split("_")[0] for n in learning_streams.full_set()}


def test_leader_changes_are_recorded_and_show_trees_serving_the_rare_positive_change_for_one_batch() -> None:
    """Part 25's untraced 0.01: on rare-positive SEA the trees lead before the change, with a sharp
    boundary at the old threshold (8); the change moves it to 9.5, so the batch holding the change is
    served by trees that call the band between the two positive. The first tail after it gives the
    lead back to SGD, whose boundary (pulled inwards by 5 % positives) the change barely touched."""
    stream = learning_streams.build("searare_abrupt_s1", 6_000)
    gate = learning_quality.run_streamfit("gate", stream, 1_000, 100.0)
    default = learning_quality.run_streamfit("default", stream, 1_000, 100.0)
    changes = [(c["after_row"], c["leader"]) for c in gate.leaders]
    served_at_change = [leader for row, leader in changes if row <= stream.change][-1]
    first_after = next((row, leader) for row, leader in changes if row > stream.change)
    assert served_at_change == "hgb" and first_after[1] == "sgd"
    rows = slice(stream.change, first_after[0])  # served by the trees chosen before the change
    wrong = np.flatnonzero(gate.outcome[rows] == 0) + stream.change
    band = stream.X[wrong, 0] + stream.X[wrong, 1]
    assert len(wrong) > 40 and set(stream.y[wrong]) == {0} and band.min() > 8 and band.max() <= 9.5
    assert (default.outcome[rows] == 0).sum() < 5
    assert all(c["reason"] and c["leader"] in ("sgd", "hgb") for c in gate.leaders)
