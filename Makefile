# Quick start: `make demo` runs the whole loop on the embedded broker; `make test` runs the suite.
# Both create .venv on first use (pip shows its progress), so each works on a fresh clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

.PHONY: demo test test-tansu test-kafka lint
demo: $(VENV)/.installed
	$(VENV)/bin/streamfit demo --until-recovered

# The whole suite twice: on the embedded Tansu broker, then on Apache Kafka 4.x (its jars are
# fetched with Maven into ~/.cache/streamfit on first use; Java 17+ and Maven must be installed).
test: lint test-tansu test-kafka

# `python -m pytest`, not the `pytest` script: the working directory is then on sys.path of every
# process, including the steps Dagster's multiprocess executor forks from its forkserver, which
# import jobs a test builds in `tests.helpers` (with the script they failed: No module named 'tests').
# Two pytest-xdist workers, one per core of the 2-core build machines: each starts its own broker
# (and MLflow server) for its share of the tests, and most tests wait on brokers, daemons and
# subprocesses rather than compute. `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2
test-tansu: $(VENV)/.installed
	$(VENV)/bin/python -m pytest --broker tansu -n $(TEST_WORKERS) --durations=25

test-kafka: $(VENV)/.installed
	$(VENV)/bin/python -m pytest --broker kafka -n $(TEST_WORKERS) --durations=25

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
