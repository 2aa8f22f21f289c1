"""The report asset and the scheduled full retrain, on real training runs."""

from __future__ import annotations

from dagster_project.kafka.io import probe_partitions
from tests.helpers import full_retrain_tick, produce_synthetic, run_batch


def test_report_and_scheduled_retrain(kafka_settings, spec, registry, stream_defs, instance):
    produce_synthetic(kafka_settings, spec, 900)
    states = probe_partitions(kafka_settings, spec.events_topic, {})
    for k in range(3):
        ranges = {s.partition: (s.high_water * k // 3, s.high_water * (k + 1) // 3) for s in states}
        assert run_batch(stream_defs, spec, ranges, instance).success

    request = full_retrain_tick(stream_defs, spec, instance, registry)
    retrain_job = stream_defs.resolve_job_def(f"{spec.name}_retrain")
    assert retrain_job.execute_in_process(run_config=request.run_config, instance=instance).success
    retrained = registry.head(spec.name)
    assert retrained.meta["retrain"]["reasons"][0].startswith("scheduled full retrain")
    assert retrained.learned == registry.get(spec.name, "v3").learned  # re-learning moves no offsets

    report = stream_defs.resolve_job_def(f"{spec.name}_report").execute_in_process(instance=instance)
    metadata = report.asset_materializations_for_node(f"{spec.name}__report")[0].metadata
    markdown = metadata["report"].value
    assert "| v3 |" in markdown and "| v4 |" in markdown and "retrain" in markdown
    assert metadata["versions"].value == 4 and metadata["retrains"].value == 1
    assert metadata["rows_learned"].value == 900


def test_the_report_of_a_halted_stream_says_so(spec, registry, stream_defs, instance):
    """A halted stream's report listed its versions as if it were learning: nothing said it had stopped."""
    report_job = stream_defs.resolve_job_def(f"{spec.name}_report")
    registry.set_halt(spec.name, {"kind": "failed_run", "summary": "the batch p0[0, 200) failed", "run_id": "abc"})
    for versions in (0, 1):
        report = report_job.execute_in_process(instance=instance)
        metadata = report.asset_materializations_for_node(f"{spec.name}__report")[-1].metadata
        assert "**HALTED** by a failed run: the batch p0[0, 200) failed" in metadata["report"].value
        assert metadata["versions"].value == versions and metadata["halted"].value == 1
        if not versions:
            meta = {"offsets": {"learned": {"0": 10}}, "rows_learned_total": 10, "rows": {"trained": 10}}
            registry.register(spec.name, None, b"onnx", {"fake": "estimator"}, meta)
    registry.clear_halt(spec.name, {"resolution": "fixed"})
    metadata = (
        report_job.execute_in_process(instance=instance)
        .asset_materializations_for_node(f"{spec.name}__report")[-1]
        .metadata
    )
    assert "HALTED" not in metadata["report"].value and metadata["halted"].value == 0
