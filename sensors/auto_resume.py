"""Resume a stream halted by a transient outage (the broker or MLflow away) once it answers again.

A run that fails because the broker was down longer than its step retries and the daemon's run
retries cover (a broker restart, a two-minute network blip) used to halt the stream until an
operator re-executed it, though nothing was wrong with the batch. Such a halt records
`auto_resume` (the error, the run key, the head it was planned on, a backoff); on a later tick the
Kafka sensor checks that the broker answers and requests the very same ranges again under
`<run key>#resume<k>`: a new key per attempt, so Dagster's run-key dedupe launches each once, and
one that is requested again (its run not created yet) is not launched twice. The halt stays while
the run runs, so it reads the DLQ before dead-lettering (`may_have_dead_lettered`) and its version
clears the halt (`registry.versioning`). Only the halted head's next batch is resumed: a head that
moved (something learned or skipped the batch) leaves an ordinary halt, so no offset is learned twice.
Any other failure (bad data, a bug, an export that fails, an ACL) halts exactly as before.
"""

from __future__ import annotations

import time
from typing import Any

import dagster as dg

from sensors.resume_policy import TRANSIENT_ERRORS, resume_key, resume_wait_s, resuming_story


def final_error(instance: dg.DagsterInstance, run_id: str) -> Any | None:
    """The error of the run's last step failure (behind "Exceeded max_retries"), or None (the run
    failed outside a step: run monitoring, a worker that died)."""
    final = None
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        final = unwrap_retry(record.dagster_event.event_specific_data.error)
    return final


def unwrap_retry(error: Any) -> Any:
    """The error behind Dagster's RetryRequested wrappers (the news, not "Exceeded max_retries")."""
    while error is not None and error.cause is not None and error.cls_name.startswith("RetryRequested"):
        error = error.cause
    return error


def transient_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The transient error's class name when the run failed on one (`TRANSIENT_ERRORS`), else None."""
    error = final_error(instance, run_id)
    return error.cls_name if error is not None and error.cls_name in TRANSIENT_ERRORS else None


def resume_tick(
    context: dg.SensorEvaluationContext,
    spec: Any,
    reg: Any,
    halt: dict[str, Any],
    head_name: str | None,
    expected: dict[int, int],
    settings: Any,
) -> dg.SensorResult | dg.SkipReason | None:
    """One tick of a halt that resumes itself: a run request, a skip saying what happens, or None when
    the halt is (now) an ordinary one, which the caller reports as before."""
    from dagster_project.instance import ask_retry_again, lost_retry
    from dagster_project.kafka.io import BrokerUnavailable, probe_partitions
    from dagster_project.kafka.settings import BrokerConfigError

    auto = halt.get("auto_resume")
    if not auto or not halt.get("ranges"):
        return None
    ranges = {int(p): (int(r[0]), int(r[1])) for p, r in halt["ranges"].items()}
    attempt = int(auto["attempt"])
    instance = context.instance
    if attempt > int(auto["failed"]):  # a resume was requested: what became of it
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": resume_key(auto, attempt)}), limit=1)
        if not runs:  # not created yet: the same key again is launched at most once (Dagster's run-key dedupe)
            return _request(context, spec, halt, ranges, attempt)
        run = runs[0]
        if run.status == dg.DagsterRunStatus.SUCCESS:  # its version cleared the halt; if none did, it is done
            resolution = {"resolution": f"resumed automatically by run {run.run_id}", "run_id": run.run_id}
            reg.clear_halt(spec.name, resolution)
            return dg.SkipReason(f"{spec.name}: run {run.run_id[:8]} resumed the halted batch; planning goes on")
        if run.status != dg.DagsterRunStatus.FAILURE:  # canceled by someone: theirs to decide
            return _ordinary(reg, spec, halt, run.run_id, f"run {run.run_id[:8]} of an automatic resume was canceled")
        if lost_retry(instance, run) and ask_retry_again(instance, run):
            return dg.SkipReason(f"{spec.name}: resumed run {run.run_id[:8]} failed; asked the daemon to retry again")
        if run.tags.get("dagster/will_retry") == "true":
            return dg.SkipReason(f"{spec.name}: resumed run {run.run_id[:8]} failed; the daemon retries it")
        halt = _failed_again(instance, reg, spec, halt, ranges, run, attempt)
        if not halt.get("auto_resume"):
            return None
        auto = halt["auto_resume"]
    starts = {p: s for p, (s, e) in ranges.items() if e > s}
    if (head_name or "none") != auto["parent"] or any(expected.get(p, s) != s for p, s in starts.items()):
        why = "the head or the start moved since (a version, a skip or an offset reset): not resumed automatically"
        return _ordinary(reg, spec, halt, halt["run_id"], why)
    summary = f"HALTED by a failed run at run {halt['run_id'][:8]}: {halt['summary']}"
    if float(auto["not_before"]) > time.time():
        return dg.SkipReason(f"{summary}. {resuming_story(auto)}")
    try:
        probe_partitions(settings, spec.events_topic, expected)
    except (BrokerUnavailable, BrokerConfigError) as exc:
        return dg.SkipReason(f"{summary}. {resuming_story(auto)}; the broker does not answer yet: {exc}")
    attempt += 1
    requested = {**auto, "attempt": attempt}
    requested["status"] = f"resuming automatically after the broker answered; attempt {attempt} requested"
    reg.set_halt(spec.name, {**halt, "auto_resume": requested})
    context.log.warning(
        f"{spec.name}: resuming automatically after the broker answered; attempt {attempt}: the batch "
        f"{halt['ranges']} of run {halt['run_id'][:8]} ({auto['error']})"
    )
    return _request(context, spec, halt, ranges, attempt)


