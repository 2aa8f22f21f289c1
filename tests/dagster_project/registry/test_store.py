"""The filesystem registry: atomic versions with parents and offsets, checksums, champion, offset resets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from dagster_project.registry.store import (
    ESTIMATOR_FILE,
    ONNX_FILE,
    BrokenRegistryFile,
    ChecksumMismatch,
    FilesystemRegistry,
    RegistryError,
    StaleParent,
    expected_offsets,
)

STREAM = "clicks"


def fitted_scaler(seed: int) -> StandardScaler:
    return StandardScaler().fit(np.random.default_rng(seed).normal(size=(20, 3)))


def meta(learned: dict[int, int], **extra) -> dict:
    return {"offsets": {"learned": {str(p): o for p, o in learned.items()}}, **extra}


def register(registry: FilesystemRegistry, parent: str | None, learned: dict[int, int], seed: int = 0):
    return registry.register(STREAM, parent, f"onnx-{seed}".encode(), fitted_scaler(seed), meta(learned, seed=seed))


def test_empty_registry(registry: FilesystemRegistry) -> None:
    assert registry.versions(STREAM) == []
    assert registry.head(STREAM) is None
    assert registry.champion(STREAM) is None
    assert registry.champion_history(STREAM) == []
    assert registry.pending_offset_reset(STREAM) is None
    assert expected_offsets(registry, STREAM) == (None, {}, None)


def test_versions_chain_parents_and_offsets(registry: FilesystemRegistry) -> None:
    v1 = register(registry, None, {0: 10, 1: 5}, seed=1)
    v2 = register(registry, "v1", {0: 30, 1: 5}, seed=2)
    assert (v1.name, v1.parent, v1.number) == ("v1", None, 1)
    assert (v2.name, v2.parent, v2.number) == ("v2", "v1", 2)

    versions = registry.versions(STREAM)
    assert [v.name for v in versions] == ["v1", "v2"]
    assert [v.learned for v in versions] == [{0: 10, 1: 5}, {0: 30, 1: 5}]
    assert [v.parent for v in versions] == [None, "v1"]
    assert registry.head(STREAM).name == "v2"
    assert registry.get(STREAM, "v1").meta["seed"] == 1
    for v in versions:
        assert set(v.meta["sha256"]) == {ONNX_FILE, ESTIMATOR_FILE}
        assert v.meta["stream"] == STREAM and v.meta["version"] == v.name and v.meta["created_at"]

    assert registry.load_onnx(STREAM, "v1") == b"onnx-1"
    loaded = registry.load_estimator(STREAM, "v2")
    np.testing.assert_array_equal(loaded.mean_, fitted_scaler(2).mean_)
    assert expected_offsets(registry, STREAM)[:2] == (registry.head(STREAM), {0: 30, 1: 5})


def test_versions_sort_numerically(registry: FilesystemRegistry) -> None:
    parent = None
    for n in range(1, 12):
        parent = register(registry, parent, {0: n}).name
    assert [v.number for v in registry.versions(STREAM)] == list(range(1, 12))
    assert registry.head(STREAM).name == "v11"


@pytest.mark.parametrize("stale", [None, "v1", "v3"])
def test_stale_parent_is_refused(registry: FilesystemRegistry, stale: str | None) -> None:
    register(registry, None, {0: 10})
    register(registry, "v1", {0: 20})
    with pytest.raises(StaleParent, match=f"head is v2, not {stale}"):
        register(registry, stale, {0: 30})
    assert [v.name for v in registry.versions(STREAM)] == ["v1", "v2"]
    assert not list((registry.root / STREAM).glob(".tmp-*"))


def test_version_appearing_during_register_is_stale(registry: FilesystemRegistry, monkeypatch) -> None:
    """Two trainers read the same head; the rename of the second one fails instead of overwriting."""
    v1 = register(registry, None, {0: 10})
    register(registry, "v1", {0: 20}, seed=2)
    monkeypatch.setattr(registry, "head", lambda stream: v1)  # the loser's view: still v1
    with pytest.raises(StaleParent, match="version v2 appeared while registering"):
        register(registry, "v1", {0: 25}, seed=3)
    monkeypatch.undo()
    assert registry.get(STREAM, "v2").meta["seed"] == 2
    assert not list((registry.root / STREAM).glob(".tmp-*"))


def test_crashed_write_is_ignored(registry: FilesystemRegistry) -> None:
    register(registry, None, {0: 10})
    leftover = registry.root / STREAM / ".tmp-v2-0123456789abcdef"
    leftover.mkdir()
    (leftover / ONNX_FILE).write_bytes(b"half a model")  # crashed before estimator and meta

    assert [v.name for v in registry.versions(STREAM)] == ["v1"]
    assert registry.head(STREAM).name == "v1"
    assert register(registry, "v1", {0: 20}).name == "v2"
    assert registry.head(STREAM).learned == {0: 20}


@pytest.mark.parametrize(
    ("corrupt", "load"),
    [
        (ONNX_FILE, FilesystemRegistry.load_onnx),
        (ESTIMATOR_FILE, FilesystemRegistry.load_estimator),
    ],
)
@pytest.mark.parametrize("garbage", [b"\x00garbage\xff", b""])
def test_corrupted_file_is_never_loaded(registry: FilesystemRegistry, corrupt: str, load, garbage: bytes) -> None:
    register(registry, None, {0: 10}, seed=1)
    (registry.root / STREAM / "v1" / corrupt).write_bytes(garbage)
    with pytest.raises(ChecksumMismatch, match=f"{STREAM}/v1/{corrupt} does not match its sha256"):
        load(registry, STREAM, "v1")


def test_corruption_of_one_file_leaves_the_other_loadable(registry: FilesystemRegistry) -> None:
    register(registry, None, {0: 10}, seed=1)
    (registry.root / STREAM / "v1" / ONNX_FILE).write_bytes(b"onnx-2")  # valid-looking, wrong bytes
    with pytest.raises(ChecksumMismatch):
        registry.load_onnx(STREAM, "v1")
    assert registry.load_estimator(STREAM, "v1").n_features_in_ == 3


def test_unknown_version(registry: FilesystemRegistry) -> None:
    register(registry, None, {0: 10})
    with pytest.raises(RegistryError, match="has no version 'v7'"):
        registry.load_onnx(STREAM, "v7")
    with pytest.raises(RegistryError, match="has no version 'v7'"):
        registry.set_champion(STREAM, "v7", reason="typo")
    assert registry.champion(STREAM) is None


def test_champion_alias_and_history(registry: FilesystemRegistry) -> None:
    register(registry, None, {0: 10})
    register(registry, "v1", {0: 20})
    registry.set_champion(STREAM, "v1", reason="first")
    registry.set_champion(STREAM, "v2", reason="better", evidence={"roc_auc": 0.91})
    registry.set_champion(STREAM, "v1", reason="rollback")

    assert registry.champion(STREAM) == "v1"
    history = registry.champion_history(STREAM)
    assert [(h["version"], h["previous"], h["reason"]) for h in history] == [
        ("v1", None, "first"),
        ("v2", "v1", "better"),
        ("v1", "v2", "rollback"),
    ]
    assert history[1]["evidence"] == {"roc_auc": 0.91}
    assert "evidence" not in history[0]
    assert all(h["at"] for h in history)
    assert not [p for p in (registry.root / STREAM).iterdir() if p.name.startswith(".champion")]


def test_pending_offset_reset_lifecycle(registry: FilesystemRegistry) -> None:
    register(registry, None, {0: 10, 1: 5})
    record = registry.set_pending_offsets(STREAM, {1: 0, 2: 7}, reason="lost data", by="alice")
    assert record["offsets"] == {"1": 0, "2": 7}
    pending = registry.pending_offset_reset(STREAM)
    assert pending == record
    assert (pending["reason"], pending["by"]) == ("lost data", "alice")

    head, expected, reset = expected_offsets(registry, STREAM)
    assert head.name == "v1"
    assert expected == {0: 10, 1: 0, 2: 7}  # the reset overrides the head, partition by partition
    assert reset == record
    assert registry.head(STREAM).learned == {0: 10, 1: 5}  # the head itself is untouched

    registry.clear_offset_reset(STREAM, applied_by_version="v2")
    assert registry.pending_offset_reset(STREAM) is None
    assert expected_offsets(registry, STREAM)[1] == {0: 10, 1: 5}
    assert (registry.root / STREAM / "offset_reset.applied-v2.json").exists()
    registry.clear_offset_reset(STREAM, applied_by_version="v3")  # nothing pending: no-op
    assert not (registry.root / STREAM / "offset_reset.applied-v3.json").exists()


def test_pending_reset_without_any_version(registry: FilesystemRegistry) -> None:
    registry.set_pending_offsets(STREAM, {0: 3}, reason="start late", by="bob")
    assert registry.versions(STREAM) == []
    assert expected_offsets(registry, STREAM)[:2] == (None, {0: 3})


def test_a_newer_reset_replaces_the_pending_one(registry: FilesystemRegistry) -> None:
    registry.set_pending_offsets(STREAM, {0: 3, 1: 4}, reason="first", by="bob")
    registry.set_pending_offsets(STREAM, {0: 9}, reason="second", by="bob")
    assert registry.pending_offset_reset(STREAM)["offsets"] == {"0": 9}


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("v2/meta.json", b"[]", "holds a JSON list, not an object"),
        ("v2/meta.json", b'{"offsets": []}', "records no learned offsets"),
        ("v2/meta.json", b'{"offsets": {"learned": {"0": "x"}}}', "holds no offsets"),
        ("champion_history.jsonl", b'[1]\n{"version": "v1"}\n', "line 1 is a JSON list, not a record"),
        ("halt.json", b'{"ranges": {"0": "x"}}', "holds no offsets"),
        ("halt.json", b'{"ranges": {"0": [0, -3]}}', "holds a negative partition or offset"),
    ],
)
def test_a_damaged_file_that_is_still_json_is_named_with_its_fix(
    registry: FilesystemRegistry, file_name: str, content: bytes, message: str
) -> None:
    """Valid JSON of the wrong shape was a traceback in `models list`, `models rollback` or `batches
    skip` (and a halt ending at -3 became a pending reset to offset -3)."""
    register(registry, None, {0: 10})
    register(registry, "v1", {0: 20}, seed=1)
    registry.set_champion(STREAM, "v1", reason="test")
    (registry.root / STREAM / file_name).write_bytes(content)
    if file_name.startswith("v2/"):
        valid, broken = registry.scan(STREAM)
        assert [v.name for v in valid] == ["v1"] and message in broken[0].error
        return
    read = registry.champion_history if file_name.startswith("champion") else registry.halt
    with pytest.raises(BrokenRegistryFile, match=message):
        read(STREAM)


def test_the_head_is_read_from_its_own_meta_alone_whatever_the_history(registry: FilesystemRegistry, monkeypatch):
    """The Kafka sensor reads the head every tick; reading every version's meta.json took 2 s a tick
    at 2,000 versions. A broken newest version still stops the stream with the whole scan's message."""
    for i in range(1, 6):
        register(registry, f"v{i - 1}" if i > 1 else None, {0: 100 * i}, seed=i)
    (registry.root / STREAM / "v2" / "meta.json").write_text("{broken")  # an older version: not read
    reads = []
    original = registry._read_meta
    monkeypatch.setattr(registry, "_read_meta", lambda s, v: reads.append(v) or original(s, v))

    head = registry.head(STREAM)

    assert (head.name, head.learned, reads) == ("v5", {0: 500}, ["v5"])
    (registry.root / STREAM / "v5" / "meta.json").write_text("{broken")
    with pytest.raises(BrokenRegistryFile, match="the newest version v5 is broken, so which offsets it learned"):
        registry.head(STREAM)


