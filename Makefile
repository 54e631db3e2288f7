# medcodec: learned compression of medical images for edge DPUs.
# `make help` lists the targets. Every target that needs the Python environment
# depends on it, so `make demo` and `make test` work as the first command on a
# fresh clone.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  ?= gdn-hyperprior
BOARD  ?= ultra96
DATA   ?= ../shared/data
OUT    ?= build
PYTEST_ARGS ?=

.PHONY: help setup test test-all lint demo bench baseline clean distclean \
        train export eval rewrite calibrate quantize compile runtime deploy validate

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_ -]+:.*## / {printf "  %-30s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo ""
	@echo "  variables: MODEL=$(MODEL) BOARD=$(BOARD) DATA=$(DATA) OUT=$(OUT)"

$(STAMP): pyproject.toml requirements.lock constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("medcodec needs Python >= 3.10" if sys.version_info < (3, 10) else 0)'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP) ## create .venv and install the pinned environment (idempotent)

test: $(STAMP) ## run the tests (excludes slow, toolchain and board)
	$(PY) -m pytest -m "not slow and not toolchain and not board" $(PYTEST_ARGS)

test-all: $(STAMP) ## run every test that this machine can run (slow ones too)
	$(PY) -m pytest -m "not toolchain and not board" $(PYTEST_ARGS)

lint: $(STAMP) ## static checks (ruff)
	$(VENV)/bin/ruff check codec models quantize compile board pipelines arch tests

demo: $(STAMP) ## the main job on the bundled samples
	$(PY) -m pipelines demo --out $(OUT)/demo

bench: $(STAMP) ## speed and memory benchmarks -> build/bench/bench.json
	$(PY) -m pipelines bench --json $(OUT)/bench/bench.json --force

baseline: $(STAMP) ## classical codecs on DATA=<dir> -> build/baseline.json
	$(PY) -m pipelines baseline $(DATA) --json $(OUT)/baseline.json --force

QUALITY ?= 3
STEPS   ?= 2000

train: $(STAMP) ## train one zoo quality: QUALITY=1..4 STEPS=N (recipe of the committed weights: models/weights/README.md)
	$(PY) -m pipelines train --quality $(QUALITY) --steps $(STEPS) --data $(DATA) --out runs/$(MODEL)-q$(QUALITY)

export: $(STAMP) ## build the codec package (.npz) of QUALITY's checkpoint from DATA
	$(PY) -m pipelines export --model $(MODEL) --quality $(QUALITY) --data $(DATA) --force

eval: $(STAMP) ## learned codec vs JPEG 2000 / JPEG-XL on DATA -> build/eval/eval.json + RD plots
	$(PY) -m pipelines eval $(DATA) --json $(OUT)/eval/eval.json --model $(MODEL) --force

rewrite calibrate quantize: ## not built yet: DPU rewrite / calibration / int8 (issue 4)
	@echo "make $@: not built yet (issue 4: rewrite, calibrate, quantize). What exists: the exact rewrite passes and the DPU partition check (medcodec partition --rewrite)." >&2; exit 1

compile runtime deploy validate: ## not built yet: compile, board runtime, deploy, validate (issue 5)
	@echo "make $@: not built yet (issue 5: compile, runtime, deploy, validate)" >&2; exit 1

clean: ## remove build outputs (keeps .venv)
	rm -rf $(OUT) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean ## remove build outputs and .venv
	rm -rf $(VENV) *.egg-info
