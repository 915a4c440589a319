# rag-perf-plugins: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser demo test lint pytest bench report clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall when the project's metadata changes. torch first, pinned: its CPU wheel is what
# the local-models extra's sentence-transformers gets (a bare `torch` would pull a CUDA build).
TORCH := torch==2.13.0
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet '$(TORCH)'
	$(PY) -m pip install --quiet -e '.[all,dev,stores,local-models]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check rag_perf_plugins integrations tests examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) tests/unasync.py --check

# Debian's Chromium for the HTML report's browser test (Playwright drives it through
# executable_path; `playwright install` would download a browser and is never run).
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	    if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	    else echo "make browser: $(CHROMIUM) is missing; run as root: apt-get install -y chromium" >&2; fi; }

pytest: install browser
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest

test: lint pytest

demo: install
	HF_HUB_OFFLINE=1 $(PY) examples/demo.py

bench: install
	$(VENV)/bin/rag-perf bench --output bench-results/results.json --markdown bench-results/results.md --plots bench-results/plots

# The committed full run's HTML report, its charts, and the screenshot in docs/img.
report: install browser
	$(VENV)/bin/rag-perf bench --render docs/results/full.json --html docs/results/full.html --plots docs/img
	$(PY) tests/report_browser.py docs/results/full.html docs/img/bench-report.png

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .demo bench-results
