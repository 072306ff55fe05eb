# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Outside the repository, so a fresh clone reuses the Horovod wheel built once (about 10 minutes).
export CUTOUT_WHEEL_CACHE ?= $(HOME)/.cache/cutout/wheels
# The official U²-NetP weights, fetched once at set-up (never at run time) and read by `--model u2netp`.
export CUTOUT_WEIGHTS_CACHE ?= $(HOME)/.cache/cutout/weights

.PHONY: demo test bench bench-rembg lint format clean images weights

$(STAMP): pyproject.toml scripts/build-horovod.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade setuptools wheel
	# torch first, pinned: the build every other package is resolved against (a CUDA build; it runs on the CPU too)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	# checkov pins boto3, packaging and networkx against ours: a venv of its own (tests/test_manifests.py)
	test -x $(VENV)/checkov/bin/checkov || { $(PYTHON) -m venv $(VENV)/checkov && \
		$(VENV)/checkov/bin/pip install --quiet checkov==3.3.30; }
	scripts/build-horovod.sh $(PY)
	touch $(STAMP)

# Checked on every run (a hash, milliseconds): a cleared cache is fetched again instead of failing later.
weights: $(STAMP)
	scripts/fetch-weights.sh $(PY)

demo: weights
	$(PY) -m cutout.demo --workdir .cutout/demo

test: weights
	$(VENV)/bin/ruff format --check src tests components pipelines
	$(VENV)/bin/ruff check src tests components pipelines
	scripts/install-chromium.sh  # Debian's Chromium for the review page's browser test (once)
	$(VENV)/bin/pytest

# Data benchmarks make their inputs once, into ~/.cache/cutout/bench (the first run takes a while longer).
BENCH_COUNTS ?= 2000 10000
# Requests of the serving soak (memory growth); 10,000 takes over an hour on 2 cores.
BENCH_SOAK_REQUESTS ?= 10000
bench: weights
	$(PY) -m tests.benchmarks.bench_clean --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_cluster --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_augment --counts $(BENCH_COUNTS)
	$(PY) -m tests.benchmarks.bench_train
	$(PY) -m tests.benchmarks.bench_inference
	$(PY) -m tests.benchmarks.bench_serve --soak-requests $(BENCH_SOAK_REQUESTS)
	$(MAKE) bench-rembg

# cutout against rembg on the same official weights. rembg pins ONNX Runtime and more against ours: it gets a
# virtual environment of its own, made once beside the other caches.
REMBG_VENV ?= $(HOME)/.cache/cutout/bench/rembg-venv
BENCH_REMBG_PHOTOS ?= 24
bench-rembg: weights
	$(REMBG_VENV)/bin/python -c 'import rembg' 2>/dev/null || { $(PYTHON) -m venv $(REMBG_VENV) && \
		$(REMBG_VENV)/bin/pip install --quiet 'rembg[cpu]==2.0.86'; }
	$(PY) -m tests.benchmarks.bench_rembg --rembg-python $(REMBG_VENV)/bin/python --photos $(BENCH_REMBG_PHOTOS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests components pipelines
	$(VENV)/bin/ruff check src tests components pipelines

format: $(STAMP)
	$(VENV)/bin/ruff format src tests components pipelines
	$(VENV)/bin/ruff check --fix src tests components pipelines

# Container images (needs a Docker engine): make images [REGISTRY=registry.example/team/ TAG=0.1.0 PUSH=1]
images:
	scripts/build-images.sh $(if $(PUSH),--push)

clean:
	rm -rf $(VENV) .cutout .pytest_cache
