"""The shipped-learners benchmark measures each shipped stream with its own estimator and with the default."""

from __future__ import annotations

import pytest

from benchmarks import shipped_learners
from benchmarks.data import shipped_spec
from dagster_project.learning.estimator_table import DEFAULT_ESTIMATORS


@pytest.mark.parametrize("name", ["census", "phishing", "sensors", "synthetic"])
def test_the_default_variant_is_what_the_spec_gets_without_its_estimator(name: str) -> None:
    shipped = shipped_spec(name)
    default = shipped_learners.variant(shipped, "default")
    bare = shipped_learners.variant(shipped, "default_no_params")
    assert shipped_learners.variant(shipped, "shipped") is shipped
    assert default.model.estimator == bare.model.estimator == DEFAULT_ESTIMATORS[shipped.task]
    assert default.model.estimator != shipped.model.estimator, "the benchmark compares two different learners"
    assert default.model.params == shipped.model.params and not bare.model.params
    assert default.model.scale == shipped.model.scale
    candidate = shipped_learners.variant(shipped, "default_no_params", {"halflife_rows": 500})
    assert candidate.model.params == {"halflife_rows": 500}  # a candidate setting on top of the default
    assert shipped_learners.variant(shipped, "default", {"halflife_rows": 500}).model.params == (
        (shipped.model.params or {}) | {"halflife_rows": 500}
    )
    with pytest.raises(ValueError, match="unknown variant"):
        shipped_learners.variant(shipped, "tuned")


def test_every_stream_is_measured_for_every_variant_and_tabled() -> None:
    result = shipped_learners.run(rows=12_000, feature_rows=1_500, repeats=1)
    streams = result["streams"]
    assert set(streams) == {"phishing", "synthetic", "census", "sensors"}
    for name, by_variant in streams.items():
        assert set(by_variant) == set(shipped_learners.VARIANTS), name
        assert by_variant["shipped"]["estimator"] == shipped_spec(name).model.estimator
        for figures in by_variant.values():
            assert figures["us_per_row"] > 0
    for variant in streams["phishing"].values():
        assert all(0.5 < variant[f"roc_auc_batch_{b}"] <= 1.0 for b in (10, 50, 100, 250)), variant
    for variant in streams["synthetic"].values():
        # The concept flips at row 6,000: the windows after it start far below the level before it.
        assert variant["pre_change_accuracy"] > 0.8 and variant["windows_after_change"][0] < 0.6, variant
    for name in ("census", "sensors"):
        assert all(0.5 < v["accuracy"] <= 1.0 for v in streams[name].values()), streams[name]
    lines = shipped_learners.table(result)
    assert len(lines) == 1 + 4 + 1 + 1 + 1 + 1  # header, phishing's four batch sizes, one line per other stream, note
