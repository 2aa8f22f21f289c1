"""What the scorer needs from a group consumer, whatever the client: `PollBatch` and `ScorerConsumer`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# Why a partition cannot be fetched, said alike by both clients.
NO_LEADER = "no leader: the brokers holding its replicas are down (no replica took over); back when one returns"


class CommitFailed(RuntimeError):
    """An offset commit did not go through (retried with the next batch; a rebalance hands it on)."""


@dataclass
class PollBatch:
    """One poll's records of the one subscribed topic, as parallel lists (offsets ascend per partition)."""

    topic: str
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # record timestamps in ms (<= 0: unknown)
    headers: dict[int, list] = field(default_factory=dict)  # position -> the record's headers, if it has any

    def __len__(self) -> int:
        return len(self.offsets)

    def firsts(self) -> dict[int, int]:
        """partition -> first offset in the batch (where to rewind to)."""
        out: dict[int, int] = {}
        for p, o in zip(self.partitions, self.offsets, strict=True):
            out.setdefault(p, o)
        return out

    def nexts(self) -> dict[int, int]:
        """partition -> the offset after the batch's last record (what to commit)."""
        return {p: o + 1 for p, o in zip(self.partitions, self.offsets, strict=True)}


class ScorerConsumer(Protocol):
    """A subscribed group member that never auto-commits; partitions are ints of the one topic."""

    # True if rebalance callbacks run inside `poll`, on the polling thread, where they may commit: then the
    # scorer overlaps the broker's acknowledgements of one batch with preparing the next.
    revokes_in_poll: bool

    # Makes a `poll`, `commit` or `committed` stuck inside the client return, called from another thread (the
    # scorer's poll watch, after kafka/rejoin.STUCK_POLL_S); the consumer is unusable after and is replaced. None
    # where the client bounds every call itself (librdkafka): a long poll there is a rebalance callback at work.
    unblock: Callable[[], None] | None

    def poll(self, timeout_s: float, max_records: int) -> PollBatch | None:
        """Up to `max_records` records, or None when nothing came (or a retriable error, after a pause)."""

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit `offsets` (next offset per partition) synchronously; CommitFailed if the group refused."""

    def seek(self, partition: int, offset: int) -> None:
        """Fetch `partition` from `offset` next; ignored for a partition no longer assigned."""

    def committed(self, partition: int, timeout_s: float) -> int | None:
        """The group's committed offset of `partition` (None if none)."""

    def highwater(self, partition: int) -> int | None:
        """The partition's end as last seen in a fetch response (no broker call)."""

    def group_metadata(self) -> Any:
        """What `send_offsets_to_transaction` needs to fence a replaced member (KIP-447)."""

    def heartbeat_answered_at(self) -> float | None:
        """time.monotonic() when the group coordinator was last known to answer."""

    def coordinator_known(self) -> bool | None:
        """Whether the group coordinator is known (None if the client does not say)."""

    def unfetchable(self, partitions: frozenset[int]) -> dict[int, str]:
        """Those of the assigned `partitions` this client cannot fetch from now, each with why (no leader, or
        the leader's broker not connected). Cheap: the client's own metadata and connection state, no broker call."""

    def close(self) -> None:
        """Leave the group at once (committing nothing) and release the client."""
