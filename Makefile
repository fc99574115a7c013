# genie — the two commands: `make demo` and `make test`. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev,video,metrics,play

.PHONY: install browser test lint format typecheck pytest demo bench clean

install: $(STAMP)

# Reinstalls only when the packaging files change; a second `make test` costs seconds.
$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check src tests tools
	$(VENV)/bin/ruff format --check src tests tools

format: install
	$(VENV)/bin/ruff format src tests tools
	$(VENV)/bin/ruff check --fix src tests tools

typecheck: install
	$(VENV)/bin/mypy src

# Headless Chromium + chromedriver (Debian packages) for the play-page test; skipped with a reason if this fails.
browser:
	@if command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	    || echo "[make] could not install chromium + chromium-driver: the play-page browser test will skip"; \
	else echo "[make] no apt-get: the play-page browser test will skip"; fi

pytest: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

demo: install
	$(PY) -m genie.demo $(DEMO_ARGS)

bench: install
	$(PY) tools/benchmark.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist src/*.egg-info outputs multirun
