"""The benchmarks' garbage-collector helpers: set-up's heap out of the timed systems' collections."""

from __future__ import annotations

import gc

from benchmarks.common import FullCollections, frozen_heap


def test_frozen_heap_keeps_set_up_objects_out_of_full_collections_and_gives_them_back() -> None:
    set_up = [[i] for i in range(200_000)]  # tracked containers, like a benchmark's source events
    with frozen_heap():
        assert gc.get_freeze_count() >= len(set_up)
        with FullCollections() as full:
            gc.collect()
        assert full.count == 1 and full.ms >= 0
    assert gc.get_freeze_count() == 0  # later sections collect as before
    with FullCollections() as full:
        gc.collect(1)  # a younger collection is not counted
    assert full.count == 0
    del set_up
