"""`streamfit check [SPEC...] [--sample FILE]`: specs checked, and a sample learned, before deploying."""

from __future__ import annotations

from pathlib import Path

import click

SHOWN_REASONS = 10  # refusal reasons listed with an example; the rest are counted


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .jsonl file of events (one per line, as `streamfit produce --source` sends them) to learn "
    "through the training path, without a broker.",
)
@click.option("--stream", help="With --sample and several specs: the stream the sample belongs to.")
@click.option("--batch-rows", type=click.IntRange(min=1), help="Rows per batch (default: the spec's batch.rows).")
@click.option("--limit", type=click.IntRange(min=1), help="Read at most this many events of the sample.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --sample: also write the report as JSON (per batch and summary), e.g. for a CI step.",
)
@click.option(
    "--registry/--no-registry",
    "compare_registry",
    default=True,
    show_default=True,
    help="Compare each spec with what its stream's versions in the registry ($STREAMFIT_REGISTRY) learned: "
    "an edit that would halt training or make scorers refuse the champion fails the check.",
)
@click.option(
    "--reference",
    is_flag=True,
    help="Print every spec setting with its type and default (docs/spec-reference.md), check nothing.",
)
def check(
    paths: tuple[Path, ...],
    sample: Path | None,
    stream: str | None,
    batch_rows: int | None,
    limit: int | None,
    json_path: Path | None,
    compare_registry: bool,
    reference: bool,
):
    """Check stream specs (default: $STREAMFIT_STREAMS) one by one: schema, estimator parameters, the
    data-quality suite, the stream's Dagster definitions (built together, as the code location builds
    them), and what the stream's registry versions learned. With --sample, also learn
    the events as training runs would (parse, features, quality checks, test-then-train, ONNX export
    with parity) and report what was learned and refused. Exits 1 when anything would stop the stream."""
    if reference:
        from dagster_project.check.reference import spec_reference

        click.echo(spec_reference(), nl=False)
        return
    from dagster_project.check.specs import check_spec_files, spec_files
    from dagster_project.spec import specs_dir

    try:
        files = spec_files(list(paths) or [specs_dir()])
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"checking {len(files)} spec file(s) (importing scikit-learn, Great Expectations and Dagster) ...", err=True
    )
    reports = check_spec_files(files)
    orphans: list[str] = []
    unreadable = _compare_with_registry(reports, orphans if not paths else None) if compare_registry else None
    for report in reports:
        if report.ok:
            click.echo(f"ok    {report.path}: {report.summary()}")
        for note in report.notes:
            click.echo(f"note  {report.path}: {note}")
        for problem in report.problems:
            click.echo(f"FAIL  {report.path}: {problem}")
    for note in orphans:
        click.echo(f"note  registry: {note}")
    if unreadable:
        click.echo(f"FAIL  registry: {unreadable}")
    failed = sum(not r.ok for r in reports) + bool(unreadable)
    if json_path is not None and sample is None:
        raise click.ClickException("--json writes the report of a sample: add --sample events.jsonl")
    if sample is not None:
        failed += _backtest(reports, sample, stream, batch_rows, limit, json_path)
    if failed:
        raise SystemExit(1)


def _compare_with_registry(reports, orphans: list[str] | None = None) -> str | None:
    """Each loaded spec against its stream's versions; why the registry could not be read, else None
    (a comparison not made is said, never passed). With `orphans` (the whole specs directory was
    checked), also the registry's served streams that no spec names."""
    from dagster_project.check.registry import compare_with_registry, specless_streams
    from dagster_project.cli.common import registry
    from dagster_project.registry.store import RegistryError

    loaded = [r for r in reports if r.spec is not None]
    try:
        store = registry()
        for report in loaded:
            found = compare_with_registry(report.spec, store)
            report.problems.extend(found.problems)
            report.notes.extend(found.notes)
        if orphans is not None:
            stems = {r.path.stem for r in reports if r.spec is None}  # a broken file's FAIL says enough
            orphans.extend(specless_streams(store, {r.spec.name for r in loaded} | stems))
    except RegistryError as exc:
        fix = "Fix its settings, or check without it: --no-registry"
        return f"the specs were not compared with the registry: {exc}. {fix}"
    return None


