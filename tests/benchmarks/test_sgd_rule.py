"""Part 20's adoption rule: a setting replaces the SGD default only if no clause fails."""

from __future__ import annotations

from benchmarks import sgd_rule


def _row(vs_lr: int, vs_lr_b: int, stationary: int = 0, rank: float = 2.0) -> dict[str, float]:
    return {"vs_lr": vs_lr, "vs_lr_b": vs_lr_b, "stationary": stationary, "rank": rank, "us_per_row": 10.0}


def _table(new: dict[int, dict[str, float]]) -> dict[int, dict[str, dict[str, float]]]:
    base = {1000: _row(10, 2), 500: _row(2, 3), 250: _row(5, 6), 100: _row(8, 7, stationary=1)}
    return {batch: {"default": base[batch], "new": new.get(batch, base[batch])} for batch in base}


def test_a_setting_never_worse_and_better_in_total_is_adopted() -> None:
    ok, failed = sgd_rule.adopted(_table({100: _row(2, 2)}), "new")
    assert ok and failed == []


def test_each_clause_of_the_rule_can_refuse_a_setting() -> None:
    cases = {
        "equal everywhere: not fewer in total": {},
        "one more miss at 250 against the batched reference": {250: _row(5, 7), 100: _row(2, 2)},
        "a stationary retrain at 500": {500: _row(1, 1, stationary=1), 100: _row(2, 2)},
        "more stationary retrains at 100 than the default": {100: _row(2, 2, stationary=2)},
        "a worse mean rank at 1,000": {1000: _row(9, 2, rank=2.5)},
    }
    for case, new in cases.items():
        ok, failed = sgd_rule.adopted(_table(new), "new")
        assert not ok and len(failed) == 1, (case, failed)
    ok, _ = sgd_rule.adopted(_table({100: _row(2, 2, stationary=1), 250: _row(5, 6, rank=3.0)}), "new")
    assert ok, "the default's one retrain at 100 is allowed, and the rank counts only at 1,000 and 500"


def test_a_missing_batch_size_is_not_a_pass() -> None:
    table = _table({100: _row(2, 2)})
    del table[500]
    ok, failed = sgd_rule.adopted(table, "new")
    assert not ok and failed == ["batch sizes not measured: [500]"]
