"""Checkpoints and helpers for the adapter tests (LangChain, LlamaIndex, Qdrant hybrid).

The folders are built once per test process (cached), offline, in a few seconds:
``tiny_m3_path()`` is BGE-M3-shaped (XLM-R + both head files); ``tiny_e5_path()`` has no
heads and no pooling config, so an E5 facade loads it with E5's mean pooling.
Property-based suites (langchain-tests) need paths outside fixtures, hence the functions.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bgem3.testing import make_m3_checkpoint, minilm_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tmpdir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.lru_cache(maxsize=None)
def tiny_m3_path() -> str:
    """A tiny random-weight BGE-M3-shaped checkpoint (hidden 32) with both head files."""
    return make_m3_checkpoint(_tmpdir("bgem3-adapters-m3-"), seed=0)


@functools.lru_cache(maxsize=None)
def tiny_e5_path() -> str:
    """A tiny checkpoint with no heads and no pooling config (an E5 facade mean-pools it)."""
    return make_m3_checkpoint(_tmpdir("bgem3-adapters-e5-"), seed=1, heads=False)


@functools.lru_cache(maxsize=None)
def tiny_no_heads_path() -> str:
    """The tiny BGE-M3 checkpoint without its head files (sparse must refuse)."""
    dst = os.path.join(_tmpdir("bgem3-adapters-noheads-"), "model")
    shutil.copytree(tiny_m3_path(), dst, ignore=shutil.ignore_patterns("*_linear.pt"))
    return dst


def run_python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the repository root (for import-time checks)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


class BlockingSpy:
    """Wraps ``encoder.encode`` so that it waits until the event loop sets ``released``.

    If an async method ran the model on the event loop thread, the loop could never set the
    event and the call would time out: ``ran_while_waiting`` tells which happened.
    """

    def __init__(self, encode):
        self._encode = encode
        self.released = threading.Event()
        self.ran_while_waiting = None
        self.threads: list[str] = []

    def __call__(self, *args, **kwargs):
        self.threads.append(threading.current_thread().name)
        self.ran_while_waiting = self.released.wait(timeout=10)
        return self._encode(*args, **kwargs)


class RecordingSpy:
    """Wraps ``encoder.encode`` and records (number of texts, batch_size, texts) per call."""

    def __init__(self, encode):
        self._encode = encode
        self.calls: list[tuple[int, object, list]] = []

    def __call__(self, texts, *args, **kwargs):
        self.calls.append((len(texts), kwargs.get("batch_size"), list(texts)))
        return self._encode(texts, *args, **kwargs)


# Real sentences for retrieval tests on the real MiniLM weights: (query, index of the answer).
CORPUS = [
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
    "Python is a programming language that emphasises readable code.",
    "Mount Everest is the highest mountain above sea level.",
    "A balanced diet includes fruit, vegetables and whole grains.",
]
QUERIES = [
    ("Which famous landmark stands in Paris?", 0),
    ("How do plants make food from light?", 1),
    ("Which programming language is known for readability?", 2),
    ("What is the tallest mountain on Earth?", 3),
    ("What should I eat to stay healthy?", 4),
]
