# Quick start: `make demo` runs the whole loop on the embedded broker; `make test` runs the suite.
# Both create .venv on first use (pip shows its progress), so each works on a fresh clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

.PHONY: demo test test-tansu test-kafka test-kafka-beside lint
demo: $(VENV)/.installed
	$(VENV)/bin/streamfit demo --until-recovered

# The whole suite twice, both sessions at once: on the embedded Tansu broker, and on Apache Kafka 4.x
# (its jars are fetched with Maven into ~/.cache/streamfit on first use; Java 17+ and Maven must be
# installed). Alone, a session left about a third of the two cores idle (its tests wait on brokers,
# daemons and subprocesses), so the Kafka session runs beside the Tansu one as a second make job (not
# a shell `&`, whose job would ignore SIGINT, and so would every process a test starts and stops with
# it). `make test-tansu test-kafka` runs them one after the other.
test: lint $(VENV)/.installed
	@$(MAKE) --no-print-directory -j2 test-tansu test-kafka-beside

# The Kafka session of `make test`: its output goes to .test-kafka.log and is shown in one piece when
# it ends, so the two sessions' progress lines do not interleave (`tail -f .test-kafka.log` to watch).
test-kafka-beside: $(VENV)/.installed
	@echo "Apache Kafka session started beside the Tansu session; its output: .test-kafka.log, shown when it ends"
	@$(VENV)/bin/python -m pytest --broker kafka -n $(TEST_WORKERS) --durations=25 > .test-kafka.log 2>&1; \
	status=$$?; echo; echo "=== Apache Kafka session (.test-kafka.log), exit $$status ==="; cat .test-kafka.log; exit $$status

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
