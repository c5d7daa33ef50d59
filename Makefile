# drizzlepipe developer targets. Every target creates and uses its own virtual environment.
PYTHON ?= python3
VENV := .venv
PEERS_VENV := .venv-peers
BIN := $(VENV)/bin
PBIN := $(PEERS_VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint test-peers bench demo docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench,demo,quicklook]'
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

$(BIN)/.installed-docs: pyproject.toml $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

# The documentation site (docs/_build/html); warnings are errors.
docs: $(BIN)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	$(BIN)/python docs/_ext/check_parameters.py docs/_build/html

demo: $(BIN)/.installed
	$(BIN)/python -m drizzlepipe.demo demo_output --cfg cfg/few_exposures.asdf

clean:
	rm -rf $(VENV) $(PEERS_VENV) demo_output bench/output docs/_build .pytest_cache .ruff_cache
