# Two commands for a fresh machine; each creates .venv and installs what it needs.
#   make demo   - the resilience story against the local fault server (no API key, loopback only)
#   make test   - lint, strict type check, and the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m fallbackchain demo

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy --strict fallbackchain

test: lint
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .fallbackchain-cache .pytest_cache .mypy_cache .ruff_cache
