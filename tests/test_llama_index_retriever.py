"""LlamaIndex BGEM3HybridRetriever and BGEM3Reranker on the tiny BGE-M3 checkpoint."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from llama_index.core import Document
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, TextNode
from llama_index.core.vector_stores.types import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from bgem3 import HybridIndex
from llama_index_bgem3 import BGEM3HybridRetriever, BGEM3Reranker
from llama_index_bgem3._nodes import filters_to_store

from conftest_retrievers import CORPUS, IDS, METAS, MAX_LENGTH, independent_scores, rt_encoder, rt_m3_path  # noqa: F401

QUERY = "where does the cat sleep at night"
CHANNELS = ("dense_score", "sparse_score", "colbert_score")


@pytest.fixture(scope="module")
def li_retriever(rt_encoder) -> BGEM3HybridRetriever:
    nodes = [TextNode(id_=i, text=t, metadata=m) for i, t, m in zip(IDS, CORPUS, METAS)]
    return BGEM3HybridRetriever.from_nodes(nodes, rt_encoder, similarity_top_k=4, colbert_dtype="float32")


def _key(nws: NodeWithScore):
    m = nws.node.metadata
    return (nws.node.node_id, nws.node.get_content(), nws.score, m["dense_score"], m["sparse_score"], m["colbert_score"])


def _hit_key(h):
    return (h.id, h.text, h.score, h.dense_score, h.sparse_score, h.colbert_score)


def test_same_results_as_store_search(li_retriever, rt_encoder):
    out = li_retriever.retrieve(QUERY)
    assert [_key(n) for n in out] == [_hit_key(h) for h in li_retriever.store.search(QUERY, k=4)]
    for n in out:
        i = IDS.index(n.node.node_id)
        assert {k: n.node.metadata[k] for k in ("topic", "n")} == METAS[i]
        # the scores stay out of what the LLM and the embedder see
        assert "dense_score" not in n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "topic" in n.node.get_content(metadata_mode=MetadataMode.LLM)
    full = BGEM3HybridRetriever(li_retriever.store, similarity_top_k=10).retrieve(QUERY)
    fused, *_ = independent_scores(rt_encoder, QUERY, CORPUS)
    assert [n.node.node_id for n in full] == [IDS[i] for i in np.argsort(-fused, kind="stable")]
    assert [n.score for n in full] == pytest.approx(sorted(fused, reverse=True), rel=1e-5)


def test_options_reach_the_store(li_retriever):
    r = BGEM3HybridRetriever(li_retriever.store, similarity_top_k=6, weights=(0, 1, 0), mode="rrf", candidates=2)
    out = r.retrieve(QUERY)
    hits = li_retriever.store.search(QUERY, k=6, weights=(0, 1, 0), mode="rrf", candidates=2)
    assert [_key(n) for n in out] == [_hit_key(h) for h in hits]


@pytest.mark.parametrize("filters, store_filter", [
    (MetadataFilters(filters=[ExactMatchFilter(key="topic", value="pets")]), {"topic": "pets"}),
    (MetadataFilters(filters=[MetadataFilter(key="topic", value="food", operator=FilterOperator.EQ),
                              MetadataFilter(key="n", value=8)]), {"topic": "food", "n": 8}),
    (MetadataFilters(filters=[MetadataFilter(key="topic", value=["science", "travel"], operator=FilterOperator.IN)]),
     {"topic": ["science", "travel"]}),
    (MetadataFilters(filters=[ExactMatchFilter(key="topic", value="food"), ExactMatchFilter(key="topic", value="pets")],
                     condition=FilterCondition.OR), {"topic": ["food", "pets"]}),
    (MetadataFilters(filters=[  # nested: (topic in pets, food) AND n in (0, 4, 9)
        MetadataFilters(filters=[ExactMatchFilter(key="topic", value="pets"), ExactMatchFilter(key="topic", value="food")],
                        condition=FilterCondition.OR),
        MetadataFilter(key="n", value=[0, 4, 9], operator=FilterOperator.IN)]), {"topic": ["pets", "food"], "n": [0, 4, 9]}),
])
def test_filters_translate_and_apply(li_retriever, filters, store_filter):
    assert filters_to_store(filters) == store_filter
    out = BGEM3HybridRetriever(li_retriever.store, similarity_top_k=10, filters=filters).retrieve(QUERY)
    expected = [h.id for h in li_retriever.store.search(QUERY, k=10, filter=store_filter)]
    assert [n.node.node_id for n in out] == expected
    allowed = {k: v if isinstance(v, list) else [v] for k, v in store_filter.items()}
    matching = [i for i, m in zip(IDS, METAS) if all(m[k] in vs for k, vs in allowed.items())]
    assert sorted(expected) == sorted(matching) and matching


def test_contradictory_filters_return_nothing(li_retriever):
    f = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="pets"), ExactMatchFilter(key="topic", value="food")])
    assert filters_to_store(f).matches({"topic": "pets"}) is False
    assert BGEM3HybridRetriever(li_retriever.store, filters=f).retrieve(QUERY) == []


def test_a_list_value_with_eq_is_refused(li_retriever):
    filters = MetadataFilters(filters=[MetadataFilter(key="topic", value=["a", "b"], operator=FilterOperator.EQ)])
    with pytest.raises(ValueError, match="FilterOperator.IN"):
        BGEM3HybridRetriever(li_retriever.store, filters=filters)


def test_from_documents_keeps_document_links(rt_encoder):
    docs = [Document(text=t, metadata=m, id_=f"doc{i}") for i, (t, m) in enumerate(zip(CORPUS[:4], METAS))]
    r = BGEM3HybridRetriever.from_documents(docs, rt_encoder, similarity_top_k=4)  # SentenceSplitter by default
    assert len(r.store) == 4
    out = r.retrieve(CORPUS[1])
    assert out[0].node.get_content() == CORPUS[1]
    assert out[0].node.ref_doc_id == "doc1"
    assert out[0].node.relationships[NodeRelationship.SOURCE].node_id == "doc1"
    assert {n.node.ref_doc_id for n in out} == {"doc0", "doc1", "doc2", "doc3"}
    whole = BGEM3HybridRetriever.from_documents(docs, rt_encoder, transformations=[], similarity_top_k=2)
    assert sorted(whole.store.ids) == ["doc0", "doc1", "doc2", "doc3"]
    whole.add_documents([Document(text=CORPUS[5], id_="doc5")], transformations=[])
    assert whole.retrieve(CORPUS[5])[0].node.node_id == "doc5"
    whole.delete(["doc5"])
    assert "doc5" not in whole.store


def test_over_an_existing_store(rt_encoder):
    index = HybridIndex(rt_encoder)
    index.add(CORPUS[:3], ids=["a", "b", "c"], metadatas=[{"src": "x"}, {"src": "y"}, {}])
    out = BGEM3HybridRetriever(index, similarity_top_k=1).retrieve(CORPUS[1])
    assert isinstance(out[0].node, TextNode)
    assert (out[0].node.node_id, out[0].node.text, out[0].node.metadata["src"]) == ("b", CORPUS[1], "y")
    with pytest.raises(TypeError, match="lacks add, delete, search"):
        BGEM3HybridRetriever(object())
    with pytest.raises(ValueError, match="similarity_top_k"):
        BGEM3HybridRetriever(index, similarity_top_k=0)


def test_collision_warning_and_prefix(rt_encoder):
    index = HybridIndex(rt_encoder)
    r = BGEM3HybridRetriever(index)
    r.add_nodes([TextNode(id_="x", text="cats", metadata={"dense_score": "user"})])
    with pytest.warns(UserWarning, match="'dense_score'.*metadata_key_prefix"):
        assert isinstance(r.retrieve("cats")[0].node.metadata["dense_score"], float)
    out = BGEM3HybridRetriever(index, metadata_key_prefix="m3_").retrieve("cats")[0]
    assert out.node.metadata["dense_score"] == "user" and "m3_sparse_score" in out.node.metadata


async def test_async_equals_sync_off_the_loop(li_retriever):
    seen = []
    inner = li_retriever.store

    class RecordingStore:
        def add(self, texts, ids=None, metadatas=None):
            return inner.add(texts, ids, metadatas)

        def delete(self, ids):
            inner.delete(ids)

        def search(self, query, k=4, weights=(0.4, 0.2, 0.4), *, filter=None, candidates=100, mode="weighted"):
            seen.append(threading.get_ident())
            return inner.search(query, k, weights, filter=filter, candidates=candidates, mode=mode)

        def __len__(self):
            return len(inner)

    r = BGEM3HybridRetriever(RecordingStore(), similarity_top_k=3,
                             filters=MetadataFilters(filters=[ExactMatchFilter(key="topic", value="pets")]))
    sync = r.retrieve(QUERY)
    a, b = await asyncio.gather(r.aretrieve(QUERY), r.aretrieve("bread"))
    assert [_key(n) for n in a] == [_key(n) for n in sync]
    assert len(b) == 3
    assert seen[0] == threading.get_ident() and all(t != seen[0] for t in seen[1:])


# ---------------------------------------------------------------------------------- reranker

def _nodes():
    return [NodeWithScore(node=TextNode(id_=i, text=t, metadata=dict(m)), score=0.0) for i, t, m in zip(IDS, CORPUS, METAS)]


def test_reranker_order_equals_independent_fused_scores(rt_encoder):
    weights = (0.5, 0.1, 0.4)
    nodes = _nodes()
    out = BGEM3Reranker(encoder=rt_encoder, top_n=5, weights=weights).postprocess_nodes(nodes, query_str=QUERY)
    fused, dense, sparse, colb = independent_scores(rt_encoder, QUERY, CORPUS, weights)
    assert [n.node.node_id for n in out] == [IDS[i] for i in np.argsort(-fused, kind="stable")[:5]]
    for n in out:
        i = IDS.index(n.node.node_id)
        assert n.score == pytest.approx(fused[i], rel=1e-5)
        assert [n.node.metadata[k] for k in CHANNELS] == pytest.approx([dense[i], sparse[i], colb[i]], rel=1e-5)
    assert all(set(n.node.metadata) == {"topic", "n"} and n.score == 0.0 for n in nodes)  # inputs untouched


def test_reranker_metadata_mode_embed(rt_encoder):
    nodes = _nodes()
    out = BGEM3Reranker(encoder=rt_encoder, top_n=None, metadata_mode=MetadataMode.EMBED).postprocess_nodes(
        nodes, query_str=QUERY)
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert texts[0].startswith("topic: pets")
    fused, *_ = independent_scores(rt_encoder, QUERY, texts)
    assert [n.score for n in out] == pytest.approx(sorted(fused, reverse=True), rel=1e-5)


def test_reranker_over_retriever_reproduces_its_scores(li_retriever, rt_encoder):
    retrieved = BGEM3HybridRetriever(li_retriever.store, similarity_top_k=6).retrieve(QUERY)
    reranked = BGEM3Reranker(encoder=rt_encoder, top_n=None).postprocess_nodes(retrieved[::-1], query_str=QUERY)
    assert [n.node.node_id for n in reranked] == [n.node.node_id for n in retrieved]
    assert [n.score for n in reranked] == pytest.approx([n.score for n in retrieved], rel=1e-5)


async def test_reranker_async_and_errors(rt_m3_path, rt_encoder):
    rr = BGEM3Reranker(encoder=rt_encoder, top_n=2, mode="rrf")
    sync = rr.postprocess_nodes(_nodes(), query_str=QUERY)
    async_ = await rr.apostprocess_nodes(_nodes(), query_str=QUERY)
    assert [(n.node.node_id, n.score) for n in sync] == [(n.node.node_id, n.score) for n in async_]
    assert rr.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):
        rr.postprocess_nodes(_nodes())
    with pytest.raises(ValueError, match="top_n"):
        BGEM3Reranker(encoder=rt_encoder, top_n=0)
    loaded = BGEM3Reranker(model_name=rt_m3_path, model_kwargs={"device": "cpu", "max_length": MAX_LENGTH})
    assert loaded.encoder.max_length == MAX_LENGTH and loaded.model_name == rt_m3_path
    with pytest.raises(ValueError, match="model_kwargs are only used"):
        BGEM3Reranker(encoder=rt_encoder, model_kwargs={"device": "cpu"})
    with pytest.raises(TypeError, match="encoder must be a bgem3.Encoder"):
        BGEM3Reranker(encoder=rt_m3_path)
    assert loaded.to_dict()["top_n"] == 3 and "encoder" not in loaded.to_dict()
