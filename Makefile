# Yatagarasu developer tasks (GNU make). Works on a fresh Debian 12 with Python 3.11, as root.
#   make test   - venv + redis-server + chromium, then ruff, ruff format --check, mypy, import-linter, pytest
#   make demo   - moto S3 + the proxy on 127.0.0.1:8080 (Ctrl-C stops both)
#   make pytest PYTEST_ARGS="tests/unit -q -x"             - the unit tests only (fake clock)
#   make pytest PYTEST_ARGS="tests/integration/cache -q"   - the disk and redis layers

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test lint format typecheck pytest demo redis chromium venv .venv clean

# (Re)install when the packaging metadata changes. Editable *compat* mode is required: the default
# editable mode hides twisted/plugins from twistd ("Unknown command: yatagarasu").
$(STAMP): setup.cfg pyproject.toml tests/plugins/apikey/pyproject.toml tests/plugins/dictlayer/pyproject.toml \
		tests/plugins/csvsink/pyproject.toml tests/plugins/ownerprefix/pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  rm -rf $(VENV); \
	  if ! $(PYTHON) -m venv $(VENV); then \
	    echo "python3 -m venv failed; installing python3-venv"; \
	    rm -rf $(VENV); \
	    $(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv; \
	    $(PYTHON) -m venv $(VENV); \
	  fi; \
	fi
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]' --config-settings editable_mode=compat
	# Third-party plugin distributions (an auth scheme, a cache layer, an audit sink, an authorizer), installed the way an
	# operator would add one: the tests prove that plugins outside this package are used.
	$(BIN)/python -m pip install -e tests/plugins/apikey --config-settings editable_mode=compat
	$(BIN)/python -m pip install -e tests/plugins/dictlayer --config-settings editable_mode=compat
	$(BIN)/python -m pip install -e tests/plugins/csvsink --config-settings editable_mode=compat
	$(BIN)/python -m pip install -e tests/plugins/ownerprefix --config-settings editable_mode=compat
	touch $@

venv .venv: $(STAMP)

# redis-server for the integration tests; installed only when missing, the system service is not
# started (policy-rc.d denies service starts during the install).
redis:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  echo "redis-server not found; installing it with apt-get"; \
	  policy=/usr/sbin/policy-rc.d; created=; \
	  if [ ! -e $$policy ]; then \
	    printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null; $(SUDO) chmod +x $$policy; created=1; \
	  fi; \
	  rc=0; \
	  { $(SUDO) apt-get update && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; } || rc=$$?; \
	  if [ -n "$$created" ]; then $(SUDO) rm -f $$policy; fi; \
	  exit $$rc; \
	fi

# chromium (headless) for the browser test (tests/integration/test_browser_signed_url.py); installed
# only when missing. Debian's package is `chromium`; the test runs it with --headless --no-sandbox.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "chromium not found; installing it with apt-get"; \
	  $(SUDO) apt-get update && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# pytest's exit code 5 (no tests collected) is non-zero, so it fails the target too.
# PYTEST_ARGS may name test paths; without one, pytest runs its testpaths (tests/).
pytest: $(STAMP) redis chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: $(STAMP) redis chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m devharness.demo

clean:
	rm -rf $(VENV) .demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f twisted/plugins/dropin.cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
