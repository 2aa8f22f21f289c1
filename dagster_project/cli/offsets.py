"""`streamfit offsets show|reset`: where a stream's training stands against the broker.

The registry's head version records the offsets it learned up to; these commands compare them with
the broker's log and, after data loss, let an operator choose where the next batch starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from dagster_project.cli.common import (
    bootstrap_option,
    kafka_settings,
    operator_name,
    registry,
    stream_argument,
    stream_spec,
)
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings

if TYPE_CHECKING:
    from dagster_project.kafka.offsets import PartitionState


@click.group()
def offsets() -> None:
    """Inspect or move a stream's learned offsets."""


@offsets.command("show")
@stream_argument
@bootstrap_option
def offsets_show(stream: str, bootstrap: str | None) -> None:
    """Learned offsets, the broker's ends and the lag, per partition."""
    from dagster_project.kafka.io import (
        committed_group_offsets,
        partition_mismatch,
        probe_partitions,
        topic_changed,
        topic_lost,
    )
    from dagster_project.registry.store import expected_offsets, without_state

    spec = stream_spec(stream)
    settings = kafka_settings(bootstrap)
    store = registry()
    head, expected, reset = expected_offsets(store, stream)
    stale = store.stale_offset_reset(stream) if reset is None else None
    reachable(settings)
    with broker_errors(settings):
        committed = committed_group_offsets(settings, spec.trainer_group, spec.events_topic)
        states = probe_partitions(settings, spec.events_topic, expected)
        changed = topic_changed(settings, spec, head, reset) if states else None
    click.echo(
        f"{stream}: head {head.name if head else 'none'}" + (f", pending reset {without_state(reset)}" if reset else "")
    )
    if stale:
        click.echo(f"  STALE RESET: {stale}")
    if not states:
        click.echo(f"  {topic_lost(spec, head, expected) or f'topic {spec.events_topic} does not exist yet'}")
    if states and len(states) != spec.partitions:
        click.echo(f"  NOTE: {partition_mismatch(spec.events_topic, len(states), spec.partitions)}")
    if changed:
        click.echo(
            f"  OFFSET GAP: {spec.events_topic} is not the topic {head.name} learned from ({changed}); the lag is "
            f"unknown until `streamfit offsets reset {stream} --to earliest|latest`"
        )
    for state in states:
        gap = changed or state.next_offset > state.high_water or state.next_offset < state.log_start
        lag = "lag unknown (OFFSET GAP)" if gap else f"lag {state.lag}"
        click.echo(
            f"  partition {state.partition}: next {state.next_offset}  committed {committed.get(state.partition)}  "
            f"log [{state.log_start}, {state.high_water})  {lag}"
        )


