"""Learning quality over many streams: Streamfit's training path against River, row for row.

Streams (`benchmarks/learning_streams.py`): River's seeded generators (linear: SEA, Hyperplane;
rule-based: Agrawal, STAGGER; RBF clusters: RandomRBF), each stationary, with an abrupt and with a
gradual change at the middle row, two seeds each; Friedman regression likewise; and the real
datasets River's wheel ships (Phishing, Bananas).

Streamfit configurations learn batch by batch through `learning.learner.test_then_learn` (an
in-memory window reader stands in for Kafka's exact offsets), each row scored before it is
learned. The gate configuration holds out each batch's tail and picks its leader with
`learning.families.choose_leader`, as the product does. Every configuration runs the drift
sensor's logic after each batch: `monitors.detectors` on the per-batch error rates (regression:
MAE) since the last action, `monitors.decisions.decide` with the stream's DriftSpec (cooldown on a
simulated clock of `--rate` rows/s), and on "retrain" `learning.learner.retrained` (incremental
families replay the window with `learning.retraining.replayed`) on the batches since the change
point; a retrained candidate set picks its leader among its refit families on that batch's tail
(`choose_leader(..., refit=True)`, the product's retrain on the head's tail). The retrained model
serves the next batch; its promotion gate (`settle_retrain`: the
product's `registry.promotion.judge` against the model that kept learning, on as many of that
batch's first rows as the product's tail, neither has learned) decides which of the two the stream
continues from, as `learning.pipeline.continue_from` does. Not simulated: data drift (PSI/KS),
rollbacks (they need the registry's champion/predecessor comparison; the benchmark counts none).

River's models (LogisticRegression with a StandardScaler, HoeffdingAdaptiveTree, ARF; regression:
LinearRegression, HoeffdingAdaptiveTreeRegressor, ARFRegressor) learn the same rows one by one,
predicting each before learning it. Their `_b` twins (part 15) learn the same rows in the same
order but are scored as a micro-batch learner is: each batch of `--batch` rows (Streamfit's batch
boundaries, `default`'s: multiples of the batch size) predicted row by row (`predict_one`) by the
model as it stood at the batch's start, then learned row by row. The targets keep the row-by-row
models as their reference; the summary adds, per stream, best Streamfit against the best `_b` model
and the latency cost (best row-by-row River minus best `_b`), and splits each missed target into
streams where Streamfit is >= River under the same batch boundary and those where it is not.

Reported per stream: prequential accuracy (MAE) over the rows after the first batch, which every
model scores; rows to recover after a change (as in `windowed_quality.summary`: the trailing
1,000-row accuracy back within 2 points of its level before the change); drift retrains; training
cost in microseconds per row. Then whether the issue's targets hold; for "default >= River LR",
also on how many streams the default is *significantly* worse: the product's one-sided McNemar
mid-p test (`registry.significance.mcnemar`) on the rows both models scored, River LR as A. Its
p-value treats rows as independent pairs, which consecutive rows of a drifting stream are not quite.

`--river lr` (or any of lr, hat, arf) runs only those River models and their `_b` twins: target 3's
two references in minutes instead of an hour of forests; targets whose reference did not run are
reported "not measured".

`python -m benchmarks.learning_quality [--quick] [--streams NAME ...] [--rows N] [--batch N] [--river M ...] [--trace]`
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks import learning_streams
from benchmarks.early_cut import (
    MIN_EFFECT,
    ErrorTotals,
    confirmed,
    cooldown_anchor,
    cut_allowed,
    drift_decision,
    first_cut_retrain,
    retrain_start,
    series_after_retrain,
    should_cut,
    should_cut_again,
    should_cut_located,
    should_cut_settled,
    should_cut_sloped,
)
from benchmarks.learning_streams import Stream
from monitors.decisions import Decision

RIVER = ("river_lr", "river_hat", "river_arf")
# Part 15: the same River models in Streamfit's micro-batches (`run_river(..., batch=N)`): every row of
# a batch predicted by the model as it stood at the batch's start, then the batch learned row by row.
# What a batch learner cannot win (the rows of the batch holding a change) is the gap between a model
# and its `_b` twin; the issue's targets stay measured against the row-by-row ones.
BATCHED = "_b"
RIVER_BATCHED = tuple(m + BATCHED for m in RIVER)
# `--river`: which River models run (each with its `_b` twin). Fewer is faster (ARF is most of a run's
# time); a target whose reference is missing is reported "not measured", never met or missed.
RIVER_CHOICES = {"lr": "river_lr", "hat": "river_hat", "arf": "river_arf"}
CONFIGS = ("default", "mlp", "hgb", "gate")
# Part 4 (issue 17): MLP settings weighed against the shipped `mlp` default (one hidden layer of 32,
# Adam at 0.03 in steps of 50 rows); `mlp_old` is the default before it ((32,), 0.01, steps of 200).
MLP_VARIANTS = {
    "mlp_old": {"learning_rate_init": 0.01, "batch_size": 200},
    "mlp_h64": {"hidden_layer_sizes": (64,)},
    "mlp_lr003": {"learning_rate_init": 0.003},
    "mlp_lr1": {"learning_rate_init": 0.1, "batch_size": 200},
    "mlp_bs200": {"batch_size": 200},
}

# Part 5 (issue 17): the SGD default before eight passes at 0.005 (`sgd_old`: one pass at 0.01), the
# baseline the new default is measured against in the same run; and neighbours of the new default.
SGD_VARIANTS = {
    # Part 21: the product's default classifier became adaptive SGD; `sgd` is the plain SGD default before it.
    "sgd": {},
    "sgd_old": {"params": {"eta0": 0.01}, "passes": 1},
    "sgd_p4": {"params": {"eta0": 0.01}, "passes": 4},
    "sgd_p16": {"params": {"eta0": 0.0025}, "passes": 16},
    # Part 11: averaged SGD (the mean of the weights over every step so far) for the tiny linear gaps.
    "sgd_avg": {"params": {"average": True}},
    # Part 19: a quarter of the default's step per batch (two passes at its 0.005), about sgd_old's.
    "sgd_p2": {"passes": 2},
}
# Part 19: the default SGD and `sgd_p2` as two families through the gate, which picks the step size
# on each stream's unseen rows instead of one step size for every stream.
SGD_GATE = "sgd_gate2"
# Part 21: one estimator that runs the default's step and `sgd_p2`'s as copies and serves the one with
# the lowest recent prequential loss (dagster_project/learning/adaptive_sgd.py).
SGD_ADAPTIVE = "sgd_adaptive"
# Part 21, second step: the copy chosen by the Brier score or by errors instead of log loss.
ADAPTIVE_CRITERIA = {"sgd_adaptive_brier": "brier", "sgd_adaptive_err": "errors"}
# Part 22: the `recommended` candidate set with adaptive SGD (the default classifier since part 21) in
# place of plain SGD beside windowed gradient boosting.
GATE_ADAPTIVE = "gate_adaptive"
# Part 24: adaptive SGD with a third copy at four times the default's step (32 passes' step, taken as
# 8 passes at 4x eta0: `max_passes`), so a stream that needs a larger step than the default can get it.
ADAPTIVE_LARGER = "sgd_adaptive3"


# Part 20: SGD whose passes depend on the rows a `partial_fit` call sees. In this benchmark a single-SGD
# config's calls each see one batch (a drift retrain replays its window in chunks of the spec's
# `batch.rows`), so the rule is applied to `--batch`.
def passes_by_rows(rows: int) -> dict:
    """Passes per row of the call held at the default's at 1,000 rows (eight): fewer revisits of a
    smaller sample, clamp(round(8 x rows / 1,000), 1, 8), at the default's step."""
    return {"passes": min(8, max(1, round(8 * rows / 1_000)))}


