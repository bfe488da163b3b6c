"""LangChain BGEM3HybridRetriever and BGEM3Reranker on the tiny BGE-M3 checkpoint."""

from __future__ import annotations

import asyncio
import threading
import warnings

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests
from pydantic import ValidationError

from bgem3 import HybridIndex
from bgem3.types import Hit
from langchain_bgem3 import BGEM3HybridRetriever, BGEM3Reranker

from conftest_retrievers import CORPUS, IDS, METAS, MAX_LENGTH, independent_scores, rt_encoder, rt_m3_path  # noqa: F401

QUERY = "where does the cat sleep at night"
SCORE_KEYS = ("score", "dense_score", "sparse_score", "colbert_score")


@pytest.fixture(scope="module")
def lc_index(rt_encoder) -> HybridIndex:
    index = HybridIndex(rt_encoder, colbert_dtype="float32")
    index.add(CORPUS, ids=IDS, metadatas=METAS)
    return index


class TestStandardSuite(RetrieversIntegrationTests):
    """langchain-tests' standard retriever suite."""

    _store = None

    @pytest.fixture(autouse=True)
    def _bind_store(self, lc_index):
        type(self)._store = lc_index

    @property
    def retriever_constructor(self):
        return BGEM3HybridRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"store": self._store}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def _hit_tuple(h: Hit):
    return (h.id, h.text, h.score, h.dense_score, h.sparse_score, h.colbert_score)


def _doc_tuple(d: Document):
    m = d.metadata
    return (d.id, d.page_content, m["score"], m["dense_score"], m["sparse_score"], m["colbert_score"])


@pytest.mark.parametrize("kwargs", [
    {},
    {"k": 7, "weights": (0.1, 0.6, 0.3)},
    {"mode": "rrf", "candidates": 3},
    {"filter": {"topic": ["pets", "food"]}, "k": 10},
])
def test_same_ids_and_scores_as_store_search(lc_index, kwargs):
    retriever = BGEM3HybridRetriever(store=lc_index, **kwargs)
    docs = retriever.invoke(QUERY)
    hits = lc_index.search(QUERY, **{"k": 4, **kwargs})
    assert [_doc_tuple(d) for d in docs] == [_hit_tuple(h) for h in hits]
    for d in docs:  # user metadata comes back next to the scores
        assert d.metadata["topic"] == METAS[IDS.index(d.id)]["topic"]
        assert set(d.metadata) == {"topic", "n", *SCORE_KEYS}


def test_scores_equal_independent_computation(lc_index, rt_encoder):
    docs = BGEM3HybridRetriever(store=lc_index, k=len(CORPUS)).invoke(QUERY)
    fused, dense, sparse, colb = independent_scores(rt_encoder, QUERY, CORPUS)
    assert [d.id for d in docs] == [IDS[i] for i in np.argsort(-fused, kind="stable")]
    for d in docs:
        i = IDS.index(d.id)
        assert d.metadata["score"] == pytest.approx(fused[i], rel=1e-5)
        assert d.metadata["sparse_score"] == pytest.approx(sparse[i], rel=1e-5)


def test_k_field_and_per_call_overrides(lc_index):
    retriever = BGEM3HybridRetriever(store=lc_index, k=2)
    assert len(retriever.invoke(QUERY)) == 2
    assert len(retriever.invoke(QUERY, k=5)) == 5
    assert len(retriever.invoke(QUERY)) == 2  # the override did not stick
    lexical = retriever.invoke(QUERY, k=10, weights=(0, 1, 0))
    assert [d.id for d in lexical] == [h.id for h in lc_index.search(QUERY, k=10, weights=(0, 1, 0))]
    assert [d.metadata["score"] for d in lexical] == pytest.approx([d.metadata["sparse_score"] for d in lexical])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        retriever.invoke(QUERY, k=0)
    with pytest.raises(TypeError, match="'top_k' \(use k="):
        retriever.invoke(QUERY, top_k=3)


def test_filters(lc_index):
    retriever = BGEM3HybridRetriever(store=lc_index, k=10, filter={"topic": "pets"})
    docs = retriever.invoke(QUERY)
    assert sorted(d.id for d in docs) == [IDS[i] for i, m in enumerate(METAS) if m["topic"] == "pets"]
    docs = retriever.invoke(QUERY, filter={"topic": ["science", "travel"]})
    assert sorted(d.metadata["topic"] for d in docs) == ["science", "science", "travel"]
    assert len(retriever.invoke(QUERY, filter={})) == 10  # {} lifts the retriever's filter
    assert retriever.invoke(QUERY, filter={"topic": "nope"}) == []


