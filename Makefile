# Bouquet — the two commands a newcomer needs are `make demo` and `make test`;
# both do all set-up on a fresh machine (venv, Python deps, redis-server and Chromium
# via apt when missing and run as root).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
APT_PACKAGES_TEST := redis-server chromium
APT_PACKAGES_BENCH := wrk
# Test processes (pytest-xdist); each starts its own broker and Redis. Tests of one file
# stay in one process, where they share module fixtures.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

.PHONY: help setup system-deps demo demo-quick test test-unit bench soak lint format clean

help:
	@echo "make demo        full demo on the embedded local stack (serves until Ctrl-C)"
	@echo "make demo-quick  small demo that exits when done"
	@echo "make test        the whole test suite, 2 processes (starts and stops its own services)"
	@echo "make test-unit   tests that need no services"
	@echo "make bench       every benchmark; writes results/bench.json"
	@echo "make soak        5-minute soak + 200k-event SIGKILL replay; writes results/soak*.json"
	@echo "make lint        ruff check"
	@echo "make format      ruff's safe fixes (import order, ...)"
	@echo "make clean       stop the local stack, remove state and results"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The flat layout (bouquet/<part> are links to the top-level folders) is intended, so
# setuptools' warning about folders named like the package is silenced.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Debian packages the services and browser tests need; installed only when missing.
system-deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing — run: sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

setup: $(VENV)/.installed
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES_TEST)"

demo: setup
	$(BIN)/bouquet demo

demo-quick: setup
	$(BIN)/bouquet demo --quick

test: setup
	$(PYTEST)

test-unit: setup
	$(PYTEST) -m "not integration and not browser"

bench: setup
	@$(MAKE) --no-print-directory system-deps APT_PACKAGES="$(APT_PACKAGES_BENCH)"
	$(BIN)/bouquet bench all --json results/bench.json

# Reliability under time and crashes (docs/reliability.md): bounded, ~10 minutes.
soak: setup
	$(BIN)/bouquet bench soak --minutes 5 --json results/soak.json
	$(BIN)/bouquet bench kill-replay --events 200000 --kills 30 --json results/soak-kill-replay.json

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

# The code is formatted by hand within ruff's lint rules (aligned continuation lines);
# `ruff format` would rewrite most files, so this applies ruff's safe fixes only.
format: setup
	$(BIN)/ruff check --fix .

clean:
	-[ -x $(BIN)/bouquet ] && $(BIN)/bouquet stack down
	rm -rf .state results .pytest_cache .ruff_cache
