# drizzlepipe developer targets. Every target creates and uses its own virtual environment.
PYTHON ?= python3
VENV := .venv
PEERS_VENV := .venv-peers
BIN := $(VENV)/bin
PBIN := $(PEERS_VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint test-peers bench demo clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,demo]'
	touch $@

install: $(BIN)/.installed

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

# The whole suite except the peer comparisons (those need drizzlepac: make test-peers).
test: lint
	$(BIN)/python -m pytest -m "not peer" $(PYTEST_ARGS)

$(PBIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PBIN)/python -m pip install -q --upgrade pip
	$(PBIN)/python -m pip install -q -e '.[test,bench,peers]'
	touch $@

# Tests that compare drizzlepipe with drizzlepac, stsci.image, stsci.imagestats and ccdproc.
# pytest exits 5 when no test is selected; that is not a failure here.
test-peers: $(PBIN)/.installed
	$(PBIN)/python -m pytest -m peer $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(BIN)/.installed $(PBIN)/.installed
	$(BIN)/python bench/run_all.py --peer-python $(PBIN)/python

demo: $(BIN)/.installed
	$(BIN)/python -m drizzlepipe.demo demo_output --cfg cfg/few_exposures.asdf

clean:
	rm -rf $(VENV) $(PEERS_VENV) demo_output bench/output .pytest_cache .ruff_cache
