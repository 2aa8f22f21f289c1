"""README.md's checkable claims stay true: the commands and flags it shows, the repository paths,
tests and modules it cites, the metric names and labels, the environment variables and the alert names.

Static and cheap (no broker, no Dagster instance): each claim is compared with the code it names.
Found when first written: `dagster_project/quality.py` (a package, `quality/`, for a long time).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import click
import pytest
import yaml

from tests.deploy.test_compose import SAMPLE_SUFFIXES, SOURCE_PACKAGES, declared_metric_families

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Where a variable may be read: the code, the test harness (pytest options) and the build.
ENV_SOURCES = (*SOURCE_PACKAGES, "benchmarks", "tests/conftest.py", "Makefile", "docker-compose.yaml")


@cache
def readme() -> str:
    return README.read_text()


def commands() -> dict[tuple[str, ...], click.Command]:
    from dagster_project.cli import main

    def walk(command: click.Command, path: tuple[str, ...]):
        yield path, command
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))

    return dict(walk(main, ()))


def options(command: click.Command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


def invocations() -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]], list[str]]]:
    """Each `streamfit <command> [<subcommand>] ... --flag ...` in the README, up to the end of its code
    span or line: (the text, the command path, the alternatives of its last word, the flags)."""
    tree = commands()
    found = []
    for match in re.finditer(r"streamfit ([a-z][a-z-]*(?: [a-z][a-z|-]*)?)([^`\n]*)", readme()):
        words = match.group(1).split()
        path: tuple[str, ...] = ()
        for word in words:
            if (*path, word.split("|")[0]) not in tree:
                break
            path = (*path, word.split("|")[0])
        if not path:
            continue  # `streamfit <stream>`-like prose, not a command
        last = words[len(path) - 1]
        alternatives = [(*path[:-1], word) for word in last.split("|")]
        rest = " ".join(words[len(path) :]) + match.group(2)
        flags = re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", rest)
        found.append((match.group(0), path, alternatives, flags))
    return found


def test_every_command_the_readme_shows_exists() -> None:
    tree = commands()
    shown = invocations()
    assert len(shown) > 50  # the parse still finds the commands
    missing = {alt for _, _, alternatives, _ in shown for alt in alternatives if alt not in tree}
    # a command word the CLI does not know (`streamfit modelz list`), in code: the parse above skips it
    code = re.findall(r"`([^`]*)`", readme()) + re.findall(r"```bash\n(.*?)```", readme(), re.DOTALL)
    words = {word for span in code for word in re.findall(r"(?:^|[\s/])streamfit ([a-z][\w-]*)", span)}
    missing |= {(word,) for word in words if (word,) not in tree}
    assert not missing, f"README shows commands the CLI lacks: {sorted(missing)}"


def test_every_flag_the_readme_gives_a_command_exists() -> None:
    tree = commands()
    missing = []
    for text, _path, alternatives, flags in invocations():
        accepted = set().union(*(options(tree[alt]) for alt in alternatives if alt in tree))
        missing += [f"{flag} in {text!r}" for flag in flags if flag not in accepted]
    assert not missing, "README gives flags the command lacks:\n" + "\n".join(missing)


def test_the_serve_and_demo_flags_the_prose_names_exist() -> None:
    """Flags named on their own in the Serving section and Quick start, away from a `streamfit serve` line."""
    tree = commands()
    for command, section_start, section_end in (
        (("serve",), "## Serving", "## Delayed labels"),
        (("demo",), "## Quick start", "## How it works"),
    ):
        section = readme()[readme().index(section_start) : readme().index(section_end)]
        spans = re.findall(r"`([^`]*)`", section)
        named = {flag for span in spans for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span)}
        named -= {"--workers"}  # uvicorn's, which the Serving section compares with
        assert len(named) > 3, section_start
        assert named <= options(tree[command]), f"{command}: {sorted(named - options(tree[command]))}"


def cited_paths() -> set[str]:
    """Backquoted repository paths: `dagster_project/...`, `tests/...`, `serving/scoring.py` (a package of
    dagster_project), `deploy/k8s/`; not Dagster tags (`streamfit/stream`) or registry keys (`state/halt`)."""
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    packages |= {p.name for p in (ROOT / "dagster_project").iterdir() if p.is_dir()}
    paths = set()
    for token in re.findall(r"`([A-Za-z0-9_.\-/]+/[A-Za-z0-9_.\-/]*)(?:::\w+)?`", readme()):
        if token.split("/")[0] in packages:
            paths.add(token)
    return paths


def test_every_repository_path_the_readme_cites_exists() -> None:
    paths = cited_paths()
    assert len(paths) > 40
    missing = sorted(p for p in paths if not (ROOT / p).exists() and not (ROOT / "dagster_project" / p).exists())
    assert not missing, f"README cites paths that do not exist: {missing}"


def test_every_test_the_readme_names_exists() -> None:
    """`tests/x.py::test_y`, and `::test_z` after it (the same file)."""
    missing, current, named = [], None, 0
    for path, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", readme()):
        current = path or current
        if name and current:
            named += 1
            if not re.search(rf"^\s*(async )?def {name}\(", (ROOT / current).read_text(), re.MULTILINE):
                missing.append(f"{current}::{name}")
    assert named > 30
    assert not missing, f"README names tests that do not exist: {missing}"


def test_every_module_the_readme_runs_exists() -> None:
    """`python -m benchmarks.retrain_memory` and the like."""
    modules = set(re.findall(r"python -m ([a-z_][\w.]*)", readme()))
    assert "benchmarks" in modules
    missing = [
        module
        for module in sorted(modules)
        if module not in {"pytest", "pip", "venv"}
        and not (ROOT / f"{module.replace('.', '/')}.py").exists()
        and not (ROOT / module.replace(".", "/") / "__main__.py").exists()
    ]
    assert not missing, f"README runs modules that do not exist: {missing}"


@cache
def metric_labels() -> dict[str, set[str]]:
    """Each streamfit_* family declared in the code with the label names of its declarations."""
    labels: dict[str, set[str]] = {}
    declaration = re.compile(r"""\b(?:Counter|Gauge|Summary|Histogram)(?:MetricFamily)?\(\s*["'](streamfit_\w+)["']""")
    for package in SOURCE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            for match in declaration.finditer(text):
                depth, end = 1, match.end()
                while depth and end < len(text):  # to the declaration's closing parenthesis
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    end += 1
                call = text[match.end() : end]
                names = labels.setdefault(match.group(1), set())
                for listed in re.findall(r"\[([^\]]*)\]", call):
                    names |= set(re.findall(r"""["'](\w+)["']""", listed))
    return labels


def family_of(sample: str) -> str | None:
    kinds = declared_metric_families()
    for name, kind in kinds.items():
        if any(sample == name + suffix for suffix in SAMPLE_SUFFIXES[kind]):
            return name
    return sample if sample in kinds else None


def test_every_metric_the_readme_names_is_exported_with_its_labels() -> None:
    named = re.findall(r"\b(streamfit_[a-z0-9_]*[a-z0-9])(\{[^}]*\})?", readme())
    assert len({n for n, _ in named}) > 30
    unknown, wrong_labels = set(), []
    for sample, label_text in named:
        family = family_of(sample)
        if family is None:
            unknown.add(sample)
            continue
        shown = set(re.findall(r"(\w+)\s*(?:=|,|$)", label_text.strip("{}")))
        if not shown <= metric_labels()[family]:
            wrong_labels.append(f"{sample}{label_text}: labels {sorted(metric_labels()[family])}")
    assert not unknown, f"README names metrics no code exports: {sorted(unknown)}"
    assert not wrong_labels, "README gives metrics labels they lack:\n" + "\n".join(wrong_labels)


def test_every_environment_variable_the_readme_names_is_read() -> None:
    """`STREAMFIT_KAFKA_SSL_CAFILE|CERTFILE|KEYFILE` is three."""
    source = "\n".join(
        path.read_text()
        for entry in ENV_SOURCES
        for path in ((ROOT / entry).rglob("*.py") if (ROOT / entry).is_dir() else [ROOT / entry])
    )
    named = set()
    for written in re.findall(r"\bSTREAMFIT_[A-Z0-9_]+(?:\|[A-Z0-9_]+)*", readme()):
        first, *others = written.split("|")
        named.add(first)
        named |= {first.rsplit("_", 1)[0] + "_" + other for other in others}
    named = {name for name in named if not name.endswith("_")}  # `STREAMFIT_KAFKA_*` as a family
    assert len(named) > 20
    unread = sorted(name for name in named if name not in source)
    assert not unread, f"README names environment variables nothing reads: {unread}"


def test_every_alert_the_readme_names_is_a_rule() -> None:
    rules = {
        rule["alert"]
        for group in yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    named = set(re.findall(r"\bStreamfit[A-Z][A-Za-z]+\b", readme()))
    assert len(named) > 5
    assert named <= rules, f"README names alerts deploy/alerts.yml lacks: {sorted(named - rules)}"


@pytest.mark.parametrize(
    ("model", "field", "value", "written"),
    [
        ("PromotionSpec", "margin", 0.01, "the default 0.01 is 1 %"),
        ("PromotionSpec", "significance", 0.05, "`promotion.significance` (default 0.05)"),
        ("PromotionSpec", "min_rows", 50, "`promotion.min_rows`\n  (50)"),
        ("LabelsSpec", "join_window_s", 3600.0, "`labels.join_window_s` (default 3,600 s)"),
        ("DriftSpec", "retrain_window_rows", 5000, "`drift.retrain_window_rows` rows learned (5,000)"),
        ("DriftSpec", "full_retrain_cron", "0 3 * * *", "(`drift.full_retrain_cron`, daily at\n  03:00)"),
        ("DriftSpec", "report_cron", "0 * * * *", "(`drift.report_cron`, hourly)"),
        ("ModelSpec", "clip_sigmas", 10.0, "`model.clip_sigmas` (default 10)"),
        ("EventTimeSpec", "max_ahead", 300.0, "`event_time.max_ahead` (default `5m`"),
        ("BatchSpec", "step_retries", 3, "(3 retries"),
    ],
)
def test_defaults_the_readme_states_are_the_spec_s(model: str, field: str, value: object, written: str) -> None:
    from dagster_project import spec

    assert written in readme(), f"README no longer says {written!r}: update this case"
    default = getattr(spec, model).model_fields[field].default
    assert default == value, f"{model}.{field} defaults to {default!r}; README says {written!r}"