def test_from_texts_and_documents(rt_m3_path):
    retriever = BGEM3HybridRetriever.from_texts(
        CORPUS[:5], rt_m3_path, metadatas=METAS[:5], ids=IDS[:5], k=2, device="cpu", max_length=MAX_LENGTH)
    assert isinstance(retriever.store, HybridIndex) and retriever.k == 2
    assert retriever.store.encoder.max_length == MAX_LENGTH  # encoder kwargs reached the index
    assert sorted(retriever.store.ids) == IDS[:5]

    enc = retriever.store.encoder
    docs = [Document(page_content=t, metadata=m, id=f"mine-{i}") for i, (t, m) in enumerate(zip(CORPUS[:4], METAS))]
    r2 = BGEM3HybridRetriever.from_documents(docs, enc, k=4, weights=(1, 1, 1))
    assert r2.weights == (1.0, 1.0, 1.0)
    got = r2.invoke(CORPUS[2])
    assert sorted(d.id for d in got) == ["mine-0", "mine-1", "mine-2", "mine-3"]
    assert got[0].id == "mine-2" and got[0].page_content == CORPUS[2]


def test_add_documents_ids(rt_encoder):
    retriever = BGEM3HybridRetriever(store=HybridIndex(rt_encoder))
    a = Document(page_content=CORPUS[0], id="a")
    b = Document(page_content=CORPUS[1])
    ids = retriever.add_documents([a, b])
    assert ids[0] == "a" and len(ids[1]) >= 32 and ids[1] in retriever.store
    assert retriever.add_documents([b], ids=["explicit"]) == ["explicit"]
    # upsert: same id replaces the text
    retriever.add_documents([Document(page_content=CORPUS[4], id="a", metadata={"v": 2})])
    assert len(retriever.store) == 3
    assert retriever.store.get(["a"])[0].text == CORPUS[4]
    retriever.delete(["explicit"])
    assert "explicit" not in retriever.store
    with pytest.raises(ValueError, match="2 ids for 1 texts"):
        retriever.add_documents([a], ids=["x", "y"])


