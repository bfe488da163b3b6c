"""Fixtures shared by the retriever / reranker tests (imported explicitly by those test files)."""

from __future__ import annotations

import pytest

from bgem3 import Encoder
from bgem3.testing import make_m3_checkpoint

#: Small corpus: the tiny random model gives lexical/ColBERT scores that follow shared tokens.
CORPUS = [
    "the cat sat on the mat",
    "dogs bark loudly at night",
    "a cat and a dog play in the garden",
    "quantum physics lecture notes",
    "bread is baked in a hot oven",
    "the stock market fell on monday",
    "cats chase mice around the house",
    "an introduction to linear algebra",
    "fresh bread and butter for breakfast",
    "night trains across europe",
]
METAS = [{"topic": t, "n": i} for i, t in enumerate(
    ["pets", "pets", "pets", "science", "food", "finance", "pets", "science", "food", "travel"])]
IDS = [f"doc-{i}" for i in range(len(CORPUS))]
MAX_LENGTH = 64


@pytest.fixture(scope="session")
def rt_m3_path(tmp_path_factory) -> str:
    """A tiny random-weight BGE-M3 checkpoint (with heads), built offline."""
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("rt_m3")), seed=3)


@pytest.fixture(scope="session")
def rt_encoder(rt_m3_path) -> Encoder:
    return Encoder(rt_m3_path, device="cpu", max_length=MAX_LENGTH)
