# `make test` sets up a virtual environment (CPU torch pinned by constraints.txt),
# installs the package with every extra and the test oracles, and runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: test install bench-quick clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[all,test]"

test: install
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
