"""`python -m benchmarks.registry_cost`: what registering a version costs on MLflow vs the filesystem.

Both registries get the same payload a training run hands over (the `synthetic` stream's SGD model
trained on a batch, its ONNX export, the full meta.json with the data profile), round after round,
alternating between the two backends so both see the same machine noise. Measured per version:

- `register`: `ModelRegistry.register` alone, the commit (filesystem: write three files and rename;
  MLflow: source run, logged ONNX model, staged model version, re-check, commit tag);
- `register_batch`: what the `model_version` asset pays before the Kafka commit (head lookup,
  pending reset, halt, champion check, the register above);
- reads a training run and a scorer make: `head` (list the versions), `champion` (the scorer's
  watch tick), `load_onnx` and `load_estimator` (download + sha256).

A local `mlflow server` (SQLite backend store, artifacts on local disk, proxied) is started unless
--mlflow-uri names one; the filesystem registry is on the same disk. Medians, p90 and min are
printed per operation with the MLflow/filesystem ratio, and how many MLflow calls one
registration makes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import machine_info, percentiles, progress


class CountingClient:
    """An MlflowClient that counts the calls made through it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attribute(*args, **kwargs)

        return call


def payload(rows: int) -> tuple[Any, Any, Any, bytes, dict[str, Any]]:
    """(spec, batch, trained model, onnx bytes, parity) as a training run has them for one batch."""
    from dagster_project.ingest.micro_batch import MicroBatch
    from dagster_project.learning.estimators import build_model, partial_fit
    from dagster_project.onnx.export import export_onnx
    from dagster_project.spec import StreamSpec

    spec = StreamSpec.model_validate(
        {
            "name": f"bench_{uuid.uuid4().hex[:8]}",
            "task": "classification",
            "partitions": 2,
            "features": [{"name": f"x{i}"} for i in range(5)],
            "label": {"classes": [0, 1]},
        }
    )
    rng = np.random.default_rng(7)
    X = rng.normal(size=(rows, 5))
    y = (X @ np.linspace(1.5, -1.0, 5) > 0).astype(np.float64)
    batch = MicroBatch(
        stream=spec.name,
        ranges={0: (0, rows // 2), 1: (0, rows - rows // 2)},
        X=X,
        y=y,
        ids=[f"e{i}" for i in range(rows)],
        partitions=np.array([0] * (rows // 2) + [1] * (rows - rows // 2), dtype=np.int32),
        offsets=np.concatenate([np.arange(rows // 2), np.arange(rows - rows // 2)]).astype(np.int64),
    )
    model = build_model(spec)
    partial_fit(model, X, y, np.arange(2))
    onnx_bytes = export_onnx(model, 5)
    parity = {"max_abs_diff": 2e-7, "label_mismatches": 0, "rows": rows, "passed": True, "export_seconds": 0.05}
    return spec, batch, model, onnx_bytes, parity


class Trained:
    """What register_batch reads from the training step's output."""

    def __init__(self, estimator: Any, parent: str | None, rows: int) -> None:
        self.estimator, self.parent, self.rows_trained, self.train_seconds = estimator, parent, rows, 0.1
        self.metrics = {"accuracy": 0.93, "roc_auc": 0.97, "rows": rows}


def shifted(batch: Any, n: int) -> Any:
    """The batch as the n-th one of the stream: its offsets follow the previous batch's."""
    from dataclasses import replace

    width = {p: end - start for p, (start, end) in batch.ranges.items()}
    return replace(batch, ranges={p: (n * w, (n + 1) * w) for p, w in width.items()})


def ms(values: list[float]) -> str:
    p = percentiles([v * 1000 for v in values], (50, 90))
    return f"{p['p50']:8.1f} {p['p90']:8.1f} {min(values) * 1000:8.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=20, help="versions registered on each backend")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch (the data profile's input)")
    parser.add_argument("--mlflow-uri", default=None, help="use this tracking server instead of starting one")
    args = parser.parse_args(argv)

    from dagster_project.dev.mlflow_server import MlflowServer
    from dagster_project.registry.mlflow_store import MlflowRegistry
    from dagster_project.registry.store import FilesystemRegistry
    from dagster_project.registry.versioning import register_batch

    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="streamfit-registry-bench-") as tmp:
        work = Path(tmp)
        server = None
        if args.mlflow_uri is None:
            progress("registry cost: starting a local mlflow server (SQLite, local artifacts)")
            server = MlflowServer(work / "mlflow").start()
        uri = args.mlflow_uri or server.uri
        try:
            spec, batch, model, onnx_bytes, parity = payload(args.rows)
            backends = {
                "filesystem": FilesystemRegistry(work / "registry"),
                "mlflow": MlflowRegistry(uri, root=work / "registry"),
            }
            counting = CountingClient(backends["mlflow"].client)
            backends["mlflow"].client = counting
            times: dict[tuple[str, str], list[float]] = {}

            def measure(backend: str, op: str, fn: Callable[[], Any]) -> Any:
                start = time.perf_counter()
                result = fn()
                times.setdefault((backend, op), []).append(time.perf_counter() - start)
                return result

            register_calls: list[int] = []
            # register_batch on one stream per backend (a real chain), register alone on another
            streams = {name: (spec.name, f"{spec.name}_r") for name in backends}
            progress(f"registry cost: {args.versions} versions per backend, alternating, {args.rows} rows per batch")
            for n in range(args.versions):
                for name, registry in backends.items():
                    chain, plain = streams[name]
                    head = registry.head(chain)
                    trained = Trained(model, head.name if head else None, args.rows)
                    measure(
                        name,
                        "register_batch",
                        partial(register_batch, registry, spec, shifted(batch, n), trained, onnx_bytes, parity, "b"),
                    )
                    parent = registry.head(plain)
                    meta = dict(registry.get(chain, registry.head(chain).name).meta)
                    meta.pop("mlflow", None)
                    meta["profile"] = registry.profile(chain, registry.head(chain).name)
                    before = sum(counting.calls.values())
                    parent_name = parent.name if parent else None
                    measure(name, "register", partial(registry.register, plain, parent_name, onnx_bytes, model, meta))
                    if name == "mlflow":
                        register_calls.append(sum(counting.calls.values()) - before)
                    measure(name, "head", partial(registry.head, chain))
                    measure(name, "champion", partial(registry.champion, chain))
                    version = registry.head(chain).name
                    measure(name, "load_onnx", partial(registry.load_onnx, chain, version))
                    measure(name, "load_estimator", partial(registry.load_estimator, chain, version))
        finally:
            if server is not None:
                server.stop()

    import mlflow

    print(f"Registry cost: MLflow {mlflow.__version__} vs the filesystem, {args.versions} versions each")
    print(
        f"machine: {machine['nproc']} CPUs, {machine.get('cpu', '?')}; MLflow at {'a local server' if server else uri}"
    )
    print(f"payload: model.onnx {len(onnx_bytes):,} B, {args.rows} rows profiled\n")
    print(f"{'operation':<16} {'filesystem ms (p50 p90 min)':>29}   {'MLflow ms (p50 p90 min)':>26}   MLflow/fs (p50)")
    for op in ("register", "register_batch", "head", "champion", "load_onnx", "load_estimator"):
        fs, ml = times[("filesystem", op)], times[("mlflow", op)]
        ratio = statistics.median(ml) / statistics.median(fs)
        print(f"{op:<16} {ms(fs):>29}   {ms(ml):>26}   {ratio:8.1f}x")
    print(
        f"\nMLflow calls per register: {min(register_calls)} ({max(register_calls)} for a stream's first version in "
        "a process, which also looks up or creates the experiment and the registered model)"
    )


if __name__ == "__main__":
    main()
