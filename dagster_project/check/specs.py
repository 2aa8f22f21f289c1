"""Every spec file checked on its own: one broken file is reported with its fix, the others still run.

The code location stops the stream of a file that does not load, or whose Dagster definitions do not
build or collide with another stream's; a training run finds a bad estimator parameter or a broken
suite file only once data arrives. This check finds all of them at once, before deploying.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dagster_project.spec import StreamSpec, load_spec, spec_paths, yaml_boolean_words


@dataclass
class SpecReport:
    """One spec file: its spec when it loaded, and every problem found (none: ready to deploy)."""

    path: Path
    spec: StreamSpec | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing before deploying, never a failure

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: the stream's task, inputs and model families."""
        if self.spec is None:
            return "not loaded"
        spec = self.spec
        families = ", ".join(
            f.estimator if f.label == f.estimator else f"{f.label} ({f.estimator})" for f in spec.model.families
        )
        derived = f" + {len(spec.derived)} derived" if spec.derived else ""
        return (
            f"stream {spec.name}: {spec.task}, {len(spec.features)} features{derived}, "
            f"{spec.partitions} partition(s), batches of {spec.batch.rows:,}, model {families}"
        )


def spec_files(paths: list[Path]) -> list[Path]:
    """The spec files named, or found in named directories (`*.yaml`, `*.yml`, not dotfiles), in name order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = spec_paths(path)
            if not found:
                raise FileNotFoundError(f"no spec files (*.yaml) in {path}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no spec file or directory at {path}")
    return files


def check_spec_file(path: Path) -> SpecReport:
    """Load one file and check what a training run would only find with data: the estimator
    parameters of every family and the stream's data-quality suite (its `suite_file` included)."""
    from dagster_project.learning.estimators import check_model_params
    from dagster_project.quality.suite import build_suite

    report = SpecReport(path)
    try:
        report.spec = load_spec(path)
    except ValueError as exc:
        report.problems.append(str(exc))
        return report
    report.notes.extend(report.spec.notes())
    if words := yaml_boolean_words(path.read_text()):
        report.notes.append(
            f"label.classes {report.spec.label.classes} are read as booleans true/false (YAML reads unquoted "
            f"{', '.join(words)} as booleans): events must carry JSON true/false labels; quote the classes "
            "('yes', 'no') if the events carry strings"
        )
    try:
        check_model_params(report.spec)
    except ValueError as exc:
        report.problems.append(str(exc))
    try:
        build_suite(report.spec, path.parent)
    except Exception as exc:  # any failure to build the suite stops every training run of the stream
        report.problems.append(f"quality suite: {exc}")
    return report


def check_spec_files(files: list[Path]) -> list[SpecReport]:
    """Each file checked, then stream names that clash across files (topics and registry entries would),
    then every loaded stream's Dagster definitions built together, as the code location builds them."""
    from dagster_project.check.definitions import unbuilt_streams

    reports = [check_spec_file(path) for path in files]
    names = Counter(r.spec.name for r in reports if r.spec is not None)
    for report in reports:
        if report.spec is not None and names[report.spec.name] > 1:
            others = [str(r.path) for r in reports if r.spec is not None and r.spec.name == report.spec.name]
            report.problems.append(
                f"stream name {report.spec.name!r} is used by {', '.join(others)}: give each stream its own name"
            )
    by_path = {r.path: r for r in reports}
    for broken in unbuilt_streams([(r.path, r.spec) for r in reports if r.spec is not None]):
        by_path[broken.path].problems.append(f"{broken.error}. {broken.fix}")
    return reports
