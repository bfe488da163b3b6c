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

# The main job on a fresh machine, offline: index this repository's docs and search them.
# MODEL defaults to a tiny random-weight BGE-M3-shaped checkpoint built on the spot (no hub access
# needed; its rankings are meaningless). With real weights: make demo MODEL=/path/to/bge-m3
DEMO ?= .demo
MODEL ?= $(DEMO)/tiny-m3
QUERY ?= how does hybrid retrieval fuse dense, lexical and ColBERT scores?
demo: install
	@test -e "$(MODEL)" || $(VENV)/bin/python -c "from bgem3.testing import make_m3_checkpoint as m; m('$(MODEL)')" >/dev/null 2>&1
	$(VENV)/bin/bgem3 index README.md docs --index $(DEMO)/index --model "$(MODEL)"
	$(VENV)/bin/bgem3 search "$(QUERY)" --index $(DEMO)/index -k 5

clean:
	rm -rf $(VENV) .pytest_cache $(DEMO)