def old_below_500(rows: int) -> dict:
    """The default from 500 rows on (the range part 5 measured it on), one pass at 0.01 below."""
    return {} if rows >= 500 else SGD_VARIANTS["sgd_old"]


ROW_RULES: dict[str, Callable[[int], dict]] = {"sgd_rows": passes_by_rows, "sgd_small": old_below_500}

# Any config + "_whole": its drift retrains learn from the first row of the batch where the rise
# began, as before the product located the change inside it (`learning.retraining.post_change`).
UNLOCATED = "_whole"
# Any config + "_ungated": a drift retrain always carries on, as before part 7 simulated its gate.
UNGATED = "_ungated"
# Any config + "_warm": `drift.retrain_mode: warm` (a retrain starts from the model that served)
# instead of the default `fresh`. Suffixes combine in this order: `gate_warm_ungated`.
WARM = "_warm"
# Any config + "_cut" (innermost suffix: `default_cut_ungated`): part 8's candidate. The batch is cut
# short at a sensor tick where the served model's errors on the rows waiting so far rose above its
# errors on the batch before (`early_cut`), so a change is learned a partial batch after it, not a
# whole one. The product's sensor would need the live label join's per-row errors to do this.
CUT = "_cut"
# "_cutagg": the same, tested on totals only (the batch before's error rate and rows against the
# waiting rows' so far, one split at the batch boundary): what a sensor can read from the head's
# prequential metrics and the label join's per-version live totals, without per-row errors.
CUT_TOTALS = "_cutagg"
# "_cutsafe": part 9's rule on totals, `benchmarks.early_cut.should_cut`: the same test with two floors
# (at least half a batch waiting; a rise of an abrupt change's size). Not safe yet: see part 9.
CUT_SAFE = "_cutsafe"
# "_cutdefer": `_cutagg`'s cut, but a batch cut short makes no drift decision: it waits for the next
# full batch, so a drift retrain never rests on a cut batch's partial view of a change (part 9's next step).
CUT_DEFER = "_cutdefer"
# "_cutsettled": part 10's rule, `benchmarks.early_cut.should_cut_settled`: cut only on a rise that has
# stopped rising, read from the label join's totals at every checkpoint (`CHECKPOINT_S`) since the batch began.
# Not safe: a transition that pauses looks settled (part 10).
CUT_SETTLED = "_cutsettled"
# "_cutsettledlarge": the same with part 9's floor on the rise's size too (Cohen's d >= `MIN_EFFECT`).
CUT_SETTLED_LARGE = "_cutsettledlarge"
# Part 12: "_cutlocated": `should_cut_located` (the rise located on the checkpoint totals first, "settled"
# judged on the checkpoints after it; no size floor). "...free": a retrain that follows a cut does not
# start the drift cooldown (`cooldown_anchor`; the detector then reads from the short batch on,
# `series_after_retrain`; one such cut per cooldown, `cut_allowed`). "...sure": a cut is taken only when
# the drift decision on the short batch is a retrain (`confirmed`). Each clause alone and all three.
# Not safe: none passes all six settings of part 12.
CUT_LOCATED = "_cutlocated"
CUT_LOCATED_FREE = "_cutlocatedfree"
CUT_LOCATED_SURE = "_cutlocatedsure"
CUT_LOCATED_FREE_SURE = "_cutlocatedfreesure"
# Part 15: "_cutslope": `should_cut_sloped`, part 12's located rise with "settled" read as a flat least-squares
# line over the checkpoints after it (slope t < 2); "free" and "sure" as in part 12. Candidates, not wired.
CUT_SLOPE = "_cutslope"
CUT_SLOPE_FREE = "_cutslopefree"
CUT_SLOPE_SURE = "_cutslopesure"
CUT_SLOPE_FREE_SURE = "_cutslopefreesure"
# Part 16: "_cutslopefreesure2": `_cutslopefreesure` plus a second cut in the batch the cut's retrain serves,
# where the retrained model errs above the short batch's level (`should_cut_again`), once per change
# (`first_cut_retrain`); its retrain learns the rows since the first cut (`retrain_start`) and starts the cooldown.
CUT_SLOPE_AGAIN = "_cutslopefreesure2"
SLOPED = (CUT_SLOPE_AGAIN, CUT_SLOPE_FREE_SURE, CUT_SLOPE_SURE, CUT_SLOPE_FREE, CUT_SLOPE)
LOCATED = (CUT_LOCATED_FREE_SURE, CUT_LOCATED_SURE, CUT_LOCATED_FREE, CUT_LOCATED, *SLOPED)
CUTS = (*LOCATED, CUT_SETTLED_LARGE, CUT_SETTLED, CUT_DEFER, CUT_SAFE, CUT_TOTALS, CUT)
CUT_TICK_S = 5.0  # the drift sensor's best cadence (FACTS: the daemon ticks every 5 s)
CHECKPOINT_S = 1.0  # the label join's `labels.flush_interval_s` for `_cutsettled` (its default, 5 s, is a tick)
BASELINES = (UNLOCATED, UNGATED)  # compared, never counted as a configuration Streamfit ships


@dataclass
class Result:
    """One model on one stream: per-row outcome (1/0 correct, or absolute error; NaN: not scored)."""

    outcome: np.ndarray
    seconds: float = 0.0
    retrains: list[int] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)  # rows where a batch was cut short (`_cut` configs)
    # Each drift retrain's promotion gate against the model that kept learning (`settle_retrain`):
    # the row after which it retrained, promoted or not, both models' metric, rows, p-value.
    gates: list[dict] = field(default_factory=list)
    # A candidate set's leader changes (`choose_leader` on each batch's tail, or a retrain's refit
    # families): the new leader, why, and `after_row`, the end of the batch whose tail chose it (the
    # first row it serves; a retrain's `after_row` is where the batch's learned part ended).
    leaders: list[dict] = field(default_factory=list)

    def choose_leader(self, model: Any, spec: Any, X: np.ndarray, y: np.ndarray, after_row: int, refit: bool = False):
        """`choose_leader` as the product calls it, recording a change of leader."""
        from dagster_project.learning.families import choose_leader

        previous = model.leader
        choice = choose_leader(model, spec, spec.promotion.metric, X, y, refit=refit)
        if model.leader != previous:
            self.leaders.append({"after_row": after_row, "leader": model.leader, "reason": choice.reason})


def estimator_names(task: str) -> dict[str, str]:
    """Each family's estimator (estimator_table's name) for the task."""
    suffix = "classifier" if task == "classification" else "regressor"
    stems = {"sgd": "sgd", "mlp": "mlp", "hgb": "hist_gradient_boosting", "knn": "k_neighbors"}
    return {family: f"{stem}_{suffix}" for family, stem in stems.items()} | {"adaptive": f"adaptive_sgd_{suffix}"}


