"""Compact forms of a batch's row positions and labels for pickling, restored exactly.

Dagster's filesystem IO manager writes a step's output to disk once and reads it back in every
step that consumes it; a micro-batch is read four times, so its bytes cost five times. Two of its
arrays say little per byte: the (partition, offset) of each row are runs of consecutive offsets in
one partition (a range read yields each partition's records in order, a poll at a time), and the
labels of a classification stream are small class indices (or NaN). Either is packed only when
the packed form restores the very same array; otherwise the array is kept as it is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SMALL_CLASS_LIMIT = 127  # class indices below it fit an int8, with -1 standing for "no label"


def pack_positions(partitions: np.ndarray, offsets: np.ndarray) -> tuple | None:
    """(partition, first offset, length) of each run of consecutive offsets, or None if runs do not pay."""
    if partitions.ndim != 1 or offsets.shape != partitions.shape or offsets.dtype.kind != "i":
        return None
    n = len(offsets)
    if n < 2:
        return None
    breaks = np.flatnonzero((partitions[1:] != partitions[:-1]) | (offsets[1:] != offsets[:-1] + 1)) + 1
    if len(breaks) * 4 > n:  # scattered rows: the runs would not be much smaller than the arrays
        return None
    starts = np.concatenate(([0], breaks))
    lengths = np.diff(np.concatenate((starts, [n])))
    return (partitions[starts], offsets[starts], lengths, partitions.dtype.str, offsets.dtype.str)


def unpack_positions(packed: tuple) -> tuple[np.ndarray, np.ndarray]:
    run_partitions, first_offsets, lengths, partition_dtype, offset_dtype = packed
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    partitions = np.repeat(run_partitions, lengths).astype(partition_dtype, copy=False)
    offsets = np.repeat(first_offsets - starts, lengths) + np.arange(int(lengths.sum()))
    return partitions, offsets.astype(offset_dtype, copy=False)


def pack_labels(y: np.ndarray) -> np.ndarray | None:
    """Class indices (NaN = unlabelled) as int8, or None unless that restores `y` exactly."""
    if y.dtype != np.float64 or y.ndim != 1:
        return None
    unlabelled = np.isnan(y)
    small = np.where(unlabelled, -1.0, y)
    if not (((small >= 0) | unlabelled) & (small < SMALL_CLASS_LIMIT)).all():  # -1 means NaN only
        return None
    packed = small.astype(np.int8)
    if not np.array_equal(packed, small) or np.signbit(small[small == 0]).any():  # 2.5, or -0.0
        return None
    return packed


def unpack_labels(packed: np.ndarray) -> np.ndarray:
    y = packed.astype(np.float64)
    y[packed < 0] = np.nan
    return y


def packed_state(partitions: Any, offsets: Any, y: Any) -> dict[str, Any]:
    """The state entries that replace `partitions`, `offsets` and `y` where packing pays."""
    state: dict[str, Any] = {}
    positions = pack_positions(partitions, offsets) if isinstance(partitions, np.ndarray) else None
    if positions is not None and isinstance(offsets, np.ndarray):
        state["_packed_positions"] = positions
    labels = pack_labels(y) if isinstance(y, np.ndarray) else None
    if labels is not None:
        state["_packed_labels"] = labels
    return state
