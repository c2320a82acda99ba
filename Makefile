# Two commands for a fresh machine; each creates .venv and installs what it needs.
#   make demo   - the resilience story against the local fault server (no API key, loopback only)
#   make test   - lint, strict type check, and the whole test suite (what CI runs)
#   make test-fast - the inner loop: every test not marked slow (under 30 s), no lint
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

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

# PYTHONDONTWRITEBYTECODE cleared: pytest can then keep its rewritten test modules in
# __pycache__ instead of rewriting all of them on every run (about 5 s of CPU). The fast tests
# run on every core (pytest-xdist); `make test` stays serial: its real-time tests measure
# deadlines and timeouts, which a loaded machine would stretch.
test-fast: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -m "not slow" -n auto

bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .fallbackchain-cache .pytest_cache .mypy_cache .ruff_cache
