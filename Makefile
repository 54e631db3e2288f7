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
MODEL  ?= dpu-hyperprior
QUALITIES ?= 1 2 3 4
BACKEND ?= float
BOARD  ?= ultra96
DATA   ?= ../shared/data
OUT    ?= build
PYTEST_ARGS ?=

.PHONY: help setup test test-all lint demo bench baseline residual-eval volume-eval train-mlp3d clean distclean \
        train export eval rewrite calibrate quantize compile runtime deploy validate \
        board-sim-up board-sim-down deploy-dir rollback

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

# Tests run many tiny convolutions: one torch thread each is faster than two fighting (and CI has 2 cores).
test: $(STAMP) ## run the tests (excludes slow, toolchain and board)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow and not toolchain and not board" $(PYTEST_ARGS)

test-all: $(STAMP) ## run every test that this machine can run (slow ones too)
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not toolchain and not board" $(PYTEST_ARGS)

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
	$(PY) -m pipelines train --model $(MODEL) --quality $(QUALITY) --steps $(STEPS) --data $(DATA) --out runs/$(MODEL)-q$(QUALITY)

export: $(STAMP) ## build the codec package (.npz) of QUALITY's checkpoint from DATA
	$(PY) -m pipelines export --model $(MODEL) --quality $(QUALITY) --data $(DATA) --force

eval: $(STAMP) ## learned codec vs JPEG 2000 / JPEG-XL on DATA -> build/eval/eval.json + RD plots
	$(PY) -m pipelines eval $(DATA) --json $(OUT)/eval/eval.json --model $(MODEL) --backend $(BACKEND) --force

residual-eval: $(STAMP) ## residual layer (lossless / near-lossless) vs JPEG-LS, J2K, JPEG-XL on DATA -> build/residual/residual.json
	$(PY) -m pipelines residual-eval $(DATA) --json $(OUT)/residual/residual.json --quality 2 --quality 3 --force

VOLUME_MODEL ?= mlp3d-pyramid
volume-eval: $(STAMP) ## volumes (seed 001) vs the residual layer, JPEG-LS, J2K, HTJ2K, JPEG-XL on the shared CT and MR series -> build/volume/volume.json
	$(PY) -m pipelines volume-eval --model $(VOLUME_MODEL) --json $(OUT)/volume/volume.json

train-mlp3d: $(STAMP) ## train seed 001's volume predictor (VOLUME_MODEL) -> runs/VOLUME_MODEL/
	$(PY) -m pipelines train-mlp3d --model $(VOLUME_MODEL)

QAT_STEPS ?= 0
CALIB_TILES ?= 32
VALIDATE_LIMIT ?= 0
STAGE_ARGS = --board $(BOARD) --model $(MODEL) --out $(OUT) $(foreach q,$(QUALITIES),--quality $(q)) \
             --qat-steps $(QAT_STEPS) --calib-tiles $(CALIB_TILES) --validate-limit $(VALIDATE_LIMIT)

rewrite: $(STAMP) ## DPU rewrites of MODEL's networks + partition report + ONNX -> build/BOARD/MODEL/rewrite
	$(PY) -m pipelines stage rewrite $(STAGE_ARGS)

calibrate: $(STAMP) ## fix positions of every tensor (builtin DPU quantizer; nndct docker job written)
	$(PY) -m pipelines stage calibrate $(STAGE_ARGS)

quantize: $(STAMP) ## int8 codec packages + per-layer SQNR report (JSON + HTML); QAT_STEPS=600 as the zoo's
	$(PY) -m pipelines stage quantize $(STAGE_ARGS)

compile: $(STAMP) ## vai_c_xir when present; always the partition report and roofline latency
	$(PY) -m pipelines stage compile $(STAGE_ARGS)

runtime: $(STAMP) ## render the board application (templates + codec/) -> build/BOARD/MODEL/runtime
	$(PY) -m pipelines stage runtime $(STAGE_ARGS)

deploy: $(STAMP) ## upload the runtime to BOARD (verified, atomic switch of `current`)
	$(PY) -m pipelines stage deploy $(STAGE_ARGS)

validate: $(STAMP) ## run the board app on BOARD over the validation images; compare with the host emulator
	$(PY) -m pipelines stage validate $(STAGE_ARGS)

# Boards are data: boards/boards.toml (BOARD=name, or a comma-separated fleet). The virtual board
# `sim` is OpenSSH's sshd on 127.0.0.1 with its state in build/sim-board/ (board/sim.py).
DEPLOY_DIR ?=
SMOKE      ?=

board-sim-up: $(STAMP) ## start the virtual board (sshd on 127.0.0.1, state in build/sim-board/); then BOARD=sim
	$(PY) -m pipelines board-sim up

board-sim-down: $(STAMP) ## stop the virtual board (by its own pid file)
	$(PY) -m pipelines board-sim down

deploy-dir: $(STAMP) ## deploy any folder: DEPLOY_DIR=<dir> [SMOKE='{python} smoke.py'] to BOARD, verified, then current
	@test -n "$(DEPLOY_DIR)" || { echo "make deploy-dir: set DEPLOY_DIR=<folder>" >&2; exit 2; }
	$(PY) -m pipelines deploy --board $(BOARD) --dir $(DEPLOY_DIR) $(if $(SMOKE),--smoke '$(SMOKE)')

rollback: $(STAMP) ## point BOARD's `current` back at the release before it
	$(PY) -m pipelines rollback --board $(BOARD)

clean: ## remove build outputs (keeps .venv; stops the virtual board first)
	@if [ -x $(PY) ] && [ -e build/sim-board/sshd.pid ]; then $(PY) -m pipelines board-sim down; fi
	rm -rf $(OUT) .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +

distclean: clean ## remove build outputs and .venv
	rm -rf $(VENV) *.egg-info
