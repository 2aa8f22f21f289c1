"""deploy/alerts.yml: every alert fires in its situation and not in the look-alike next to it.

Each alert's behaviour is given as `promtool test rules` cases (tests/deploy/alerts_test.yml),
run by Debian's promtool against the real rules file. The rules only query metric names the
code exports, each alert says what to do, and the compose stack's Prometheus loads them. A real
Prometheus evaluating them against a real exporter is in
tests/dagster_project/observability/test_exporter.py.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tests.deploy.test_compose import DEPLOY, argv, exported_metric_names, file_in_container, option, promtool, services

RULES = DEPLOY / "alerts.yml"
CASES = Path(__file__).with_name("alerts_test.yml")
OWN_METRICS = {"up"}  # Prometheus' per-target series


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def cases() -> dict[str, Any]:
    return yaml.safe_load(CASES.read_text())


def test_promtool_accepts_the_alert_rules():
    result = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_its_situation_and_not_in_the_look_alike(tmp_path):
    """promtool compares annotations verbatim, so the cases run against the rules without them:
    what is tested is when each alert fires and with which labels."""
    bare = yaml.safe_load(RULES.read_text())
    for group in bare["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(bare))
    spec = cases()
    spec["rule_files"] = ["rules.yml"]
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool(), "test", "rules", "cases.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_case_where_it_fires_and_says_what_to_do():
    fired = {
        test["alertname"]
        for group in cases()["tests"]
        for test in group.get("alert_rule_test", [])
        if test.get("exp_alerts")
    }
    for rule in rules():
        name = rule["alert"]
        assert name in fired, f"{name} has no promtool case in which it fires ({CASES.name})"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 80, name


def test_the_readme_counts_the_rules_alerts_yml_holds():
    """It said 19 after StreamfitNoScorer made 20."""
    readme = (DEPLOY.parent / "README.md").read_text()
    (count,) = re.findall(r"holds (\d+) rules", readme)
    assert int(count) == len(rules())
    assert "StreamfitNoScorer" in readme


def test_alert_rules_query_only_exported_metrics():
    exported = exported_metric_names()
    for rule in rules():
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # label values are not metric names
        selectors = set(re.findall(r"\b([A-Za-z_:][\w:]*)\s*\{", expr)) | set(re.findall(r"\bstreamfit_\w+", expr))
        unknown = selectors - exported - OWN_METRICS
        assert not unknown, f"{rule['alert']} queries {sorted(unknown)}, which no Streamfit code exports"


def test_the_compose_prometheus_loads_the_rules():
    prometheus = services()["prometheus"]
    config_file = option(argv(prometheus), "--config.file")
    assert config_file and file_in_container(prometheus, config_file) == DEPLOY / "prometheus.yml"
    for entry in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["rule_files"]:
        where = str(PurePosixPath(config_file).parent / entry)
        assert file_in_container(prometheus, where) == RULES, f"rule_files {entry}: nothing mounted at {where}"
