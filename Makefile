# nbp: `make demo` and `make test` bootstrap .venv themselves on a fresh machine.
# `make demo` installs what a run needs (`-e .`); `make test` and `make lint` add the dev
# tools (`-e .[dev]`), so `make demo` then `make test` installs only the difference.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-stamp
DEV_STAMP := $(VENV)/.dev-stamp
# uv (from PyPI, into the venv) installs the same pinned versions as pip in a fraction of the
# time (BENCHMARKS.md, "Issue 24: install size and time"); pip takes over if uv cannot be had
# or fails, and `make demo INSTALLER=pip` uses pip alone.
INSTALLER ?= uv
define install
	@echo "installing $(1) into $(VENV) with $(INSTALLER)"
	@if [ "$(INSTALLER)" = uv ] && { test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv; }; \
	then $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(1) \
	  || $(BIN)/python -m pip install --quiet $(1); \
	else $(BIN)/python -m pip install --quiet $(1); fi
endef
# A private Prefect home inside the checkout: no state leaks into ~/.prefect.
export PREFECT_HOME ?= $(CURDIR)/.prefect-home
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install install-dev bytecode demo test lint bench browser clean

install: $(RUN_STAMP)

install-dev: $(DEV_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call install,-e .)
	touch $@

# nbp's own bytecode: an editable install is not compiled by the installer, and where
# PYTHONDONTWRITEBYTECODE is set every run compiled ~110 modules again (~0.15 s of CPU
# before the first create). Up-to-date files are skipped, so this costs a few stats.
bytecode: $(RUN_STAMP)
	@$(BIN)/python -m compileall -q flows providers outputs schemas >/dev/null

$(DEV_STAMP): $(RUN_STAMP)
	$(call install,-e ".[dev]")
	touch $@

demo: bytecode
	$(BIN)/nbp run specs/demo.yaml --emulate
	@echo "images, manifest.parquet and index.html are in ./demo-output"

test: $(DEV_STAMP) bytecode browser
	$(BIN)/python -m pytest -n 2 --dist loadfile

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: bytecode
	$(BIN)/python -m bench

# Headless Chromium for the gallery test (Debian's package); skipped where apt is unavailable.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium; browser tests will be skipped"; \
	  else echo "note: chromium not installed; browser tests will be skipped"; fi; }

clean:
	rm -rf $(VENV) .prefect-home demo-output .pytest_cache .mypy_cache .ruff_cache
