# Two commands on a fresh machine: `make demo` runs the bridge, `make test` runs the checks and tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SANDBOX_STAMP := $(VENV)/.installed-sandbox

.PHONY: help install lock check-latest test lint typecheck pytest demo bench resilience console-screenshots clean

help:
	@echo "make demo        run the whole bridge on embedded defaults (no configuration)"
	@echo "make test        ruff, mypy --strict, pytest (creates .venv if missing)"
	@echo "make bench       intake and fan-out benchmarks (bench/)"
	@echo "make resilience  the long resilience suite (tests marked slow)"
	@echo "make console-screenshots  refresh docs/images/console-*.png (end-to-end stack, Chromium)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The locked environments (requirements/*.lock, hashes checked), then the project itself without resolving
# again. The demo needs only the runtime and the sandbox extra; the checks need the dev extra too.
$(SANDBOX_STAMP): pyproject.toml consumer/pyproject.toml requirements/sandbox.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/sandbox.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ./consumer -e .
	@touch $(SANDBOX_STAMP)

$(STAMP): pyproject.toml consumer/pyproject.toml requirements/dev.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ./consumer -e .
	@touch $(STAMP) $(SANDBOX_STAMP)

install: $(STAMP)

# Re-resolve the locks from pyproject.toml (uv is in the dev lock): run after changing a dependency.
# runtime: the image; sandbox: runtime + sandbox extra (make demo); dev: everything (make test);
# build: the build backend, so the image builds the wheel without fetching an unpinned setuptools.
# The consumer package (consumer/, a path in [tool.uv.sources]) is installed from the tree, not the locks.
LOCK := $(BIN)/uv pip compile --python-version 3.11 --generate-hashes --quiet --no-emit-package workfloo-bridge-consumer
lock: $(STAMP)
	$(LOCK) pyproject.toml -o requirements/runtime.lock
	$(LOCK) pyproject.toml --extra sandbox -o requirements/sandbox.lock
	$(LOCK) pyproject.toml --extra dev -o requirements/dev.lock
	$(LOCK) requirements/build.in -o requirements/build.lock

# The suite against the newest releases pyproject.toml allows, in a venv of its own: an incompatible
# release shows up here, not in production.
check-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip
	.venv-latest/bin/python -m pip install --quiet --upgrade -e ./consumer -e '.[dev]'
	$(MAKE) lint typecheck pytest BIN=.venv-latest/bin STAMP=.venv-latest/bin/python

lint: $(STAMP)
	$(BIN)/ruff check receiver workers tests bench consumer
	$(BIN)/ruff format --check receiver workers tests bench consumer
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test: lint typecheck pytest

demo: $(SANDBOX_STAMP)
	$(BIN)/workfloo-bridge demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.fanout

resilience: $(STAMP)
	$(BIN)/pytest -m slow tests/resilience $(PYTEST_ARGS)

# The console's pages over the end-to-end stack in Chromium, saved by the browser test, copied to the docs.
console-screenshots: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider tests/ops/console/test_console.py -k screenshots
	mkdir -p docs/images
	cp artifacts/browser/console-overview.png artifacts/browser/console-application.png \
		artifacts/browser/console-dead-letters.png docs/images/

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
