"""The promotion gate: a candidate replaces the champion unless it is measurably worse.

Both models are scored on the same unseen rows: the tail of the batch the candidate was trained
on, which neither the candidate nor the champion has learned (`tail_split`). The candidate's
learned offsets end where the tail begins, so the next batch learns the tail: no row is thrown
away and none is learned twice. The rule is non-inferiority: the candidate has learned strictly
more data, so promoting it is the default and the served champion stays fresh. It is promoted
when it is within the margin of the champion (or better); when it falls short by more than the
margin it is kept a candidate only if a one-sided paired test on those rows (`significance`:
champion better than candidate) confirms the shortfall at the stream's level, so sampling noise
alone can neither swap the served model for a worse one nor hold a fresh one back. Every
decision, promote or not, is recorded with all the metrics of both models and the test's name,
statistic and p-value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dagster_project.kafka.offsets import Ranges
from dagster_project.registry.significance import PairedTest, paired_test, significant

if TYPE_CHECKING:
    from dagster_project.spec import StreamSpec

HIGHER_IS_BETTER = {"accuracy": True, "roc_auc": True, "log_loss": False, "mae": False, "rmse": False}
# Errors in the label's own units: a margin for them is a fraction of the reference model's error. An
# absolute 0.01 let a candidate with 5x the champion's RMSE through on targets near 0.001, and meant
# nothing on targets near 1e6. Accuracy, ROC AUC and log loss have the same scale on every stream.
RELATIVE_MARGIN_METRICS = frozenset({"rmse", "mae"})


# Differences smaller than this share of the labels' scale are float rounding, not one model being
# better: on constant labels two versions scored RMSE 6.3e-14 and 5.5e-14, the paired test called it
# significant, and the gate decided on it. Far below float32's resolution (1.2e-7), so a difference the
# served models could show is never tied.
FLOAT_NOISE = 1e-9


def noise_floor(metric: str, y: Any) -> float:
    """The difference in `metric` below which two models are level: `FLOAT_NOISE` times the labels'
    root mean square (1 when they are all 0) for RMSE and MAE, times 1 for unitless metrics."""
    if metric not in RELATIVE_MARGIN_METRICS or y is None:
        return FLOAT_NOISE
    import numpy as np

    labels = np.asarray(y, dtype=np.float64)
    labels = labels[np.isfinite(labels)]
    scale = float(np.sqrt(np.mean(labels**2))) if len(labels) else 0.0
    return FLOAT_NOISE * (scale or 1.0)


def margin_for(metric: str, margin: float, reference: float | None) -> float:
    """`margin` in `metric`'s units next to a model scoring `reference` (its own error for RMSE and MAE)."""
    if metric in RELATIVE_MARGIN_METRICS and reference is not None:
        return margin * abs(reference)
    return margin


def difference_text(metric: str, value: float) -> str:
    """A metric difference as reasons print it: 4 decimals, or 4 significant digits for label-unit errors."""
    return f"{value:.4g}" if metric in RELATIVE_MARGIN_METRICS else f"{value:.4f}"


def margin_text(metric: str, margin: float, reference: float | None) -> str:
    """The margin as a decision's reason states it: `0.01`, or `1e-05 (1% of 0.001)` for errors."""
    if metric in RELATIVE_MARGIN_METRICS and reference is not None:
        return f"{margin_for(metric, margin, reference):.4g} ({margin * 100:g}% of {reference:.4g})"
    return f"{margin:g}"


def default_metric(task: str, n_classes: int) -> str:
    if task == "regression":
        return "rmse"
    return "roc_auc" if n_classes == 2 else "accuracy"


def stream_metric(spec: StreamSpec) -> str:
    """The metric every decision on this stream compares: the spec's, else the task's default."""
    return spec.promotion.metric or default_metric(spec.task, len(spec.label.classes or []))


