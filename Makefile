# The Python that creates .venv: PYTHON=... overrides, else the first of these that is >= 3.10.
PYTHONS := python3.13 python3.12 python3.11 python3.10 python3
ifeq ($(origin PYTHON), undefined)
PYTHON := $(shell for p in $(PYTHONS); do command -v $$p >/dev/null 2>&1 && \
  $$p -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null && { echo $$p; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench browser

$(STAMP): pyproject.toml requirements.lock
	@if test -x $(PY); then echo "using $(VENV) ($$($(PY) --version))"; else \
	  test -n "$(PYTHON)" || { echo "error: no Python >= 3.10 found (tried $(PYTHONS)); set PYTHON=/path/to/python3.x" >&2; exit 1; }; \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || \
	    { echo "error: PYTHON=$(PYTHON) is not a Python >= 3.10" >&2; exit 1; }; \
	  echo "creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version))"; $(PYTHON) -m venv $(VENV); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m udi demo

# Debian's chromium for the report's headless-browser test, only where it can be installed
# (root with apt-get); elsewhere that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not available: the report's headless-browser test will be skipped"

test: $(STAMP) browser
	$(PY) -m pytest -q -x --durations=15 tests

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

clean:
	rm -rf $(VENV) runs/demo
