# Two commands on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench lint system-deps clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# MariaDB server binaries for the throwaway test server, Chromium for the report check.
system-deps:
	bash devtools/ensure_mariadb.sh
	bash devtools/ensure_chromium.sh

setup: $(STAMP) system-deps

test: setup
	$(PY) -m pytest

demo: $(STAMP)
	bash devtools/ensure_mariadb.sh
	$(PY) -m devtools.demo

bench: $(STAMP)
	bash devtools/ensure_mariadb.sh
	$(PY) -m bench.run $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
