# imgnb's build and test entry points. `make demo` and `make test` are all a newcomer needs:
# both build the virtualenv on first use; `make test` also installs the system packages the
# PostgreSQL and browser tests need (Debian: chromium, postgresql; needs root or sudo).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The machine has a CPU wheel of this torch on disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH_VERSION := 2.13.0
# Written once the venv holds everything; pyproject.toml newer than it means "install again".
VENV_STAMP := $(VENV)/.imgnb-installed

# Paths ruff looks at; ones that do not exist yet (git keeps no empty dirs) are left out.
LINT_PATHS := $(wildcard imgnb tests benchmarks)

PYTEST_FLAGS := -p no:cacheprovider -q -ra --strict-markers --durations=10
# Long soaks (marked `slow`) stay out of `make test` (kept under 15 minutes on 2 cores); `make bench` runs them.
SOAKS := -m slow
# The notebooks run top to bottom under nbval beside tests/: lax, so only cells marked
# `# NBVAL_CHECK_OUTPUT` are compared, after the sanitize file's regexes (machine, pid, clock).
NBVAL_ARGS ?= notebooks --nbval-lax --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg
# Extra pytest arguments from the command line, e.g. `make test PYTEST_ARGS='-k postgres -x'`.
PYTEST_ARGS ?=

SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: venv system-deps demo test lint typecheck pytest bench clean

venv: $(VENV_STAMP)

# torch goes in first and pinned, so that imgnb's `torch>=2.1` is already met by the local CPU wheel.
$(VENV_STAMP): pyproject.toml
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

# Installs Debian's chromium and PostgreSQL server only when they are missing (apt is slow even
# when there is nothing to do).
system-deps:
	@if [ -x /usr/bin/chromium ] && ls /usr/lib/postgresql/*/bin/postgres /usr/lib/postgresql/*/bin/initdb \
	     /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
	  echo "system-deps: chromium and the PostgreSQL server are installed"; \
	else \
	  echo "system-deps: installing chromium and postgresql with apt-get"; \
	  $(SUDO) apt-get update; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium postgresql; \
	fi

demo: venv
	$(BIN)/python -m imgnb.demo

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: venv
	$(BIN)/mypy

# One torch thread per process: the tests run generation threads, worker processes and PostgreSQL
# side by side on two cores, where torch's default thread pool makes each call 5-40x slower.
pytest: venv system-deps
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest $(PYTEST_FLAGS) -m 'not slow' tests $(NBVAL_ARGS) $(PYTEST_ARGS)

# Make runs these in the order listed (no -j here): lint, types, then the tests; the first failure stops.
test: venv system-deps lint typecheck pytest

bench: venv system-deps
	@shopt -s nullglob; benches=(benchmarks/bench_*.py); \
	if [ $${#benches[@]} -eq 0 ]; then echo "bench: no benchmarks/bench_*.py yet"; exit 0; fi; \
	for bench in "$${benches[@]}"; do echo "== $$bench"; $(BIN)/python "$$bench"; done
	@echo "== soaks (tests marked slow)"; OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest $(PYTEST_FLAGS) $(SOAKS) tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info
