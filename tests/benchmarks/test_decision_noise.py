"""The noise benchmark drives the real gate and rollback rule: the test only ever removes actions
against B (a refused promotion, a rollback), and on exchangeable pairs it acts at about its level."""

from __future__ import annotations

from benchmarks import decision_noise
from benchmarks.decision_noise import EXCHANGEABLE


def test_the_test_removes_actions_and_holds_its_level_on_the_null():
    result = decision_noise._setting(("roc_auc", "accuracy"), "classification", {"class_sep": 0.25}, (0.35,), 40)
    for metric, cases in result.items():
        assert set(cases) == {EXCHANGEABLE, "equal", "B handicapped 0.35"}, metric
        for case, r in cases.items():
            assert r["keep_test"] <= r["keep_margin"] and r["rollback_test"] <= r["rollback_margin"], case
        assert cases[EXCHANGEABLE]["keep_test"] <= 0.15, "one-sided 5 % level: 2 of 40 expected, 6 allowed"
        assert cases[EXCHANGEABLE]["keep_margin"] >= 0.15, "the margin alone refuses noise far more often"
        assert cases["B handicapped 0.35"]["true_gap_a_minus_b"] > 0.02, "flipped labels make B really worse"
    lines = decision_noise.table({"settings": {"near-chance classification": result}})
    assert len(lines) == 2 + 6 and "| near-chance classification | roc_auc | equal |" in lines[3]


def test_multiclass_roc_auc_decisions_are_tested_and_hold_their_level_on_the_null():
    """Four classes gated on roc_auc: the macro one-vs-rest DeLong test is computed (not the margin
    alone) and removes actions against B; flipping B's labels makes it really worse."""
    name = "near-chance 4 classes"
    metrics, task, params, _ = decision_noise.SETTINGS[name]
    assert params["n_classes"] == 4 and "roc_auc" in metrics
    result = decision_noise._setting(("roc_auc",), task, params, (0.35,), 40)
    cases = result["roc_auc"]
    for case, r in cases.items():
        assert r["keep_test"] <= r["keep_margin"] and r["rollback_test"] <= r["rollback_margin"], case
    assert cases[EXCHANGEABLE]["keep_test"] <= 0.15, "one-sided 5 % level: 2 of 40 expected, 6 allowed"
    assert cases[EXCHANGEABLE]["keep_margin"] >= 0.15, "the margin alone refuses noise far more often"
    assert cases["B handicapped 0.35"]["keep_test"] > cases[EXCHANGEABLE]["keep_test"], "the test has power"
    assert cases["B handicapped 0.35"]["true_gap_a_minus_b"] > 0.01
    assert 0.55 < cases["equal"]["true_value_b"] < 0.8, "macro one-vs-rest AUC of a weak four-class model"
    lines = decision_noise.table({"settings": {name: result}})
    assert len(lines) == 2 + 3 and f"| {name} | roc_auc | equal |" in lines[3]
