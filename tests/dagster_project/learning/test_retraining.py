"""Retraining on a recent window (learning/retraining.py): which offsets the window covers, and the
version a retrain registers (a new head that re-learned old rows: offsets and row count unchanged).

The drift sensor's retrain run end to end is in tests/sensors/test_drift_sensor.py; the retrain
job's registry effect in tests/assets/test_remediation.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from dagster_project.ingest.micro_batch import read_batch
from dagster_project.kafka import clients
from dagster_project.learning.pipeline import learn_export_register, learn_from_head
from dagster_project.learning.retraining import held_window, post_change, recent_window, retrain
from dagster_project.registry.store import RegistryError, Version
from tests.conftest import synthetic_spec
from tests.helpers import high_waters, produce_synthetic, read_topic


def _version(number: int, batch: dict[int, tuple[int, int]], retrain: dict | None = None) -> Version:
    meta = {
        "offsets": {"batch": {str(p): [s, e] for p, (s, e) in batch.items()}},
        "rows": {"read": sum(e - s for s, e in batch.values())},
    }
    if retrain:
        meta["retrain"] = retrain
    return Version("s", f"v{number}", meta)


# Three consecutive batches of 100 rows over two partitions, and a retrain (its batch is a window).
HISTORY = [
    _version(1, {0: (0, 50), 1: (0, 50)}),
    _version(2, {0: (50, 110), 1: (50, 90)}),
    _version(3, {0: (110, 160), 1: (90, 140)}),
    _version(4, {0: (0, 160), 1: (0, 140)}, retrain={"mode": "fresh"}),
]


def test_window_merges_consecutive_batches_per_partition() -> None:
    assert recent_window(HISTORY, rows=10_000) == {0: (0, 160), 1: (0, 140)}


@pytest.mark.parametrize(
    "rows, window",
    [
        (1, {0: (110, 160), 1: (90, 140)}),  # the newest batch alone
        (100, {0: (110, 160), 1: (90, 140)}),
        (101, {0: (50, 160), 1: (50, 140)}),  # one row more: the batch before joins
        (200, {0: (50, 160), 1: (50, 140)}),
        (201, {0: (0, 160), 1: (0, 140)}),
    ],
)
def test_window_holds_the_last_rows_in_whole_batches(rows: int, window: dict) -> None:
    assert recent_window(HISTORY, rows) == window


def test_retrain_versions_are_not_part_of_a_window() -> None:
    only_learned = HISTORY[:3]
    assert recent_window(HISTORY, rows=100) == recent_window(only_learned, rows=100)
    assert recent_window([HISTORY[3]], rows=100) == {}


def test_a_replayed_quarantined_batch_behind_the_head_does_not_pull_the_window_back() -> None:
    replay = Version("s", "v5", {**HISTORY[0].meta, "replay": {"quarantine": "q1", "by": "ops"}})
    with_replay = [*HISTORY, replay]  # it re-learned v1's offsets (say) after v3
    assert recent_window(with_replay, rows=100) == {0: (110, 160), 1: (90, 140)}
    assert recent_window(with_replay, rows=1, since="v3") == {0: (110, 160), 1: (90, 140)}


def test_since_takes_every_batch_from_the_detected_change_on() -> None:
    assert recent_window(HISTORY, rows=1, since="v2") == {0: (50, 160), 1: (50, 140)}
    assert recent_window(HISTORY, rows=10_000, since="v3") == {0: (110, 160), 1: (90, 140)}
    # a since newer than any learned batch (e.g. it named the retrain itself) falls back to rows
    assert recent_window(HISTORY, rows=100, since="v4") == {0: (110, 160), 1: (90, 140)}


def test_a_partition_missing_from_some_batches_keeps_its_own_range() -> None:
    versions = [_version(1, {0: (0, 100)}), _version(2, {0: (100, 150), 1: (0, 70)})]
    assert recent_window(versions, rows=10_000) == {0: (0, 150), 1: (0, 70)}


def test_a_window_stops_at_offsets_no_batch_learned() -> None:
    """Offsets 110-200 of partition 0 were passed over (a quarantined or skipped batch, an offset reset):
    the window spanned them, so a retrain learned rows the stream had refused and recorded them learned."""
    versions = [*HISTORY[:3], _version(5, {0: (200, 260), 1: (140, 200)})]
    assert recent_window(versions, rows=10_000) == {0: (200, 260), 1: (0, 200)}
    assert recent_window(versions, rows=10_000, since="v2") == {0: (200, 260), 1: (50, 200)}
    back = [*HISTORY[:3], _version(5, {0: (60, 100), 1: (140, 200)})]  # a reset back: an overlap stops it too
    assert recent_window(back, rows=10_000) == {0: (60, 100), 1: (0, 200)}


def test_a_window_starts_where_the_broker_still_holds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention deleted partition 0 up to 70 and all of partition 1: the window starts at the log
    start, or with derived features at the first batch start held (the state is known there only)."""
    from dagster_project.kafka import io
    from tests.dagster_project.features.support import sensors_spec

    monkeypatch.setattr(io, "log_starts", lambda settings, topic, partitions: {0: 70, 1: 140})
    window = recent_window(HISTORY, rows=10_000)
    assert held_window(None, synthetic_spec(), HISTORY, window) == {0: (70, 160)}
    assert held_window(None, sensors_spec(), HISTORY, window) == {0: (110, 160)}
    monkeypatch.setattr(io, "log_starts", lambda settings, topic, partitions: {0: 0, 1: 0})
    assert held_window(None, sensors_spec(), HISTORY, window) == window


