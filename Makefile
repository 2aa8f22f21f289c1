# Quick start: `make demo` runs the whole loop on the embedded broker; `make test` runs the suite.
# Both create .venv on first use (pip shows its progress), so each works on a fresh clone.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	touch $@

.PHONY: demo test lint
demo: $(VENV)/.installed
	$(VENV)/bin/streamfit demo --versions 5

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
