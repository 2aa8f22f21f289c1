"""The joiner's durable files: one joiner per stream, and recovery after a crash mid-checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_project.labels import JoinerBusy, LabelStoreError, LiveStore


def test_store_recovery_cuts_torn_lines_and_orphans(tmp_path: Path) -> None:
    store = LiveStore(tmp_path, "s")
    with store.locked():
        with pytest.raises(JoinerBusy), LiveStore(tmp_path, "s").locked():
            pass
        assert store.recover() is None
        store.write_state(1, b'{"seq": 1}')
        store.append({"seq": 1, "at": "2024-01-01T00:00:00+00:00"})
        store.write_state(2, b'{"seq": 2}')  # its line never made it
        with open(store.path, "ab") as fh:
            fh.write(b'{"seq": 2, "at')  # torn by a crash mid-append
        assert store.recover() == (1, b'{"seq": 1}')
        assert store.path.read_bytes().endswith(b"}\n")
        assert sorted(p.name for p in store.state_dir.iterdir()) == ["000000000001.json"]
        (store.state_dir / "000000000001.json").unlink()
        with pytest.raises(LabelStoreError, match="is missing"):
            store.recover()


def test_the_last_record_is_read_from_the_end_whole_and_never_a_torn_line(tmp_path: Path) -> None:
    """The exporter reads the joiner's newest positions every scrape from a file megabytes long."""
    from dagster_project.labels.store import last_record

    store = LiveStore(tmp_path, "s")
    assert last_record(tmp_path, "s") is None
    store.directory.mkdir()
    store.append({"seq": 1, "offsets": {"s.labels": {"0": 5}}})
    assert last_record(tmp_path, "s", tail_bytes=8)["seq"] == 1  # a line longer than the tail
    long = "x" * 500
    for seq in range(2, 6):
        store.append({"seq": seq, "pad": long})
    with open(store.path, "ab") as fh:
        fh.write(b'{"seq": 6, "pa')  # torn by a crash mid-append: not a record
    for tail in (16, 600, 1 << 16):
        assert last_record(tmp_path, "s", tail_bytes=tail) == {"seq": 5, "pad": long}
