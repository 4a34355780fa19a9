# The README's two commands: `make demo` and `make test`. Each creates .venv and installs what it
# needs on a new machine. torch is pinned to the 2.13.0 CPU build here (the CPU install path);
# GPU images install their own CUDA build (infra/Dockerfile).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all install clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m shared.nltk_data
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/autodidact demo

test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) *.egg-info