def model_table(task: str) -> dict[str, dict]:
    """Every config's spec `model` for the task, except the `ROW_RULES` configs (they need the rows)."""
    e = estimator_names(task)

    def adaptive(criterion: str) -> dict:  # regression has one criterion (squared error)
        params = {"params": {"criterion": criterion}} if task == "classification" else {}
        return {"estimator": e["adaptive"], **params}

    def candidates(*members: tuple) -> dict:  # (name, family) or (name, family, its settings) each
        return {"candidates": [{"estimator": e[m[1]], "name": m[0], **(m[2] if len(m) > 2 else {})} for m in members]}

    return {
        "default": {},  # what a stream that declares no model gets: the task's default learner
        "mlp": {"estimator": e["mlp"]},
        "hgb": {"estimator": e["hgb"]},
        "gate": {"candidates": "recommended"},  # SGD and windowed gradient boosting (estimator_table)
        "knn": {"estimator": e["knn"]},  # part 11: the windowed nearest-neighbour family alone
        "gate_knn": candidates(("sgd", "sgd"), ("hgb", "hgb"), ("knn", "knn")),  # part 11: `gate` plus kNN
        "gate3": candidates(("sgd", "sgd"), ("mlp", "mlp"), ("hgb", "hgb")),  # the recommended set plus the MLP
        SGD_GATE: candidates(("sgd", "sgd"), ("sgd_p2", "sgd", {"passes": 2})),
        GATE_ADAPTIVE: candidates(("sgd", "adaptive"), ("hgb", "hgb")),
        SGD_ADAPTIVE: adaptive("log_loss"),  # part 21's first criterion (the product's default counts errors)
        **{name: adaptive(criterion) for name, criterion in ADAPTIVE_CRITERIA.items()},
        # Regression keeps the default's copies: squared error's gradients are unbounded, so a 4x step risks overflow.
        ADAPTIVE_LARGER: (
            {"estimator": e["adaptive"], "params": {"passes_options": [8, 2, 32], "max_passes": 8}}
            if task == "classification"
            else {}
        ),
        **{name: {"estimator": e["sgd"], **variant} for name, variant in SGD_VARIANTS.items()},
        **{name: {"estimator": e["mlp"], "params": variant} for name, variant in MLP_VARIANTS.items()},
    }


def config_names() -> tuple[str, ...]:
    """Every base config `--configs` accepts (before the suffixes)."""
    return (*model_table("classification"), *ROW_RULES)


def model_spec(config: str, task: str, rows: int | None = None) -> dict:
    """The spec's `model` for a config; `rows` (the batch size) for the `ROW_RULES` configs."""
    if config in ROW_RULES:
        if rows is None:
            raise ValueError(f"{config!r} takes its passes from the rows of a batch: pass rows")
        return {"estimator": estimator_names(task)["sgd"], **ROW_RULES[config](rows)}
    table = model_table(task)
    if config not in table:
        raise ValueError(f"unknown config {config!r}; choose from {config_names()}")
    return copy.deepcopy(table[config])


def spec_for(config: str, stream: Stream, retrain_mode: str = "fresh", rows: int | None = None):
    from dagster_project.spec import StreamSpec

    classify = stream.task == "classification"
    return StreamSpec(
        name="bench",
        task=stream.task,
        features=[{"name": f} for f in stream.features],
        label={"classes": sorted({int(v) for v in stream.y})} if classify else {},
        model=model_spec(config, stream.task, rows),
        promotion={"metric": "accuracy" if classify else "mae"},
        drift={"retrain_mode": retrain_mode},
    )


def settle_retrain(spec, retrained: object, adapted: object, X: np.ndarray, y: np.ndarray) -> tuple[object, dict]:
    """A drift retrain's promotion gate, as the product runs it: the retrained model (candidate)
    against the one that kept learning (champion) on rows neither has learned, by
    `registry.promotion.judge` with the spec's margin and significance; the next batch continues
    from the winner by `pipeline.continue_from`'s rule (`retrain_lost`). Returns that model and the
    decision."""
    from dagster_project.learning.learner import servable
    from dagster_project.learning.pipeline import retrain_lost
    from dagster_project.registry.promotion import gate, judge

    metric, p = spec.promotion.metric, spec.promotion
    if len(y):
        result = judge(spec, metric, "retrain", servable(retrained), "adapted", servable(adapted), X, y)
    else:  # nothing unseen to score: the product defers, and the retrain carries on
        result = gate(metric, p.margin, p.min_rows, "retrain", {}, "adapted", {}, 0, significance=p.significance)
    decision = {
        "promote": result.promote,
        "retrain": result.candidate_value,
        "adapted": result.champion_value,
        "rows": result.rows,
        "p_value": result.p_value,
        "candidate_value": result.candidate_value,
    }
    return (adapted if retrain_lost(decision) else retrained), decision


def _parse(config: str) -> tuple[str, bool, bool, str, str | None]:
    """A config name -> (base config, locate the change, gate the retrain, retrain mode, early cut:
    None or one of `CUTS`)."""
    gated = not config.endswith(UNGATED)
    config = config.removesuffix(UNGATED)
    locate = not config.endswith(UNLOCATED)
    config = config.removesuffix(UNLOCATED)
    cut = next((c for c in CUTS if config.endswith(c)), None)
    config = config.removesuffix(cut) if cut else config
    mode = "warm" if config.endswith(WARM) else "fresh"
    return config.removesuffix(WARM), locate, gated, mode, cut


def _errors(task: str, outcome: np.ndarray) -> np.ndarray:
    """Per-row error from an outcome: 1 - correct, or the absolute error itself."""
    return 1.0 - outcome if task == "classification" else outcome


def rose_on_totals(errors: np.ndarray, before: np.ndarray) -> bool:
    """The waiting rows' mean error is above the batch before's by `change_point.MIN_T` pooled
    standard errors (the two-sample t of `rise_start` at the one split between them)."""
    from monitors.change_point import MIN_ROWS, MIN_T

    if len(errors) < MIN_ROWS or len(before) < MIN_ROWS:
        return False
    both = np.concatenate([before, errors])
    within = ((before - before.mean()) ** 2).sum() + ((errors - errors.mean()) ** 2).sum()
    pooled = max(within / (len(both) - 2), 1e-12)
    t = (errors.mean() - before.mean()) / np.sqrt(pooled * (1 / len(before) + 1 / len(errors)))
    return bool(t >= MIN_T)


def _totals(errors: np.ndarray) -> ErrorTotals:
    return ErrorTotals(len(errors), float(errors.sum()), float((errors * errors).sum()))


def early_cut(
    errors: np.ndarray,
    before: np.ndarray,
    first: int,
    end: int,
    tick_rows: int,
    totals: bool = False,
    batch_rows: int | None = None,
    checkpoint_rows: int | None = None,
    min_effect: float = 0.0,
    located: bool = False,
    confirm: Callable[[int], Decision] | None = None,
    sloped: bool = False,
    again: bool = False,
) -> int:
    """Where a batch [first, end) ends: the first tick (every `tick_rows` rows) at which the served
    model's per-row `errors` on the rows waiting so far show a rise over its `before` errors (the
    batch before; `monitors.change_point.rise_start`, the test a drift retrain trims its window with),
    else `end`. Only rows already labelled at the tick are looked at. `totals`: `rose_on_totals`;
    `batch_rows` given: the product rule on totals, `benchmarks.early_cut.should_cut` (part 9); with
    `checkpoint_rows` too, `should_cut_settled` on the totals of every `checkpoint_rows` waiting rows
    (part 10: what the label join's checkpoints give a sensor), with `min_effect` its floor on the rise's d;
    `located`: `should_cut_located` on those checkpoints instead (part 12), and a cut it allows is taken
    only if `confirm(tick)` (when given: the drift decision the batch cut at `tick` would get) is a retrain;
    with `sloped` too, `should_cut_sloped` (part 15). `again`: the batch a cut's retrain serves, `before`
    the short batch's errors: `should_cut_again` on the totals so far, confirmed likewise (part 16)."""
    from monitors.change_point import rise_start

    for tick in range(first + tick_rows, end, tick_rows):
        waiting = errors[: tick - first]
        if again and batch_rows is not None:
            decision = should_cut_again(_totals(before), _totals(waiting), batch_rows)
            if decision.cut and confirm is not None:
                decision = confirmed(decision, confirm(tick))
            if decision.cut:
                return tick
        elif located and batch_rows is not None and checkpoint_rows is not None:
            windows = [_totals(waiting[i : i + checkpoint_rows]) for i in range(0, len(waiting), checkpoint_rows)]
            rule = should_cut_sloped if sloped else should_cut_located
            decision = rule(_totals(before), windows, batch_rows)
            if decision.cut and confirm is not None:
                decision = confirmed(decision, confirm(tick))
            if decision.cut:
                return tick
        elif batch_rows is not None and checkpoint_rows is not None:
            windows = [_totals(waiting[i : i + checkpoint_rows]) for i in range(0, len(waiting), checkpoint_rows)]
            if should_cut_settled(_totals(before), windows, batch_rows, min_effect=min_effect).cut:
                return tick
        elif batch_rows is not None:
            if should_cut(_totals(before), _totals(waiting), batch_rows).cut:
                return tick
        elif totals:
            if rose_on_totals(waiting, before):
                return tick
        elif rise_start(np.concatenate([before, waiting])) is not None and waiting.mean() > (
            before.mean() if len(before) else 0.0
        ):
            return tick
    return end


