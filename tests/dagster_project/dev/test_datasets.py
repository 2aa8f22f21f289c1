"""The shipped sources match the shipped specs, and the synthetic drift happens where it says."""

from __future__ import annotations

import itertools

import numpy as np

from dagster_project.dev.datasets import census_events, phishing_events, synthetic_events
from dagster_project.ingest.events import EventParser, make_event
from dagster_project.spec import get_spec, load_specs


def test_shipped_specs_load():
    assert {s.name for s in load_specs()} >= {"census", "phishing", "sensors", "synthetic"}


def test_every_census_event_is_valid_for_the_census_spec_and_some_categories_are_unseen():
    spec = get_spec("census")
    events = list(census_events(5000))
    parsed = EventParser(spec).parse_many([make_event(e.event_id, e.features, e.label, 0.0) for e in events])
    assert parsed.failures == [] and len(parsed.ids) == 5000
    unseen = sum(1 for _, name, _ in parsed.unseen if name == "workclass")
    assert 0.005 < unseen / 5000 < spec.quality.max_unseen_category_share  # the shipped stream passes its rule
    assert [e.features for e in events[:50]] == [e.features for e in census_events(50)]  # seeded
    assert 0.3 < np.mean([e.label for e in events]) < 0.7


def test_every_phishing_event_is_valid_for_the_phishing_spec():
    parser = EventParser(get_spec("phishing"))
    parsed = [parser.parse(make_event(e.event_id, e.features, e.label, 0.0)) for e in phishing_events()]
    assert len(parsed) == 1250
    assert {p.label_index for p in parsed} == {0, 1}


def test_synthetic_concept_changes_abruptly_at_the_configured_row():
    parser = EventParser(get_spec("synthetic"))
    events = [parser.parse(make_event(e.event_id, e.features, e.label)) for e in synthetic_events(4000, change_at=2000)]
    X = np.array([e.values for e in events])
    y = np.array([e.label_index for e in events])
    before = np.array([1.5, -2.0, 1.0, 0.0, 0.5])
    old_concept = (X @ before > 0).astype(int)
    assert (old_concept[:2000] == y[:2000]).mean() > 0.9
    assert (old_concept[2000:] == y[2000:]).mean() < 0.6  # the old model is near chance after the change


def test_synthetic_stream_is_deterministic():
    first = [e.features for e in itertools.islice(synthetic_events(seed=3), 5)]
    assert first == [e.features for e in itertools.islice(synthetic_events(seed=3), 5)]
