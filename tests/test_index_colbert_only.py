"""A ColBERT-only index answers every query (never a silent []), and the default ColBERT
estimate shortcut widens when ColBERT carries the fused score (issue 25)."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3 import HybridIndex
from bgem3.index.search import DEFAULT_COLBERT_RERANK, adaptive_rerank


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("codec", ["float32", "int8", "1bit"])
def test_a_colbert_only_index_answers_like_an_exhaustive_search(codec, tmp_path):
    rng = np.random.default_rng(0)
    n, dim = 300, 16
    cols = [_unit(rng.normal(size=(int(rng.integers(3, 9)), dim))) for _ in range(n)]
    idx = HybridIndex(None, model_name="c", dim=dim, channels=["colbert"], colbert_codec=codec)
    idx.add_encoded([f"d{i}" for i in range(n)], [""] * n, [{"g": i % 2} for i in range(n)], colbert=cols)
    idx.save(tmp_path / "i")
    for index in (idx, HybridIndex.load(tmp_path / "i", load_encoder=False)):
        for qi in (5, 17, 250):
            q = cols[qi][:3]
            got = index.search_encoded(None, None, q, k=5)  # before: [] unless exhaustive=True
            want = index.search_encoded(None, None, q, k=5, exhaustive=True)
            assert [h.id for h in got] == [h.id for h in want] and got and got[0].id == f"d{qi}"
            flt = index.search_encoded(None, None, q, k=3, filter={"g": 1 - qi % 2})
            assert len(flt) == 3 and all(int(h.id[1:]) % 2 == 1 - qi % 2 for h in flt)


def test_the_default_rerank_widens_with_colberts_share():
    base = DEFAULT_COLBERT_RERANK
    assert adaptive_rerank(base, (0.4, 0.2, 0.4)) == base  # default weights: unchanged (and its latency)
    assert adaptive_rerank(base, (1, 1, 2)) == base  # half: unchanged
    assert adaptive_rerank(base, (0.2, 0.1, 0.7)) == 75
    assert adaptive_rerank(base, (0.1, 0.0, 0.9)) == 288
    assert adaptive_rerank(base, (0, 0, 1)) == 0  # ColBERT alone: every candidate gets the full MaxSim


def test_colbert_weighted_searches_match_the_full_maxsim_by_default():
    rng = np.random.default_rng(1)
    n, dim = 400, 16
    dense = _unit(rng.normal(size=(n, dim)))
    cols = [_unit(dense[i] + 0.8 * rng.normal(size=(int(rng.integers(3, 9)), dim))) for i in range(n)]
    sparse = [{int(t): 1.0 for t in rng.integers(0, 60, size=4)} for _ in range(n)]
    idx = HybridIndex(None, model_name="c", dim=dim, vocab_size=64, colbert_codec="1bit")
    idx.add_encoded([f"d{i}" for i in range(n)], [""] * n, None, dense, sparse, cols)
    for qi in range(0, n, 40):
        q = (dense[qi], sparse[qi], cols[qi][:4])
        full = [h.id for h in idx.search_encoded(*q, k=10, weights=(0, 0, 1), colbert_rerank=0)]
        assert [h.id for h in idx.search_encoded(*q, k=10, weights=(0, 0, 1))] == full