def test_metadata_collision_warns_and_keeps_store(rt_encoder):
    index = HybridIndex(rt_encoder)
    index.add(["cats are nice"], ids=["x"], metadatas=[{"score": "five stars"}])
    with pytest.warns(UserWarning, match="already has the key 'score'.*metadata_key_prefix"):
        doc = BGEM3HybridRetriever(store=index).invoke("cats")[0]
    assert isinstance(doc.metadata["score"], float)
    assert index.get(["x"])[0].metadata == {"score": "five stars"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        doc = BGEM3HybridRetriever(store=index, metadata_key_prefix="bgem3_").invoke("cats")[0]
    assert doc.metadata["score"] == "five stars"
    assert set(doc.metadata) == {"score", *("bgem3_" + k for k in SCORE_KEYS)}


async def test_async_equals_sync_and_runs_off_the_loop(lc_index):
    seen_threads = []

    class RecordingStore:
        """Any object with the HybridStore methods will do; this one records the thread."""

        def add(self, texts, ids=None, metadatas=None):
            return lc_index.add(texts, ids, metadatas)

        def delete(self, ids):
            lc_index.delete(ids)

        def search(self, query, k=4, weights=(0.4, 0.2, 0.4), *, filter=None, candidates=100, mode="weighted"):
            seen_threads.append(threading.get_ident())
            return lc_index.search(query, k, weights, filter=filter, candidates=candidates, mode=mode)

        def __len__(self):
            return len(lc_index)

    retriever = BGEM3HybridRetriever(store=RecordingStore(), k=3)
    sync = retriever.invoke(QUERY, k=5, filter={"topic": "pets"})
    results = await asyncio.gather(retriever.ainvoke(QUERY, k=5, filter={"topic": "pets"}),
                                   retriever.ainvoke("bread"))
    assert [_doc_tuple(d) for d in results[0]] == [_doc_tuple(d) for d in sync]
    assert len(results[1]) == 3
    loop_thread = threading.get_ident()
    assert seen_threads[0] == loop_thread  # the sync call ran here
    assert all(t != loop_thread for t in seen_threads[1:])  # the async ones in worker threads


def test_store_must_follow_the_protocol():
    with pytest.raises(ValidationError, match="lacks add, delete, search"):
        BGEM3HybridRetriever(store=object())
    with pytest.raises(ValidationError, match="weights must be three"):
        BGEM3HybridRetriever(store=HybridIndex(None, dim=4), weights=(1, 2))


# ---------------------------------------------------------------------------------- reranker

def _candidates():
    return [Document(page_content=t, metadata=dict(m), id=i) for t, m, i in zip(CORPUS, METAS, IDS)]


def test_reranker_order_equals_independent_fused_scores(rt_encoder):
    weights = (0.2, 0.5, 0.3)
    docs = _candidates()
    reranker = BGEM3Reranker(encoder=rt_encoder, top_n=4, weights=weights)
    out = reranker.compress_documents(docs, QUERY)
    fused, dense, sparse, colb = independent_scores(rt_encoder, QUERY, CORPUS, weights)
    assert [d.id for d in out] == [IDS[i] for i in np.argsort(-fused, kind="stable")[:4]]
    for d in out:
        i = IDS.index(d.id)
        assert d.metadata["score"] == pytest.approx(fused[i], rel=1e-5)
        assert (d.metadata["dense_score"], d.metadata["sparse_score"], d.metadata["colbert_score"]) == \
            pytest.approx((dense[i], sparse[i], colb[i]), rel=1e-5)
        assert d.metadata["topic"] == METAS[i]["topic"]
    assert all(set(d.metadata) == {"topic", "n"} for d in docs)  # inputs untouched
    assert len(reranker.compress_documents(docs, QUERY)) == 4
    assert reranker.compress_documents([], QUERY) == []


def test_reranker_over_retriever_matches_retriever_scores(lc_index, rt_encoder):
    """Reranking the retriever's own results reproduces its fused scores (same semantics)."""
    retrieved = BGEM3HybridRetriever(store=lc_index, k=6, weights=(0.3, 0.3, 0.4)).invoke(QUERY)
    reranked = BGEM3Reranker(encoder=rt_encoder, top_n=None, weights=(0.3, 0.3, 0.4)).compress_documents(
        list(reversed(retrieved)), QUERY)
    assert [d.id for d in reranked] == [d.id for d in retrieved]
    assert [d.metadata["score"] for d in reranked] == pytest.approx([d.metadata["score"] for d in retrieved], rel=1e-5)


async def test_reranker_async_and_options(rt_m3_path, rt_encoder):
    reranker = BGEM3Reranker(encoder=rt_encoder, top_n=2, mode="rrf", metadata_key_prefix="m3_")
    sync = reranker.compress_documents(_candidates(), QUERY)
    async_ = await reranker.acompress_documents(_candidates(), QUERY)
    assert [(d.id, d.metadata) for d in sync] == [(d.id, d.metadata) for d in async_]
    assert "m3_score" in sync[0].metadata and "score" not in sync[0].metadata
    loaded = BGEM3Reranker(model_name=rt_m3_path, model_kwargs={"device": "cpu", "max_length": MAX_LENGTH})
    assert loaded.encoder.max_length == MAX_LENGTH and loaded.model_name == rt_m3_path
    with pytest.raises(ValidationError, match="model_kwargs are only used"):
        BGEM3Reranker(encoder=rt_encoder, model_kwargs={"device": "cpu"})
    with pytest.raises(ValidationError, match="encoder must be a bgem3.Encoder"):
        BGEM3Reranker(encoder=rt_m3_path)
    with pytest.raises(ValidationError, match="top_n"):
        BGEM3Reranker(encoder=rt_encoder, top_n=0)
    with pytest.raises(ValueError, match="query is empty"):
        reranker.compress_documents(_candidates(), "  ")


def test_reranker_in_contextual_compression_retriever(lc_index, rt_encoder):
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    base = BGEM3HybridRetriever(store=lc_index, k=8, weights=(1, 0, 0))
    ccr = retrievers.ContextualCompressionRetriever(
        base_compressor=BGEM3Reranker(encoder=rt_encoder, top_n=3), base_retriever=base)
    out = ccr.invoke(QUERY)
    expected = BGEM3Reranker(encoder=rt_encoder, top_n=3).compress_documents(base.invoke(QUERY), QUERY)
    assert [d.id for d in out] == [d.id for d in expected]
