"""bgem3.scoring: batched forms agree with the pairwise reference forms; fusion and validation."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3 import scoring


def _random_sparse(rng, n, vocab=50):
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 8))
        ids = rng.choice(vocab, size=k, replace=False)
        out.append({int(i): float(rng.random()) for i in ids})
    return out


def _random_multi(rng, n, dim=8):
    vecs = []
    for _ in range(n):
        v = rng.normal(size=(int(rng.integers(1, 6)), dim)).astype(np.float32)
        vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return vecs


def test_lexical_score_is_sum_of_shared_products():
    assert scoring.lexical_score({1: 0.5, 2: 2.0, 3: 1.0}, {2: 0.25, 3: 3.0, 9: 7.0}) == pytest.approx(0.5 + 3.0)
    assert scoring.lexical_score({}, {1: 1.0}) == 0.0


def test_batched_lexical_equals_pairwise():
    rng = np.random.default_rng(0)
    qs, ds = _random_sparse(rng, 5), _random_sparse(rng, 9)
    mat = scoring.lexical_scores(qs, ds)
    assert mat.shape == (5, 9)
    for i, q in enumerate(qs):
        for j, d in enumerate(ds):
            assert mat[i, j] == pytest.approx(scoring.lexical_score(q, d), abs=1e-6)


def test_sparse_to_csr_roundtrip_and_vocab_check():
    m = scoring.sparse_to_csr([{3: 1.5, 0: 2.0}, {}, {7: 0.5}], vocab_size=10)
    assert m.shape == (3, 10)
    assert m[0, 3] == pytest.approx(1.5) and m[0, 0] == pytest.approx(2.0) and m[2, 7] == pytest.approx(0.5)
    assert m[1].nnz == 0
    with pytest.raises(ValueError, match="outside vocab_size=5"):
        scoring.sparse_to_csr([{7: 1.0}], vocab_size=5)


def test_colbert_score_is_mean_of_max():
    q = np.array([[1, 0], [0, 1]], dtype=np.float32)
    d = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    assert scoring.colbert_score(q, d) == pytest.approx((1.0 + 0.8) / 2)
    with pytest.raises(ValueError, match="2-D"):
        scoring.colbert_score(np.zeros(3), d)


def test_packed_colbert_equals_pairwise():
    rng = np.random.default_rng(1)
    docs = _random_multi(rng, 12)
    q = _random_multi(rng, 1)[0]
    flat, offsets = scoring.pack_multivectors(docs)
    assert offsets[-1] == flat.shape[0] == sum(len(d) for d in docs)
    got = scoring.colbert_scores_packed(q, flat, offsets)
    want = [scoring.colbert_score(q, d) for d in docs]
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(scoring.colbert_scores(q, docs), want, atol=1e-6)


def test_packed_colbert_with_an_empty_document():
    rng = np.random.default_rng(2)
    docs = _random_multi(rng, 3)
    docs.insert(1, np.zeros((0, 8), dtype=np.float32))
    q = _random_multi(rng, 1)[0]
    got = scoring.colbert_scores(q, docs)
    assert got[1] == 0.0
    np.testing.assert_allclose(got[[0, 2, 3]], [scoring.colbert_score(q, d) for d in (docs[0], docs[2], docs[3])], atol=1e-6)


def test_fusion_weighted_and_normalised():
    s = scoring.fuse_weighted(np.array([1.0]), np.array([2.0]), np.array([3.0]), (0.4, 0.2, 0.4))
    assert s[0] == pytest.approx(0.4 + 0.4 + 1.2)
    s = scoring.fuse_weighted(np.array([1.0]), np.array([2.0]), np.array([3.0]), (1, 1, 2), normalize=True)
    assert s[0] == pytest.approx((1 + 2 + 6) / 4)


@pytest.mark.parametrize("bad", [(1, 1), (1, -1, 1), (0, 0, 0), (float("nan"), 1, 1), "abc"])
def test_bad_weights(bad):
    with pytest.raises(ValueError, match="weights must be three"):
        scoring.check_weights(bad)


def test_reciprocal_rank_fusion():
    fused = scoring.reciprocal_rank_fusion([["a", "b", "c"], ["b", "a"], ["c"]], k=60)
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert fused["a"] == pytest.approx(fused["b"]) and fused["a"] > fused["c"]
    with pytest.raises(ValueError, match="positive"):
        scoring.reciprocal_rank_fusion([["a"]], k=0)
    with pytest.raises(ValueError, match="2 weights for 1 rankings"):
        scoring.reciprocal_rank_fusion([["a"]], weights=[1, 2])
