# encdist: make install | make quickstart | make test | make bench
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and CI run on 2 CPU cores.
export OMP_NUM_THREADS ?= 2

.PHONY: install quickstart test test-fast bench aim clean

install: $(STAMP)

# pip<24.1: catalyst 22.4's metadata is rejected by newer pip.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip<24.1'
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

quickstart: install
	$(BIN)/compressai-train --config-name=quickstart

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

bench: install
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

aim: install
	$(BIN)/aim up --repo encdist_runs/aim

clean:
	rm -rf encdist_runs .pytest_cache
