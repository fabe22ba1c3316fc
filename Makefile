# Set-up and checks. `make demo` and `make test` work on a fresh machine. `make demo` needs no root: it creates
# .venv and installs offshelf (the demo photos ship inside scikit-image). `make test` and `make bench` also
# install the Debian packages that carry the benchmark data (needs root and apt-get), the CPU build of torch
# (only used once, to export packaged weights to ONNX) and the test extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.offshelf-installed
TEST_STAMP := $(VENV)/.offshelf-test-installed

.PHONY: install install-test demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Pin the CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $@

install-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP) pyproject.toml scripts/install-system-data.sh
	bash scripts/install-system-data.sh
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/offshelf demo

test: install-test
	$(BIN)/python -m pytest -q

bench: install-test
	$(BIN)/python -m benchmarks.embed_throughput

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