def test_listing_versions_again_reads_only_the_metas_that_changed(registry: FilesystemRegistry, monkeypatch):
    """The sensors, the exporter and every training run list a stream's versions, each with a new
    registry object; reading every meta.json each time cost 0.4 s at 2,000 versions. A listing reads
    the metas written or replaced since the last one (a restore from a backup is seen), and leaves
    the data profiles, most of a meta.json, to `profile()`."""
    profile = {"features": {"x": {"sample": [0.5] * 200}}}
    for i in range(1, 6):
        registry.register(
            STREAM, f"v{i - 1}" if i > 1 else None, b"onnx", fitted_scaler(i), meta({0: 100 * i}, profile=profile)
        )
    _age(registry)
    first = registry.versions(STREAM)
    assert [v.name for v in first] == ["v1", "v2", "v3", "v4", "v5"]
    assert all("profile" not in v.meta for v in first) and registry.profile(STREAM, "v3") == profile
    reads = []
    original = FilesystemRegistry._read_meta
    monkeypatch.setattr(FilesystemRegistry, "_read_meta", lambda self, s, v: reads.append(v) or original(self, s, v))

    again = FilesystemRegistry(registry.root)  # the next tick's registry
    assert [v.learned for v in again.versions(STREAM)] == [{0: 100 * i} for i in range(1, 6)] and reads == []

    again.register(STREAM, "v5", b"onnx", fitted_scaler(6), meta({0: 600}, profile=profile))
    reads.clear()  # registering read its parent's
    restored = registry.root / STREAM / "v2" / "meta.json"
    document = json.loads(restored.read_text())
    restored.write_text(json.dumps({**document, "offsets": {"learned": {"0": 250}}}))
    _age(registry, ["v2", "v6"])
    versions = again.versions(STREAM)
    assert sorted(reads) == ["v2", "v6"] and versions[1].learned == {0: 250} and versions[-1].name == "v6"

    reads.clear()
    (registry.root / STREAM / "v3" / "meta.json").write_text("{broken")  # damaged: no longer listed
    assert [v.name for v in again.versions(STREAM)] == ["v1", "v2", "v4", "v5", "v6"] and reads == ["v3"]
    assert again.get(STREAM, "v4").meta["profile"] == profile  # one version in full, as before