def test_post_change_trims_each_partition_to_its_own_rise_and_keeps_one_without() -> None:
    rng = np.random.default_rng(0)
    # partition 0: offsets 100..499, errors rise at offset 340; partition 1: 50..349, no rise
    errors0 = (rng.random(400) < np.where(np.arange(100, 500) < 340, 0.02, 0.6)).astype(float)
    errors1 = (rng.random(300) < 0.1).astype(float)
    partitions = np.array([0] * 400 + [1] * 300)
    offsets = np.concatenate([np.arange(100, 500), np.arange(50, 350)])
    window = {0: (100, 500), 1: (50, 350)}

    trimmed = post_change(window, partitions, offsets, np.concatenate([errors0, errors1]))

    assert 325 <= trimmed[0][0] <= 355 and trimmed[0][1] == 500
    assert trimmed[1] == (50, 350)


# --- retrain on a real broker ------------------------------------------------------------------


def _learn_batches(kafka_settings, registry, spec, size: int) -> list[Version]:
    """Learn everything produced so far in consecutive batches, as the training runs would."""
    ends = high_waters(kafka_settings, spec.events_topic)
    versions, start = [], dict.fromkeys(ends, 0)
    while any(start[p] < ends[p] for p in ends):
        ranges = {p: (start[p], min(start[p] + size, ends[p])) for p in ends if start[p] < ends[p]}
        batch = read_batch(kafka_settings, spec, ranges)
        learn = lambda batch=batch: learn_from_head(registry, spec, batch)  # noqa: E731
        versions.append(learn_export_register(registry, spec, batch, f"batch-{len(versions)}", learn))
        start |= {p: end for p, (_, end) in ranges.items()}
    return versions


