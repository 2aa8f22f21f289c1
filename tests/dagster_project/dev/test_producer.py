"""What `streamfit produce --source file.jsonl` keys each line by: the partition a key's history lives on."""

from __future__ import annotations

from pathlib import Path

from dagster_project.dev.producer import encoded_events
from dagster_project.ingest.keys import message_key
from dagster_project.spec import load_spec

STREAMS = Path(__file__).resolve().parents[3] / "streams"


def test_a_stream_with_derived_features_keys_its_lines_by_their_by_field(tmp_path: Path) -> None:
    """The feature state is per partition: keyed by id, one device's readings spread over every
    partition and each partition saw only part of its history (the README says to key by `by`)."""
    sensors, census = load_spec(STREAMS / "sensors.yaml"), load_spec(STREAMS / "census.yaml")
    assert sensors.derived[0].by == "device" and "device" not in sensors.feature_names  # a top-level field
    source = tmp_path / "events.jsonl"
    source.write_bytes(b'{"id": "e1", "device": "d7"}\n{"id": "e2", "device": 3}\n{"id": "e3"}\n[1]\n{bad\n')
    assert [key for key, _ in encoded_events(str(source), message_key(sensors))] == [b"d7", b"3", None, None, None]
    assert [key for key, _ in encoded_events(str(source), message_key(census))] == [b"e1", b"e2", b"e3", None, None]
    assert [key for key, _ in encoded_events(str(source))] == [b"e1", b"e2", b"e3", None, None]


def test_a_pipe_is_a_source_too(tmp_path: Path) -> None:
    """`zcat events.jsonl.gz | streamfit produce s --source /dev/stdin` (or `<(zcat ...)`): a FIFO is
    not a regular file, and checked as one it was "file not found"."""
    import os
    import threading

    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b'{"id": "e1"}\n{"id": "e2"}\n'), daemon=True)
    writer.start()
    assert [key for key, _ in encoded_events(str(fifo))] == [b"e1", b"e2"]
    writer.join()