@offsets.command("reset")
@stream_argument
@click.option("--to", "position", type=click.Choice(["earliest", "latest"]), required=True)
@click.option("--reason", default="operator reset", show_default=True)
@click.option(
    "--force",
    is_flag=True,
    help=(
        "Move every partition, and reset a stream without an offset gap too (one no version has learned from "
        "yet included): rows its head learned are learned again, or rows nobody learned are skipped."
    ),
)
@click.option(
    "--dry-run", is_flag=True, help="Say where the next batch would start and what that moves over; write nothing."
)
@bootstrap_option
def offsets_reset(stream: str, position: str, reason: str, force: bool, dry_run: bool, bootstrap: str | None) -> None:
    """Move where the next batch starts (after data loss); the next version records it."""
    from dagster_project.kafka.io import topic_changed
    from dagster_project.quality.passed_over import replacing
    from dagster_project.registry.store import ChecksumMismatch, StaleReset, carried_state, expected_offsets

    spec = stream_spec(stream)
    settings = kafka_settings(bootstrap)
    states = probed(settings, spec.events_topic)
    if not states:
        raise click.ClickException(f"topic {spec.events_topic} does not exist on the broker")
    target = {s.partition: (s.log_start if position == "earliest" else s.high_water) for s in states}
    head, expected, pending = expected_offsets(registry(), stream)
    kept: dict[int, int] = {}
    never: list[int] = []
    moved = {int(p): int(o) for p, o in (pending or {}).get("offsets", {}).items()}  # by a pending reset or skip
    if not force:  # against what the head learned (nothing yet, before v1): a pending reset is replaced
        learned = dict(head.learned) if head else {}
        with broker_errors(settings):
            changed = topic_changed(settings, spec, head, None)
        _refuse_without_gap(stream, head.name if head else None, learned, target, states, changed, pending)
        if head is not None and not changed and not _past_the_end(states, learned):
            # A healthy partition stays where the next batch starts it now: where the head stopped, or
            # where a pending skip moved it (kept at the head, the skipped rows were learned after all).
            current = learned | moved
            kept = {
                s.partition: current[s.partition] for s in states if s.partition in current and not _has_gap(s, current)
            }
            target.update(kept)
            # A partition never learned nor moved is left to the sensor, which starts it at its log's start
            # when it plans: `--to latest` skipped its rows though nothing was lost there, and a start
            # pinned now would be a gap once retention trims it before the reset is learned.
            never = sorted(s.partition for s in states if s.partition not in current)
            for partition in never:
                del target[partition]
    # Where the next batch starts now and after this reset (a partition without an offset: its log's start).
    starts = {s.partition: s.log_start for s in states}
    before = {p: expected.get(p, start) for p, start in starts.items()}
    after = {p: target.get(p, start) for p, start in starts.items()}
    # The derived-feature state a pending skip carries (its events read) holds for a start at or past it.
    carried, damaged, details = None, None, {}
    if moved and all(target.get(p, -1) >= o for p, o in moved.items()):
        details = replacing(pending)  # past it: what it skipped stays recorded
        try:
            carried = carried_state(stream, pending)
        except ChecksumMismatch as exc:  # the reset is the way out of it: it goes on without the state
            damaged = exc
    halt = registry().halt(stream)
    # A reset that moves nothing is not recorded as one (a version would say it applied it), unless it is
    # the way out of a pending reset whose carried feature state is damaged: then it is written without it.
    if before == after and damaged is None:
        click.echo(f"{stream}: nothing to reset: the next batch already starts at {after}; nothing was written")
        _echo_halted(stream, halt)
        return
    if dry_run:
        click.echo(f"{stream}: the next batch would start at {target} (dry run: nothing written)")
        _echo_moved(before, after)
        _echo_halted(stream, halt)
        return
    store = registry()
    try:
        # Conditional on the head it was computed against: a version registered since learned rows this
        # reset did not consider (refused here, or, registered between that check and the write, the
        # reset is never applied and the check below says so).
        store.set_pending_offsets(
            stream,
            target,
            reason=f"{reason} (--to {position})",
            by=operator_name(),
            feature_state=carried,
            details=details,
            head=head.name if head else None,
        )
    except StaleReset as exc:
        raise click.ClickException(str(exc)) from exc
    stale = store.stale_offset_reset(stream)
    if stale is not None:
        raise click.ClickException(stale)
    click.echo(f"{stream}: next batch starts at {target}; the next version records this reset")
    _echo_moved(before, after)
    if pending:
        kept_state = " and the feature state it carried" if carried is not None else ""
        click.echo(f"  it replaces the pending reset to {pending['offsets']} ({pending['reason']}){kept_state}")
    if damaged is not None:
        click.echo(
            f"  WARNING: the feature state the pending reset carried is damaged ({damaged}); dropped: derived "
            "features continue from the head's state, without the events it had read"
        )
    _echo_halted(stream, halt)
    if kept:
        skipped_to = sorted(p for p in kept if p in moved)
        click.echo(
            f"  partition(s) {', '.join(map(str, sorted(kept)))} have no gap and stay where {head.name} learned up to"
            + (
                f" (partition(s) {', '.join(map(str, skipped_to))}: where the pending reset moved them)"
                if skipped_to
                else ""
            )
            + "; nothing there is learned twice or skipped now; --force moves every partition"
        )
    if never:
        click.echo(
            f"  partition(s) {', '.join(map(str, never))} were never learned and start at their log's start, as "
            "before the reset; --force moves them too"
        )


def _echo_moved(before: dict[int, int], after: dict[int, int]) -> None:
    """How many rows a reset moves the start back over (learned again) or forward past (never learned)."""
    again = sum(max(0, before[p] - after[p]) for p in before)
    passed = sum(max(0, after[p] - before[p]) for p in before)
    if again or passed:
        effect = [f"moves the start back over {again:,} row(s)"] if again else []
        effect += [f"moves the start forward past {passed:,} row(s), which go unlearned"] if passed else []
        click.echo(f"  against where the next batch would have started ({before}), this {' and '.join(effect)}")


