# rag-perf-plugins: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check rag_perf_plugins integrations tests examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) tests/unasync.py --check

pytest: install
	$(VENV)/bin/pytest

test: lint pytest

demo: install
	$(PY) examples/demo.py

bench: install
	$(VENV)/bin/rag-perf bench --output bench-results/results.json --markdown bench-results/results.md --plots bench-results/plots

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .demo bench-results