def test_retrain_registers_a_new_head_that_keeps_the_offsets(kafka_settings, registry) -> None:
    spec = synthetic_spec(partitions=1, drift={"retrain_window_rows": 350, "retrain_epochs": 3})
    produce_synthetic(kafka_settings, spec, 800)
    versions = _learn_batches(kafka_settings, registry, spec, size=200)  # 4 batches of 200 rows
    head = versions[-1]
    champion = registry.champion(spec.name)

    retrained = retrain(kafka_settings, registry, spec, ["concept drift: test"], "run-retrain")

    assert retrained.parent == head.name and registry.head(spec.name).name == retrained.name
    assert retrained.learned == head.learned == high_waters(kafka_settings, spec.events_topic)
    assert retrained.meta["rows_learned_total"] == head.meta["rows_learned_total"] == 800
    assert retrained.meta["retrain"] == {
        "mode": "fresh",
        "epochs": 3,
        "reasons": ["concept drift: test"],
        "from": head.name,
        "since": None,
        "change_at": None,
    }
    assert retrained.meta["offsets"]["batch"] == {"0": [400, 800]}  # the last 2 batches hold >= 350 rows
    assert retrained.meta["rows"]["trained"] == 400
    assert retrained.meta["offset_reset_applied"] is None
    assert registry.champion(spec.name) == champion, "a retrain must win the promotion gate before it serves"
    X = read_batch(kafka_settings, spec, {0: (700, 800)}).X
    assert registry.load_estimator(spec.name, retrained.name).predict(X).shape == (len(X),)


def test_retrain_since_a_version_learns_only_from_there_on(kafka_settings, registry) -> None:
    spec = synthetic_spec(partitions=1, drift={"retrain_window_rows": 10_000, "retrain_mode": "warm"})
    produce_synthetic(kafka_settings, spec, 600)
    versions = _learn_batches(kafka_settings, registry, spec, size=200)  # v1, v2, v3

    retrained = retrain(kafka_settings, registry, spec, ["drift"], "run-retrain", since=versions[1].name)

    assert retrained.meta["offsets"]["batch"] == {"0": [200, 600]}
    assert retrained.meta["rows"]["trained"] == 400
    assert retrained.meta["retrain"]["since"] == versions[1].name
    assert retrained.meta["retrain"]["mode"] == "warm"
    assert retrained.learned == versions[-1].learned


@pytest.mark.parametrize(
    ("was", "now", "kind"),
    [
        ({"estimator": "sgd_classifier"}, {"estimator": "mlp_classifier"}, "MLPClassifier"),
        (
            {
                "candidates": [
                    {"estimator": "sgd_classifier", "name": "sgd"},
                    {"estimator": "gaussian_nb", "name": "nb"},
                ]
            },
            {"estimator": "sgd_classifier"},
            "SGDClassifier",
        ),
    ],
    ids=["another_estimator", "a_candidate_set_to_one"],
)
def test_a_warm_retrain_after_the_spec_s_model_changed_starts_afresh(kafka_settings, registry, was, now, kind) -> None:
    """A warm retrain started from the champion whatever the spec now said: an SGD pipeline was
    registered as the MLP the spec names, won the gate and was continued for ever (the MLP's own
    learning thrown away); from a candidate set, every retrain failed on `'CandidateSet' object has
    no attribute 'steps'`. Batches start afresh after such an edit; so does the retrain now."""
    drift = {"retrain_window_rows": 10_000, "retrain_mode": "warm"}
    before = synthetic_spec(partitions=1, drift=drift, model=was)
    produce_synthetic(kafka_settings, before, 400)
    _learn_batches(kafka_settings, registry, before, size=200)  # v1 (the champion), v2
    after = synthetic_spec(before.name, partitions=1, drift=drift, model=now)

    retrained = retrain(kafka_settings, registry, after, ["drift"], "run-retrain")

    estimator = registry.load_estimator(after.name, retrained.name)
    assert type(estimator[-1]).__name__ == kind, estimator
    assert retrained.meta["lineage"]["from"] is None
    assert "a fresh model" in retrained.meta["lineage"]["why"] and "since v1" in retrained.meta["lineage"]["why"]


