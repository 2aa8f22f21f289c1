"""`streamfit check`: one line per spec file, the sample's report, and exit 1 when a stream would stop."""

from __future__ import annotations

from pathlib import Path

import orjson

from dagster_project.dev.datasets import census_events
from dagster_project.ingest.events import make_event
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import load_spec
from tests.dagster_project.serving.support import train_version
from tests.helpers import break_drift_sensor_of, share_drift_sensor_of

SHIPPED = Path(__file__).resolve().parents[3] / "streams"


def test_check_reports_each_spec_and_fails_on_any_problem(cli, tmp_path: Path) -> None:
    good = "name: {}\ntask: classification\nfeatures:\n  - {{name: x}}\nlabel: {{classes: [0, 1]}}\n"
    (tmp_path / "good.yaml").write_text(good.format("good"))
    (tmp_path / "typo.yaml").write_text(good.format("typo") + "model: {params: {eta0: -1}}\n")

    result = cli("check", tmp_path)

    assert result.exit_code == 1
    assert f"ok    {tmp_path / 'good.yaml'}: stream good: classification, 1 features" in result.stdout
    assert f"FAIL  {tmp_path / 'typo.yaml'}: model.params of 'adaptive_sgd_classifier'" in result.stdout
    assert "must be a float in the range (0.0, inf). Got -1.0 instead." in result.stdout


def test_check_notes_classes_yaml_read_as_booleans(cli, tmp_path: Path) -> None:
    """`classes: [yes, no]` loads as [True, False]: check says so before events labelled "yes" are dead-lettered."""
    spec = "name: orders\ntask: classification\nfeatures: [{name: x}]\nlabel: {classes: [yes, no]}\n"
    (tmp_path / "orders.yaml").write_text(spec)

    result = cli("check", tmp_path, "--no-registry")

    assert result.exit_code == 0
    assert f"note  {tmp_path / 'orders.yaml'}: label.classes [True, False] are read as booleans true/false " in (
        result.stdout
    )
    assert "(YAML reads unquoted yes, no as booleans): events must carry JSON true/false labels" in result.stdout
    assert "quote the classes ('yes', 'no') if the events carry strings" in result.stdout
    (tmp_path / "orders.yaml").write_text(spec.replace("[yes, no]", "[false, true]"))  # JSON booleans: as meant
    assert "\nnote  " not in cli("check", tmp_path, "--no-registry").stdout


def test_check_learns_a_sample_and_reports_what_it_learned_and_refused(cli, tmp_path: Path) -> None:
    lines = [make_event(e.event_id, e.features, e.label, e.ts) for e in census_events(rows=2_500)]
    lines[10] = b"{cut short"
    sample = tmp_path / "census.jsonl"
    sample.write_bytes(b"\n".join(lines) + b"\n")

    report = tmp_path / "report.json"
    result = cli("check", SHIPPED / "census.yaml", "--sample", sample, "--batch-rows", 1_000, "--json", report)

    assert result.exit_code == 0, result.output
    assert "sample: 2,500 events on 2 of 2 partition(s)" in result.stdout
    assert "batch(es) of up to 1,000; 2,499 rows learned, 1 refused (to census.dlq" in result.stdout
    assert "refused x1: not valid JSON" in result.stdout and "(first: event 10)" in result.stdout
    assert "prequential (each batch scored before it is learned): accuracy 0." in result.stdout
    assert "ONNX: " in result.stdout and "parity passed" in result.stdout
    assert "  batch 1 p0[0, " in result.stderr and "(+200 held for the next): " in result.stderr
    assert "refused, quality train; before it: accuracy" in result.stderr
    written = orjson.loads(report.read_bytes())  # the same numbers, for a CI step to compare
    assert (written["messages"], written["learned"], written["refused"]) == (2_500, 2_499, {"not valid JSON": 1})
    assert written["refusal_examples"]["not valid JSON"]["position"] == 10 and written["problems"] == []
    assert f"accuracy {written['prequential']['accuracy']:.4f}" in result.stdout
    assert sum(b["learned"] for b in written["batches"]) == 2_499 and written["onnx"]["passed"]
    assert written["batches"][0]["ranges"]["0"][0] == 0 and written["partitions"].keys() == {"0", "1"}


def test_json_needs_a_sample(cli, tmp_path: Path) -> None:
    result = cli("check", SHIPPED / "census.yaml", "--json", tmp_path / "r.json")
    assert result.exit_code == 1 and "--json writes the report of a sample: add --sample" in result.output


def test_check_with_a_sample_needs_one_stream(cli, tmp_path: Path) -> None:
    sample = tmp_path / "s.jsonl"
    sample.write_bytes(b"{}\n")
    result = cli("check", SHIPPED, "--sample", sample)
    assert result.exit_code == 1
    assert "--sample needs exactly one stream: name one with --stream (one of ['census', 'phishing'" in result.output
    result = cli("check", SHIPPED, "--sample", sample, "--stream", "census")
    assert result.exit_code == 1  # chosen, learned, and every message refused
    assert "FAIL  every message was refused, e.g. message 0:" in result.stdout


def test_check_passes_a_directory_with_an_editor_s_lock_file(cli, tmp_path: Path) -> None:
    """Emacs's `.#good.yaml` lock (a dangling symlink) was checked as a spec and FAILed the directory."""
    (tmp_path / "good.yaml").write_text(
        "name: good\ntask: classification\nfeatures: [{name: x}]\nlabel: {classes: [0, 1]}\n"
    )
    (tmp_path / ".#good.yaml").symlink_to("op@host.4242:1765000000")

    result = cli("check", tmp_path, "--no-registry")

    assert result.exit_code == 0, result.output
    assert f"ok    {tmp_path / 'good.yaml'}" in result.stdout and ".#good.yaml" not in result.output


