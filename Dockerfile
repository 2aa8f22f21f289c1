# One image for the code location, daemon, webserver, producer and scorers.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dagster_project dagster_project
COPY assets assets
COPY sensors sensors
COPY monitors monitors
COPY streams streams
COPY workspace.yaml ./
RUN pip install --no-cache-dir .
ENV STREAMFIT_HOME=/data/streamfit DAGSTER_HOME=/data/dagster
