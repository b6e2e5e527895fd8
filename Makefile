# Two entry points for a fresh clone; each creates .venv and installs what it needs.
#   make demo   -> runs `spred demo`
#   make test   -> runs the test suite (the same command CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
# Tests and benchmarks read the real datasets from SPRED_DATA (default: ../shared/data beside a clone).
export SPRED_DATA ?= $(abspath ../shared/data)

.PHONY: demo test bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e ".[plot]"
	@touch $@

$(VENV)/.dev: $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) -e ".[dev]"
	@touch $@ $(VENV)/.demo

demo: $(VENV)/.demo
	$(VENV)/bin/spred demo --out results/demo

test: $(VENV)/.dev
	$(PY) -m pytest

clean:
	rm -rf $(VENV) results .pytest_cache