def _age(registry: FilesystemRegistry, versions: list[str] | None = None, seconds: float = 10.0) -> None:
    """These versions' meta.json (all by default) as if written `seconds` ago: a listing reads metas
    younger than `store.RACY_S` again every time."""
    for path in (registry.root / STREAM).glob("v*/meta.json"):
        if versions is not None and path.parent.name not in versions:
            continue
        stamp = path.stat().st_mtime - seconds
        os.utime(path, (stamp, stamp))


def test_a_meta_rewritten_within_its_clock_tick_is_not_served_stale(registry: FilesystemRegistry) -> None:
    """A same-size rewrite in place that keeps the mtime (a coarse filesystem clock: ext4 ticks of a
    few ms, 1-2 s on NFS or FAT) looks unchanged: a meta read when that young is read again."""
    register(registry, None, {0: 100})
    assert registry.versions(STREAM)[0].learned == {0: 100}
    path = registry.root / STREAM / "v1" / "meta.json"
    before = path.stat()
    text = path.read_text()
    with open(path, "r+") as fh:  # in place: same inode, same size
        fh.write(text.replace('"0":100', '"0":900').replace('"0": 100', '"0": 900'))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size) == (before.st_ino, before.st_size)

    assert registry.versions(STREAM)[0].learned == {0: 900}
