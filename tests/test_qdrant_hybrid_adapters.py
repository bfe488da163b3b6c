"""Hybrid (dense + BGE-M3 lexical) search through both frameworks' Qdrant stores, on
``QdrantClient(":memory:")`` with the tiny BGE-M3 checkpoint.

The numbers are checked, not just the plumbing: the sparse vectors Qdrant stores are the
encoder's lexical weights, Qdrant's sparse scores are :func:`bgem3.scoring.lexical_scores`,
its dense scores are the encoder's cosine similarities, and a document queried by its own
text comes first in hybrid mode.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from qdrant_client import QdrantClient  # noqa: E402

from bgem3.scoring import lexical_scores  # noqa: E402

from _adapter_fixtures import tiny_m3_path  # noqa: E402

DOCS = [
    "BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
    "BM25 is a bag-of-words retrieval function that ranks documents by term frequency.",
    "Qdrant is a vector similarity search engine with extended filtering support.",
    "LangChain 은 대규모 언어 모델로 구동되는 애플리케이션을 개발하기 위한 프레임워크입니다.",
    "서울은 대한민국의 수도이다.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "北京是中华人民共和国的首都。",
]
QUERY = "Which retrieval function ranks documents by term frequency?"


def _sparse_of(point, name: str) -> dict[int, float]:
    vec = point.vector[name]
    return dict(zip(vec.indices, vec.values))


# --------------------------------------------------------------------------- LangChain

@pytest.fixture(scope="module")
def lc_facades():
    from langchain_bgem3 import BGEM3Embeddings, BGEM3SparseEmbeddings

    dense = BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu"})
    return dense, BGEM3SparseEmbeddings(encoder=dense.encoder)


@pytest.fixture(scope="module")
def lc_store(lc_facades):
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    dense, sparse = lc_facades
    return QdrantVectorStore.from_texts(
        DOCS, embedding=dense, sparse_embedding=sparse, metadatas=[{"i": i} for i in range(len(DOCS))],
        location=":memory:", collection_name="hybrid", retrieval_mode=RetrievalMode.HYBRID,
    )


def test_langchain_hybrid_puts_the_matching_document_first(lc_store):
    for i, text in enumerate(DOCS):
        hits = lc_store.similarity_search(text, k=3)
        assert hits[0].metadata["i"] == i, (text, [h.page_content for h in hits])
        assert hits[0].page_content == text


def test_langchain_qdrant_stores_the_encoders_lexical_weights(lc_store, lc_facades):
    dense, _ = lc_facades
    points, _ = lc_store.client.scroll("hybrid", limit=100, with_vectors=True, with_payload=True)
    assert len(points) == len(DOCS)
    ref = dense.encoder.encode_documents(DOCS, dense=True, sparse=True)
    for p in points:
        i = p.payload["metadata"]["i"]
        assert _sparse_of(p, lc_store.sparse_vector_name) == pytest.approx(ref.sparse[i], rel=1e-6)
        np.testing.assert_allclose(p.vector[lc_store.vector_name], ref.dense[i], rtol=1e-5, atol=1e-6)


def test_langchain_sparse_and_dense_scores_are_bgem3s(lc_store, lc_facades):
    from langchain_qdrant import QdrantVectorStore, RetrievalMode

    dense, sparse = lc_facades
    enc = dense.encoder
    q = enc.encode_queries([QUERY], dense=True, sparse=True)
    d = enc.encode_documents(DOCS, dense=True, sparse=True)
    want_lex = lexical_scores(q.sparse, d.sparse)[0]
    want_cos = d.dense @ q.dense[0]

    sparse_only = QdrantVectorStore(client=lc_store.client, collection_name="hybrid", embedding=dense,
                                    sparse_embedding=sparse, retrieval_mode=RetrievalMode.SPARSE)
    got = sparse_only.similarity_search_with_score(QUERY, k=len(DOCS))
    assert got, "the query shares tokens with the corpus: sparse search must find some"
    for doc, score in got:
        assert score == pytest.approx(want_lex[doc.metadata["i"]], rel=1e-5)
    assert got[0][0].metadata["i"] == int(np.argmax(want_lex)) == 1

    dense_only = QdrantVectorStore(client=lc_store.client, collection_name="hybrid", embedding=dense,
                                   sparse_embedding=sparse, retrieval_mode=RetrievalMode.DENSE)
    got = dense_only.similarity_search_with_score(QUERY, k=len(DOCS))
    assert [doc.metadata["i"] for doc, _ in got] == list(np.argsort(-want_cos))
    for doc, score in got:
        assert score == pytest.approx(want_cos[doc.metadata["i"]], abs=1e-5)


async def test_langchain_hybrid_async_path(lc_store):
    hits = await lc_store.asimilarity_search(DOCS[2], k=2)
    assert hits[0].metadata["i"] == 2


# --------------------------------------------------------------------------- LlamaIndex

@pytest.fixture(scope="module")
def li_setup():
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    from llama_index_bgem3 import BGEM3Embedding, BGEM3SparseEmbedding, qdrant_sparse_fns

    dense = BGEM3Embedding(tiny_m3_path(), device="cpu")
    sparse = BGEM3SparseEmbedding(encoder=dense.encoder)
    client = QdrantClient(":memory:")
    store = QdrantVectorStore(client=client, collection_name="li-hybrid", enable_hybrid=True, batch_size=3,
                              **qdrant_sparse_fns(sparse))
    nodes = [TextNode(text=t, metadata={"i": i}, excluded_embed_metadata_keys=["i"]) for i, t in enumerate(DOCS)]
    index = VectorStoreIndex(nodes, storage_context=StorageContext.from_defaults(vector_store=store),
                             embed_model=dense)
    return dense, sparse, client, store, index


def test_llama_index_hybrid_puts_the_matching_node_first(li_setup):
    _, _, _, _, index = li_setup
    retriever = index.as_retriever(vector_store_query_mode="hybrid", similarity_top_k=3, sparse_top_k=5)
    for i, text in enumerate(DOCS):
        got = retriever.retrieve(text)
        assert got[0].node.metadata["i"] == i, (text, [n.node.get_content() for n in got])


def test_llama_index_qdrant_stores_the_encoders_lexical_weights(li_setup):
    dense, _, client, store, _ = li_setup
    points, _ = client.scroll("li-hybrid", limit=100, with_vectors=True, with_payload=True)
    assert len(points) == len(DOCS)
    ref = dense.encoder.encode_documents(DOCS, dense=False, sparse=True).sparse
    for p in points:
        i = p.payload["i"]  # LlamaIndex stores node metadata at the payload's top level
        # the store encoded in batches of 3, the reference in one batch: equal up to float rounding
        assert _sparse_of(p, store.sparse_vector_name) == pytest.approx(ref[i], rel=1e-5, abs=1e-6)


def test_llama_index_sparse_scores_are_bgem3s(li_setup):
    dense, _, _, _, index = li_setup
    enc = dense.encoder
    want = lexical_scores(enc.encode_queries([QUERY], dense=False, sparse=True).sparse,
                          enc.encode_documents(DOCS, dense=False, sparse=True).sparse)[0]
    retriever = index.as_retriever(vector_store_query_mode="sparse", similarity_top_k=len(DOCS),
                                   sparse_top_k=len(DOCS))
    got = retriever.retrieve(QUERY)
    assert got and got[0].node.metadata["i"] == int(np.argmax(want))
    for n in got:
        assert n.score == pytest.approx(want[n.node.metadata["i"]], rel=1e-5)
