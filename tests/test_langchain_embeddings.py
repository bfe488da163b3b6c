"""LangChain adapters: standard langchain-tests suites, values against the Encoder, E5 prefixes,
shared weights, async, errors, and retrieval on real MiniLM weights."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

import langchain_bgem3
from bgem3._loading import encoder_cache_info, shared_encoder
from langchain_bgem3 import BGEM3Embeddings, BGEM3SparseEmbeddings, E5Embeddings

from _adapter_fixtures import (
    CORPUS,
    QUERIES,
    BlockingSpy,
    RecordingSpy,
    minilm_path,
    run_python,
    tiny_e5_path,
    tiny_m3_path,
    tiny_no_heads_path,
)


@pytest.fixture(scope="module", autouse=True)
def _keep_encoders_loaded():
    """Hold the encoders for the whole module so the per-test instances reuse them."""
    held = [shared_encoder(tiny_m3_path(), device="cpu"), shared_encoder(minilm_path(), device="cpu"),
            shared_encoder(tiny_e5_path(), device="cpu", profile="e5")]
    yield held


# --------------------------------------------------------------------------- standard suites

class TestBGEM3EmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return BGEM3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": tiny_m3_path(), "model_kwargs": {"device": "cpu"}}


class TestBGEM3EmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return BGEM3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": tiny_m3_path(), "model_kwargs": {"device": "cpu"}}


class TestE5EmbeddingsStandardUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return E5Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": tiny_e5_path(), "model_kwargs": {"device": "cpu"}}


class TestE5EmbeddingsStandardIntegration(EmbeddingsIntegrationTests):
    """On the real MiniLM weights."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return E5Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_name": minilm_path(), "model_kwargs": {"device": "cpu"}}


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def m3() -> BGEM3Embeddings:
    return BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu"})


@pytest.fixture(scope="module")
def e5_minilm() -> E5Embeddings:
    return E5Embeddings(model_name=minilm_path(), model_kwargs={"device": "cpu"})


TEXTS = ["BGE M3 supports dense, sparse and multi-vector retrieval.", "hello world",
         "LangChain 에 대해서 알려주세요.", "a much longer sentence " * 20]


# --------------------------------------------------------------------------- values

def test_bgem3_values_are_the_encoders(m3):
    enc = m3.encoder
    docs = m3.embed_documents(TEXTS)
    assert isinstance(docs, list) and all(isinstance(row, list) for row in docs)
    assert all(type(x) is float for row in docs for x in row)  # plain Python floats, not numpy
    np.testing.assert_array_equal(np.asarray(docs, dtype=np.float32), enc.encode_documents(TEXTS).dense)
    q = m3.embed_query(TEXTS[0])
    assert all(type(x) is float for x in q) and len(q) == enc.hidden_size
    np.testing.assert_array_equal(np.asarray(q, dtype=np.float32), enc.encode_queries([TEXTS[0]]).dense[0])
    assert m3.embed_documents([]) == []


