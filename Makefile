# Two commands on a fresh machine: `make demo` runs the bridge, `make test` runs the checks and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install test lint typecheck pytest demo bench resilience clean

help:
	@echo "make demo        run the whole bridge on embedded defaults (no configuration)"
	@echo "make test        ruff, mypy --strict, pytest (creates .venv if missing)"
	@echo "make bench       intake and fan-out benchmarks (bench/)"
	@echo "make resilience  the long resilience suite (tests marked slow)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check receiver workers tests bench
	$(BIN)/ruff format --check receiver workers tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test: lint typecheck pytest

demo: $(STAMP)
	$(BIN)/workfloo-bridge demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.fanout

resilience: $(STAMP)
	$(BIN)/pytest -m slow tests/resilience $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
