"""Entry points the cost section runs in fresh processes: `python -m benchmarks.child ...`.

`imports MODULE...`: import the modules, print the seconds it took and the peak RSS.
`train CONFIG_JSON`: one training step of the real path (read, parse, GX, test-then-train, ONNX
export + parity, registry write, offset commit) from a cold start, then print the peak RSS.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import time

import orjson

_BORN = time.perf_counter()


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM from /proc (Linux), else getrusage.

    getrusage's ru_maxrss is not used on Linux because it survives exec: a child forked from a big
    parent (this benchmark) reports at least the parent's RSS at fork time, whatever it used itself.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def imports(modules: list[str]) -> dict:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    started = time.perf_counter()
    for module in modules:
        importlib.import_module(module)
    return {"import_s": time.perf_counter() - started, "peak_rss_mib": _peak_rss_mib()}


def train(config: dict) -> dict:
    from pathlib import Path

    started = time.perf_counter()
    from benchmarks.throughput import streamfit_batch
    from dagster_project.kafka.settings import KafkaSettings
    from dagster_project.spec import StreamSpec

    import_s = time.perf_counter() - started
    spec = StreamSpec.model_validate(config["spec"])
    ranges = {int(p): (int(s), int(e)) for p, (s, e) in config["ranges"].items()}
    settings = KafkaSettings.from_env(config["bootstrap"])
    io_dir = Path(config["io_dir"])
    io_dir.mkdir(parents=True, exist_ok=True)
    batch_started = time.perf_counter()
    stages, version = streamfit_batch(settings, spec, ranges, Path(config["registry"]), io_dir)
    return {
        "rows": int(version.meta["rows"]["trained"]),
        "import_s": import_s,
        "batch_s": time.perf_counter() - batch_started,
        "process_s": time.perf_counter() - _BORN,
        "stages_s": stages,
        "peak_rss_mib": _peak_rss_mib(),
    }


def main(argv: list[str]) -> None:
    command, *rest = argv
    if command == "imports":
        out = imports(rest)
    elif command == "train":
        out = train(orjson.loads(rest[0]))
    else:
        raise SystemExit(f"unknown command {command!r}")
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