def test_a_fresh_retrain_does_not_read_the_champion_it_does_not_reuse(kafka_settings, registry) -> None:
    """A fresh retrain is a way out of a champion whose meta.json cannot be read; reading it to
    compare its estimator with the spec's failed every such retrain."""
    spec = synthetic_spec(partitions=1, drift={"retrain_window_rows": 10_000, "retrain_mode": "fresh"})
    produce_synthetic(kafka_settings, spec, 400)
    _learn_batches(kafka_settings, registry, spec, size=200)  # v1 (the champion), v2
    (registry.root / spec.name / "v1" / "meta.json").write_text("{broken")

    assert retrain(kafka_settings, registry, spec, ["drift"], "run-retrain").name == "v3"


def test_retrain_does_not_dead_letter_a_bad_message_twice(kafka_settings, registry) -> None:
    spec = synthetic_spec(partitions=1)
    produce_synthetic(kafka_settings, spec, 150)
    producer = clients.producer(kafka_settings)
    producer.send(spec.events_topic, key=b"junk", value=b"{not json")
    producer.flush()
    producer.close()
    (version,) = _learn_batches(kafka_settings, registry, spec, size=1000)
    assert version.meta["rows"]["dlq"] == 1 and len(read_topic(kafka_settings, spec.dlq_topic)) == 1

    retrained = retrain(kafka_settings, registry, spec, ["drift"], "run-retrain")

    assert retrained.meta["rows"]["trained"] == 150
    assert len(read_topic(kafka_settings, spec.dlq_topic)) == 1, "the retrain re-read is not a new refusal"


def test_retrain_without_versions_is_refused(kafka_settings, registry) -> None:
    spec = synthetic_spec()
    with pytest.raises(RegistryError, match=f"{spec.name} has no versions to retrain from"):
        retrain(kafka_settings, registry, spec, ["drift"], "run-retrain")


def test_retrain_is_deterministic(kafka_settings, tmp_path) -> None:
    """The same window and spec give the same model (seeded), so a retrain is reproducible."""
    from dagster_project.registry.store import FilesystemRegistry

    spec = synthetic_spec(partitions=1)
    produce_synthetic(kafka_settings, spec, 300)
    weights = []
    for attempt in range(2):
        reg = FilesystemRegistry(tmp_path / f"registry{attempt}")
        _learn_batches(kafka_settings, reg, spec, size=150)
        version = retrain(kafka_settings, reg, spec, ["drift"], "run-retrain")
        weights.append(reg.load_estimator(spec.name, version.name).steps[-1][1].coef_)
    np.testing.assert_array_equal(weights[0], weights[1])


def test_a_retrain_with_derived_features_reads_its_window_from_the_matching_state(
    kafka_settings, kafka_bootstrap, registry, instance
) -> None:
    from dagster_project.features.checkpoint import state_after
    from dagster_project.learning.retraining import read_window
    from tests.dagster_project.features.support import (
        learn_in_batches,
        produce_sensors,
        sensors_spec,
        training_inputs,
    )
    from tests.helpers import defs_for

    spec = sensors_spec(drift={"retrain_window_rows": 300})
    produce_sensors(kafka_settings, spec)
    learn_in_batches(defs_for(spec, kafka_bootstrap, registry), spec, kafka_settings, registry, instance)
    head = registry.head(spec.name)

    retrained = retrain(kafka_settings, registry, spec, ["drift"], "run-retrain")

    # Offsets do not move, so neither does the feature state.
    assert registry.load_feature_state(spec.name, retrained.name) == registry.load_feature_state(spec.name, head.name)
    assert retrained.meta["feature_state"] == {"moved": False}
    window = {int(p): (s, e) for p, (s, e) in retrained.meta["offsets"]["batch"].items()}
    assert any(s > 0 for s, _ in window.values())  # a window that starts after a checkpoint, not at 0
    batch = read_window(kafka_settings, registry, spec, window)
    expected = training_inputs(kafka_settings, registry, spec)
    rows = [expected[(int(p), int(o))] for p, o in zip(batch.partitions, batch.offsets, strict=True)]
    assert np.array_equal(batch.X, np.asarray(rows))  # the features the batches were trained with
    assert batch.rows == retrained.meta["rows"]["trained"]

    # Its promotion gate scores the parent's tail, whose features continue the parent's state.
    from assets.promotion import gate_retrain

    tail = {int(p): (head.learned[int(p)], end) for p, (_, end) in head.meta["offsets"]["batch"].items()}
    result = gate_retrain(kafka_settings, registry, spec, retrained)
    gate_rows = read_batch(kafka_settings, spec, tail, False, state=state_after(registry, spec, head))
    assert result.rows == int(gate_rows.labelled.sum()) > 0
    assert all(
        np.array_equal(gate_rows.X[i], expected[(int(p), int(o))])
        for i, (p, o) in enumerate(zip(gate_rows.partitions, gate_rows.offsets, strict=True))
    )


