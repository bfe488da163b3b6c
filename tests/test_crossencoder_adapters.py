"""The BGE cross-encoder in LangChain and LlamaIndex: compressors, postprocessors, retrievers over
HybridIndex and QdrantHybridStore (the store's candidates in, the reranker's top-n out)."""

from __future__ import annotations

import asyncio
import copy
import pickle

import numpy as np
import pytest

from bgem3 import HybridIndex, Reranker
from bgem3.testing import make_reranker_checkpoint

from conftest_retrievers import CORPUS, IDS, METAS, MAX_LENGTH, rt_encoder, rt_m3_path  # noqa: F401

QUERY = "where does the cat sleep at night"


@pytest.fixture(scope="module")
def rr_path(tmp_path_factory):
    return make_reranker_checkpoint(str(tmp_path_factory.mktemp("ce-xlmr")), "xlmr")


@pytest.fixture(scope="module")
def rr(rr_path):
    from bgem3.crossencoder import shared_reranker

    rr = shared_reranker(rr_path, device="cpu")
    assert isinstance(rr, Reranker)
    return rr


@pytest.fixture(scope="module")
def index(rt_encoder):
    idx = HybridIndex(rt_encoder)
    idx.add(CORPUS, ids=IDS, metadatas=METAS)
    return idx


@pytest.fixture(scope="module")
def qdrant_store(rt_encoder):
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from bgem3.stores.qdrant import QdrantHybridStore

    store = QdrantHybridStore(rt_encoder, client=QdrantClient(":memory:"), collection_name="ce")
    store.add(CORPUS, ids=IDS, metadatas=METAS)
    return store


def _close(a, b):
    """Equal to float rounding (a pair's score moves ~1e-7 with the batch it is padded with)."""
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=0, atol=1e-5)


def _expected(rr, query, texts, top_n):
    s = np.asarray(rr.compute_score([(query, t) for t in texts]))
    order = list(np.argsort(-s, kind="stable"))[:top_n]
    return order, s


# ------------------------------------------------------------------ LangChain

def test_langchain_cross_encoder_is_a_drop_in_for_crossencoderreranker(rr, rr_path):
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
    from langchain_core.cross_encoders import BaseCrossEncoder
    from langchain_core.documents import Document

    from langchain_bgem3 import BGERerankerCrossEncoder

    ce = BGERerankerCrossEncoder(model_name=rr_path, model_kwargs={"device": "cpu"})
    assert isinstance(ce, BaseCrossEncoder) and ce.reranker is rr  # shared with the same options
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(CORPUS)]
    out = CrossEncoderReranker(model=ce, top_n=3).compress_documents(docs, QUERY)
    order, s = _expected(rr, QUERY, CORPUS, 3)
    assert [d.metadata["i"] for d in out] == order
    _close(ce.score([(QUERY, t) for t in CORPUS]), s)
    assert ce.score([]) == []
    # normalize=True: sentence-transformers' sigmoid scale (HuggingFaceCrossEncoder's for one-label models)
    ce_n = BGERerankerCrossEncoder(reranker=rr, normalize=True)
    _close(ce_n.score([(QUERY, CORPUS[0])]), 1 / (1 + np.exp(-s[:1])))
    # model= (CrossEncoderReranker's spelling) takes a Reranker; pickles and deep-copies share the model
    ce_m = BGERerankerCrossEncoder(model=rr)
    assert ce_m.reranker is rr and ce_m.model_name == rr.model_name
    assert pickle.loads(pickle.dumps(ce)).reranker is rr
    assert copy.deepcopy(ce).reranker is rr
    with pytest.raises(ValueError, match="top_n"):
        BGERerankerCrossEncoder(reranker=rr, top_n=3)
    with pytest.raises(ValueError, match="use_fp16"):
        BGERerankerCrossEncoder(model_name=rr_path, model_kwargs={"use_fp16": True})
    with pytest.raises(ValueError, match="model_kwargs"):
        BGERerankerCrossEncoder(reranker=rr, model_kwargs={"device": "cpu"})


def test_langchain_compressor_scores_in_metadata_sync_and_async(rr, rr_path):
    from langchain_core.documents import Document

    from langchain_bgem3 import BGECrossEncoderReranker

    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(CORPUS)]
    comp = BGECrossEncoderReranker(model=rr_path, model_kwargs={"device": "cpu"}, top_n=4)
    out = comp.compress_documents(docs, QUERY)
    order, s = _expected(rr, QUERY, CORPUS, 4)
    assert [d.metadata["i"] for d in out] == order
    _close([d.metadata["relevance_score"] for d in out], s[order])
    assert "relevance_score" not in docs[0].metadata  # the input documents are not modified
    aout = asyncio.run(comp.acompress_documents(docs, QUERY))
    assert [d.metadata for d in aout] == [d.metadata for d in out]
    assert comp.compress_documents([], QUERY) == []
    with pytest.raises(ValueError, match="query is empty"):
        comp.compress_documents(docs, " ")
    again = pickle.loads(pickle.dumps(comp))
    assert again.reranker is comp.reranker and again.top_n == 4
    with pytest.raises(ValueError, match="top_n"):
        BGECrossEncoderReranker(reranker=rr, top_k=2)


