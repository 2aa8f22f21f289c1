# One image for the code server (and the run workers it spawns), the Dagster webserver and daemon,
# the scorers, the exporter and the producer. See docker-compose.yaml and deploy/README.md.
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    STREAMFIT_HOME=/data/streamfit \
    STREAMFIT_STREAMS=/app/streams

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dagster_project dagster_project
COPY assets assets
COPY sensors sensors
COPY monitors monitors
# fast: librdkafka for the hot Kafka paths; mlflow: the client for STREAMFIT_REGISTRY=mlflow.
# On Kubernetes with fanned-out steps build with `--build-arg EXTRAS=fast,mlflow,k8s` (dagster-k8s).
ARG EXTRAS=fast,mlflow
RUN pip install ".[${EXTRAS}]"

# Stream specs are read from STREAMFIT_STREAMS; the instance and workspace are the production ones
# (compose mounts the same files over these, so an edit needs no rebuild).
COPY streams streams
COPY deploy/workspace.yaml deploy/workspace.yaml
COPY deploy/k8s/executor.yaml deploy/k8s/executor.yaml
COPY deploy/dagster.yaml /opt/dagster/home/dagster.yaml

# Run as an unprivileged user; the shared volume's directories are created owned by it, so a new
# named volume mounted at /data inherits that ownership.
RUN useradd --create-home --uid 10001 streamfit \
    && mkdir -p /data/streamfit /data/dagster/storage /data/dagster/compute_logs \
    && chown -R streamfit:streamfit /data /opt/dagster/home
USER streamfit

EXPOSE 3000 4000 8080 9108