def test_a_retrain_window_starting_after_a_quarantine_starts_from_the_skip_s_state(
    kafka_settings, kafka_bootstrap, registry, instance
) -> None:
    from dagster_project.learning.retraining import read_window
    from tests.dagster_project.features.support import learn_around_a_quarantine, training_inputs

    spec, skip = learn_around_a_quarantine(kafka_settings, kafka_bootstrap, registry, instance)

    retrained = retrain(kafka_settings, registry, spec, ["drift"], "run-retrain", since="v2")

    window = {int(p): (s, e) for p, (s, e) in retrained.meta["offsets"]["batch"].items()}
    assert {p: s for p, (s, _) in window.items()} == skip  # v2's batch: it starts where the skip ended
    batch = read_window(kafka_settings, registry, spec, window)
    expected = training_inputs(kafka_settings, registry, spec)
    assert batch.rows == retrained.meta["rows"]["trained"] > 0
    for i, (p, o) in enumerate(zip(batch.partitions, batch.offsets, strict=True)):
        assert np.array_equal(batch.X[i], expected[(int(p), int(o))])  # the quarantined events in its windows


def test_window_chunks_share_the_rows_between_partitions_until_each_span_is_read() -> None:
    from dagster_project.learning.retraining import window_chunks

    assert window_chunks({0: (0, 10), 1: (100, 104), 2: (5, 5)}, 9) == [
        {0: (0, 5), 1: (100, 104)},  # partition 1's rest leaves its share's remainder to partition 0
        {0: (5, 10)},
    ]
    assert window_chunks({0: (0, 10), 1: (100, 110)}, 9) == [
        {0: (0, 4), 1: (100, 105)},
        {0: (4, 9), 1: (105, 109)},
        {0: (9, 10), 1: (109, 110)},
    ]
    assert window_chunks({}, 9) == [] and window_chunks({0: (0, 4)}, 0) == [{0: (s, s + 1)} for s in range(4)]


def test_window_chunks_give_a_finished_partition_s_share_to_the_others() -> None:
    """A hot partition beside short ones (keyed events, a state_before start further back): each read still
    asks for up to `rows` offsets. With one share per partition fixed up front, the 63 short spans, done
    in the first read, left the hot one 781 offsets a read: 1,281 reads of a 1.5 M-offset window instead of 31,
    each a new consumer, a topic-identity lookup and (derived features) a settle and dump of the whole state."""
    import math

    from dagster_project.learning.retraining import window_chunks

    spans = {0: (0, 1_000_000), **{p: (10 * p, 10 * p + 8_000) for p in range(1, 64)}}
    chunks = window_chunks(spans, 50_000)

    total = sum(e - s for s, e in spans.values())
    assert len(chunks) <= math.ceil(total / 50_000) + 1, len(chunks)
    assert all(sum(e - s for s, e in chunk.values()) <= 50_000 for chunk in chunks)
    for p, (start, end) in spans.items():  # each span read once, in order, chunk after chunk
        pieces = [chunk[p] for chunk in chunks if p in chunk]
        assert pieces[0][0] == start and pieces[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))


