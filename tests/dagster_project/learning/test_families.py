"""Candidate families: every family learns every batch; the leader changes only on evidence."""

from __future__ import annotations

import numpy as np

from dagster_project.learning.families import CandidateSet, choose_leader
from dagster_project.learning.learner import describe, servable, test_then_learn
from dagster_project.spec import StreamSpec
from tests.dagster_project.learning.test_windowed import RecordingReader, batch_ranges, stream

FAMILIES = [
    {"estimator": "sgd_classifier", "name": "sgd"},
    {"estimator": "hist_gradient_boosting_classifier", "name": "hgb"},
]


def make_spec(**promotion) -> StreamSpec:
    return StreamSpec(
        name="fam",
        features=[{"name": f"x{i}"} for i in range(3)],
        label={"classes": [0, 1]},
        model={"candidates": FAMILIES},
        promotion={"metric": "accuracy", **promotion},
    )


def learn(spec: StreamSpec, reader: RecordingReader, batches: range, model=None):
    learned = None
    for i in batches:
        ranges = batch_ranges(i, 100)
        learned = test_then_learn(model, spec, reader.rows(ranges), ranges, reader)
        model = learned.model
    return model, learned


def test_every_family_learns_every_batch_and_the_first_leads_until_beaten() -> None:
    X, y = stream(2000)
    spec = make_spec()
    reader = RecordingReader(X, y)
    model, learned = learn(spec, reader, range(4))
    assert isinstance(model, CandidateSet) and model.leader == "sgd"
    assert set(learned.families) == {"sgd", "hgb"}
    assert learned.families["hgb"]["window"]["fitted_on"]["rows"] == 800  # the windowed family refits
    assert servable(model.members["sgd"]).named_steps["scaler"].n_samples_seen_ == 800  # and SGD learns on
    assert learned.metrics.accuracy == learned.families["sgd"]["accuracy"]  # the set's metrics: the leader's
    assert set(describe(model)["families"]["members"]) == {"sgd", "hgb"}


def test_the_best_family_on_unseen_rows_takes_the_lead_and_every_number_is_recorded() -> None:
    X, y = stream(3000, seed=1)
    spec = make_spec()
    reader = RecordingReader(X, y)
    model, _ = learn(spec, reader, range(5))
    tail = np.arange(1000, 1300)  # rows no family has learned
    choice = choose_leader(model, spec, "accuracy", X[tail], y[tail])

    assert choice.leader == model.leader == "hgb" and choice.previous == "sgd"
    assert set(choice.values) == {"sgd", "hgb"} and choice.values["hgb"] > choice.values["sgd"] + 0.2
    assert choice.test["test"] == "McNemar mid-p" and choice.test["p_value"] < 0.05
    assert "hgb leads: accuracy better than sgd" in choice.reason
    assert model.choice == choice.as_dict()
    assert servable(model) is model.members["hgb"].pipeline  # the version now exports the leader


def test_a_lead_within_the_margin_changes_nothing() -> None:
    X, y = stream(3000, seed=1)
    spec = make_spec(margin=0.9)
    reader = RecordingReader(X, y)
    model, _ = learn(spec, reader, range(5))
    choice = choose_leader(model, spec, "accuracy", X[1000:1300], y[1000:1300])
    assert choice.leader == "sgd" and "<= margin 0.9" in choice.reason


def test_too_few_unseen_rows_keep_the_leader() -> None:
    X, y = stream(1000, seed=2)
    spec = make_spec(min_rows=100)
    model, _ = learn(spec, RecordingReader(X, y), range(3))
    choice = choose_leader(model, spec, "accuracy", X[600:650], y[600:650])
    assert choice.leader == "sgd" and "50 unseen rows < promotion.min_rows 100" in choice.reason


def test_the_leader_is_kept_across_batches_and_a_beaten_family_keeps_learning() -> None:
    X, y = stream(3000, seed=1)
    spec = make_spec()
    reader = RecordingReader(X, y)
    model, _ = learn(spec, reader, range(5))
    choose_leader(model, spec, "accuracy", X[1000:1300], y[1000:1300])
    sgd_seen = servable(model.members["sgd"]).named_steps["scaler"].n_samples_seen_
    model, learned = learn(spec, reader, range(5, 7), model)
    assert model.leader == "hgb" and learned.metrics.accuracy == learned.families["hgb"]["accuracy"]
    assert servable(model.members["sgd"]).named_steps["scaler"].n_samples_seen_ == sgd_seen + 400
