"""deploy/k8s/: the fan-out job's Kubernetes settings, checked offline against dagster-k8s's own schemas.

There is no cluster here: these tests prove the files say only what dagster-k8s accepts, and that the
code server picks the executor they configure, not that pods start.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from dagster_project.factory import K8S_CONFIG_ENV, STEP_EXECUTOR_ENV, training_executor
from tests.conftest import synthetic_spec

dagster_k8s = pytest.importorskip("dagster_k8s")
K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _validate(schema, config: dict) -> dict:
    """Dagster's config validation of `config` against `schema`, through an op that declares it."""

    @dg.op(config_schema=schema)
    def holder() -> None: ...

    @dg.job
    def check() -> None:
        holder()

    return dg.validate_run_config(check, {"ops": {"holder": {"config": config}}})


def test_the_executor_file_is_valid_k8s_job_executor_config() -> None:
    config = yaml.safe_load((K8S / "executor.yaml").read_text())
    _validate(dagster_k8s.k8s_job_executor.config_schema, config)
    assert config["volume_mounts"][0]["mountPath"] == "/data"  # where dagster.yaml keeps step outputs
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        _validate(dagster_k8s.k8s_job_executor.config_schema, {**config, "max_concurent": 2})  # a typo is caught


def test_the_instance_runs_on_k8s_with_shared_step_storage() -> None:
    instance = yaml.safe_load((K8S / "dagster.yaml").read_text())
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    _validate(dagster_k8s.K8sRunLauncher.config_type(), launcher["config"])
    mounts = {m["mountPath"] for m in launcher["config"]["volume_mounts"]}
    assert instance["local_artifact_storage"]["config"]["base_dir"].startswith(tuple(mounts))


def test_the_instance_is_valid_and_a_lost_run_pod_is_failed_and_its_logs_kept(tmp_path: Path) -> None:
    """Without run monitoring a run pod killed mid-run (OOM, a drained node) stayed STARTED, holding
    its stream's only queue slot: training stopped. Compute logs went to the run pod's own disk."""
    from dagster._core.instance.config import dagster_instance_config

    (tmp_path / "dagster.yaml").write_text((K8S / "dagster.yaml").read_text())
    instance, _ = dagster_instance_config(str(tmp_path))  # Dagster's own schema: a misspelt key fails

    assert instance["run_monitoring"]["enabled"] and instance["run_retries"]["enabled"]
    mounts = {m["mountPath"] for m in instance["run_launcher"]["config"]["volume_mounts"]}
    assert instance["compute_logs"]["config"]["base_dir"].startswith(tuple(mounts))
    assert instance["run_launcher"]["config"]["dagster_home"] == "/opt/dagster/home"  # the image's DAGSTER_HOME
    dockerfile = (K8S.parents[1] / "Dockerfile").read_text()
    assert "DAGSTER_HOME=/opt/dagster/home" in dockerfile
    assert "COPY deploy/k8s/executor.yaml deploy/k8s/executor.yaml" in dockerfile  # the path the docs set


def test_fanned_out_jobs_use_the_k8s_executor_when_asked(monkeypatch) -> None:
    monkeypatch.setenv(STEP_EXECUTOR_ENV, "k8s")
    monkeypatch.setenv(K8S_CONFIG_ENV, str(K8S / "executor.yaml"))
    fanned = synthetic_spec(partitions=4, model={"scale_out": {"workers": 2}})

    assert training_executor(fanned).name == "fan_out_k8s_executor"
    assert training_executor(synthetic_spec()).name == "in_process"  # workers: 1 stays one in-process run

    monkeypatch.delenv(K8S_CONFIG_ENV)
    with pytest.raises(ValueError, match=K8S_CONFIG_ENV):
        training_executor(fanned)