def _read_at_once_and_in_chunks(settings, registry, spec, window, monkeypatch, rows: int):
    """`read_window` of `window` in one read (the default chunk is larger) and in reads of `rows`
    offsets (each read counted, so the test knows it was chunked)."""
    from dagster_project.learning import retraining

    reads = []

    def counted(*args, **kwargs):
        reads.append(args[2])
        return read_batch(*args, **kwargs)

    monkeypatch.setattr(retraining, "read_batch", counted)
    one = retraining.read_window(settings, registry, spec, window)
    assert len(reads) == 1
    monkeypatch.setattr(retraining, "WINDOW_READ_ROWS", rows)
    chunked = retraining.read_window(settings, registry, spec, window)
    assert len(reads) > 3  # several chunks
    return one, chunked


def _assert_same_batch(one, chunked, ordered: bool) -> None:
    """Every field the same; rows in the same order (`ordered`: one partition, whose single read has
    one order) or, across partitions (whose interleaving follows the fetches), per partition."""
    assert chunked.rows == one.rows > 0

    def masks(batch) -> list[np.ndarray]:
        return [np.ones(batch.rows, dtype=bool)] if ordered else [batch.partitions == p for p in sorted(batch.ranges)]

    for mine, theirs in zip(masks(one), masks(chunked), strict=True):
        for name in ("X", "y", "partitions", "offsets"):
            np.testing.assert_array_equal(getattr(chunked, name)[theirs], getattr(one, name)[mine], err_msg=name)
        assert [i for i, k in zip(chunked.ids, theirs, strict=True) if k] == [
            i for i, k in zip(one.ids, mine, strict=True) if k
        ]
    for name in ("ranges", "dlq_reasons", "read", "identity", "feature_state", "feature_counters", "filling"):
        assert getattr(chunked, name) == getattr(one, name), name
    if ordered:
        assert chunked.unseen_examples == one.unseen_examples


def test_a_window_read_in_chunks_is_the_window_read_at_once_invalid_messages_included(
    kafka_settings, registry, monkeypatch
) -> None:
    from dagster_project.dev.producer import produce

    spec = synthetic_spec(partitions=1)
    produce_synthetic(kafka_settings, spec, 300)
    produce(kafka_settings, spec, [(b"bad0", b"{not json"), (b"bad1", b"{not json")])
    produce_synthetic(kafka_settings, spec, 300, start=300)

    one, chunked = _read_at_once_and_in_chunks(kafka_settings, registry, spec, {0: (5, 602)}, monkeypatch, 70)

    assert one.dlq == 2 and one.read == 597
    _assert_same_batch(one, chunked, ordered=True)


def test_a_window_whose_topic_changes_between_chunks_is_refused(kafka_settings, registry, monkeypatch) -> None:
    """Rows of two incarnations of the topic (deleted and made again between two chunks' reads) are not one
    window: the retrain fails saying so, and learns nothing."""
    from dagster_project.learning import retraining

    spec = synthetic_spec(partitions=1)
    produce_synthetic(kafka_settings, spec, 300)
    reads = []

    def recreated_after_the_first(*args, **kwargs):
        batch = read_batch(*args, **kwargs)
        reads.append(batch)
        if len(reads) > 1 and batch.identity:  # what a read of the topic made again reports
            batch.identity = {**batch.identity, "topic_id": "made-again"}
        return batch

    monkeypatch.setattr(retraining, "read_batch", recreated_after_the_first)
    monkeypatch.setattr(retraining, "WINDOW_READ_ROWS", 100)
    with pytest.raises(RegistryError, match="the events topic changed while the retrain read its window"):
        retraining.read_window(kafka_settings, registry, spec, {0: (0, 300)})
    assert len(reads) == 3 and reads[0].identity