def _echo_halted(stream: str, halt: dict | None) -> None:
    if halt:
        click.echo(
            f"  {stream} stays HALTED ({halt.get('summary') or halt.get('kind')}): no batch runs until `streamfit "
            f"batches skip {stream} --reason ...` lifts the halt; the skip keeps this reset's start on every partition "
            "where it is past the halted batch's end"
        )


def _has_gap(state: PartitionState, learned: dict[int, int]) -> bool:
    """The broker's log no longer holds where the head stopped on this partition: retention deleted
    what it had not learned yet, or the log ends before it. A partition the head never learned has
    none (the sensor starts it at the log's start)."""
    return state.partition in learned and not state.log_start <= learned[state.partition] <= state.high_water


def _past_the_end(states: list[PartitionState], learned: dict[int, int]) -> bool:
    """A partition's log ends before where the head stopped: the broker lost data or the topic was
    recreated, so offsets on the other partitions may name other records too and every partition
    moves. Only retention gaps (the log now starts after the head) leave the healthy ones alone."""
    return any(s.partition in learned and learned[s.partition] > s.high_water for s in states)


def _refuse_without_gap(
    stream: str,
    head: str | None,
    expected: dict[int, int],
    target: dict[int, int],
    states: list,
    changed: str | None,
    pending: dict | None = None,
) -> None:
    """A reset is for data loss (an OFFSET GAP). On a stream without one it silently learned rows
    again (`--to earliest`) or skipped them (`--to latest`), breaking "every row learned once"."""
    if changed or any(_has_gap(s, expected) for s in states):
        return  # a gap: what the reset is for (only the partitions with one move: see offsets_reset)
    starts = {s.partition: s.log_start for s in states}  # where the sensor starts a partition never learned
    again = sum(max(0, expected.get(p, starts[p]) - o) for p, o in target.items())
    skipped = sum(max(0, o - expected.get(p, starts[p])) for p, o in target.items())
    if not again and not skipped:
        return
    effect = f"learn {again:,} rows {head} already learned again" if again else f"skip {skipped:,} rows nobody learned"
    replaced = f" (replacing the pending reset to {pending['offsets']})" if pending else ""
    learned = (
        f"{head} learned up to {expected}"
        if head
        else f"no version has learned from it yet (its first batch starts at each partition's log start, {starts})"
    )
    raise click.ClickException(
        f"{stream} has no offset gap: {learned}, and this reset{replaced} would "
        f"{effect}. Pass --force if that is what you want (a model that should learn from scratch is a new "
        "stream; a halted batch is `streamfit batches skip|retry`)."
    )


@contextmanager
def broker_errors(settings: KafkaSettings) -> Iterator[None]:
    """A broker that accepts connections but does not answer (hung, overloaded, or not Kafka) ends in
    one line naming the fix, not kafka-python's traceback."""
    from kafka.errors import KafkaError

    from dagster_project.kafka.io import BrokerUnavailable

    try:
        yield
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    except KafkaError as exc:
        raise click.ClickException(
            f"Kafka broker at {settings.bootstrap} accepted the connection but did not answer ({exc}); check that "
            f"it is running and responsive (its log, its load), or point {BOOTSTRAP_ENV} (or --bootstrap) at a "
            "running one. Nothing was changed"
        ) from exc


def probed(settings: KafkaSettings, topic: str) -> list[PartitionState]:
    """Every partition of `topic` from its log's start ([] when it does not exist), or a one-line error
    naming the fix when no broker answers."""
    from dagster_project.kafka.io import probe_partitions

    reachable(settings)
    with broker_errors(settings):
        return probe_partitions(settings, topic, {})


def reachable(settings: KafkaSettings) -> None:
    """A one-line error naming the fix when no broker answers (in seconds, not after a 30 s bootstrap)."""
    from dagster_project.kafka.io import BrokerUnavailable, check_reachable

    def waiting(address: str) -> None:
        click.echo(
            f"the broker at {address} accepted the connection but has not answered a Kafka request in 2 s (stopped, "
            "overloaded, or not a broker?); waiting up to 30 s more for it ...",
            err=True,
        )

    try:
        check_reachable(settings, on_silence=waiting)
    except BrokerUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
