"""bgem3.rerank: three-channel reranking math, checked against bgem3.scoring and FlagEmbedding."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3 import Encoder, HybridIndex
from bgem3.rerank import HybridReranker, rerank, resolve_encoder, score_candidates
from bgem3.testing import minilm_path

from conftest_retrievers import CORPUS, MAX_LENGTH, independent_scores, rt_encoder, rt_m3_path  # noqa: F401

QUERY = "where does the cat sleep at night"


def test_scores_equal_pairwise_scoring(rt_encoder):
    weights = (0.4, 0.2, 0.4)
    s = score_candidates(rt_encoder, QUERY, CORPUS, weights)
    fused, dense, sparse, colb = independent_scores(rt_encoder, QUERY, CORPUS, weights)
    np.testing.assert_allclose(s.dense, dense, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.sparse, sparse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.colbert, colb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused, (0.4 * dense + 0.2 * sparse + 0.4 * colb) / 1.0)
    np.testing.assert_allclose(s.score, fused, rtol=1e-5, atol=1e-6)
    # the corpus is not scored in a trivial order (otherwise the ordering checks below prove nothing)
    assert list(s.order()) != list(range(len(CORPUS)))
    results = rerank(rt_encoder, QUERY, CORPUS)
    assert [r.index for r in results] == list(np.argsort(-fused, kind="stable"))
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)


def test_matches_flagembedding_compute_score(rt_m3_path, rt_encoder):
    FlagEmbedding = pytest.importorskip("FlagEmbedding")
    model = FlagEmbedding.BGEM3FlagModel(rt_m3_path, use_fp16=False, devices="cpu")
    weights = [0.2, 0.5, 0.3]
    # batch_size=1: FlagEmbedding's batched ColBERT score lets zero padding vectors win the max
    # for short passages; pair by pair there is no padding and it is the reference MaxSim.
    ref = model.compute_score([(QUERY, t) for t in CORPUS], batch_size=1, max_query_length=MAX_LENGTH,
                              max_passage_length=MAX_LENGTH, weights_for_different_modes=weights)
    s = score_candidates(rt_encoder, QUERY, CORPUS, weights)
    np.testing.assert_allclose(s.dense, ref["dense"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.sparse, ref["sparse"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.colbert, ref["colbert"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(s.score, ref["colbert+sparse+dense"], rtol=1e-4, atol=1e-5)
    ranked = [r.index for r in HybridReranker(rt_encoder, weights=weights).rerank(QUERY, CORPUS)]
    assert ranked == list(np.argsort(-np.asarray(ref["colbert+sparse+dense"]), kind="stable"))


def test_weights_change_the_ranking_and_are_normalised(rt_encoder):
    a = score_candidates(rt_encoder, QUERY, CORPUS, (1, 0, 0))
    b = score_candidates(rt_encoder, QUERY, CORPUS, (0, 1, 0))
    c = score_candidates(rt_encoder, QUERY, CORPUS, (0, 0, 2))
    np.testing.assert_allclose(a.score, a.dense)
    np.testing.assert_allclose(b.score, b.sparse)
    np.testing.assert_allclose(c.score, c.colbert)  # divided by the weight sum
    assert list(a.order()) != list(b.order())


def test_top_n_and_reranker_defaults(rt_encoder):
    rr = HybridReranker(rt_encoder, top_n=3)
    full = score_candidates(rt_encoder, QUERY, CORPUS)
    top = rr.rerank(QUERY, CORPUS)
    assert [r.index for r in top] == list(full.order()[:3])
    for r in top:
        assert r.score == pytest.approx(full.score[r.index])
        assert r.sparse_score == pytest.approx(full.sparse[r.index])
    assert len(rr.rerank(QUERY, CORPUS, top_n=None)) == len(CORPUS)
    assert len(rr.rerank(QUERY, CORPUS[:2])) == 2  # fewer candidates than top_n
    assert rr.rerank(QUERY, []) == []


def test_ties_keep_input_order(rt_encoder):
    texts = ["night trains", "a cat", "night trains", "a cat"]
    res = rerank(rt_encoder, "cat", texts)
    by_text = {}
    for r in res:
        by_text.setdefault(texts[r.index], []).append(r.index)
    assert by_text == {"a cat": [1, 3], "night trains": [0, 2]}
    assert res[0].score == res[1].score


def test_rrf_mode(rt_encoder):
    texts = CORPUS + [""]  # the empty text shares no token with the query
    s = score_candidates(rt_encoder, QUERY, texts, (0.4, 0.2, 0.4), mode="rrf", rrf_k=10)
    expected = np.zeros(len(texts))
    for w, ch in ((0.4, s.dense), (0.2, s.sparse), (0.4, s.colbert)):
        ranked = [i for i in np.argsort(-ch, kind="stable") if ch is not s.sparse or ch[i] > 0]
        for rank, i in enumerate(ranked, start=1):
            expected[i] += w / (10 + rank)
    assert (s.sparse == 0).any()  # the lexical-ranking exclusion is exercised
    np.testing.assert_allclose(s.score, expected)


def test_dense_only_semantic_with_real_minilm():
    enc = Encoder(minilm_path(), device="cpu")
    texts = ["The stock market closed higher today.",
             "Knead the dough and let it rise before baking the bread.",
             "The football match ended in a draw."]
    rr = HybridReranker(enc, weights=(1, 0, 0))
    res = rr.rerank("How do I make homemade bread?", texts)
    assert res[0].index == 1
    assert res[0].sparse_score is None and res[0].colbert_score is None
    with pytest.raises(ValueError, match=r"weights=\(1, 0, 0\)"):
        rr.rerank("bread", texts, weights=(0.4, 0.2, 0.4))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(query=""), ValueError, "query is empty"),
    (dict(query=None), TypeError, "query must be a string"),
    (dict(texts="one string"), TypeError, "list of candidate strings"),
    (dict(weights=(1, 2)), ValueError, "weights must be three"),
    (dict(weights=(0, 0, 0)), ValueError, "not all zero"),
    (dict(mode="max"), ValueError, "mode must be one of"),
])
def test_bad_input(rt_encoder, kwargs, exc, match):
    args = dict(query=QUERY, texts=CORPUS[:2], weights=(0.4, 0.2, 0.4))
    mode = kwargs.pop("mode", "weighted")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        score_candidates(rt_encoder, args["query"], args["texts"], args["weights"], mode=mode)


def test_bad_reranker_options(rt_encoder):
    with pytest.raises(ValueError, match="top_n"):
        HybridReranker(rt_encoder, top_n=0)
    with pytest.raises(ValueError, match="rrf_k"):
        HybridReranker(rt_encoder, rrf_k=0)
    with pytest.raises(TypeError, match="already-built Encoder"):
        resolve_encoder(rt_encoder, device="cpu")
    with pytest.raises(TypeError, match="bgem3.Encoder or a model name"):
        resolve_encoder(42)


@pytest.mark.parametrize("mode", ["weighted", "rrf"])
def test_same_scores_as_hybrid_index(rt_encoder, mode):
    """The reranker scores a candidate list exactly as HybridIndex scores the same documents."""
    texts = CORPUS + [""]
    index = HybridIndex(rt_encoder, colbert_dtype="float32")
    index.add(texts, ids=[str(i) for i in range(len(texts))])
    weights = (0.3, 0.3, 0.4)
    hits = index.search(QUERY, k=len(texts), weights=weights, mode=mode, rrf_k=60, exhaustive=True)
    s = score_candidates(rt_encoder, QUERY, texts, weights, mode=mode, rrf_k=60)
    assert [h.id for h in hits] == [str(i) for i in s.order()]
    for h in hits:
        i = int(h.id)
        assert h.score == pytest.approx(s.score[i], rel=1e-5, abs=1e-6)
        assert (h.dense_score, h.sparse_score, h.colbert_score) == pytest.approx(
            (s.dense[i], s.sparse[i], s.colbert[i]), rel=1e-5, abs=1e-6)