def test_a_window_read_in_chunks_with_derived_features_continues_each_chunk_s_state(
    kafka_settings, registry, monkeypatch
) -> None:
    from tests.dagster_project.features.support import produce_sensors, sensors_spec

    spec = sensors_spec()
    produce_sensors(kafka_settings, spec)  # keyless and late events too: refused, counted as dead letters
    window = high_waters(kafka_settings, spec.events_topic)

    one, chunked = _read_at_once_and_in_chunks(
        kafka_settings, registry, spec, {p: (0, end) for p, end in window.items()}, monkeypatch, 100
    )

    assert one.dlq > 0 and one.feature_state is not None and one.filling
    _assert_same_batch(one, chunked, ordered=False)


def test_a_window_after_a_quarantine_read_in_chunks_is_the_window_read_at_once(
    kafka_settings, kafka_bootstrap, registry, instance, monkeypatch
) -> None:
    # Its read starts at the batch before the window, with that batch's state, and drops the rows
    # before the window (`read_window`): the chunks must end with the same rows.
    from tests.dagster_project.features.support import learn_around_a_quarantine

    spec, skip = learn_around_a_quarantine(kafka_settings, kafka_bootstrap, registry, instance)
    ends = high_waters(kafka_settings, spec.events_topic)
    window = {p: (start + 7, ends[p]) for p, start in skip.items()}  # inside a batch: trimmed

    one, chunked = _read_at_once_and_in_chunks(kafka_settings, registry, spec, window, monkeypatch, 60)

    assert {int(p): int(one.offsets[one.partitions == p].min()) for p in window} == {
        p: s for p, (s, _) in window.items()
    }
    _assert_same_batch(one, chunked, ordered=False)