def tail_split(ranges: Ranges, tail_rows: int, tail_fraction: float, min_rows: int) -> dict[int, int]:
    """Where each partition's learned rows end: ``end`` minus its share of the batch's tail.

    The tail is ``min(tail_rows, floor(tail_fraction * rows))`` offsets, shared between partitions
    in proportion to their rows (largest remainders get the rounding). A tail below ``min_rows`` is
    raised to ``min_rows`` while that leaves the batch at least as many rows to learn: otherwise every
    batch under ``min_rows / tail_fraction`` rows (250 by default) deferred its gate and the champion
    never changed. A batch under ``2 * min_rows`` rows holds out nothing (its gate is deferred; the
    next batch's candidate, which learned it, is judged instead). Deterministic: the sensor, a retry
    and a re-execution agree.
    """
    sizes = {p: end - start for p, (start, end) in ranges.items()}
    total = sum(sizes.values())
    tail = min(tail_rows, int(tail_fraction * total))
    if 0 < tail < min_rows <= tail_rows and total >= 2 * min_rows:
        tail = min_rows
    if tail < min_rows or total <= 0:
        return {p: end for p, (_, end) in ranges.items()}
    shares = {p: tail * n // total for p, n in sizes.items()}
    left = tail - sum(shares.values())
    by_remainder = sorted(sizes, key=lambda p: (-(tail * sizes[p] % total), p))
    for p in by_remainder:
        if left <= 0:
            break
        if shares[p] < sizes[p]:
            shares[p] += 1
            left -= 1
    return {p: end - shares[p] for p, (_, end) in ranges.items()}


def spec_tail_split(spec: object, ranges: Ranges) -> dict[int, int]:
    """`tail_split` with a stream spec's promotion settings."""
    promotion = spec.promotion  # type: ignore[attr-defined]
    return tail_split(ranges, promotion.tail_rows, promotion.tail_fraction, promotion.min_rows)


@dataclass(frozen=True)
class GateResult:
    candidate: str
    champion: str
    metric: str
    candidate_value: float | None
    champion_value: float | None
    margin: float
    rows: int
    promote: bool
    reason: str
    candidate_metrics: dict[str, Any] | None = None  # every metric of both models on the same rows
    champion_metrics: dict[str, Any] | None = None
    significance: float | None = None  # the test's level; None or 0: the margin alone decided
    test: dict[str, Any] | None = None  # `PairedTest.to_dict()`: champion (A) better than candidate (B)
    noise: float = 0.0  # differences at most this are level (`noise_floor`)

    @property
    def p_value(self) -> float | None:
        return (self.test or {}).get("p_value")

    def evidence(self) -> dict[str, Any]:
        return asdict(self)


def gate(
    metric: str,
    margin: float,
    min_rows: int,
    candidate: str,
    candidate_metrics: dict[str, float],
    champion: str,
    champion_metrics: dict[str, float],
    rows: int,
    test: PairedTest | None = None,
    significance: float | None = None,
    noise: float = 0.0,
) -> GateResult:
    """Promote unless the candidate is measurably worse than the champion on `metric`.

    `test` is the one-sided paired test that the champion (A) is better than the candidate (B) on
    the same `rows`. Ahead of the champion, level with it (as the reason prints them) or behind
    within `margin`: promote, the reason saying "ahead by" or "within margin". Worse by more than the
    margin: keep the champion when `significance` is None or 0 (the margin alone decides), when
    the test could not be computed, or when it is significant (p < `significance`); otherwise the
    shortfall is noise and the candidate is promoted. A difference of at most `noise` (`noise_floor`:
    float rounding against the labels' scale) is level whatever the test says. Too few rows or no
    metric: deferred."""
    cand, champ = candidate_metrics.get(metric), champion_metrics.get(metric)

    def result(promote: bool, reason: str) -> GateResult:
        return GateResult(
            candidate,
            champion,
            metric,
            cand,
            champ,
            margin,
            rows,
            promote,
            reason,
            dict(candidate_metrics),
            dict(champion_metrics),
            significance or None,
            test.to_dict() if test is not None else None,
            noise,
        )

    if rows < min_rows:
        return result(False, f"only {rows} unseen rows (< promotion.min_rows {min_rows}); decision deferred")
    if cand is None or champ is None:
        return result(False, f"{metric} not computable on this batch (e.g. a single class); decision deferred")
    higher = HIGHER_IS_BETTER[metric]
    shortfall = (champ - cand) if higher else (cand - champ)
    numbers = (
        f"{metric} {difference_text(metric, cand)} vs {champion} {difference_text(metric, champ)} on {rows} unseen rows"
    )
    promoted, kept = (
        f"{candidate} promoted: {numbers}",
        f"kept {champion} ({candidate} stays a candidate): {candidate} {numbers}",
    )
    allowed, stated = margin_for(metric, margin, champ), margin_text(metric, margin, champ)
    if 0 < abs(shortfall) <= noise:  # an exact tie is "within margin", as it always was
        return result(
            True, f"{promoted} (level: {difference_text(metric, abs(shortfall))} apart is float noise, <= {noise:.2g})"
        )
    if shortfall < 0 and difference_text(metric, cand) != difference_text(metric, champ):
        return result(True, f"{promoted}, ahead by {difference_text(metric, -shortfall)}")  # not "within margin"
    if shortfall <= allowed:
        return result(True, f"{promoted} (within margin {stated})")
    worse = f"worse by {difference_text(metric, shortfall)} > margin {stated}"
    if not significance:
        return result(False, f"{kept}, {worse}")
    if test is None or test.p_value is None:
        why = test.describe() if test is not None else "no paired test"
        return result(False, f"{kept}, {worse}; the test could not be computed ({why}), so the margin decides")
    if significant(test, significance):
        return result(False, f"{kept}, {worse} and significant ({test.describe()} < {significance:g})")
    return result(True, f"{promoted}, {worse} but not significant ({test.describe()} >= {significance:g})")


def judge(
    spec: Any,
    metric: str,
    candidate: str,
    candidate_model: Any,
    champion: str,
    champion_model: Any,
    X: Any,
    y: Any,
) -> GateResult:
    """Score both models on the same rows neither has learned and apply `gate` with the stream's
    promotion settings: the one scoring path of the champion asset, a retrain's gate and the
    learning-quality benchmark's simulation of it."""
    from dagster_project.learning.prequential import evaluate

    promotion = spec.promotion
    candidate_metrics = evaluate(candidate_model, spec, X, y).as_metadata()
    champion_metrics = evaluate(champion_model, spec, X, y).as_metadata()
    # A is the champion: the test asks whether the candidate is really worse (the refusal's case).
    test = compare(metric, spec, champion_model, candidate_model, X, y)
    return gate(
        metric,
        promotion.margin,
        promotion.min_rows,
        candidate,
        candidate_metrics,
        champion,
        champion_metrics,
        len(y),
        test=test,
        significance=promotion.significance,
        noise=noise_floor(metric, y),
    )


def compare(metric: str, spec: Any, model_a: Any, model_b: Any, X: Any, y: Any) -> PairedTest:
    """The one-sided paired test that `model_a` is better than `model_b` on the same rows: the
    promotion gate's (A the champion) and the champion check's (A the predecessor)."""
    from dagster_project.learning.prequential import row_outputs

    return paired_test(metric, y, row_outputs(model_a, spec, X), row_outputs(model_b, spec, X))