@pytest.mark.parametrize("store_name", ["index", "qdrant_store"])
def test_langchain_retriever_reranks_the_store_candidates(request, store_name, rr):
    from langchain_bgem3 import BGEM3HybridRetriever

    store = request.getfixturevalue(store_name)
    plain = BGEM3HybridRetriever(store=store, k=len(CORPUS))
    base = plain.invoke(QUERY)
    ret = BGEM3HybridRetriever(store=store, k=3, reranker=rr, rerank_candidates=len(CORPUS))
    docs = ret.invoke(QUERY)
    texts = [d.page_content for d in base]
    order, s = _expected(rr, QUERY, texts, 3)
    assert [d.page_content for d in docs] == [texts[i] for i in order]
    by_text = {d.page_content: d for d in base}
    for d in docs:  # the channel scores and the fused score stay beside the rerank score
        for key in ("score", "dense_score", "sparse_score", "colbert_score"):
            assert d.metadata[key] == pytest.approx(by_text[d.page_content].metadata[key])
    _close([d.metadata["rerank_score"] for d in docs], s[order])
    assert [d.page_content for d in docs] != [d.page_content for d in base[:3]]  # the reranker changed something
    # only rerank_candidates hits reach the reranker
    few = BGEM3HybridRetriever(store=store, k=2, reranker=rr, rerank_candidates=3).invoke(QUERY)
    top3 = [d.page_content for d in base[:3]]
    assert {d.page_content for d in few} <= set(top3)
    adocs = asyncio.run(ret.ainvoke(QUERY))
    assert [d.page_content for d in adocs] == [d.page_content for d in docs]


# ------------------------------------------------------------------ LlamaIndex

def test_llama_index_postprocessor_argument_names(rr, rr_path):
    from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode

    from llama_index_bgem3 import BGERerank

    nodes = [NodeWithScore(node=TextNode(text=t, metadata={"topic": m["topic"]}), score=0.01 * i)
             for i, (t, m) in enumerate(zip(CORPUS, METAS))]
    pp = BGERerank(model=rr_path, top_n=3, device="cpu", keep_retrieval_score=True)
    assert pp.reranker is rr
    out = pp.postprocess_nodes(nodes, query_str=QUERY)
    texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    order, s = _expected(rr, QUERY, texts, 3)
    assert [n.node.text for n in out] == [CORPUS[i] for i in order]
    _close([n.score for n in out], s[order])
    assert [n.node.metadata["retrieval_score"] for n in out] == [nodes[i].score for i in order]
    assert "retrieval_score" not in nodes[order[0]].node.metadata  # inputs untouched
    assert out[0].node.hash == nodes[order[0]].node.hash
    content_only = BGERerank(model=rr, top_n=None, metadata_mode=MetadataMode.NONE).postprocess_nodes(nodes, query_str=QUERY)
    assert [n.node.text for n in content_only] == [CORPUS[i] for i in _expected(rr, QUERY, CORPUS, None)[0]]
    aout = asyncio.run(pp.apostprocess_nodes(nodes, query_str=QUERY))
    assert [n.score for n in aout] == [n.score for n in out]
    assert pickle.loads(pickle.dumps(pp)).reranker is rr
    with pytest.raises(ValueError, match="use_fp16=True on CPU"):
        BGERerank(model=rr_path, device="cpu", use_fp16=True)
    with pytest.raises(TypeError, match="top_k.*top_n"):
        BGERerank(model=rr_path, top_k=3)
    with pytest.raises(ValueError, match="needs the query"):
        pp.postprocess_nodes(nodes)


@pytest.mark.parametrize("store_name", ["index", "qdrant_store"])
def test_llama_index_retriever_reranks_the_store_candidates(request, store_name, rr):
    from llama_index_bgem3 import BGEM3HybridRetriever

    store = request.getfixturevalue(store_name)
    base = BGEM3HybridRetriever(store, similarity_top_k=len(CORPUS)).retrieve(QUERY)
    ret = BGEM3HybridRetriever(store, similarity_top_k=3, reranker=rr, rerank_candidates=len(CORPUS))
    out = ret.retrieve(QUERY)
    texts = [n.node.get_content() for n in base]
    order, s = _expected(rr, QUERY, texts, 3)
    assert [n.node.get_content() for n in out] == [texts[i] for i in order]
    _close([n.score for n in out], s[order])
    fused = {n.node.get_content(): n for n in base}
    for n in out:
        ref = fused[n.node.get_content()]
        assert n.node.metadata["retrieval_score"] == pytest.approx(ref.score)
        assert n.node.metadata["dense_score"] == pytest.approx(ref.node.metadata["dense_score"])
        assert "retrieval_score" in n.node.excluded_llm_metadata_keys


def test_retrievers_take_a_reranker_by_name_and_refuse_an_encoder(index, rr_path, rt_encoder):
    from langchain_bgem3 import BGEM3HybridRetriever as LC
    from llama_index_bgem3 import BGEM3HybridRetriever as LI

    assert LC(store=index, reranker=rr_path).reranker.model_name == rr_path
    assert LI(index, reranker=rr_path).reranker.model_name == rr_path
    with pytest.raises(ValueError, match="embedding model, not a cross-encoder"):
        LC(store=index, reranker=rt_encoder)
    with pytest.raises(TypeError, match="embedding model, not a cross-encoder"):
        LI(index, reranker=rt_encoder)


def test_retrievers_with_a_reranker_pickle_and_deep_copy(index, rr):
    from langchain_bgem3 import BGEM3HybridRetriever as LC
    from llama_index_bgem3 import BGEM3HybridRetriever as LI

    lc = LC(store=index, k=2, reranker=rr)
    for again in (pickle.loads(pickle.dumps(lc)), copy.deepcopy(lc)):
        assert again.reranker is rr  # in-process: the same model
        assert [d.page_content for d in again.invoke(QUERY)] == [d.page_content for d in lc.invoke(QUERY)]
    li = LI(index, similarity_top_k=2, reranker=rr)
    again = pickle.loads(pickle.dumps(li))
    assert again.reranker is rr and [n.score for n in again.retrieve(QUERY)] == [n.score for n in li.retrieve(QUERY)]
