"""A batch's positions and labels come back from their packed forms as the very same arrays."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dagster_project.ingest.micro_batch import MicroBatch
from dagster_project.ingest.packing import pack_labels, pack_positions, unpack_labels, unpack_positions


def _read_order(rng: np.random.Generator, partitions: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions as a range read yields them: polls of one partition's next offsets, with gaps
    where a refused message (or a transaction marker) left no row."""
    nxt = {p: int(rng.integers(0, 10**12)) for p in range(partitions)}
    parts, offs = [], []
    while len(offs) < rows:
        p = int(rng.integers(0, partitions))
        for _ in range(int(rng.integers(1, 400))):
            nxt[p] += 1 + int(rng.random() < 0.01)  # an occasional gap
            parts.append(p)
            offs.append(nxt[p])
    return np.asarray(parts[:rows], dtype=np.int32), np.asarray(offs[:rows], dtype=np.int64)


def test_positions_round_trip_on_random_read_orders() -> None:
    rng = np.random.default_rng(3)
    packed_some = 0
    for case in range(200):
        partitions, offsets = _read_order(rng, int(rng.integers(1, 9)), int(rng.integers(2, 3_000)))
        packed = pack_positions(partitions, offsets)
        if packed is None:
            continue
        packed_some += 1
        restored_partitions, restored_offsets = unpack_positions(packed)
        assert restored_partitions.dtype == partitions.dtype and restored_offsets.dtype == offsets.dtype, case
        np.testing.assert_array_equal(restored_partitions, partitions)
        np.testing.assert_array_equal(restored_offsets, offsets)
    assert packed_some > 150


def test_a_run_ends_where_the_partition_changes_even_if_the_offsets_go_on() -> None:
    partitions = np.repeat(np.array([0, 1, 0], dtype=np.int32), 4)
    offsets = np.arange(12, dtype=np.int64)  # partition 1 happens to continue partition 0's numbering
    restored_partitions, restored_offsets = unpack_positions(pack_positions(partitions, offsets))
    np.testing.assert_array_equal(restored_partitions, partitions)
    np.testing.assert_array_equal(restored_offsets, offsets)


def test_scattered_positions_are_kept_as_they_are() -> None:
    offsets = np.arange(0, 2_000, 2, dtype=np.int64)  # no two rows consecutive
    assert pack_positions(np.zeros(1_000, dtype=np.int32), offsets) is None


LABELS = {
    "classes with unlabelled rows": ([0.0, 1.0, np.nan, 2.0, 1.0], True),
    "all unlabelled": ([np.nan, np.nan], True),
    "a fraction": ([0.0, 1.5], False),
    "negative zero": ([0.0, -0.0, 1.0], False),
    "a class index past int8": ([0.0, 127.0], False),
    "a negative value": ([0.0, -1.0], False),
    "regression values": ([3.25, -7.5, 1e9], False),
}


@pytest.mark.parametrize("values, packs", LABELS.values(), ids=LABELS.keys())
def test_labels_pack_only_when_they_come_back_bit_for_bit(values, packs) -> None:
    y = np.asarray(values, dtype=np.float64)
    packed = pack_labels(y)
    assert (packed is not None) == packs
    if packed is not None:
        restored = unpack_labels(packed)
        assert restored.dtype == np.float64
        assert restored.tobytes() == y.tobytes() or np.array_equal(restored, y, equal_nan=True)
        assert np.array_equal(np.signbit(restored), np.signbit(y))


def test_a_pickled_batch_is_smaller_and_restores_every_array() -> None:
    rng = np.random.default_rng(4)
    partitions, offsets = _read_order(rng, 4, 20_000)
    y = rng.integers(0, 3, 20_000).astype(np.float64)
    y[rng.random(20_000) < 0.1] = np.nan
    batch = MicroBatch("s", {}, rng.normal(size=(20_000, 3)), y, [str(i) for i in range(20_000)], partitions, offsets)

    data = pickle.dumps(batch, protocol=4)  # Dagster's IO manager's protocol
    restored = pickle.loads(data)

    for name in ("X", "y", "partitions", "offsets"):
        got, want = getattr(restored, name), getattr(batch, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want)
    plain = y.nbytes + partitions.nbytes + offsets.nbytes
    assert len(data) < len(pickle.dumps(batch.X, protocol=4)) + len("\x00".join(batch.ids)) + plain // 4
