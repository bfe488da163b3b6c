"""The anchors' world: bgem3 installed beside langchain-huggingface, llama-index-embeddings-huggingface
and sentence-transformers (whatever versions pip resolves together), run by ``make test-anchors``.

Every test here is marked ``anchors``; the main suite (``tests/``) never collects this folder.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "anchors: compares bgem3's classes with the anchor classes themselves "
                                       "(needs the .venv-anchors environment: make test-anchors)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.anchors)