def test_e5_prefixes_are_applied(e5_minilm):
    enc = e5_minilm.encoder
    q = e5_minilm.embed_query("how tall is mount everest")
    d = e5_minilm.embed_documents(["Everest is 8849 metres high."])[0]
    np.testing.assert_allclose(q, enc.encode(["query: how tall is mount everest"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(d, enc.encode(["passage: Everest is 8849 metres high."]).dense[0], atol=1e-6)
    raw = enc.encode(["how tall is mount everest"]).dense[0]
    assert not np.allclose(q, raw, atol=1e-3)  # the prefix changed the vector


def test_e5_instruction_overrides(e5_minilm):
    enc = e5_minilm.encoder
    custom = E5Embeddings(encoder=enc, query_instruction="search_query: ", document_instruction="")
    assert custom.encoder is enc  # no second load
    np.testing.assert_allclose(custom.embed_query("cats"), enc.encode(["search_query: cats"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(custom.embed_documents(["dogs"])[0], enc.encode(["dogs"]).dense[0], atol=1e-6)
    # braces in a user's prefix are literal text, not format fields
    braces = E5Embeddings(encoder=enc, query_instruction="{q}: ")
    np.testing.assert_allclose(braces.embed_query("x"), enc.encode(["{q}: x"]).dense[0], atol=1e-6)


def test_e5_instruct_task_formats_queries_only():
    task = "Given a question, retrieve passages that answer it"
    emb = E5Embeddings(model_name=tiny_e5_path(), model_kwargs={"device": "cpu"}, task=task)
    enc = emb.encoder
    np.testing.assert_allclose(emb.embed_query("why is the sky blue"),
                               enc.encode([f"Instruct: {task}\nQuery: why is the sky blue"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(emb.embed_documents(["Rayleigh scattering."])[0],
                               enc.encode(["Rayleigh scattering."]).dense[0], atol=1e-6)


def test_e5_on_a_bare_folder_uses_mean_pooling():
    emb = E5Embeddings(model_name=tiny_e5_path(), model_kwargs={"device": "cpu"})
    assert emb.encoder.profile.pooling == "mean"
    np.testing.assert_allclose(emb.embed_query("x"), emb.encoder.encode(["query: x"]).dense[0], atol=1e-6)


def test_e5_refuses_a_bge_m3_model_and_a_task_on_plain_e5():
    with pytest.raises(ValueError, match="BGEM3Embeddings"):
        E5Embeddings(model_name=tiny_m3_path(), model_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="e5-instruct"):
        E5Embeddings(model_name=tiny_e5_path(), model_kwargs={"device": "cpu", "profile": "e5"}, task="do it")


def test_encode_kwargs_batch_size_and_max_length_reach_the_encoder(m3, monkeypatch):
    emb = BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"batch_size": 2, "max_length": 8})
    spy = RecordingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)
    got = emb.embed_documents(TEXTS)
    assert [c[1] for c in spy.calls] == [2]
    monkeypatch.undo()
    # batch 2 vs the default batch: equal to float rounding (BLAS picks kernels by shape)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32),
                               m3.encoder.encode(TEXTS, max_length=8).dense, atol=1e-6, rtol=0)
    assert not np.allclose(got[3], m3.encoder.encode([TEXTS[3]]).dense[0])  # truncation happened
    top = BGEM3Embeddings(encoder=m3.encoder, batch_size=3)
    spy = RecordingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)
    top.embed_query("q")
    assert spy.calls[0][1] == 3


def test_show_progress_draws_a_bar(m3, capfd):
    BGEM3Embeddings(encoder=m3.encoder, show_progress=True, batch_size=1).embed_documents(TEXTS)
    assert "Encoding" in capfd.readouterr().err
    BGEM3Embeddings(encoder=m3.encoder, show_progress=False, batch_size=1).embed_documents(TEXTS)
    assert "Encoding" not in capfd.readouterr().err


# --------------------------------------------------------------------------- sharing

def test_dense_and_sparse_share_one_loaded_encoder():
    path = tiny_m3_path()
    before = encoder_cache_info()["loads"]
    dense = BGEM3Embeddings(model_name=path, model_kwargs={"device": "cpu", "max_tokens_per_batch": 4096})
    sparse = BGEM3SparseEmbeddings(model_name=path, model_kwargs={"device": "cpu", "max_tokens_per_batch": 4096})
    via_encoder = BGEM3SparseEmbeddings(encoder=dense.encoder)
    assert dense.encoder is sparse.encoder is via_encoder.encoder
    assert encoder_cache_info()["loads"] == before + 1
    other_dtype = BGEM3Embeddings(model_name=path, model_kwargs={"device": "cpu", "dtype": "bf16",
                                                                 "max_tokens_per_batch": 4096})
    assert other_dtype.encoder is not dense.encoder  # different dtype: different weights
    assert encoder_cache_info()["loads"] == before + 2


def test_sparse_embeddings_match_the_encoder(m3):
    sparse = BGEM3SparseEmbeddings(encoder=m3.encoder)
    vecs = sparse.embed_documents(TEXTS)
    ref = m3.encoder.encode_documents(TEXTS, dense=False, sparse=True).sparse
    for vec, want in zip(vecs, ref):
        assert vec.indices == sorted(want) and len(set(vec.indices)) == len(vec.indices)
        assert vec.values == pytest.approx([want[i] for i in vec.indices], abs=0)
        assert all(type(i) is int for i in vec.indices) and all(type(v) is float for v in vec.values)
    q = sparse.embed_query("hello world")
    assert dict(zip(q.indices, q.values)) == pytest.approx(m3.encoder.encode_queries(["hello world"], dense=False, sparse=True).sparse[0])


async def test_sparse_async_matches_sync(m3):
    sparse = BGEM3SparseEmbeddings(encoder=m3.encoder)
    assert await sparse.aembed_documents(TEXTS[:2]) == sparse.embed_documents(TEXTS[:2])
    assert await sparse.aembed_query("hello") == sparse.embed_query("hello")


def test_sparse_refuses_a_model_without_heads():
    with pytest.raises(ValueError, match="sparse_linear.pt"):
        BGEM3SparseEmbeddings(model_name=tiny_no_heads_path(), model_kwargs={"device": "cpu", "profile": "m3"})


# --------------------------------------------------------------------------- async

@pytest.mark.parametrize("method,arg", [("aembed_documents", ["a", "b"]), ("aembed_query", "a")])
async def test_async_does_not_block_the_event_loop(m3, monkeypatch, method, arg):
    spy = BlockingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)
    emb = BGEM3Embeddings(encoder=m3.encoder)

    async def release_soon():
        await asyncio.sleep(0.05)  # runs only if the loop is free while the model works
        spy.released.set()

    result, _ = await asyncio.gather(getattr(emb, method)(arg), release_soon())
    assert spy.ran_while_waiting is True
    assert spy.threads and spy.threads[0] != threading.main_thread().name
    monkeypatch.undo()
    want = emb.embed_documents(arg) if method == "aembed_documents" else emb.embed_query(arg)
    assert result == want


# --------------------------------------------------------------------------- errors

def test_bad_options_are_named(m3):
    with pytest.raises(ValueError, match="devices"):
        BGEM3Embeddings(model_name=tiny_m3_path(), model_kwargs={"devices": "cpu"})
    with pytest.raises(ValueError, match="output_value"):
        BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"output_value": "token_embeddings"})
    with pytest.raises(ValueError, match="precision"):
        BGEM3Embeddings(encoder=m3.encoder, encode_kwargs={"precision": "int8"})
    with pytest.raises(ValueError, match="encoder="):
        BGEM3Embeddings(encoder=m3.encoder, model_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="does not match"):
        BGEM3Embeddings(encoder=m3.encoder, model_name="BAAI/bge-m3")
    with pytest.raises(ValueError):
        BGEM3Embeddings(encoder=m3.encoder, batch_size=0)
    with pytest.raises(OSError, match="does not exist"):
        BGEM3Embeddings(model_name="./no/such/folder")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        m3.embed_documents(["ok", None])


def test_missing_langchain_core_names_the_extra():
    res = run_python(
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import langchain_bgem3\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    assert "ERR" in res.stdout, res.stderr
    assert "pip install 'bgem3[langchain]'" in res.stdout


def test_missing_langchain_qdrant_names_the_extra():
    res = run_python(
        "import sys; sys.modules['langchain_qdrant'] = None\n"
        "from langchain_bgem3 import BGEM3SparseEmbeddings, BGEM3Embeddings\n"
        "print('IMPORTED')\n"
        "try:\n    BGEM3SparseEmbeddings(model_name='BAAI/bge-m3')\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    assert "IMPORTED" in res.stdout, res.stderr
    assert "ERR" in res.stdout and "pip install 'bgem3[langchain-qdrant]'" in res.stdout


def test_all_lists_exactly_the_public_classes():
    from langchain_qdrant import SparseEmbeddings

    assert sorted(langchain_bgem3.__all__) == ["BGECrossEncoderReranker", "BGEM3Embeddings", "BGEM3HybridRetriever",
                                               "BGEM3Reranker", "BGEM3SparseEmbeddings", "BGERerankerCrossEncoder",
                                               "E5Embeddings"]
    for name in langchain_bgem3.__all__:
        obj = getattr(langchain_bgem3, name)
        assert isinstance(obj, type) and obj.__name__ == name
    assert issubclass(BGEM3Embeddings, Embeddings) and issubclass(E5Embeddings, Embeddings)
    assert issubclass(BGEM3SparseEmbeddings, SparseEmbeddings)
    assert not issubclass(E5Embeddings, BGEM3Embeddings)


# --------------------------------------------------------------------------- end to end

def test_in_memory_vector_store_finds_the_right_document_with_real_minilm(e5_minilm):
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=e5_minilm)
    store.add_documents([Document(page_content=t, metadata={"i": i}) for i, t in enumerate(CORPUS)])
    for query, want in QUERIES:
        hits = store.similarity_search(query, k=2)
        assert hits[0].metadata["i"] == want, (query, [h.page_content for h in hits])


async def test_in_memory_vector_store_async_path(e5_minilm):
    from langchain_core.vectorstores import InMemoryVectorStore

    store = await InMemoryVectorStore.afrom_texts(CORPUS, e5_minilm)
    hits = await store.asimilarity_search(QUERIES[3][0], k=1)
    assert hits[0].page_content == CORPUS[QUERIES[3][1]]
