"""A spec compared with what its registry versions learned: an edit that would halt the stream is found first."""

from __future__ import annotations

from pathlib import Path

from dagster_project.check.registry import compare_with_registry
from dagster_project.registry.contract import estimator_of, families_of
from dagster_project.registry.store import FilesystemRegistry
from dagster_project.spec import StreamSpec
from tests.conftest import synthetic_spec
from tests.dagster_project.serving.support import train_version


def _edited(spec: StreamSpec, **changes) -> StreamSpec:
    return StreamSpec.model_validate(spec.model_dump(mode="json") | changes)


def test_a_stream_without_versions_has_nothing_to_compare(tmp_path: Path) -> None:
    found = compare_with_registry(synthetic_spec("fresh"), FilesystemRegistry(tmp_path))
    assert (found.problems, found.notes) == ([], [])


def test_an_unchanged_spec_passes_and_an_edited_one_names_the_halt_and_the_fix(tmp_path: Path) -> None:
    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("edited")
    train_version(registry, spec)
    assert compare_with_registry(spec, registry).problems == []

    (problem,) = compare_with_registry(
        _edited(spec, features=list(reversed(spec.model_dump(mode="json")["features"]))), registry
    ).problems
    assert problem.startswith("training would halt and scorers would refuse it (the champion): SPEC CHANGED in edited")
    assert "since v1: input columns reordered ['x0', 'x1', 'x2', 'x3', 'x4'] -> ['x4', 'x3'," in problem
    assert "Restore the spec as v1 learned it" in problem


def test_a_champion_older_than_the_head_is_compared_too(tmp_path: Path) -> None:
    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("older")
    train_version(registry, spec)
    classes_swapped = _edited(spec, label={"classes": [1, 0]})
    train_version(registry, classes_swapped, champion=False)  # v2, the head, learned the swapped classes

    (problem,) = compare_with_registry(classes_swapped, registry).problems
    assert problem.startswith("scorers would refuse the champion v1: SPEC CHANGED in older since v1: classes reordered")


def test_a_changed_estimator_is_a_note_not_a_failure(tmp_path: Path) -> None:
    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("estimator")
    version = train_version(registry, spec)
    meta = version.meta | {"estimator": estimator_of(spec)}
    onnx, model = registry.load_onnx(spec.name, "v1"), registry.load_estimator(spec.name, "v1")
    registry.register(spec.name, "v1", onnx, model, meta)
    mlp = _edited(spec, model={"estimator": "mlp_classifier"})

    found = compare_with_registry(mlp, registry)

    assert found.problems == []
    assert found.notes == [
        f"the spec's model changed from {estimator_of(spec)} to mlp_classifier since v2: "
        "the next batch learns a fresh model, from v2's offsets on"
    ]


def test_a_champion_that_cannot_be_read_is_this_stream_s_note_not_an_unreadable_registry(tmp_path: Path) -> None:
    """A deleted champion version made the whole check fail as if the registry could not be read."""
    import shutil

    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("deleted")
    train_version(registry, spec)
    train_version(registry, spec, champion=False)
    registry.set_champion(spec.name, "v1", reason="test")
    shutil.rmtree(tmp_path / spec.name / "v1")

    found = compare_with_registry(spec, registry)

    assert found.problems == []
    assert found.notes[0].startswith("its champion cannot be read (") and "scorers serve a fallback" in found.notes[0]


def test_a_candidate_family_whose_parameters_changed_is_noted(tmp_path: Path) -> None:
    candidates = {"candidates": [{"estimator": "sgd_classifier", "name": "sgd"}, {"estimator": "gaussian_nb"}]}
    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("families", model=candidates)
    version = train_version(registry, synthetic_spec("families"))
    meta = version.meta | {"estimator": estimator_of(spec), "models": families_of(spec)}
    onnx, model = registry.load_onnx(spec.name, "v1"), registry.load_estimator(spec.name, "v1")
    registry.register(spec.name, "v1", onnx, model, meta)
    sgd = {"estimator": "sgd_classifier", "name": "sgd", "params": {"alpha": 0.01}}
    tuned = _edited(spec, model={"candidates": [sgd, {"estimator": "gaussian_nb"}]})

    assert compare_with_registry(spec, registry).notes == []
    (note,) = compare_with_registry(tuned, registry).notes
    assert note.startswith("""candidate family sgd changed since v2 (sgd's params {} -> {"alpha":0.01})""")
    assert note.endswith("the next batch learns a fresh sgd; the other families go on")


def test_a_stream_with_a_champion_but_no_spec_is_named_on_both_backends(tmp_path: Path, mlflow_server) -> None:
    """On MLflow the registry listed no streams, so the note never appeared (and retention never
    kept a spec-less halted stream's run); a shared server's other models are not streams."""
    from dagster_project.check.registry import specless_streams
    from dagster_project.registry.mlflow_store import MlflowRegistry

    other = f"not_ours_{tmp_path.name[-8:]}"
    for registry in (FilesystemRegistry(tmp_path / "fs"), MlflowRegistry(mlflow_server.uri, root=tmp_path / "ml")):
        spec = synthetic_spec()
        train_version(registry, spec)
        assert spec.name in registry.streams()
        (note,) = [n for n in specless_streams(registry, set()) if f"'{spec.name}'" in n]
        assert note.startswith(f"stream '{spec.name}' has a champion (v1) but no spec here")
        assert not [n for n in specless_streams(registry, {spec.name}) if f"'{spec.name}'" in n]
        if isinstance(registry, MlflowRegistry):
            registry.client.create_registered_model(other)  # another team's model on a shared server
            assert other not in registry.streams()


def test_a_champion_whose_model_file_is_gone_or_damaged_is_a_note_naming_the_repair(tmp_path: Path) -> None:
    """A champion whose model.onnx was deleted passed the check: running scorers serve it from memory, and
    the first scorer to start cannot load it."""
    from dagster_project.registry.store import ONNX_FILE

    registry, spec = FilesystemRegistry(tmp_path), synthetic_spec("unloadable")
    train_version(registry, spec)
    train_version(registry, spec, seed=1)  # v2, the champion
    path = tmp_path / spec.name / "v2" / ONNX_FILE
    good_bytes = path.read_bytes()
    path.unlink()

    found = compare_with_registry(spec, registry)

    assert found.problems == []
    (note,) = found.notes
    assert note.startswith("its champion v2 cannot be loaded (") and str(path) in note
    assert "running scorers serve it from memory, one started now serves an older version" in note
    assert f"`streamfit models rollback {spec.name}`" in note
    path.write_bytes(good_bytes[:-1] + bytes([good_bytes[-1] ^ 0xFF]))  # damaged in place
    assert "does not match its sha256" in compare_with_registry(spec, registry).notes[0]
    path.write_bytes(good_bytes)
    assert compare_with_registry(spec, registry).notes == []