def _request(context, spec, halt: dict[str, Any], ranges: dict, attempt: int) -> dg.SensorResult:
    """The halted batch's exact ranges again, under the attempt's own run key."""
    from assets.training import batch_run_config, recorded_dlq_from
    from dagster_project import names
    from dagster_project.kafka.offsets import encode_ranges

    auto = halt["auto_resume"]
    failed = context.instance.get_run_by_id(halt["run_id"]) if halt.get("run_id") else None
    inherited = {k: v for k, v in (failed.tags if failed else {}).items() if k.startswith("streamfit/")}
    tags = {
        **inherited,
        names.STREAM_TAG: spec.name,
        names.RANGES_TAG: encode_ranges(ranges),
        names.PARENT_TAG: auto["parent"],
        names.RESUMES_TAG: halt["run_id"],
        "dagster/max_runtime_seconds": str(spec.batch.max_run_seconds),
    }
    # The failed run's DLQ offsets: the letters it sent come after them (none recorded: found by time).
    config = batch_run_config(spec, ranges, recorded_dlq_from(spec, failed))
    request = dg.RunRequest(run_key=resume_key(auto, attempt), run_config=config, tags=tags)
    return dg.SensorResult(run_requests=[request])


def _failed_again(instance, reg, spec, halt: dict, ranges: dict, run, attempt: int) -> dict[str, Any]:
    """Record that automatic resume `attempt` failed: backoff if transient again, else an ordinary halt."""
    from dagster_project.kafka.offsets import encode_ranges
    from sensors.kafka_sensor import retry_story

    auto = halt["auto_resume"]
    story = retry_story(instance, resume_key(auto, attempt))
    summary = f"the batch {encode_ranges(ranges)} failed in run {run.run_id[:8]} after its retries ({story})"
    error = transient_error(instance, run.run_id)
    if error is None:
        record = {k: v for k, v in halt.items() if k not in ("auto_resume", "at")}
        record |= {"summary": f"{summary}; automatic resume {attempt} failed on something not transient"}
        record |= {"run_id": run.run_id}
    else:
        resumed = {**auto, "error": error, "failed": attempt, "not_before": time.time() + resume_wait_s(attempt)}
        resumed["status"] = resuming_story(resumed)
        record = {**{k: v for k, v in halt.items() if k != "at"}, "run_id": run.run_id, "auto_resume": resumed}
        record["summary"] = summary
    reg.set_halt(spec.name, record)
    return record


def _ordinary(reg, spec, halt: dict[str, Any], run_id: str, why: str) -> None:
    """Turn the halt into an ordinary one (an operator decides; it pages) and say why; None: the caller reports it."""
    record = {k: v for k, v in halt.items() if k not in ("auto_resume", "at")}
    reg.set_halt(spec.name, {**record, "run_id": run_id, "summary": f"{halt['summary']}; {why}"})
    return None
