"""HybridIndex: parity with FlagEmbedding's compute_score, search semantics, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from bgem3 import Encoder, Hit, HybridIndex
from bgem3.scoring import reciprocal_rank_fusion
from bgem3.testing import SAMPLE_CORPUS, make_m3_checkpoint
from bgem3.types import HybridStore

MAXLEN = 512
WORDS = sorted({w for line in SAMPLE_CORPUS for w in line.replace(".", " ").replace("。", " ").split()})


def random_texts(rng: np.random.Generator, n: int, lo: int = 3, hi: int = 12) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        t = " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi + 1))))
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("index_m3")), seed=0)


@pytest.fixture(scope="session")
def encoder(ckpt) -> Encoder:
    return Encoder(ckpt, device="cpu")


@pytest.fixture(scope="session")
def flag_model(ckpt):
    flag = pytest.importorskip("FlagEmbedding")
    return flag.BGEM3FlagModel(ckpt, use_fp16=False, devices="cpu")


@pytest.fixture
def corpus():
    rng = np.random.default_rng(7)
    texts = random_texts(rng, 40)
    metas = [{"lang": ["en", "ko", "zh"][i % 3], "n": i} for i in range(len(texts))]
    ids = [f"doc{i}" for i in range(len(texts))]
    return ids, texts, metas


@pytest.fixture
def index(encoder, corpus) -> HybridIndex:
    ids, texts, metas = corpus
    idx = HybridIndex(encoder)
    idx.add(texts, ids=ids, metadatas=metas)
    return idx


def flag_scores(flag_model, query: str, texts: list[str], weights) -> dict[str, np.ndarray]:
    # batch_size=1: no padding, so Flag's padded-token zeros never enter a MaxSim (like with like)
    res = flag_model.compute_score([(query, t) for t in texts], batch_size=1, max_query_length=MAXLEN,
                                   max_passage_length=MAXLEN, weights_for_different_modes=list(weights))
    return {k: np.asarray(v, dtype=np.float64) for k, v in res.items()}


# --------------------------------------------------------------------------- oracle parity
@pytest.mark.parametrize("seed,weights", [(1, (0.4, 0.2, 0.4)), (2, (1.0, 0.3, 0.0)), (3, (0.2, 1.0, 0.5))])
def test_exhaustive_search_matches_flagembedding_compute_score(encoder, flag_model, seed, weights):
    rng = np.random.default_rng(seed)
    texts = random_texts(rng, int(rng.integers(30, 41)))
    ids = [f"d{i}" for i in range(len(texts))]
    pos = {i: n for n, i in enumerate(ids)}
    index = HybridIndex(encoder, colbert_dtype="float32")
    index.add(texts, ids=ids)
    for query in random_texts(rng, 2, 2, 5):
        hits = index.search(query, k=len(texts), weights=weights, exhaustive=True)
        oracle = flag_scores(flag_model, query, texts, weights)
        fused = oracle["colbert+sparse+dense"]
        assert sorted(h.id for h in hits) == sorted(ids)
        # ranked exactly as the oracle: each hit's oracle score >= the next one's (float32 noise,
        # 1e-6, is allowed only between near-ties, whose order is then the insertion order)
        ranked = fused[[pos[h.id] for h in hits]]
        assert np.all(ranked[:-1] >= ranked[1:] - 1e-6), (query, ranked)
        assert [h.id for h in hits][:3] == [ids[i] for i in np.argsort(-fused, kind="stable")[:3]]
        rows = [pos[h.id] for h in hits]
        for name, attr in (("colbert+sparse+dense", "score"), ("dense", "dense_score"),
                           ("sparse", "sparse_score"), ("colbert", "colbert_score")):
            np.testing.assert_allclose([getattr(h, attr) for h in hits], oracle[name][rows], atol=1e-5, rtol=0,
                                       err_msg=name)
        # the lexical channel is not trivially zero on these corpora: the test exercises it
        assert oracle["sparse"].max() > 0


def test_candidate_mode_equals_exhaustive_when_candidates_cover_corpus(index, corpus):
    rng = np.random.default_rng(11)
    n = len(corpus[0])
    for query in random_texts(rng, 4, 2, 5):
        full = index.search(query, k=10, exhaustive=True)
        for cands in (n, n + 5, 1000):
            cand = index.search(query, k=10, candidates=cands)
            assert [(h.id, h.score) for h in cand] == [(h.id, h.score) for h in full]


def test_fp16_colbert_storage_is_close_to_fp32(encoder, corpus):
    ids, texts, metas = corpus
    a = HybridIndex(encoder, colbert_codec="float16")
    b = HybridIndex(encoder, colbert_dtype="float32")
    a.add(texts, ids=ids)
    b.add(texts, ids=ids)
    assert a.memory_usage()["colbert"] < b.memory_usage()["colbert"]
    for q in ("capital France", "LangChain 프레임워크", "向量 检索"):
        ha = {h.id: h for h in a.search(q, k=len(ids), exhaustive=True)}
        hb = {h.id: h for h in b.search(q, k=len(ids), exhaustive=True)}
        for i in ids:
            assert abs(ha[i].colbert_score - hb[i].colbert_score) < 2e-3
            assert ha[i].dense_score == hb[i].dense_score and ha[i].sparse_score == hb[i].sparse_score


# --------------------------------------------------------------------------- synthetic semantics
def synthetic(n=20, dim=8, seed=0, vocab=50):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(rng.uniform(0.1, 1)) for t in rng.choice(vocab, size=int(rng.integers(1, 6)), replace=False)}
              for _ in range(n)]
    colbert = []
    for _ in range(n):
        c = rng.normal(size=(int(rng.integers(1, 7)), dim)).astype(np.float32)
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True))
    return dense, sparse, colbert


def make_synthetic_index(n=20, dim=8, seed=0, **kw):
    dense, sparse, colbert = synthetic(n, dim, seed)
    idx = HybridIndex(None, model_name="synthetic", dim=dim, **kw)
    ids = [f"s{i}" for i in range(n)]
    idx.add_encoded(ids, [f"text {i}" for i in range(n)], [{"g": i % 4} for i in range(n)], dense, sparse, colbert)
    return idx, ids, dense, sparse, colbert


def test_no_encoder_needed_for_encoded_paths_and_scores_are_brute_force():
    idx, ids, dense, sparse, colbert = make_synthetic_index(colbert_dtype="float32")
    assert isinstance(idx, HybridStore)
    rng = np.random.default_rng(5)
    q = rng.normal(size=8).astype(np.float32)
    q /= np.linalg.norm(q)
    qs = {1: 0.7, 3: 0.2, 49: 0.4}
    qc = rng.normal(size=(3, 8)).astype(np.float32)
    w = (0.5, 0.3, 0.2)
    hits = idx.search_encoded(q, qs, qc, k=20, weights=w, exhaustive=True)
    brute = []
    for i in range(20):
        d = float(dense[i] @ q)
        s = sum(v * sparse[i].get(t, 0.0) for t, v in qs.items())
        c = float((qc @ colbert[i].T).max(axis=1).mean())
        brute.append((w[0] * d + w[1] * s + w[2] * c) / sum(w))
    assert [h.id for h in hits] == [ids[i] for i in np.argsort(-np.array(brute), kind="stable")]
    np.testing.assert_allclose([h.score for h in hits], sorted(brute, reverse=True), atol=1e-6)
    with pytest.raises(TypeError, match="search_encoded"):
        idx.search("hello")
    with pytest.raises(TypeError, match="add_encoded"):
        idx.add(["hello"])


def test_candidates_are_dense_top_n_union_lexical_top_n():
    dim = 4
    e = np.eye(dim, dtype=np.float32)
    dense = np.stack([e[0], e[1], e[2], e[3], e[1]])
    sparse = [{}, {7: 1.0}, {}, {}, {}]
    # doc "c" (row 2) is the ColBERT favourite but is neither dense top-1 nor a lexical match
    colbert = [e[[1]], e[[1]], e[[2]], e[[1]], e[[1]]]
    idx = HybridIndex(None, model_name="synthetic", dim=dim)
    idx.add_encoded(list("abcde"), list("ABCDE"), None, dense, sparse, colbert)
    q, qs, qc = e[0], {7: 1.0}, e[[2]]
    w = (0.1, 0.1, 1.0)
    cand = idx.search_encoded(q, qs, qc, k=5, weights=w, candidates=1)
    assert sorted(h.id for h in cand) == ["a", "b"]          # dense top-1 = a, lexical top-1 = b
    full = idx.search_encoded(q, qs, qc, k=5, weights=w, exhaustive=True)
    assert full[0].id == "c" and len(full) == 5
    # a document with no shared token is not a lexical candidate
    only_dense = idx.search_encoded(q, {99: 1.0}, qc, k=5, weights=w, candidates=1)
    assert [h.id for h in only_dense] == ["a"]


def test_rrf_mode_matches_scoring_reciprocal_rank_fusion():
    idx, ids, *_ = make_synthetic_index(n=15)
    rng = np.random.default_rng(1)
    q = rng.normal(size=8).astype(np.float32)
    qs = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
    qc = rng.normal(size=(2, 8)).astype(np.float32)
    full = idx.search_encoded(q, qs, qc, k=15, exhaustive=True)
    by = {name: sorted(full, key=lambda h: -getattr(h, name)) for name in ("dense_score", "sparse_score", "colbert_score")}
    rankings = [[h.id for h in by["dense_score"]],
                [h.id for h in by["sparse_score"] if h.sparse_score > 0],
                [h.id for h in by["colbert_score"]]]
    for w in ((1.0, 1.0, 1.0), (0.4, 0.2, 0.4)):
        expected = reciprocal_rank_fusion(rankings, k=60, weights=list(w))
        rrf = idx.search_encoded(q, qs, qc, k=15, weights=w, mode="rrf", exhaustive=True)
        assert len(rrf) == 15
        for h in rrf:
            assert h.score == pytest.approx(expected[h.id], abs=1e-12)
            assert h.dense_score == pytest.approx({x.id: x.dense_score for x in full}[h.id])
        assert [h.score for h in rrf] == sorted((h.score for h in rrf), reverse=True)
    rrf30 = idx.search_encoded(q, qs, qc, k=3, mode="rrf", rrf_k=30, exhaustive=True)
    assert rrf30[0].score > rrf[0].score  # smaller constant -> larger scores


# --------------------------------------------------------------------------- filters
def test_filter_exact_any_of_and_multiple_keys(index, corpus):
    ids, texts, metas = corpus
    hits = index.search("capital", k=100, filter={"lang": "ko"})
    assert {h.id for h in hits} == {i for i, m in zip(ids, metas) if m["lang"] == "ko"}
    assert all(h.metadata["lang"] == "ko" for h in hits)
    hits = index.search("capital", k=100, filter={"lang": ["ko", "zh"]})
    assert {h.id for h in hits} == {i for i, m in zip(ids, metas) if m["lang"] in ("ko", "zh")}
    hits = index.search("capital", k=100, filter={"lang": "en", "n": (0, 3, 4, 6)})
    assert {h.id for h in hits} == {"doc0", "doc3", "doc6"}
    assert index.search("capital", k=5, filter={"lang": "fr"}) == []
    assert index.search("capital", k=5, filter={"missing": "x"}) == []


def test_filter_is_applied_before_candidate_selection():
    idx, ids, dense, sparse, colbert = make_synthetic_index(n=20)
    q = dense[0]
    # with one candidate and no filter only s0's group could win; the filter must still yield g=1 docs
    hits = idx.search_encoded(q, {}, colbert[0], k=3, candidates=1, filter={"g": 1})
    assert len(hits) == 1 and hits[0].metadata["g"] == 1
    best_g1 = max((i for i in range(20) if i % 4 == 1), key=lambda i: float(dense[i] @ q))
    assert hits[0].id == ids[best_g1]
    with pytest.raises(TypeError, match="filter"):
        idx.search_encoded(q, {}, colbert[0], filter=[("g", 1)])


# --------------------------------------------------------------------------- delete / upsert / get
def test_delete_hides_documents_and_unknown_ids_delete_nothing(index, corpus):
    ids, texts, _ = corpus
    top = index.search(texts[5], k=1, exhaustive=True)[0].id
    index.delete([top, "doc1"])
    assert len(index) == len(ids) - 2 and top not in index and "doc1" not in index
    assert all(h.id not in (top, "doc1") for h in index.search(texts[5], k=len(ids), exhaustive=True))
    with pytest.raises(KeyError, match="nope"):
        index.delete(["doc2", "nope"])
    assert "doc2" in index and len(index) == len(ids) - 2
    index.delete(["doc2", "nope"], ignore_missing=True)
    assert "doc2" not in index
    with pytest.raises(KeyError, match="doc1"):
        index.get(["doc1"])


def same_hits(a: list[Hit], b: list[Hit], tol: float = 1e-6) -> None:
    """Same ids, texts and metadata in the same order; scores equal up to float32 BLAS rounding
    (a matrix-vector product may round differently when the matrix has another row count)."""
    assert [(h.id, h.text, h.metadata) for h in a] == [(h.id, h.text, h.metadata) for h in b]
    for name in ("score", "dense_score", "sparse_score", "colbert_score"):
        np.testing.assert_allclose([getattr(h, name) for h in a], [getattr(h, name) for h in b], atol=tol, rtol=0)


def test_compaction_preserves_results():
    idx, ids, dense, sparse, colbert = make_synthetic_index(n=40, colbert_codec="float16")
    idx.delete(ids[:5])                      # 5/40 dead: below the compaction threshold -> tombstones
    assert idx._n_dead == 5
    q, qs, qc = dense[7], sparse[7], colbert[7]
    before = idx.search_encoded(q, qs, qc, k=40, exhaustive=True)
    before_f = idx.search_encoded(q, qs, qc, k=40, filter={"g": [1, 2]})
    idx.compact()
    assert idx._n_dead == 0 and idx.memory_usage()["dense"] == 35 * 8 * 4
    same_hits(idx.search_encoded(q, qs, qc, k=40, exhaustive=True), before)
    same_hits(idx.search_encoded(q, qs, qc, k=40, filter={"g": [1, 2]}), before_f)
    idx.delete(ids[5:20])                    # crosses the threshold: compacts by itself
    assert idx._n_dead == 0 and len(idx) == 20 and idx.ids == ids[20:]
    assert idx.vectors(ids[25])[2].shape == colbert[25].shape
    np.testing.assert_allclose(idx.vectors(ids[25])[2], colbert[25], atol=1e-3)


def test_upsert_replaces_existing_id(index, corpus):
    ids, texts, _ = corpus
    n = len(index)
    index.add(["완전히 새로운 문서 Berlin"], ids=["doc3"], metadatas=[{"lang": "de"}])
    assert len(index) == n
    [got] = index.get(["doc3"])
    assert got.text == "완전히 새로운 문서 Berlin" and got.metadata == {"lang": "de"} and got.score == 0
    hits = index.search("완전히 새로운 문서 Berlin", k=len(ids), exhaustive=True)
    assert [h.id for h in hits].count("doc3") == 1
    assert next(h for h in hits if h.id == "doc3").text.startswith("완전히")
    assert index.ids[-1] == "doc3"


def test_add_returns_ids_and_defaults_to_uuid(encoder):
    idx = HybridIndex(encoder)
    out = idx.add(["one text", "two text"])
    assert len(out) == 2 and len(set(out)) == 2 and all(len(i) == 32 and int(i, 16) >= 0 for i in out)
    assert idx.ids == out
    assert [h.text for h in idx.get(out[::-1])] == ["two text", "one text"]
    assert idx.add([]) == []


def test_returned_metadata_is_a_copy(index):
    hit = index.get(["doc0"])[0]
    hit.metadata["lang"] = "changed"
    assert index.get(["doc0"])[0].metadata["lang"] == "en"


# --------------------------------------------------------------------------- bad input
def test_bad_input_has_defined_errors(encoder, index, corpus):
    ids, texts, _ = corpus
    n = len(index)
    with pytest.raises(ValueError, match="duplicate ids"):
        index.add(["a", "b"], ids=["x", "x"])
    with pytest.raises(ValueError, match="2 texts but 1 ids"):
        index.add(["a", "b"], ids=["x"])
    with pytest.raises(ValueError, match="metadatas"):
        index.add(["a", "b"], metadatas=[{}])
    with pytest.raises(ValueError, match="JSON"):
        index.add(["a", "b"], metadatas=[{}, {"obj": object()}])
    with pytest.raises(TypeError, match="single string"):
        index.add("just a string")
    with pytest.raises(TypeError, match=r"ids\[1\]"):
        index.add(["a", "b"], ids=["x", 5])
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search("capital", k=k)
    for q in ("", "   "):
        with pytest.raises(ValueError, match="query is empty"):
            index.search(q)
    with pytest.raises(ValueError, match="weights"):
        index.search("capital", weights=(0, 0, 0))
    with pytest.raises(ValueError, match="mode"):
        index.search("capital", mode="max")
    with pytest.raises(ValueError, match="candidates"):
        index.search("capital", candidates=0)
    with pytest.raises(ValueError, match="rrf_k"):
        index.search("capital", mode="rrf", rrf_k=float("nan"))
    assert len(index) == n and index.ids == ids
    empty = HybridIndex(encoder)
    assert empty.search("anything", k=3) == []
    with pytest.raises(ValueError, match="k must be"):
        empty.search("anything", k=0)


def test_failed_encoding_mid_add_leaves_index_unchanged(encoder, index, corpus, monkeypatch):
    ids, texts, _ = corpus
    before = index.search(texts[0], k=10)
    calls = {"n": 0}
    real = encoder._forward

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom in batch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder, "_forward", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        index.add([f"new text number {i}" for i in range(6)], ids=[f"new{i}" for i in range(6)] , batch_size=2)
    assert calls["n"] == 2  # the first batch was encoded before the failure
    monkeypatch.setattr(encoder, "_forward", real)
    assert len(index) == len(ids) and not any(f"new{i}" in index for i in range(6))
    assert index.search(texts[0], k=10) == before


def test_add_encoded_validates_shapes_and_token_ids():
    idx = HybridIndex(None, model_name="m", dim=4, vocab_size=10)
    d = np.ones((2, 4), np.float32) / 2
    c = [np.ones((2, 4), np.float32)] * 2
    with pytest.raises(ValueError, match="dense must have shape"):
        idx.add_encoded(None, ["a", "b"], None, d[:, :3], [{}, {}], c)
    with pytest.raises(ValueError, match="token id 10"):
        idx.add_encoded(None, ["a", "b"], None, d, [{1: 1.0}, {10: 1.0}], c)
    with pytest.raises(ValueError, match=r"colbert\[1\]"):
        idx.add_encoded(None, ["a", "b"], None, d, [{}, {}], [c[0], np.ones((2, 3))])
    with pytest.raises(ValueError, match="NaN"):
        idx.add_encoded(None, ["a", "b"], None, d * np.nan, [{}, {}], c)
    assert len(idx) == 0
    with pytest.raises(ValueError, match="dim"):
        HybridIndex(None)
    # a document without ColBERT tokens or lexical weights is stored and scores 0 on those channels
    idx.add_encoded(["e"], ["empty"], None, d[:1], [{}], [np.zeros((0, 4), np.float32)])
    [h] = idx.search_encoded(d[0], {1: 1.0}, np.ones((1, 4), np.float32), k=1)
    assert h.id == "e" and h.sparse_score == 0 and h.colbert_score == 0 and h.dense_score == pytest.approx(1.0)


def test_memory_usage_follows_the_documented_formula():
    n, dim = 30, 8
    idx, ids, dense, sparse, colbert = make_synthetic_index(n=n, dim=dim, colbert_codec="float16")
    nnz = sum(len(s) for s in sparse)
    tokens = sum(len(c) for c in colbert)
    mem = idx.memory_usage()
    assert mem["dense"] == 4 * dim * n
    assert mem["sparse"] == 8 * nnz + 8 * (n + 1)
    assert mem["colbert"] == 2 * dim * tokens + 8 * (n + 1)
    idx.search_encoded(dense[0], sparse[0], colbert[0])
    assert idx.memory_usage()["sparse_search_copy"] >= 8 * nnz
