# encdist: make install | make quickstart | make test | make data | make base-models | make bench
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU threads. Unset, compressai-train and compressai-eval take the cores idle at their
# start (env.threads, see encdist/threads.py), so that small models on a busy machine do not
# run on threads that wait for busy cores. The tests (tiny models) use one. Set it to choose:
# make quickstart OMP_NUM_THREADS=4, make test OMP_NUM_THREADS=2.
test test-fast test-gpu: export OMP_NUM_THREADS ?= 1

.PHONY: install quickstart data base-models test test-fast test-gpu bench aim clean

install: $(STAMP)

# pip<24.1: catalyst 22.4's metadata is rejected by newer pip.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip<24.1'
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The offline photo corpus (Debian wallpaper packages + scikit-image's photographs) in
# $${ENCDIST_DATASETS:-~/data/datasets}/photos. Without it (no apt-get), everything runs on
# scikit-image's photographs alone, and says so.
data: install
	$(BIN)/python -m encdist.datasets photos || echo "make data: no photo corpus (see above); using scikit-image's photographs"

quickstart: install data
	$(BIN)/compressai-train --config-name=quickstart

# The RD family of frozen transforms (weights/, MANIFEST.json): trains only what is missing
# or does not match its checksum (about 100 minutes on 2 CPU cores for the whole family).
# The hyperprior anchor, same recipe: make base-models BASE_ARGS="--model bmshj2018-hyperprior".
base-models: install data
	$(BIN)/python -m encdist.recipes.base_family $(BASE_ARGS)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# On a machine with CUDA: training steps, evaluation and cross-device decoding (a few minutes).
test-gpu: install
	$(BIN)/python -m pytest -q -m gpu -rA

bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

aim: install
	$(BIN)/aim up --repo encdist_runs/aim

clean:
	rm -rf encdist_runs .pytest_cache
