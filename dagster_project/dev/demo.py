"""`streamfit demo`: the whole mission on one machine, watched live, in about three minutes.

Starts the embedded broker (unless STREAMFIT_KAFKA_BOOTSTRAP points elsewhere), a Dagster home
with one code server, the daemon and the web UI, ONE scorer replica (`streamfit serve`: /predict
and the predictions topic), the label joiner fed with delayed labels (live accuracy), and replays
the synthetic stream past its concept change. Each event is printed as one plain line as it
happens (versions, promotions, drift actions, what the scorer serves), then a summary. It stops
after `--versions N`, when the mission is done (`--until-recovered`), or on Ctrl-C / SIGTERM;
everything it started is stopped on the way out.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import click
import orjson
import yaml

from dagster_project.dev.services import DagsterServices
from dagster_project.instance import write_instance_config
from dagster_project.kafka.brokers.tansu import EmbeddedBroker, free_port
from dagster_project.kafka.settings import BOOTSTRAP_ENV, KafkaSettings
from dagster_project.registry.backends import registry_from_env
from dagster_project.registry.promotion import HIGHER_IS_BETTER
from dagster_project.registry.store import ModelRegistry
from dagster_project.spec import get_spec

CHANGE_AT = 10_000  # where dev/datasets.synthetic_events flips its concept
# Chosen from measurement on 2 shared cores (other suites running, load 10-17): a training run
# took 20-40 s from the sensor's tick to the version, so batches grow to max_rows while the replay
# runs ahead; 150 events/s passes the change at row 10,000 about 80 s in, and batches of up to
# 5,000 rows let training reach it (and the retrain follow) within the next ~2 minutes.
DEMO_BATCH = {"rows": 1000, "max_rows": 5000, "max_wait_s": 5, "sensor_interval_s": 5}
DEMO_DRIFT = {"interval_s": 5, "cooldown_s": 120}
LABEL_DELAY_S = 2.0  # labels arrive this long after their events (the joiner waits for them)


SUMMARY_TIMEOUT_S = 20.0  # the summary reads the broker and the registry; a stop must not wait on them for longer
STOP_TIMEOUT_S = 15.0  # children get this long after SIGTERM, all at once, before SIGKILL


class StopSignal:
    """SIGINT and SIGTERM (Ctrl-C, a supervisor, `timeout`) both take one path that stops everything started.

    While starting up, a signal raises KeyboardInterrupt so a start-up wait ends at once. While watching, it only
    sets a flag the loop checks between its calls: an exception raised inside a broker or HTTP client call can
    leave that client's lock held, and the summary that follows would then wait on it forever.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.deferred = False

    def __call__(self, *_: object) -> None:
        self.requested.set()
        if not self.deferred:
            raise KeyboardInterrupt

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _say(started: float, text: str) -> None:
    click.echo(f"[{time.monotonic() - started:5.1f}s] {text}")


def demo_spec_dir(stream: str, home: Path, batch_rows: int | None, max_rows: int | None) -> Path:
    """The stream's spec with the demo's batching and drift cadence, in `home/streams`."""
    spec = get_spec(stream)
    raw = spec.model_dump(mode="json")
    raw["batch"] |= DEMO_BATCH | ({"rows": batch_rows} if batch_rows else {})
    raw["batch"]["max_rows"] = max(max_rows or DEMO_BATCH["max_rows"], raw["batch"]["rows"])
    raw["drift"] |= DEMO_DRIFT
    directory = home / "streams"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stream}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return directory


