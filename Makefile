# `make demo` and `make test` each build .venv on first use, install the package with its
# test extras, and run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nasdm-aug demo --out demo-out

test: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

# tests/test_html_report.py opens report.html in Debian's Chromium. Installed where we are root and
# apt reaches its mirror (under a minute); elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  timeout 600 sh -c 'DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium' >/dev/null 2>&1; } || \
	  echo "chromium not installed: the report.html browser test will be skipped"

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -x tests -m "not slow"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
