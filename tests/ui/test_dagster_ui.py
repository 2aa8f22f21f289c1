"""The Dagster UI in a real browser (Debian's headless Chromium + chromedriver, driven by Selenium).

With the whole loop running (embedded broker, dagster-daemon and dagster-webserver as separate
processes, a fresh stream whose Kafka sensor trains three batches), the test opens the UI and
checks what a user would look for: the sensors running, the stream's assets and their checks in the
asset graph and the asset pages, the plot of the prequential accuracy across materializations, and
the latest training run's logs. Screenshots go to the test's tmp dir (printed); set
STREAMFIT_UI_SCREENSHOTS=<dir> to also copy them there (each < 300 KB, else they are left out).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dagster_project.dev.services import DagsterServices
from dagster_project.instance import write_instance_config
from dagster_project.kafka.brokers.tansu import free_port
from dagster_project.kafka.settings import BOOTSTRAP_ENV
from tests.conftest import synthetic_spec
from tests.helpers import produce_synthetic
from tests.ui.browser import Browser, browser_requirements

BATCHES = 3
BATCH_ROWS = 300
MAX_SCREENSHOT_BYTES = 300 * 1024
SCREENSHOTS_ENV = "STREAMFIT_UI_SCREENSHOTS"

pytestmark = pytest.mark.timeout(420)


@pytest.fixture
def browser_factory(tmp_path: Path):
    browser_requirements()  # skip (or fail) before starting anything
    browsers: list[Browser] = []

    def make(base_url: str) -> Browser:
        browser = Browser(base_url, tmp_path / "chromium-profile", tmp_path / "screenshots")
        browsers.append(browser)
        return browser

    yield make
    for browser in browsers:
        browser.close()
        print(f"\nUI screenshots: {browser.screenshot_dir}")
        _copy_screenshots(browser.screenshots)


def _copy_screenshots(shots: list[Path]) -> None:
    target = os.environ.get(SCREENSHOTS_ENV)
    if not target:
        return
    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    for shot in shots:
        if shot.exists() and not shot.name.startswith("FAILED") and shot.stat().st_size < MAX_SCREENSHOT_BYTES:
            shutil.copy2(shot, directory / shot.name)
        elif shot.exists():
            print(f"not copied (over {MAX_SCREENSHOT_BYTES} bytes or a failure shot): {shot}")


def _latest_run(dagster_home: Path, job_name: str) -> dg.DagsterRun | None:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs(dg.RunsFilter(job_name=job_name), limit=1)
    return runs[0] if runs else None


@pytest.mark.one_broker
def test_dagster_ui_shows_assets_checks_sensors_metric_plot_and_run_logs(
    kafka_bootstrap, kafka_settings, registry, streamfit_home, tmp_path, browser_factory
):
    started = time.monotonic()
    spec = synthetic_spec(
        batch={"rows": BATCH_ROWS, "max_rows": BATCH_ROWS, "max_wait_s": 3600, "sensor_interval_s": 1}
    )
    name = spec.name
    streams = tmp_path / "streams"
    streams.mkdir()
    (streams / f"{name}.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    dagster_home = tmp_path / "dagster_home"
    write_instance_config(dagster_home)  # DagsterServices creates its storage before starting the processes
    env = os.environ | {
        BOOTSTRAP_ENV: kafka_bootstrap,
        "STREAMFIT_HOME": str(streamfit_home),
        "STREAMFIT_STREAMS": str(streams),
        "DAGSTER_HOME": str(dagster_home),
    }
    produce_synthetic(kafka_settings, spec, BATCHES * BATCH_ROWS)
    kafka_sensor, drift_sensor = f"{name}_kafka_sensor", f"{name}_drift_sensor"

    with DagsterServices(env, tmp_path / "logs", ui_port=free_port()) as services:
        ui = browser_factory(services.ui_url)  # starts while the webserver loads the code location
        assert services.wait_for_ui(120), (tmp_path / "logs" / "dagster-webserver.log").read_text()[-3000:]

        # Sensors: both listed on the Automation page with their switches on, and "Running" on their pages.
        ui.open("/automation")
        ui.wait_for_texts(
            "both sensors on the automation page", [kafka_sensor, drift_sensor, f"{name}_full_retrain"], 60
        )
        # Two sensors and three schedules (full retrain, report, run retention), all started RUNNING.
        ui.wait_for("sensor and schedule switches on", lambda _: ui.checked_switches() == 5, 15)
        ui.screenshot("01-automation-sensors-running")
        for sensor in (drift_sensor, kafka_sensor):
            ui.open(f"/locations/streamfit/sensors/{sensor}")
            ui.wait_for_texts(f"{sensor} running", [sensor, "Running", "Latest tick", f"{name}_"], 30)
        ui.wait_for_texts("the kafka sensor's tick that requested a run", ["1 run requested"], 90)
        ui.screenshot("02-kafka-sensor")

        # Let the daemon train: the Kafka sensor launches one run per batch, one at a time.
        deadline = time.monotonic() + 240
        while len(registry.versions(name)) < BATCHES:
            services.check_alive()
            assert time.monotonic() < deadline, (tmp_path / "logs" / "dagster-daemon.log").read_text()[-3000:]
            time.sleep(0.5)
        trained_at = time.monotonic()

        # The asset graph: the stream's five assets (their checks are on the asset pages below).
        ui.open("/asset-groups")
        assets = ["micro_batch", "model", "onnx_model", "model_version", "champion"]
        page = ui.wait_for(
            "the stream's assets in the asset graph",
            # The graph is six columns wide since the champion gate follows model_version: zoomed
            # to fit, its nodes no longer show their check counts; the checks are read below.
            lambda text: all(a in text for a in assets),
            60,
        )
        assert "Global asset lineage" in page
        ui.screenshot("03-asset-graph")

        # The checks by name, passed, on the asset pages.
        for asset, check, evidence in (
            ("micro_batch", "data_quality", "expectations passed"),
            ("onnx_model", "onnx_parity", "max_abs_diff"),
        ):
            ui.open(f"/assets/{name}/{asset}?view=checks")
            ui.wait_for_texts(f"{check} passed on {asset}", [check, "Passed", evidence], 30)
            ui.screenshot(f"04-checks-{asset}")

        # The prequential metric plotted across the model's materializations.
        ui.open(f"/assets/{name}/model")
        ui.wait_for_texts("the model's metadata table", ["Metadata", "accuracy", "Plots"], 30)
        ui.click_text("Plots")
        ui.wait_for_texts("the metadata plots", ["accuracy", "roc_auc", "log_loss"], 30)
        chart_after_heading = "//*[normalize-space(text())='accuracy']/following::canvas"
        ui.wait_for(
            "a chart under the accuracy heading", lambda _: bool(ui.driver.find_elements("xpath", chart_after_heading))
        )
        accuracy = [v.meta["metrics"]["accuracy"] for v in registry.versions(name)[1:]]
        assert len(accuracy) == BATCHES - 1  # points on the plot: every batch after the first one
        ui.screenshot("05-model-accuracy-plot")

        # The latest training run's logs.
        run = _latest_run(dagster_home, f"{name}_training")
        assert run is not None
        ui.open(f"/runs/{run.run_id}")
        ui.wait_for_texts(
            "the latest run's page with its logs",
            [run.run_id[:8], "Success", "Launched by", f"{name}_training", "ASSET_MATERIALIZATION", "RUN_SUCCESS"],
            60,
        )
        assert run.tags.get("dagster/sensor_name") == kafka_sensor
        ui.screenshot("06-latest-run-logs")

    print(
        f"\nUI test: {BATCHES} batches trained after {trained_at - started:.0f}s, "
        f"UI checks done after {time.monotonic() - started:.0f}s"
    )
