"""Serving: score `<stream>.events` with the registry's champion (ONNX) and answer HTTP requests.

- `champion`: `ChampionWatcher` follows the registry's `champion` alias and hot-swaps `ServedModel`s,
  falling back to the newest valid version when the champion cannot be served.
- `candidates`: the fallback order (champion history, then every version) and file fingerprints.
- `scorer`: `Scorer`, the Kafka loop (consumer group, commit after acks or in a transaction), and
  `ScoringService`, which runs it with the watcher and the HTTP API (`streamfit serve`).
- `scoring`: `BatchScorer`, one poll batch's parse, score (one onnxruntime call), dead letters and
  predictions, whichever client polled it.
- `consumers`: the scorer's group consumer behind one interface, on kafka-python or confluent-kafka.
- `health`: liveness and readiness (`ScorerHealth`), with the Kafka loop's link to its broker.
- `http`: `ScorerHTTPServer`, uvicorn in a thread serving the Starlette app of `api`:
  `POST /predict`, `GET /healthz`, `/livez`, `/readyz`, `/metrics`, and `kserve`'s Open Inference
  Protocol routes under `/v2`; `limits` (body size and deadline, rows, token) and `rows` (the
  `/predict` body contract) are what both share.
- `metrics`: `ScorerMetrics`, the Prometheus metrics on a registry per scorer.
"""

from dagster_project.serving.champion import ChampionWatcher, IncompatibleModel, ServedModel
from dagster_project.serving.health import KafkaLink, ScorerHealth
from dagster_project.serving.http import ScorerHTTPServer
from dagster_project.serving.limits import HttpLimits, RequestError
from dagster_project.serving.metrics import ScorerMetrics
from dagster_project.serving.rows import validate_rows
from dagster_project.serving.scorer import Scorer, ScoringService, build_service, scorer_group

__all__ = [
    "ChampionWatcher",
    "HttpLimits",
    "IncompatibleModel",
    "KafkaLink",
    "RequestError",
    "Scorer",
    "ScorerHTTPServer",
    "ScorerHealth",
    "ScorerMetrics",
    "ScoringService",
    "ServedModel",
    "build_service",
    "scorer_group",
    "validate_rows",
]