class Replay(threading.Thread):
    """Produce the synthetic events at `rate`, and each label `LABEL_DELAY_S` later; stops cleanly."""

    def __init__(self, settings: KafkaSettings, spec, rate: float, rows: int, change_at: int = CHANGE_AT) -> None:
        super().__init__(daemon=True, name="demo-replay")
        self.settings, self.spec, self.rate, self.rows, self.change_at = settings, spec, rate, rows, change_at
        self.stop_event = threading.Event()
        self.sent = 0
        self.labels = 0
        self.failure: BaseException | None = None
        self.done = False

    def run(self) -> None:
        from dagster_project.dev.datasets import synthetic_events
        from dagster_project.ingest.events import make_event
        from dagster_project.kafka import clients
        from dagster_project.kafka.io import check_reachable, ensure_topics
        from dagster_project.labels import make_label

        spec = self.spec
        producer = None
        try:
            check_reachable(self.settings)
            topics = [spec.events_topic, spec.labels_topic, spec.dlq_topic, spec.predictions_topic]
            ensure_topics(self.settings, topics, spec.partitions)
            producer = clients.producer(self.settings)
            waiting: collections.deque = collections.deque()
            started = time.monotonic()
            for event in synthetic_events(rows=self.rows, change_at=self.change_at):
                if self.stop_event.is_set():
                    return
                now = time.time()
                value = make_event(event.event_id, event.features, event.label, now)
                producer.send(spec.events_topic, key=event.event_id.encode(), value=value)
                waiting.append((time.monotonic() + LABEL_DELAY_S, event.event_id, event.label))
                self.sent += 1
                self._send_due_labels(producer, waiting, make_label)
                ahead = self.sent / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self.stop_event.wait(ahead)
            while waiting and not self.stop_event.is_set():
                self._send_due_labels(producer, waiting, make_label)
                self.stop_event.wait(0.05)
            producer.flush(timeout=10)
            self.done = True
        except BaseException as exc:  # reported by the demo's loop
            self.failure = exc
        finally:
            if producer is not None:
                try:
                    producer.close(timeout=2)  # before the broker stops: no atexit flush that times out
                except Exception:  # noqa: BLE001 - a broker already gone: nothing left to send
                    pass

    def _send_due_labels(self, producer, waiting, make_label) -> None:
        now = time.monotonic()
        while waiting and waiting[0][0] <= now:
            _, event_id, label = waiting.popleft()
            producer.send(self.spec.labels_topic, key=event_id.encode(), value=make_label(event_id, label))
            self.labels += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


class Child:
    """A `streamfit ...` child process with its own log file, in its own session."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        exe = Path(sys.executable).with_name("streamfit")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "dagster_project.cli"]
        self.log = open(log_dir / f"{name}.log", "ab")
        self.process = subprocess.Popen(
            [*command, *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def check(self) -> None:
        if self.process.poll() is not None:
            raise click.ClickException(f"{self.name} exited with code {self.process.returncode}; see its log")


def stop_all(children: list[Child], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every child at once, then SIGKILL whichever is still running after `timeout_s` (one deadline)."""
    for child in children:
        if child.process.poll() is None:
            os.killpg(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.process.pid, signal.SIGKILL)
            child.process.wait()
        child.log.close()


def bounded(call, timeout_s: float, what: str) -> str:
    """`call()`'s text, or a line saying it failed or did not answer within `timeout_s` (a stop must not hang on
    it). A call past its bound is left on a daemon thread: the demo exits right after the summary, which ends it."""
    result: list[str] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:  # noqa: BLE001 - reported in the summary instead of lost on a thread
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True, name="demo-summary")
    worker.start()
    worker.join(timeout_s)
    if result:
        return result[0]
    if failure:
        return f"({what} failed: {failure[0]!r}; skipped)"
    return f"({what} did not answer within {timeout_s:.0f} s; skipped)"