def test_check_of_a_missing_path_is_one_line(cli, tmp_path: Path) -> None:
    result = cli("check", tmp_path / "nope.yaml")
    assert result.exit_code == 1 and f"Error: no spec file or directory at {tmp_path / 'nope.yaml'}" in result.output


def test_check_fails_a_spec_edited_since_its_versions_and_can_skip_the_registry(
    cli, tmp_path: Path, registry: FilesystemRegistry
) -> None:
    features = "".join(f"  - {{name: x{i}}}\n" for i in range(5))
    spec_file = tmp_path / "edited.yaml"
    spec_file.write_text(f"name: edited\ntask: classification\nfeatures:\n{features}label: {{classes: [0, 1]}}\n")
    train_version(registry, load_spec(spec_file))
    assert cli("check", spec_file).exit_code == 0

    spec_file.write_text(spec_file.read_text().replace("[0, 1]", "[1, 0]"))
    result = cli("check", spec_file)

    assert result.exit_code == 1
    assert f"FAIL  {spec_file}: training would halt and scorers would refuse it (the champion): SPEC CHANGED" in (
        result.stdout
    )
    assert "classes reordered [0, 1] -> [1, 0]" in result.stdout
    assert cli("check", spec_file, "--no-registry").exit_code == 0


def test_check_says_when_the_registry_could_not_be_read(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STREAMFIT_REGISTRY", "mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("STREAMFIT_MLFLOW_URI", raising=False)

    result = cli("check", SHIPPED / "census.yaml")

    assert result.exit_code == 1
    assert "FAIL  registry: the specs were not compared with the registry: STREAMFIT_REGISTRY=mlflow needs" in (
        result.stdout
    )
    assert "check without it: --no-registry" in result.stdout
    assert "ok    " in result.stdout  # the spec's own checks are still reported


def test_check_of_the_specs_directory_names_a_served_stream_whose_spec_is_gone(
    cli, specs_dir: Path, registry: FilesystemRegistry, spec
) -> None:
    """A probe deleted a served stream's spec: `check` printed `ok` for the other files and nothing
    else, while nothing trained the stream and a restarted scorer refused to start."""
    features = "".join(f"  - {{name: x{i}}}\n" for i in range(5))
    spec_file = specs_dir / "orders.yaml"
    spec_file.write_text(f"name: orders\ntask: classification\nfeatures:\n{features}label: {{classes: [0, 1]}}\n")
    train_version(registry, load_spec(spec_file))
    assert "no spec here" not in cli("check").stdout

    spec_file.unlink()
    result = cli("check")

    assert result.exit_code == 0, "retiring a stream is legitimate: said, not failed"
    assert "note  registry: stream 'orders' has a champion (v1) but no spec here: nothing trains it" in result.stdout
    named = cli("check", specs_dir / f"{spec.name}.yaml")  # files named: what else is deployed is not known
    assert named.exit_code == 0 and "no spec here" not in named.stdout


def test_check_fails_a_stream_whose_dagster_definitions_do_not_build(cli, monkeypatch) -> None:
    """census loaded but its definitions raised: `check` said ok, and the code location stopped the
    stream (its `invalid_spec_census_yaml` sensor skipping with the error) once deployed."""
    monkeypatch.setenv("STREAMFIT_STREAMS", str(SHIPPED))
    break_drift_sensor_of(monkeypatch, "census")

    result = cli("check", "--no-registry")

    assert result.exit_code == 1
    assert (
        f"FAIL  {SHIPPED / 'census.yaml'}: stream 'census''s Dagster definitions do not build: RuntimeError: "
        "census's drift sensor does not build. Change the setting the error names (or undo the file's last "
        "change) until `streamfit check` passes it"
    ) in result.stdout
    assert "then reload the code location" in result.stdout
    assert f"ok    {SHIPPED / 'census.yaml'}" not in result.stdout
    assert all(f"ok    {SHIPPED / f'{s}.yaml'}: stream {s}:" in result.stdout for s in ("phishing", "synthetic"))


def test_check_fails_both_streams_whose_dagster_definitions_collide(cli, monkeypatch) -> None:
    """Two streams defining one Dagster name: each loads and builds alone, so `check` said ok; the
    code location stops both (which one to train is not a guess)."""
    share_drift_sensor_of(monkeypatch, "census", "phishing")

    result = cli("check", SHIPPED, "--no-registry")

    assert result.exit_code == 1
    for stream, other in (("census", "phishing"), ("phishing", "census")):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"FAIL  {SHIPPED / f'{stream}.yaml'}: "))
        assert (
            f"stream {stream!r}'s Dagster definitions collide with stream {other!r} ({SHIPPED / f'{other}.yaml'})"
            in line
        )
        assert "shared_drift_sensor" in line and line.endswith(
            "Rename one of these streams (its `name:`) and reload the code location"
        )
    assert f"ok    {SHIPPED / 'synthetic.yaml'}" in result.stdout


def test_check_passes_the_shipped_specs_definitions_included(cli) -> None:
    result = cli("check", SHIPPED, "--no-registry")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ok    ") == 4 and "FAIL" not in result.stdout