def _outcome(task: str, predicted: np.ndarray, y: np.ndarray) -> np.ndarray:
    if task == "classification":
        return (np.asarray(predicted) == y).astype(float)
    return np.abs(np.asarray(predicted, dtype=float) - y)


def run_streamfit(config: str, stream: Stream, batch: int, rate: float) -> Result:
    """Batch by batch through the product's learner, gate and drift decision."""
    from dagster_project.learning.families import CandidateSet
    from dagster_project.learning.learner import retrained, rows_of, test_then_learn
    from dagster_project.learning.retraining import post_change, replayed, row_errors
    from dagster_project.registry.promotion import tail_split
    from monitors.decisions import DecisionConfig

    config, locate, gated, mode, cut = _parse(config)
    tick_rows = max(1, round(CUT_TICK_S * rate))
    located = cut in LOCATED
    free = cut in (CUT_LOCATED_FREE, CUT_LOCATED_FREE_SURE, CUT_SLOPE_FREE, CUT_SLOPE_FREE_SURE, CUT_SLOPE_AGAIN)
    sure = cut in (CUT_LOCATED_SURE, CUT_LOCATED_FREE_SURE, CUT_SLOPE_SURE, CUT_SLOPE_FREE_SURE, CUT_SLOPE_AGAIN)
    settled = cut in (CUT_SETTLED, CUT_SETTLED_LARGE, *LOCATED)
    checkpoint_rows = max(1, round(CHECKPOINT_S * rate)) if settled else None
    min_effect = MIN_EFFECT if cut == CUT_SETTLED_LARGE else 0.0
    before = np.zeros(0)  # the served model's per-row errors on the last scored batch
    spec = spec_for(config, stream, mode, batch)
    X, y, n = stream.X, stream.y, len(stream.y)
    offsets, partitions = np.arange(n), np.zeros(n, dtype=np.int32)
    policy = DecisionConfig.from_spec(spec.drift, spec.promotion.significance)
    params = dict(spec.drift.detector_params)

    def read(ranges):
        s, e = ranges[0]
        return rows_of(X[s:e], y[s:e], partitions[s:e], offsets[s:e])

    out = Result(np.full(n, np.nan))
    model, start, scored, last = None, 0, 0, None
    last_cut_retrain: float | None = None  # `free`: when a cut's retrain last ran (one per cooldown)
    answered: float | None = None  # `free`: detections up to here were answered by a cut's retrain
    armed = False  # part 16: this batch is served by a first cut's retrain and may be cut again
    series: list[tuple[float, int, int, float]] = []  # (error, rows, first row, time) since the last action
    served: dict[int, object] = {}  # first row scored -> the model that scored it (models are never mutated)
    pending = None  # (retrained, adapted, unseen rows for its gate) until the next batch arrives
    p = spec.promotion
    while start < n:
        end = min(n, start + batch)
        may_cut = not free or cut_allowed(scored / rate, last_cut_retrain, policy.cooldown_s)
        again, armed, second_cut = armed, False, False
        if cut and (may_cut or again) and model is not None and scored < end:
            waiting = _errors(stream.task, _outcome(stream.task, model.predict(X[scored:end]), y[scored:end]))
            safe = batch if cut == CUT_SAFE or settled else None
            totals = cut in (CUT_TOTALS, CUT_DEFER)

            def confirm(tick: int, waiting=waiting, first=scored, series=series, last=last, answered=answered):
                short = (float(waiting[: tick - first].mean()), tick - first, first, tick / rate)
                found = drift_decision(
                    [*series, short], stream.task, spec.drift.detector, params, tick / rate, last, policy, answered
                )
                return found[1]

            cut_at = early_cut(
                waiting,
                before,
                scored,
                end,
                tick_rows,
                totals=totals,
                batch_rows=safe,
                checkpoint_rows=checkpoint_rows,
                min_effect=min_effect,
                located=located,
                sloped=cut in SLOPED,
                confirm=confirm if sure else None,
                again=again,
            )
            if cut_at < end:
                out.cuts.append(cut_at)
                end = cut_at
                second_cut = again
        tail_start = tail_split({0: (start, end)}, p.tail_rows, p.tail_fraction, p.min_rows)[0]
        learn_end = tail_start if len(spec.model.families) > 1 else end
        now = end / rate
        if model is not None and scored < end:
            # The retrained model serves the batch after a retrain (the benchmark's convention since
            # part 1; in the product the champion serves until the retrain wins its gate).
            hits = _outcome(stream.task, model.predict(X[scored:end]), y[scored:end])
            out.outcome[scored:end] = hits
            error = float(hits.mean()) if stream.task == "regression" else 1.0 - float(hits.mean())
            series.append((error, end - scored, scored, now))
            served[scored] = model
            before = _errors(stream.task, hits)
            if pending is not None:  # the product's gate on as many unseen rows as its batch tail
                retrained_model, adapted, rows = pending
                unseen = slice(scored, min(end, scored + rows))
                model, decision = settle_retrain(spec, retrained_model, adapted, X[unseen], y[unseen])
                out.gates.append({"after_row": out.retrains[-1], **decision})
                pending = None
            scored = end
        began = time.perf_counter()
        model = test_then_learn(model, spec, read({0: (start, learn_end)}), {0: (start, learn_end)}, read).model
        if scored < learn_end:
            scored = learn_end  # the first batch: learned, never scored
        if learn_end < end:
            out.choose_leader(model, spec, X[learn_end:end], y[learn_end:end], end)
        after_cut = bool(out.cuts) and out.cuts[-1] == end
        if series and not (cut == CUT_DEFER and after_cut):
            firsts = [point[2] for point in series]
            found, decision = drift_decision(
                series, stream.task, spec.drift.detector, params, now, last, policy, answered
            )
            since = retrain_start(firsts, found, second_cut) if found is not None else learn_end
            # A rise that starts in the rows a candidate set held out of this batch (its gate's tail, not
            # learned yet; at batches of 100 that tail is a whole series point) leaves the retrain nothing
            # to learn: the next batch learns those rows, and the detector, reading the same series, finds
            # the change again.
            if found is not None and decision.action == "retrain" and since < learn_end:
                window = {0: (since, learn_end)}
                if locate:  # the product's retrain: from where the errors of the model that served `since` rose
                    errors = row_errors(spec, served[since], X[since:learn_end], y[since:learn_end])
                    window = post_change(window, partitions[since:learn_end], offsets[since:learn_end], errors)
                rows_ = read(window)
                warm = model if spec.drift.retrain_mode == "warm" else None

                def replay(member_spec, begin, rows_=rows_):
                    return replayed(spec, member_spec, begin, rows_.X, rows_.y)

                leader = model.leader if isinstance(model, CandidateSet) else None
                why = "drift retrain: " + "; ".join(decision.reasons)
                adapted = model
                model = retrained(spec, warm, rows_, window, why, replay, leader=leader)
                if isinstance(model, CandidateSet) and learn_end < end:  # the product's retrain: on the head's tail
                    out.choose_leader(model, spec, X[learn_end:end], y[learn_end:end], end, refit=True)
                out.retrains.append(learn_end)
                if gated:  # unseen rows for the gate: the product's tail of this batch (`tail_split`)
                    pending = (model, adapted, end - tail_start)
                first_cut = first_cut_retrain(after_cut, second_cut)
                if free and first_cut:
                    last_cut_retrain = answered = now
                last = cooldown_anchor(last, now, first_cut, free)
                series = series_after_retrain(series, first_cut, free)
                armed = cut == CUT_SLOPE_AGAIN and first_cut
                served = {point[2]: served[point[2]] for point in series}
        out.seconds += time.perf_counter() - began
        start = learn_end
    return out