def _get_json(url: str, timeout: float = 1.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return orjson.loads(response.read())
    except Exception:  # noqa: BLE001 - not up yet, or 503 before a model is loaded
        return None


class Watcher:
    """Turns the registry's durable state and the scorer's health into one line per event."""

    def __init__(
        self, registry: ModelRegistry, spec, scorer_url: str, started: float, change_at: int = CHANGE_AT
    ) -> None:
        self.registry, self.spec, self.scorer_url, self.started = registry, spec, scorer_url, started
        self.change_at = change_at
        self.versions_seen = 0
        self.decisions_seen = 0
        self.served: str | None = None
        self.promoted_at: dict[str, float] = {}
        self.live_printed = 0.0
        self.live_rows = 0
        self.timings: dict[str, float] = {}
        self.drift_actions = 0

    def say(self, text: str) -> None:
        _say(self.started, text)

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def poll(self) -> None:
        name = self.spec.name
        versions = self.registry.versions(name)
        for version in versions[self.versions_seen :]:
            self.say(_version_line(version))
            start_row = sum(s for s, _ in version.meta["offsets"]["batch"].values())
            end_row = sum(e for _, e in version.meta["offsets"]["batch"].values())
            if not version.meta.get("retrain") and start_row <= self.change_at < end_row:
                self.timings.setdefault("concept_change_s", self._elapsed())
            if version.meta.get("retrain"):  # the daily full retrain may fire mid-demo: not the drift's answer
                key = "scheduled_retrain_s" if _scheduled(version.meta) else "first_retrain_s"
                self.timings.setdefault(key, self._elapsed())
        self.versions_seen = len(versions)
        decisions = self.registry.decisions(name)
        for decision in decisions[self.decisions_seen :]:
            line = self._decision_line(decision)
            if line:
                self.say(line)
        self.decisions_seen = len(decisions)
        self._scorer()
        self._live()

    def _decision_line(self, d: dict) -> str | None:
        kind = d.get("kind")
        if kind == "promotion_gate":
            metric, rows = d["metric"], d["rows"]
            if d.get("candidate_value") is None or d.get("champion_value") is None:
                return f"{d['candidate']} not gated: {d['reason']}"
            values = f"{d['candidate_value']:.3f} vs {d['champion']} {d['champion_value']:.3f}"
            numbers = f"{metric} {values} on {rows} unseen rows"
            test = d.get("test") or {}
            higher = HIGHER_IS_BETTER.get(metric, True)
            shortfall = (d["champion_value"] - d["candidate_value"]) * (1 if higher else -1)
            # the test asks "is the champion better?": it only decides when the candidate is behind by > margin
            if shortfall > d.get("margin", 0.0) and test.get("p_value") is not None:
                numbers += f", behind by {shortfall:.3f} > margin ({test['test']} p={test['p_value']:.3g})"
            if d["promote"]:
                self.promoted_at[d["candidate"]] = time.monotonic()
                return f"{d['candidate']} promoted: {numbers}"
            return f"{d['candidate']} kept as candidate: {numbers}"
        if kind == "drift_action":
            self.drift_actions += 1
            self.timings.setdefault("drift_action_s", self._elapsed())
            if d["action"] == "rollback":
                return f"rollback {d['from_version']} -> {d['to_version']}: {'; '.join(d['reasons'])[:200]}"
            return self._retrain_line(d)
        if kind == "quality":
            return f"data quality {d['action']}: {d['ranges']}: {d['summary']}"
        return None

    def _retrain_line(self, d: dict) -> str:
        detector = "a change"
        for reason in d.get("reasons", []):
            if reason.startswith("concept drift: "):
                metric, _, rest = reason.removeprefix("concept drift: ").partition(": ")
                detector = f"{rest.split('(')[0].upper()} on the {metric.replace('_', ' ')}"
                break
            if reason.startswith("data drift in"):
                detector = "data drift (PSI/KS)"
        since, window = d.get("since"), d.get("window") or {}
        start = sum(s for s, _ in window.values()) if window else None
        since_row = ""
        if since:
            try:
                batch = self.registry.get(self.spec.name, since).meta["offsets"]["batch"]
                since_row = f"row {sum(s for s, _ in batch.values()):,}"
            except Exception:  # noqa: BLE001 - only wording
                since_row = since
        where = since_row or (f"row {start:,}" if start is not None else "the recent window")
        located = self._located_row(d["to_version"])
        if located is not None:  # the retrain learned only the rows after the change it found inside the batch
            where = f"row {located:,} (the change located inside the batch from {where})"
        at = f"~{self.change_at:,}" if self.timings.get("concept_change_s") else "?"
        return f"drift at row {at}: {detector} -> retrain from {where} ({d['to_version']})"

    def _located_row(self, version: str) -> int | None:
        """Where the retrained `version` started learning when its retrain located the change (`retrain.change_at`)."""
        try:
            change_at = (self.registry.get(self.spec.name, version).meta.get("retrain") or {}).get("change_at")
        except Exception:  # noqa: BLE001 - only wording
            return None
        return sum(int(start) for start in change_at.values()) if change_at else None

    def _scorer(self) -> None:
        health = _get_json(f"{self.scorer_url}/healthz")
        version = (health or {}).get("model_version")
        if version and version != self.served:
            promoted = self.promoted_at.get(version)
            after = f" ({time.monotonic() - promoted:.1f} s after promotion)" if promoted else ""
            self.say(f"scorer now serves {version}{after}")
            self.served = version

    def _live(self) -> None:
        if time.monotonic() - self.live_printed < 20:
            return
        from dagster_project.labels import live_summary

        summary = live_summary(self.registry.root, self.spec.name)
        quality = summary.quality()
        total = sum(q["rows"] for q in quality.values())
        if not total or total == self.live_rows:
            return
        self.live_rows = total
        correct = sum(q["rows"] * (q["accuracy"] or 0) for q in quality.values())
        per = ", ".join(
            f"{v} {q['accuracy']:.3f}" for v, q in quality.items() if q["rows"] and q["accuracy"] is not None
        )
        self.say(f"live accuracy {correct / total:.3f} over {total:,} labelled predictions ({per})")
        self.live_printed = time.monotonic()


def _version_line(version) -> str:
    meta = version.meta
    metrics = meta.get("metrics", {})
    if meta.get("retrain"):
        window = meta["offsets"]["batch"]
        rows = meta["rows"]["trained"]
        why = "on schedule, " if _scheduled(meta) else ""
        return f"{version.name} retrained ({why}{meta['retrain']['mode']}) on {rows:,} rows: {_rows_text(window)}"
    learned = sum(e for e in version.learned.values())
    head = f"accuracy {metrics['accuracy']:.3f}" if "accuracy" in metrics else "first batch (no prior model)"
    served = meta.get("served")
    beside = ""
    if served and served["version"] != (meta.get("lineage") or {}).get("from", meta.get("parent")):
        accuracy = served["metrics"].get("accuracy")
        beside = f", served {served['version']} {accuracy:.3f}" if accuracy is not None else ""
    return (
        f"{version.name} learned {meta['rows']['trained']:,} rows (to row {learned:,}, {meta['rows'].get('tail', 0)} "
        f"held out): {head}{beside}"
    )


def _scheduled(meta: dict) -> bool:
    """A retrain the daily schedule started (its reason says so), not one a drift action asked for."""
    return any(str(r).startswith("scheduled") for r in (meta.get("retrain") or {}).get("reasons") or [])


def _rows_text(window: dict) -> str:
    return ", ".join(f"p{p}[{s:,}, {e:,})" for p, (s, e) in sorted(window.items()))


def _caught_up(registry: ModelRegistry, stream: str, produced: int) -> bool:
    head = registry.head(stream)
    if head is None:
        return False
    return sum(head.learned.values()) + 2 * head.meta["rows"].get("tail", 0) >= produced


def run_demo(
    versions: int | None,
    stream: str,
    rate: float,
    rows: int,
    ui_port: int | None,
    timeout_s: float,
    until_recovered: bool = False,
    batch_rows: int | None = None,
    max_rows: int | None = None,
    change_at: int = CHANGE_AT,
) -> int:
    # SIGTERM (a supervisor, `timeout`) takes the Ctrl-C path, so everything started is stopped:
    # the children run in their own sessions and would otherwise outlive the demo.
    stop = StopSignal()
    stop.install()
    started = time.monotonic()
    with ExitStack() as stack:
        home = Path(os.environ.get("STREAMFIT_HOME") or stack.enter_context(tempfile.TemporaryDirectory()))
        home = home.resolve()
        dagster_home = home / "dagster"
        write_instance_config(dagster_home)
        bootstrap = os.environ.get(BOOTSTRAP_ENV)
        if not bootstrap:
            broker = stack.enter_context(EmbeddedBroker(log_path=home / "broker.log"))
            bootstrap = broker.bootstrap
            _say(started, f"embedded Kafka broker on {bootstrap}")
        streams = demo_spec_dir(stream, home, batch_rows, max_rows)
        env = os.environ | {
            BOOTSTRAP_ENV: bootstrap,
            "STREAMFIT_HOME": str(home),
            "DAGSTER_HOME": str(dagster_home),
            "STREAMFIT_STREAMS": str(streams),
            "PYTHONWARNINGS": "ignore::DeprecationWarning",
        }
        os.environ.update(env)
        spec = get_spec(stream, streams)
        registry = registry_from_env(home / "registry")
        log_dir = home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        services = stack.enter_context(DagsterServices(env, log_dir, ui_port=ui_port or free_port()))
        _say(started, f"STREAMFIT_HOME={home}  (logs in {log_dir})")
        scorer_port = free_port()
        children = [
            Child("scorer", ["serve", stream, "--port", str(scorer_port)], env, log_dir),
            Child("labels", ["labels", "join", stream, "--flush-interval", "2"], env, log_dir),
        ]
        stack.callback(stop_all, children)
        scorer_url = f"http://127.0.0.1:{scorer_port}"
        if services.wait_for_ui():
            _say(started, f"Dagster UI: {services.ui_url}  (assets, checks, sensors and runs of '{stream}')")
        replay = Replay(KafkaSettings.from_env(bootstrap), spec, rate, rows, change_at)
        replay.start()
        stack.callback(replay.stop)  # runs before the broker stops (LIFO)
        stop.deferred = True  # from here on the loop below sees a signal and stops with a summary
        _say(
            started,
            f"replaying {rows:,} synthetic events into {spec.events_topic} at {rate:g}/s (concept change at row "
            f"{change_at:,}), labels {LABEL_DELAY_S:g} s later; scorer on {scorer_url}; Ctrl-C stops",
        )
        watcher = Watcher(registry, spec, scorer_url, started, change_at)
        stopped_by = "done"
        try:
            while not stop.requested.is_set():
                if replay.failure:
                    raise click.ClickException(f"producer failed: {replay.failure!r}")
                services.check_alive()
                for child in children:
                    child.check()
                watcher.poll()
                found = registry.versions(stream)
                if versions and len(found) >= versions:
                    break
                if until_recovered and replay.done and _caught_up(registry, stream, replay.sent):
                    if watcher.drift_actions or rows <= change_at:
                        break
                if time.monotonic() - started > timeout_s:
                    stopped_by = "timeout"
                    _say(started, f"stopping: {timeout_s:.0f} s timeout ({len(found)} versions); see {log_dir}")
                    break
                stop.requested.wait(0.5)
        except KeyboardInterrupt:  # a signal that arrived before the loop deferred them
            stop.requested.set()
        stop.deferred = False  # a second Ctrl-C while stopping cuts the summary short; the stack still stops all
        if stop.requested.is_set():
            stopped_by = "interrupted"
            click.echo("stopping...")

        def final_summary() -> str:
            try:
                watcher.poll()
            except Exception:  # noqa: BLE001 - the summary below still reads what is durable
                pass
            return _summary(registry, spec, scorer_url, services.ui_url, bootstrap, replay, watcher, started)

        click.echo(bounded(final_summary, SUMMARY_TIMEOUT_S, "the summary (broker, registry, scorer)"))
        if stopped_by == "timeout" and versions:
            raise click.ClickException(f"only {len(registry.versions(stream))} of {versions} versions")
        return len(registry.versions(stream))


def _summary(registry, spec, scorer_url, ui_url, bootstrap, replay, watcher, started) -> str:
    from dagster_project.kafka.io import probe_partitions
    from dagster_project.labels import live_summary

    name = spec.name
    found = registry.versions(name)
    lines = [
        f"summary after {time.monotonic() - started:.0f} s: {len(found)} versions, champion {registry.champion(name)}, "
        f"{replay.sent:,} events replayed"
    ]
    timings = watcher.timings
    shown = [f"{k.removesuffix('_s').replace('_', ' ')} at {v:.0f} s" for k, v in timings.items()]
    if shown:
        lines.append("  timings: " + ", ".join(shown))
    history = registry.champion_history(name)
    lines.append(f"  champion changes ({len(history)}):")
    for change in history:
        lines.append(f"    {change['previous'] or '-':>4} -> {change['version']:<4} {change['reason']}")
    head = found[-1] if found else None
    if head is not None:
        metrics = head.meta.get("metrics", {})
        served = head.meta.get("served") or {}
        head_acc = metrics.get("accuracy")
        served_acc = (served.get("metrics") or {}).get("accuracy")
        if head_acc is not None:
            text = f"  prequential accuracy of the last batch: head {head_acc:.3f}"
            if served_acc is not None:
                text += f", served ({served['version']}) {served_acc:.3f}"
            lines.append(text)
    try:
        settings = KafkaSettings.from_env(bootstrap)
        predictions = sum(s.high_water for s in probe_partitions(settings, spec.predictions_topic, {}))
        dlq = sum(s.high_water for s in probe_partitions(settings, spec.dlq_topic, {}))
    except Exception:  # noqa: BLE001 - the broker may be gone after a failure
        predictions = dlq = None
    live = live_summary(registry.root, name).quality()
    total = sum(q["rows"] for q in live.values())
    correct = sum(q["rows"] * (q["accuracy"] or 0) for q in live.values())
    accuracy = f", live accuracy {correct / total:.3f} over {total:,} labelled" if total else ""
    lines.append(f"  predictions served: {predictions if predictions is not None else '?'}{accuracy}")
    for version, quality in live.items():
        if quality["rows"] and quality["accuracy"] is not None:
            lines.append(f"    {version:>5}  {quality['rows']:>7,} labelled  accuracy {quality['accuracy']:.3f}")
    lines.append(f"  dead letters: {dlq if dlq is not None else '?'}")
    lines.append(f"  scorer: {scorer_url}/predict   Dagster UI: {ui_url}")
    return "\n".join(lines)
