# genie — the two commands: `make demo` and `make test`. Everything installs into .venv on first use.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= dev,video,metrics,play,agents

.PHONY: install browser test lint format typecheck docs pytest test-procgen procgen-venv test-xla xla-venv demo play pretrained bench clean

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

# The docs site (docs/, mkdocs.yml): every page and link must build with no warning.
docs: install
	$(VENV)/bin/mkdocs build --strict --quiet

# Headless Chromium + chromedriver (Debian packages) for the play-page test; skipped with a reason if this fails.
browser:
	@if command -v chromedriver >/dev/null && { command -v chromium || command -v chromium-browser; } >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  { $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	    || echo "[make] could not install chromium + chromium-driver: the play-page browser test will skip"; \
	else echo "[make] no apt-get: the play-page browser test will skip"; fi

# One pytest-xdist worker per core (at most 4), each running torch on one thread (tests/conftest.py): many
# tests start commands that spend seconds importing on one core. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, os.cpu_count() or 1))")
pytest: install browser
	$(PY) -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal) $(PYTEST_ARGS)

# procgen2 (CoinRun) needs numpy<2, but the metrics extra (jax) needs numpy>=2. So .venv-procgen holds only
# procgen2 + numpy<2 and sees everything else (torch, this package) through a .pth pointing at .venv: its own
# numpy comes first on sys.path. Seconds to make, a few hundred MB. (pip install -e ".[procgen]" in a fresh
# environment without the metrics extra works too.)
PROCGEN_VENV := .venv-procgen
$(PROCGEN_VENV)/.installed: $(STAMP)
	@test -x $(PROCGEN_VENV)/bin/python || $(PYTHON) -m venv $(PROCGEN_VENV)
	@rm -f $(PROCGEN_VENV)/lib/python*/site-packages/genie-main-venv.pth
	$(PROCGEN_VENV)/bin/python -m pip install -q "procgen2>=0.10" "numpy<2"
	@main=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	  $(PROCGEN_VENV)/bin/python -c "import sys, sysconfig, pathlib; pathlib.Path(sysconfig.get_paths()['purelib'], 'genie-main-venv.pth').write_text('import site; site.addsitedir(%r)\n' % sys.argv[1])" "$$main"
	@touch $@

procgen-venv: $(PROCGEN_VENV)/.installed

test-procgen: $(PROCGEN_VENV)/.installed
	$(PROCGEN_VENV)/bin/python -m pytest -m procgen $(PYTEST_ARGS)

# torch-xla (TPU) pins its torch: torch-xla 2.9.0 imports only beside torch 2.9.0. So .venv-xla is a second,
# complete environment (torch 2.9.0 + torch-xla 2.9.0 + this package, ~7 GB: torch's PyPI wheel carries CUDA
# libraries), and the XLA tests run there on torch-xla's CPU device (PJRT_DEVICE=CPU). Run by .ci/run after
# `make test`; a few minutes.
XLA_VENV := .venv-xla
XLA_PINS := torch==2.9.0 torchvision==0.24.0 torch-xla==2.9.0
$(XLA_VENV)/.installed: setup.cfg pyproject.toml
	@test -x $(XLA_VENV)/bin/python || $(PYTHON) -m venv $(XLA_VENV)
	$(XLA_VENV)/bin/python -m pip install -q --upgrade pip
	@printf '%s\n' $(XLA_PINS) > $(XLA_VENV)/constraints.txt
	$(XLA_VENV)/bin/python -m pip install -q -e ".[dev,xla]" -c $(XLA_VENV)/constraints.txt
	@touch $@

xla-venv: $(XLA_VENV)/.installed

test-xla: $(XLA_VENV)/.installed
	PJRT_DEVICE=CPU $(XLA_VENV)/bin/python -m pytest -m xla $(PYTEST_ARGS)

test: lint typecheck docs pytest test-procgen

demo: install
	$(PY) -m genie.demo $(DEMO_ARGS)

# The shipped world (pretrained/platformer: the demo's three tiny stages as safetensors + YAML, and a prompt).
# `make play` opens it on the play page with no training; `make pretrained` regenerates it from a demo run
# (do so whenever the demo's recipe changes).
PRETRAINED := pretrained/platformer
play: install
	$(PY) -m genie.play checkpoint=$(PRETRAINED) prompt=$(PRETRAINED)/prompt.png $(PLAY_ARGS)

pretrained: demo
	$(PY) tools/export.py demo/dynamics/checkpoints/last.ckpt --out $(PRETRAINED) --force \
	  --prompt 'demo/data/synthetic-64/val-*.tar'

bench: install
	$(PY) tools/benchmark $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PROCGEN_VENV) $(XLA_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist src/*.egg-info outputs multirun