def _backtest(
    reports, sample: Path, stream: str | None, batch_rows: int | None, limit: int | None, json_path: Path | None
) -> int:
    """Learn the sample with its stream's spec; 1 if the stream would not learn it, else 0."""
    from dagster_project.check.backtest import backtest, sample_messages

    loaded = [r for r in reports if r.spec is not None]
    chosen = [r for r in loaded if stream is None or r.spec.name == stream]
    if len(chosen) != 1:
        names = sorted(r.spec.name for r in loaded)
        hint = f"--stream {stream!r} is not one of {names}" if stream else f"name one with --stream (one of {names})"
        raise click.ClickException(f"--sample needs exactly one stream: {hint}")
    report = chosen[0]
    if not report.ok:
        raise click.ClickException(f"--sample: fix {report.path} first")
    spec = report.spec
    messages = sample_messages(sample, limit)
    rows = batch_rows or spec.batch.rows
    click.echo(f"learning {sample} ({len(messages):,} events) as stream {spec.name}, batches of {rows:,} ...", err=True)
    result = backtest(spec, messages, rows, report.path.parent, on_batch=lambda b: click.echo(_batch_line(b), err=True))
    for line in _summary(result):
        click.echo(line)
    for problem in result.problems:
        click.echo(f"FAIL  {problem}")
    if json_path is not None:
        import orjson

        json_path.write_bytes(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
        click.echo(f"report written to {json_path}", err=True)
    return int(bool(result.problems))


def _batch_line(batch) -> str:
    from dagster_project.kafka.offsets import ranges_text

    metrics = ", ".join(f"{k} {v:.4f}" for k, v in batch.metrics.items() if k != "rows")
    metrics = metrics or ("no model yet" if batch.learned else "nothing to learn")
    leader = f", leader {batch.leader}" if batch.leader else ""
    split = f", {batch.split_off} split off" if batch.split_off else ""
    tail = f" (+{batch.tail:,} held for the next)" if batch.tail else ""
    return (
        f"  batch {batch.number} {ranges_text(batch.ranges)}{tail}: {batch.learned:,} learned, {batch.refused:,} "
        f"refused{split}, quality {batch.quality}; before it: {metrics}{leader}"
    )


def _summary(result) -> list[str]:
    from dagster_project.registry.promotion import stream_metric

    spec = result.spec
    refused = result.refusals.total()
    lines = [
        f"sample: {result.messages:,} events on {len(result.partitions)} of {spec.partitions} partition(s), "
        f"{len(result.batches)} batch(es) of up to {result.batch_rows:,}; {result.learned:,} rows learned, "
        f"{refused + result.split_off:,} refused (to {spec.dlq_topic} in production), "
        f"{sum(b.unlabelled for b in result.batches):,} unlabelled, {len(result.blocked)} batch(es) blocked by quality"
    ]
    if result.split_off:
        lines.append(f"  split off by per-row quality rules: {result.split_off:,} rows")
    kinds = result.refusals.most_common()
    for kind, count in kinds[:SHOWN_REASONS]:
        position, reason = result.refusal_examples[kind]
        lines.append(f"  refused x{count:,}: {reason} (first: event {position:,})")
    if len(kinds) > SHOWN_REASONS:
        rest = sum(count for _, count in kinds[SHOWN_REASONS:])
        lines.append(f"  ... and {rest:,} more refused for {len(kinds) - SHOWN_REASONS:,} other reasons")
    means = result.mean_metrics()
    if means:
        baseline = result.mean_baseline()
        numbers = ", ".join(f"{k} {v:.4f}" for k, v in means.items())
        lines.append(f"prequential (each batch scored before it is learned): {numbers}")
        if baseline is not None:
            lines.append(f"  baseline, {result.baseline_name}: {baseline:.4f}")
    metric = stream_metric(spec)
    for family in spec.model.families if len(spec.model.families) > 1 else []:
        value = result.mean_metrics(family.label).get(metric)
        scored = "not scored (never fitted before a batch)" if value is None else f"{metric} {value:.4f}"
        lines.append(f"  family {family.label} ({family.estimator}): {scored}")
    leaders = [b.leader for b in result.batches if b.leader]
    if leaders:
        lines.append(f"  leader at the end: {leaders[-1]} (the family a version would serve)")
    if result.onnx:
        lines.append(
            f"ONNX: {result.onnx['onnx_bytes']:,} bytes, parity {'passed' if result.onnx['passed'] else 'FAILED'} "
            f"(max |onnx - sklearn| {result.onnx['max_abs_diff']:.2g} on {result.onnx['rows']:,} rows)"
        )
    lines.append(f"took {result.seconds:.1f} s; nothing was sent to a broker or registered")
    return lines
