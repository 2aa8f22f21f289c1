"""What the sections share during one run: the broker, a work directory and the mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import Mode
from dagster_project.kafka.settings import KafkaSettings


@dataclass
class BenchContext:
    mode: Mode
    bootstrap: str
    workdir: Path
    shared: dict[str, Any] = field(default_factory=dict)  # e.g. the training topic, for the cost section

    @property
    def settings(self) -> KafkaSettings:
        return KafkaSettings.from_env(self.bootstrap)