@pytest.mark.parametrize(
    "spec",
    [
        synthetic_spec(
            model={
                "candidates": [
                    {"estimator": "sgd_classifier", "name": "sgd"},
                    {"estimator": "random_forest_classifier", "name": "forest", "refit_every": 100},
                ]
            }
        )
    ],
    ids=["families"],
)
def test_a_drift_retrain_refits_a_windowed_family_on_post_change_rows_at_once(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    from tests.helpers import run_batch

    produce_synthetic(kafka_settings, spec, 600)
    ends = high_waters(kafka_settings, spec.events_topic)
    for k in range(3):
        ranges = {p: (e * k // 3, e * (k + 1) // 3) for p, e in ends.items()}
        assert run_batch(stream_defs, spec, ranges, instance).success
    v1, v2, v3 = registry.versions(spec.name)
    assert v3.meta["families"]["members"]["forest"]["window"]["refit"] is False  # not due for 100 batches

    retrained = retrain(kafka_settings, registry, spec, ["error rate rose"], "run-retrain", since=v2.name)

    assert retrained.learned == v3.learned and retrained.meta["rows_learned_total"] == 600
    forest = retrained.meta["families"]["members"]["forest"]["window"]
    assert forest["refit"] and forest["reason"] == "drift retrain: error rate rose"
    assert forest["fitted_on"]["ranges"] == {str(p): [[e // 3, e]] for p, e in ends.items()}  # v2 on only
    assert forest["fitted_on"]["rows"] == 400
    # This spec holds no tail out: no unseen rows to choose on, so the champion's leader is kept.
    assert retrained.meta["families"]["leader"] == v3.meta["families"]["leader"]
    sgd = registry.load_estimator(spec.name, retrained.name).members["sgd"]
    assert sgd.named_steps["scaler"].n_samples_seen_ == 400 * spec.drift.retrain_epochs  # replayed, fresh
    passes = spec.model.families[0].passes_per_batch  # each replayed batch learned as the stream learns it
    assert sgd.named_steps["estimator"].t_ == 1 + 400 * spec.drift.retrain_epochs * passes


def test_a_drift_retrain_learns_from_the_change_inside_the_batch_not_its_first_row(kafka_settings, registry) -> None:
    """The concept flips at row 650, inside the batch [400, 800) the detector names: a fresh model
    fit on that whole batch (250 old-concept rows, 150 new) would serve the new concept badly."""
    from dagster_project.dev.datasets import synthetic_events
    from dagster_project.dev.producer import produce
    from dagster_project.ingest.events import make_event

    spec = synthetic_spec(partitions=1, drift={"retrain_window_rows": 10_000})
    events = list(synthetic_events(rows=1_800, change_at=650, seed=3))
    produce(
        kafka_settings,
        spec,
        ((e.event_id.encode(), make_event(e.event_id, e.features, e.label, 0.0)) for e in events[:800]),
    )
    v1, v2 = _learn_batches(kafka_settings, registry, spec, size=400)

    retrained = retrain(kafka_settings, registry, spec, ["error rate rose"], "run-retrain", since=v2.name)

    start, end = retrained.meta["offsets"]["batch"]["0"]
    assert 630 <= start <= 670 and end == 800, f"the retrain window starts at {start}, not near the change (650)"
    assert retrained.meta["retrain"]["change_at"] == {"0": start}
    assert retrained.meta["rows"]["trained"] == 800 - start
    assert retrained.learned == v2.learned and retrained.meta["rows_learned_total"] == 800  # exactly-once kept
    later = events[800:]  # the new concept, unseen by any version
    X = np.array([[e.features[f"x{i}"] for i in range(5)] for e in later])
    y = np.array([e.label for e in later])
    accuracy = float((registry.load_estimator(spec.name, retrained.name).predict(X) == y).mean())
    assert accuracy >= 0.85, f"the retrained model serves the new concept at {accuracy:.3f}"


REFIT_FAMILIES = synthetic_spec(
    # A margin no challenger clears: the leader never changes batch by batch, so what leads after the
    # retrain is the refit rule's choice alone.
    promotion={"tail_rows": 100, "tail_fraction": 0.2, "min_rows": 50, "metric": "accuracy", "margin": 0.9},
    batch={"rows": 200, "max_rows": 600, "max_wait_s": 0.2},
    model={
        "candidates": [
            {"estimator": "sgd_classifier", "name": "sgd"},
            {"estimator": "hist_gradient_boosting_classifier", "name": "hgb", "window_rows": 2000},
        ]
    },
)


@pytest.mark.parametrize("spec", [REFIT_FAMILIES], ids=["families"])
def test_a_retrained_candidate_set_leads_with_its_best_refit_family_on_the_head_s_tail(
    kafka_settings, spec, registry, stream_defs, instance
) -> None:
    """The champion's leader (sgd, kept by the margin) is no evidence about families that were all
    just refit: on the head's tail, which neither the retrain nor the head learned, the trees lead on
    a non-linear concept, the version exports them, and its gate judges them on the same rows."""
    from assets.promotion import gate_retrain
    from tests.assets.test_promotion import _next, _produce_xor
    from tests.helpers import run_batch

    _produce_xor(kafka_settings, spec, 1200)
    for _ in range(3):
        assert run_batch(stream_defs, spec, _next(kafka_settings, registry, spec, 200), instance).success
    v1, v2, v3 = registry.versions(spec.name)
    assert v3.meta["families"]["leader"] == "sgd"

    retrained = retrain(kafka_settings, registry, spec, ["error rate rose"], "run-retrain", since=v2.name)

    choice = retrained.meta["families"]["choice"]
    tail_rows = sum(e - v3.learned[int(p)] for p, (_, e) in v3.meta["offsets"]["batch"].items())
    assert choice["rows"] == tail_rows >= 50 and choice["previous"] == "sgd"
    assert choice["leader"] == retrained.meta["families"]["leader"] == "hgb"
    assert choice["values"]["hgb"] > choice["values"]["sgd"] + 0.2 and "refit families: hgb leads" in choice["reason"]
    assert choice["test"]["test"] == "McNemar mid-p" and choice["test"]["p_value"] < 0.05
    assert b"TreeEnsemble" in registry.load_onnx(spec.name, retrained.name)  # the version serves its leader
    result = gate_retrain(kafka_settings, registry, spec, retrained)
    assert result.rows == tail_rows and result.candidate_value == choice["values"]["hgb"]
