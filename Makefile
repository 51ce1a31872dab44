# Sluice — two commands on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit system-deps clean bench

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv --help >/dev/null 2>&1 && $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Start a single-node appliance on the embedded defaults.
run: $(STAMP)
	$(BIN)/sluice serve

# Debian packages the suite needs (installed only as root; skipped otherwise).
system-deps:
	@bash .ci/system-deps

lint: $(STAMP)
	$(BIN)/ruff check appliance ipc metrics loadtest tests
	$(BIN)/mypy

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python -m loadtest.logbench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
