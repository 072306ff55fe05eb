# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Outside the repository, so a fresh clone reuses the Horovod wheel built once (about 10 minutes).
export CUTOUT_WHEEL_CACHE ?= $(HOME)/.cache/cutout/wheels

.PHONY: demo test bench lint format clean

$(STAMP): pyproject.toml scripts/build-horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade setuptools wheel
	# torch first, from the local disk (see NOTES.md): a CUDA build that also runs on the CPU
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	scripts/build-horovod.sh $(PY)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cutout.demo --workdir .cutout/demo

test: $(STAMP)
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/pytest

# Data benchmarks make their inputs once, into ~/.cache/cutout/bench (the first run takes a while longer).
BENCH_COUNTS ?= 2000 10000
# Requests of the serving soak (memory growth); 10,000 takes over an hour on 2 cores.
BENCH_SOAK_REQUESTS ?= 10000
bench: $(STAMP)
	$(PY) -m tests.benchmarks.bench_clean --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_cluster --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_augment --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_train
	$(PY) -m tests.benchmarks.bench_inference
	$(PY) -m tests.benchmarks.bench_serve --soak-requests $(BENCH_SOAK_REQUESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/ruff check src tests

format: $(STAMP)
	$(VENV)/bin/ruff format src tests
	$(VENV)/bin/ruff check --fix src tests

clean:
	rm -rf $(VENV) .cutout .pytest_cache
