"""Spec files checked one by one: every problem reported with its file and fix, good files still pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagster_project.check.specs import check_spec_files, spec_files

SHIPPED = Path(__file__).resolve().parents[3] / "streams"

GOOD = "name: {name}\ntask: classification\nfeatures:\n  - {{name: x}}\nlabel: {{classes: [0, 1]}}\n"


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


def test_every_shipped_spec_is_ready() -> None:
    reports = check_spec_files(spec_files([SHIPPED]))
    assert [r.spec.name for r in reports] == ["census", "phishing", "sensors", "synthetic"]
    assert all(r.ok for r in reports), [r.problems for r in reports]
    assert "stream sensors: classification, 1 features + 4 derived" in reports[2].summary()


def test_each_broken_file_names_itself_and_the_rest_still_pass(tmp_path: Path) -> None:
    _write(tmp_path, "a_good", GOOD.format(name="good"))
    _write(tmp_path, "b_schema", GOOD.format(name="schema").replace("{name: x}", "{name: x, type: flaot}"))
    _write(tmp_path, "c_params", GOOD.format(name="params") + "model: {estimator: sgd_classifier, params: {eta: 1}}\n")
    _write(tmp_path, "d_suite", GOOD.format(name="suite") + "quality: {suite_file: nowhere.json}\n")
    _write(tmp_path, "e_same", GOOD.format(name="good"))

    reports = {r.path.stem: r for r in check_spec_files(spec_files([tmp_path]))}

    assert "Input should be 'float', 'int', 'bool' or 'category'" in reports["b_schema"].problems[0]
    assert reports["b_schema"].spec is None
    (problem,) = reports["c_params"].problems
    assert "model.params.eta is not a parameter of 'sgd_classifier' (SGDClassifier): remove it" in problem
    assert reports["d_suite"].problems == [
        f"quality suite: quality.suite_file {tmp_path / 'nowhere.json'} does not exist"
    ]
    for clash in ("a_good", "e_same"):
        (problem,) = reports[clash].problems
        assert "stream name 'good' is used by" in problem and "give each stream its own name" in problem
    assert reports["c_params"].spec.name == "params"  # loaded: its other checks ran


def test_a_clean_directory_has_no_problems(tmp_path: Path) -> None:
    _write(tmp_path, "one", GOOD.format(name="one"))
    (report,) = check_spec_files(spec_files([tmp_path / "one.yaml"]))
    assert report.ok and report.summary().startswith("stream one: classification, 1 features")


def test_missing_paths_and_empty_directories_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no spec files"):
        spec_files([tmp_path])
    with pytest.raises(FileNotFoundError, match="no spec file or directory at"):
        spec_files([tmp_path / "nope.yaml"])