def river_model(name: str, task: str, seed: int, classes: int = 2):
    """River's model `name` for the task. With more than two classes its logistic regression is one
    vs rest (River's `LogisticRegression` is binary: on ten classes it learned class 0 against the rest
    and scored 0.12), as scikit-learn's SGD log loss is in Streamfit; the trees are multiclass."""
    from river import forest, linear_model, multiclass, preprocessing, tree

    if task == "classification":
        logistic = (
            (lambda: multiclass.OneVsRestClassifier(linear_model.LogisticRegression()))
            if classes > 2
            else linear_model.LogisticRegression
        )
        return {
            "river_lr": lambda: preprocessing.StandardScaler() | logistic(),
            "river_hat": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=seed),
            "river_arf": lambda: forest.ARFClassifier(seed=seed),
        }[name]()
    return {
        "river_lr": lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        "river_hat": lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=seed),
        "river_arf": lambda: forest.ARFRegressor(seed=seed),
    }[name]()


def run_river(name: str, stream: Stream, seed: int = 42, batch: int | None = None) -> Result:
    """Row by row in the same order: predict, then learn. With `batch` (the `_b` models), in batches of
    that many rows: every row of a batch predicted by the model as it stood at the batch's start (River's
    `predict_one` changes no state, a pipeline's scaler included), then the batch's rows learned one by one
    in order. One `predict_one` and one `learn_one` a row either way, so the costs compare."""
    model = river_model(name.removesuffix(BATCHED), stream.task, seed, len(np.unique(stream.y)))
    rows = [dict(zip(stream.features, x, strict=True)) for x in stream.X.tolist()]
    labels = stream.y.tolist()
    predicted = np.zeros(len(labels))
    step = batch or 1
    began = time.perf_counter()
    for start in range(0, len(labels), step):
        end = min(len(labels), start + step)
        for i in range(start, end):
            p = model.predict_one(rows[i])
            predicted[i] = -1 if p is None else p
        for i in range(start, end):
            model.learn_one(rows[i], labels[i])
    out = Result(_outcome(stream.task, predicted, stream.y))
    out.seconds = time.perf_counter() - began
    return out


def recovery_rows(result: Result, change: int, first: int) -> int | None:
    """Rows after the change until the trailing 1,000-row accuracy is back near its earlier level."""
    from benchmarks.windowed_quality import Run, summary

    return summary(Run(correct=[(first, result.outcome[first:])]), change)["recovery_rows"]


def score(stream: Stream, results: dict[str, Result], batch: int) -> dict[str, dict]:
    """Per model: the metric over rows >= batch (scored by all), recovery, retrains, us per row."""
    table = {}
    for name, r in results.items():
        values = r.outcome[batch:]
        row = {
            "metric": float(np.nanmean(values)),
            "retrains": len(r.retrains),
            "cuts": len(r.cuts),
            "us_per_row": 1e6 * r.seconds / len(stream.y),
            "recovery": None,
            "retrain_gates": gate_counts(r),
            "gate_decisions": r.gates,
            "leader_changes": r.leaders,
        }
        if stream.change is not None and stream.task == "classification":
            row["recovery"] = recovery_rows(r, stream.change, batch)
        table[name] = row
    return table


def gate_counts(result: Result) -> dict[str, int]:
    """Drift retrains that won / lost their promotion gate, and those it never decided (the stream
    ended first, or the config does not simulate the gate)."""
    won = sum(1 for g in result.gates if g["promote"])
    lost = len(result.gates) - won
    return {"won": won, "lost": lost, "undecided": len(result.retrains) - len(result.gates)}


def verdicts(stream: Stream, table: dict[str, dict], configs: tuple[str, ...]) -> dict[str, object]:
    """The issue's targets on one stream (higher accuracy / lower MAE is better; None: not measured,
    a River model it needs did not run)."""
    sign = 1.0 if stream.task == "classification" else -1.0
    best_sf = max(configs, key=lambda c: sign * table[c]["metric"])
    best_river = max(RIVER, key=lambda m: sign * table[m]["metric"]) if all(m in table for m in RIVER) else None
    out: dict[str, object] = {
        "best_streamfit": best_sf,
        "best_river": best_river,
        "best_beats_river": None,
        "default_beats_lr": None,
        "false_alarms": sum(table[c]["retrains"] for c in configs) if stream.kind in ("stationary", "real") else 0,
        "recovers_before_arf": None,
    }
    if best_river is not None:
        out["best_beats_river"] = sign * (table[best_sf]["metric"] - table[best_river]["metric"]) >= 0
    if "river_lr" in table:
        out["default_beats_lr"] = sign * (table["default"]["metric"] - table["river_lr"]["metric"]) >= 0
    if stream.kind == "abrupt" and stream.task == "classification" and "river_arf" in table:
        mine, arf = table[best_sf]["recovery"], table["river_arf"]["recovery"]
        out["recovers_before_arf"] = mine is not None and (arf is None or mine < arf)
    if all(m in table for m in RIVER_BATCHED) and best_river is not None:
        out |= batched_verdicts(stream, table, best_sf, best_river)
    elif "river_lr_b" in table:
        out["default_beats_lr_batched"] = sign * (table["default"]["metric"] - table["river_lr_b"]["metric"]) >= 0
    return out


def batched_verdicts(stream: Stream, table: dict[str, dict], best_sf: str, best_river: str) -> dict[str, object]:
    """The targets again against River fed in the same micro-batches (part 15), and the latency cost:
    best row-by-row River minus best batched River (accuracy; MAE: batched minus row-by-row), what River
    itself loses to the batch boundary."""
    sign = 1.0 if stream.task == "classification" else -1.0
    best_b = max(RIVER_BATCHED, key=lambda m: sign * table[m]["metric"])
    out: dict[str, object] = {
        "best_river_batched": best_b,
        "latency_cost": sign * (table[best_river]["metric"] - table[best_b]["metric"]),
        "best_beats_batched_river": sign * (table[best_sf]["metric"] - table[best_b]["metric"]) >= 0,
        "default_beats_lr_batched": sign * (table["default"]["metric"] - table["river_lr_b"]["metric"]) >= 0,
        "recovers_as_fast_as_arf_batched": None,
    }
    if stream.kind == "abrupt" and stream.task == "classification":
        mine, arf = table[best_sf]["recovery"], table["river_arf_b"]["recovery"]
        out["recovers_as_fast_as_arf_batched"] = mine is not None and (arf is None or mine <= arf)
    return out


