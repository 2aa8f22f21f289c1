"""The quarantine store as `streamfit quarantine` shows it: a categorical batch's refusal quotes the
values the producer sent, never the integer codes the stored rows hold."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from dagster_project.cli import main
from dagster_project.dev.datasets import census_events
from dagster_project.ingest.events import make_event
from dagster_project.ingest.micro_batch import MicroBatch, _parse
from dagster_project.kafka.io import RawRecord
from dagster_project.kafka.record_columns import RecordColumns
from dagster_project.quality.quarantine import QuarantineStore
from dagster_project.quality.suite import validate_batch
from dagster_project.spec import StreamSpec
from tests.conftest import census_spec


def _unseen_batch(spec: StreamSpec, rows: int = 100) -> MicroBatch:
    """`rows` census events at offsets 500.. of partition 1; every fifth workclass is outside the vocabulary."""
    records = []
    for i, event in enumerate(census_events(rows=rows, unseen_share=0.0)):
        features = dict(event.features) | ({"workclass": f"Space-{i}"} if i % 5 == 0 else {})
        records.append(RawRecord(1, 500 + i, 0, None, make_event(event.event_id, features, event.label)))
    return _parse(None, spec, {1: (500, 500 + rows)}, RecordColumns.of(records), False, None)


@pytest.mark.parametrize("spec", [census_spec()])
def test_replay_of_a_categorical_batch_quotes_the_values_sent_not_their_codes(
    spec: StreamSpec, specs_dir: Path, streamfit_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`quarantine replay` said "e.g. 4.0 at 1:500" (workclass's unseen code) where the event held 'Space-0'."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    batch = _unseen_batch(spec)
    store = QuarantineStore()
    qid = store.save(batch, validate_batch(batch, spec).as_metadata(), "run-q")

    replay = CliRunner().invoke(main, ["quarantine", "replay", spec.name, qid])

    assert replay.exit_code == 1, replay.output
    assert "unseen categories in 'workclass': 20 of 100 rows (20.0%)" in replay.output
    assert "e.g. 'Space-0' at 1:500, 'Space-5' at 1:505" in replay.output, replay.output
    # A batch quarantined before the raw values were kept says what its code means instead.
    meta = store.root / spec.name / qid / "meta.json"
    meta.write_bytes(orjson.dumps({k: v for k, v in orjson.loads(meta.read_bytes()).items() if k != "unseen_examples"}))
    older = CliRunner().invoke(main, ["quarantine", "replay", spec.name, qid])
    assert "e.g. '<unseen>' at 1:500, '<unseen>' at 1:505" in older.output, older.output
