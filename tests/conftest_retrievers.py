"""Fixtures shared by the retriever / reranker tests (imported explicitly by those test files)."""

from __future__ import annotations

import pytest

from bgem3 import Encoder

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
def rt_m3_path(m3_path) -> str:
    """The suite's tiny random-weight BGE-M3 checkpoint (with heads; tests/conftest.py)."""
    return m3_path


@pytest.fixture(scope="session")
def rt_encoder(rt_m3_path) -> Encoder:
    return Encoder(rt_m3_path, device="cpu", max_length=MAX_LENGTH)


def independent_scores(enc: Encoder, query: str, texts: list[str], weights=(0.4, 0.2, 0.4)):
    """(fused, dense, sparse, colbert) for each text, pair by pair with bgem3.scoring's single-pair
    functions on Encoder outputs — an oracle that shares no code with bgem3.rerank."""
    import numpy as np

    from bgem3.scoring import colbert_score, lexical_score

    q = enc.encode_queries([query], dense=True, sparse=True, colbert=True)
    dense, sparse, colb = [], [], []
    for t in texts:
        d = enc.encode_documents([t], dense=True, sparse=True, colbert=True)
        dense.append(float(np.dot(q.dense[0].astype(np.float64), d.dense[0].astype(np.float64))))
        sparse.append(lexical_score(q.sparse[0], d.sparse[0]))
        colb.append(colbert_score(q.colbert[0], d.colbert[0]))
    dense, sparse, colb = np.array(dense), np.array(sparse), np.array(colb)
    w = np.asarray(weights, dtype=np.float64)
    fused = (w[0] * dense + w[1] * sparse + w[2] * colb) / w.sum()
    return fused, dense, sparse, colb