def _fmt(value: float | int | None, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format(value, spec)


LEVEL = 0.05  # promotion.significance's default


def default_vs_lr(
    stream: Stream, results: dict[str, Result], batch: int, config: str = "default", reference: str = "river_lr"
) -> dict[str, object] | None:
    """McNemar's one-sided test that River LR (A; or `reference`, e.g. `river_lr_b`) is more accurate
    than the default (B; or `config`) on the same rows (both scored, from `batch` on); None for
    regression streams."""
    from dagster_project.registry.significance import mcnemar

    if stream.task != "classification":
        return None
    lr, default = results[reference].outcome[batch:], results[config].outcome[batch:]
    both = ~(np.isnan(lr) | np.isnan(default))
    test = mcnemar(lr[both] == 1, default[both] == 1)
    return {"p_value": test.p_value, "rows": test.rows, **test.detail}


def against_lr(config: str) -> bool:
    """Candidates for the default measured against target 3 like it: part 8's cuts, the SGD variants
    (fixed, by rows, the two-step gate and adaptive SGD)."""
    adaptive = (SGD_GATE, SGD_ADAPTIVE, *ADAPTIVE_CRITERIA, ADAPTIVE_LARGER)
    return CUT in config or config in SGD_VARIANTS or config in ROW_RULES or config in adaptive


def run_stream(
    stream: Stream, configs: tuple[str, ...], batch: int, rate: float, river: tuple[str, ...] = RIVER
) -> dict:
    """Every config and the `river` models (row by row and `_b`) on one stream, scored and judged."""
    results = {c: run_streamfit(c, stream, batch, rate) for c in configs}
    results |= {m: run_river(m, stream) for m in river}
    results |= {m + BATCHED: run_river(m + BATCHED, stream, batch=batch) for m in river}
    table = score(stream, results, batch)
    verdict = verdicts(stream, table, shipped(configs))
    for c in ("default", *(c for c in configs if against_lr(c))):
        for reference, key in (("river_lr", "lr"), ("river_lr_b", "lr_b")):
            if reference in results:
                verdict[f"{c}_vs_{key}"] = default_vs_lr(stream, results, batch, c, reference)
    return {"stream": stream.name, "kind": stream.kind, "task": stream.task, "rows": len(stream.y)} | {
        "table": table,
        "verdict": verdict,
        "around_change": around_change(stream, results),
    }


def significantly_below_lr(
    reports: list[dict], config: str = "default", reference: str = "river_lr"
) -> tuple[list[str], list[str]]:
    """Streams where the default (or `config`) is below River LR (or `reference`: `river_lr_b`), and
    those where it is significantly so (McNemar one-sided p < `LEVEL`; accuracy streams only)."""

    def beats(r: dict) -> bool:
        if config == "default" and reference == "river_lr":
            return bool(r["verdict"]["default_beats_lr"])
        sign = 1.0 if r["task"] == "classification" else -1.0
        return sign * (r["table"][config]["metric"] - r["table"][reference]["metric"]) >= 0

    below = [r["stream"] for r in reports if not beats(r)]
    key = f"{config}_vs_{reference.removeprefix('river_')}"
    tested = {r["stream"]: (r["verdict"].get(key) or {}).get("p_value") for r in reports}
    return below, [name for name in below if tested.get(name) is not None and tested[name] < LEVEL]


TRACE_SPAN = 250  # rows per line of the trace around a change


def around_change(stream: Stream, results: dict[str, Result]) -> dict[int, dict[str, float]]:
    """Each model's accuracy (MAE) per 250 rows from 500 rows before the change to 1,500 after:
    where a model loses after a change (the batch holding it, the retrain, the gate's choice)."""
    if stream.change is None:
        return {}
    out = {}
    for start in range(
        max(0, stream.change - 2 * TRACE_SPAN), min(len(stream.y), stream.change + 6 * TRACE_SPAN), TRACE_SPAN
    ):
        out[start] = {m: float(np.nanmean(r.outcome[start : start + TRACE_SPAN])) for m, r in results.items()}
    return out


def shipped(configs: tuple[str, ...]) -> tuple[str, ...]:
    """The configs the product runs (the `_whole` and `_ungated` baselines and the `_cut` candidates
    are compared, not counted as Streamfit's)."""
    return tuple(c for c in configs if not c.endswith(BASELINES) and CUT not in c)


def print_trace(report: dict) -> None:
    spans = report["around_change"]
    if not spans:
        return
    models = list(next(iter(spans.values())))
    print(f"  around the change, per {TRACE_SPAN} rows:")
    print(f"  {'rows':>11} " + " ".join(f"{m[:11]:>11}" for m in models))
    for start, values in spans.items():
        print(f"  {start:5d}-{start + TRACE_SPAN:<5d} " + " ".join(f"{values[m]:11.3f}" for m in models))


def print_stream(report: dict, configs: tuple[str, ...]) -> None:
    metric = "acc" if report["task"] == "classification" else "MAE"
    print(f"\n{report['stream']} ({report['kind']}, {report['rows']:,} rows), {metric}:")
    print(
        f"  {'model':18} {metric:>8} {'recovery':>9} {'retrains':>9} {'gate won/lost':>14} {'us/row':>8} "
        f"{'x default':>10}"
    )
    base = report["table"]["default"]["us_per_row"] or 1e-9
    for name in (m for m in (*configs, *RIVER, *RIVER_BATCHED) if m in report["table"]):
        r = report["table"][name]
        g = r.get("retrain_gates") or {}
        gates = f"{g['won']}/{g['lost']}" if g.get("won", 0) + g.get("lost", 0) else "-"
        print(
            f"  {name:18} {_fmt(r['metric']):>8} {_fmt(r['recovery'], ',')!s:>9} {r['retrains']:9d} {gates:>14} "
            f"{r['us_per_row']:8.1f} {r['us_per_row'] / base:10.1f}"
        )
    for name in (m for m in configs if report["table"].get(m, {}).get("leader_changes")):
        changes = ", ".join(f"{c['leader']} at row {c['after_row']:,}" for c in report["table"][name]["leader_changes"])
        print(f"  {name} leader: {changes}")


def summarize(reports: list[dict], configs: tuple[str, ...]) -> dict[str, object]:
    """The summary table and each target's verdict over every stream."""
    print(
        f"\n{'stream':26} {'best SF':>16} {'best River':>18} {'default':>8} {'R LR':>8} "
        f"{'rec SF/ARF':>14} {'alarms':>6}"
    )
    ran = set(reports[0]["table"]) if reports else set()

    def metric(t: dict, model: str | None) -> str:
        return f"{t[model]['metric']:8.4f}" if model in t else f"{'-':>8}"

    for r in reports:
        t, v = r["table"], r["verdict"]
        sf, rv = v["best_streamfit"], v["best_river"]
        rec = "-"
        if v["recovers_before_arf"] is not None:
            rec = f"{_fmt(t[sf]['recovery'], ',')}/{_fmt(t['river_arf']['recovery'], ',')}"
        print(
            f"{r['stream']:26} {sf:>7} {t[sf]['metric']:8.4f} {rv or '-':>9} {metric(t, rv)} "
            f"{t['default']['metric']:8.4f} {metric(t, 'river_lr')} {rec:>14} {v['false_alarms']:6d}"
        )
    abrupt = [r for r in reports if r["kind"] == "abrupt" and r["task"] == "classification"]
    # None: not measured (the River models the target compares with did not run, `--river`).
    targets: dict[str, list[str] | None] = {
        "best Streamfit >= best River on every stream": (
            [r["stream"] for r in reports if not r["verdict"]["best_beats_river"]] if ran >= set(RIVER) else None
        ),
        "recovers in fewer rows than ARF after abrupt changes": (
            [r["stream"] for r in abrupt if not r["verdict"]["recovers_before_arf"]] if "river_arf" in ran else None
        ),
        "default >= River LR everywhere": (
            [r["stream"] for r in reports if not r["verdict"]["default_beats_lr"]] if "river_lr" in ran else None
        ),
        "no retrain on stationary streams": [r["stream"] for r in reports if r["verdict"]["false_alarms"]],
    }
    print("\nTargets (issue 17):")
    for target, missed in targets.items():
        if missed is None:
            print(f"  NOT MEASURED {target} (a River model it needs did not run: --river)")
            continue
        print(
            f"  {'MET   ' if not missed else 'MISSED'} {target}"
            + (f": missed on {', '.join(missed)}" if missed else "")
        )
    below, significant, candidates_below = [], [], {}
    if "river_lr" in ran:
        below, significant = significantly_below_lr(reports)
        print(
            f"  default below River LR on {len(below)} of {len(reports)} streams, significantly (McNemar one-sided "
            f"p < {LEVEL:g}, accuracy streams) on {len(significant)}"
            + (f": {', '.join(significant)}" if significant else "")
        )
        candidates_below = candidates_against_lr(reports, configs)
    configs = shipped(everything := configs)
    wins = {c: 0 for c in configs}
    for r in reports:
        wins[r["verdict"]["best_streamfit"]] += 1
    mean_rank = mean_ranks(reports, configs)
    print(
        "Streamfit configs, streams won / mean rank: " + ", ".join(f"{c} {wins[c]}/{mean_rank[c]:.2f}" for c in configs)
    )
    versus = head_to_head(reports, everything)
    for (new, old), (better, worse, equal) in versus.items():
        print(f"{new} vs {old}: better on {better}, worse on {worse}, equal on {equal} streams")
    gates = retrain_gates(reports, everything)
    cuts = early_cuts(reports, everything)
    latency = None  # part 15's split of every target needs every River model in the same batches too
    if ran >= {*RIVER, *RIVER_BATCHED}:
        latency = batch_latency(reports, targets)
    return {
        "batch_latency": latency,
        "early_cuts": cuts,
        "targets": targets,
        "default_below_lr": {"below": below, "significantly": significant},
        "candidates_below_lr": candidates_below,
        "wins": wins,
        "mean_rank": mean_rank,
        "versus": {f"{n}/{o}": v for (n, o), v in versus.items()},
        "retrain_gates": gates,
    }


def candidates_against_lr(reports: list[dict], configs: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """Target 3 for the default and each candidate to replace it (`against_lr`): streams below River
    LR and significantly so, the same against `river_lr_b` when it ran, and retrains on stationary
    (and real) streams (target 4). Printed."""
    out: dict[str, dict[str, object]] = {}
    batched = "river_lr_b" in reports[0]["table"]
    for c in ("default", *(c for c in configs if against_lr(c))):
        below_c, significant_c = significantly_below_lr(reports, c)
        out[c] = {"below": below_c, "significantly": significant_c}
        line = (
            f"  {c} below River LR on {len(below_c)} of {len(reports)} streams, significantly on {len(significant_c)}"
        )
        if batched:
            below_b, significant_b = significantly_below_lr(reports, c, "river_lr_b")
            out[c] |= {"below_batched": below_b, "significantly_batched": significant_b}
            line += f"; below River LR batched on {len(below_b)}, significantly on {len(significant_b)}"
        out[c]["stationary_retrains"] = sum(
            r["table"][c]["retrains"] for r in reports if r["kind"] in ("stationary", "real")
        )
        print(
            line
            + f"; stationary retrains {out[c]['stationary_retrains']}"
            + (f" (significantly below River LR on: {', '.join(significant_c)})" if significant_c else "")
        )
    return out


def batch_latency(reports: list[dict], targets: dict[str, list[str] | None]) -> dict[str, object]:
    """Part 15: per stream, best Streamfit against best River fed in the same micro-batches, and the
    latency cost (what River loses to the batch boundary); then each missed target split into the
    streams where Streamfit is >= River under the same boundary (the gap is the micro-batch latency)
    and those where it loses even then (a learner gap). Printed."""
    print(
        f"\nRiver in the same micro-batches (`_b`: each batch scored by the model of its start):\n"
        f"{'stream':26} {'best SF':>16} {'best River':>18} {'best River batched':>20} {'latency':>8} "
        f"{'SF - batched':>12} {'default':>8} {'R LR_b':>8}"
    )
    for r in reports:
        t, v = r["table"], r["verdict"]
        sf, rv, rb = v["best_streamfit"], v["best_river"], v["best_river_batched"]
        sign = 1.0 if r["task"] == "classification" else -1.0
        print(
            f"{r['stream']:26} {sf:>7} {t[sf]['metric']:8.4f} {rv:>9} {t[rv]['metric']:8.4f} "
            f"{rb:>11} {t[rb]['metric']:8.4f} {v['latency_cost']:+8.4f} "
            f"{sign * (t[sf]['metric'] - t[rb]['metric']):+12.4f} {t['default']['metric']:8.4f} "
            f"{t['river_lr_b']['metric']:8.4f}"
        )
    by_name = {r["stream"]: r for r in reports}

    def split(missed: list[str], key: str) -> dict[str, list[str]]:
        return {
            "latency": [s for s in missed if by_name[s]["verdict"][key]],
            "learner": [s for s in missed if by_name[s]["verdict"][key] is False],
        }

    out = {
        "best": split(targets["best Streamfit >= best River on every stream"], "best_beats_batched_river"),
        "recovery": split(
            targets["recovers in fewer rows than ARF after abrupt changes"], "recovers_as_fast_as_arf_batched"
        ),
        "default": split(targets["default >= River LR everywhere"], "default_beats_lr_batched"),
    }
    significant = [
        r["stream"]
        for r in reports
        if not r["verdict"]["default_beats_lr_batched"]
        and (r["verdict"].get("default_vs_lr_b") or {}).get("p_value", 1.0) < LEVEL
    ]
    out["default"]["significantly"] = significant
    costs = [r["verdict"]["latency_cost"] for r in reports]
    out["latency_cost"] = {r["stream"]: r["verdict"]["latency_cost"] for r in reports}
    print(
        f"Latency cost (best River row by row minus best River batched; MAE: the reverse): median "
        f"{float(np.median(costs)):+.4f}, max {max(costs):+.4f}"
    )
    for name, text, level, below in (
        ("best", "best Streamfit < best River", ">= best batched River", "below it too"),
        ("recovery", "recovery not faster than ARF", "as fast as ARF batched or faster", "slower than it too"),
        ("default", "default < River LR", ">= River LR batched", "below it too"),
    ):
        split_ = out[name]
        print(
            f"  {text} on {len(split_['latency']) + len(split_['learner'])}: {level} (micro-batch latency) "
            f"on {len(split_['latency'])}"
            + (f" ({', '.join(split_['latency'])})" if split_["latency"] else "")
            + f"; {below} (learner gap) on {len(split_['learner'])}"
            + (f" ({', '.join(split_['learner'])})" if split_["learner"] else "")
        )
    for s in (*out["recovery"]["latency"], *out["recovery"]["learner"]):
        t = by_name[s]["table"]
        sf = t[by_name[s]["verdict"]["best_streamfit"]]["recovery"]
        print(
            f"    {s}: recovery rows best Streamfit {_fmt(sf, ',')}, ARF {_fmt(t['river_arf']['recovery'], ',')}, "
            f"ARF batched {_fmt(t['river_arf_b']['recovery'], ',')}"
        )
    print(
        f"  default significantly below River LR batched (McNemar one-sided p < {LEVEL:g}) on {len(significant)}"
        + (f": {', '.join(significant)}" if significant else "")
    )
    return out


def mean_ranks(reports: list[dict], configs: tuple[str, ...]) -> dict[str, float]:
    """Each config's rank per stream (1 = best), averaged over the streams. Configs equal to 4
    decimals share the mean of their places: a family set that adds a member which never leads
    scores exactly as the set without it, and must not rank below it for coming later in the list."""
    out = {c: 0.0 for c in configs}
    for r in reports:
        sign = 1.0 if r["task"] == "classification" else -1.0
        values = {c: round(-sign * r["table"][c]["metric"], 4) for c in configs}
        for c in configs:
            above = sum(v < values[c] for v in values.values())
            tied = sum(v == values[c] for v in values.values())
            out[c] += above + (tied + 1) / 2
    return {c: total / len(reports) for c, total in out.items()}


def retrain_gates(reports: list[dict], configs: tuple[str, ...]) -> dict[str, dict[str, list[str]]]:
    """Per config, the streams where a drift retrain won / lost its promotion gate (printed)."""
    out: dict[str, dict[str, list[str]]] = {}
    for c in configs:
        won = [r["stream"] for r in reports for _ in range(r["table"][c]["retrain_gates"]["won"])]
        lost = [r["stream"] for r in reports for _ in range(r["table"][c]["retrain_gates"]["lost"])]
        if won or lost:
            out[c] = {"won": won, "lost": lost}
    if out:
        print("Drift retrains against the model that kept learning, on the next unseen rows (promotion gate):")
        for c, v in out.items():
            print(
                f"  {c}: won {len(v['won'])} ({', '.join(v['won']) or '-'}); lost {len(v['lost'])} "
                f"({', '.join(v['lost']) or '-'})"
            )
    return out


def early_cuts(reports: list[dict], configs: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per `_cut` config, batches cut short on streams without a change (false cuts) and with one."""
    out = {}
    for c in (c for c in configs if CUT in c):
        calm = sum(r["table"][c]["cuts"] for r in reports if r["kind"] in ("stationary", "real"))
        out[c] = {"stationary_or_real": calm, "with_a_change": sum(r["table"][c]["cuts"] for r in reports) - calm}
        print(
            f"{c}: batches cut short on stationary/real streams {calm}, "
            f"on streams with a change {out[c]['with_a_change']}"
        )
    return out


# Each default's predecessor, when the run has it: (config, previous default).
PREDECESSORS = (("default", "sgd_old"), ("mlp", "mlp_old"))


def head_to_head(reports: list[dict], configs: tuple[str, ...]) -> dict[tuple[str, str], tuple[int, int, int]]:
    """Streams on which each default is better / worse / equal (to 4 decimals) than its predecessor,
    each config than its baselines (`_whole`, `_ungated`), each `_warm` config than its fresh one, and
    each `_cut` / `_cutagg` candidate than the config without it."""
    out = {}
    pairs = [
        *PREDECESSORS,
        *((c, c + suffix) for c in configs for suffix in BASELINES if c + suffix in configs),
        *((c, c.removesuffix(WARM)) for c in configs if c.endswith(WARM) and c.removesuffix(WARM) in configs),
        *((c, c.replace(cut, "")) for c in configs for cut in CUTS if c.endswith(cut)),
    ]
    for new, old in pairs:
        if new not in configs or old not in configs:
            continue
        signs = []
        for r in reports:
            sign = 1.0 if r["task"] == "classification" else -1.0
            gap = round(sign * (r["table"][new]["metric"] - r["table"][old]["metric"]), 4)
            signs.append((gap > 0) - (gap < 0))
        out[(new, old)] = (signs.count(1), signs.count(-1), signs.count(0))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four short streams, batches of 500 (< 60 s)")
    parser.add_argument("--streams", nargs="+", help="stream names (default: all; see learning_streams.build)")
    parser.add_argument("--rows", type=int, help="rows per synthetic stream (default 6,000; --quick 2,000)")
    parser.add_argument("--batch", type=int, help="rows per micro-batch (default 1,000; --quick 500)")
    parser.add_argument("--rate", type=float, default=100.0, help="simulated rows/s for the drift cooldown")
    parser.add_argument(
        "--configs",
        nargs="+",
        help=f"Streamfit configs (default: {', '.join(CONFIGS)} and sgd_old unless --quick); also "
        + ", ".join(name for name in config_names() if name not in CONFIGS)
        + f"; any of them + {WARM}: drift.retrain_mode warm; then + {CUT}, {CUT_TOTALS}, {CUT_SAFE}, {CUT_DEFER}"
        + f" {CUT_SETTLED}, {CUT_SETTLED_LARGE}, {CUT_LOCATED}... or {CUT_SLOPE}, {CUT_SLOPE_FREE_SURE},"
        + f" {CUT_SLOPE_AGAIN}...: a batch"
        + f" cut short at a {CUT_TICK_S:g}-s tick where the served model's errors rose (parts 8-10); then"
        + f" + {UNLOCATED}: drift retrains from the change batch's first row; then + {UNGATED}: no promotion gate"
        + " for drift retrains",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every model's accuracy per 250 rows around each change"
    )
    parser.add_argument(
        "--river",
        nargs="+",
        choices=list(RIVER_CHOICES),
        default=list(RIVER_CHOICES),
        help="River models to run, each row by row and in the same batches (default: all); targets whose "
        "reference is left out are reported not measured (lr alone: target 3's two references, fast)",
    )
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    river = tuple(m for m in RIVER if m in {RIVER_CHOICES[c] for c in args.river})
    rows = args.rows or (2_000 if args.quick else 6_000)
    batch = args.batch or (500 if args.quick else 1_000)
    names = args.streams or list(learning_streams.QUICK if args.quick else learning_streams.full_set())
    chosen = args.configs or [*CONFIGS, *([] if args.quick else ["sgd_old"])]
    configs = tuple(dict.fromkeys(["default", *chosen]))
    print(f"learning quality: {len(names)} streams, {rows:,} rows each (real: as shipped), batches of {batch:,}")
    print(f"skipped (River downloads them at run time): {', '.join(learning_streams.REMOTE)}")
    if river != RIVER:
        print(f"River models: {', '.join(river)} only (each also in the same batches, {BATCHED})")
    reports, began = [], time.perf_counter()
    for i, name in enumerate(names, 1):
        stream = learning_streams.build(name, rows)
        report = run_stream(stream, configs, batch, args.rate, river)
        reports.append(report)
        print(f"[{i}/{len(names)} {time.perf_counter() - began:6.0f}s]", end="")
        print_stream(report, configs)
        if args.trace:
            print_trace(report)
        sys.stdout.flush()
    summary = summarize(reports, configs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"reports": reports, "summary": summary, "rows": rows, "batch": batch, "river": river},
                f,
                indent=1,
                default=str,
            )
    return {"reports": reports, "summary": summary}


if __name__ == "__main__":
    main()
