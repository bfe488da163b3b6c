"""LlamaIndex adapters: values against the Encoder, embed_batch_size, progress, serialisation,
Settings + VectorStoreIndex on real MiniLM weights, sparse embeddings, async, errors."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.embeddings.base_sparse import BaseSparseEmbedding

import llama_index_bgem3
from bgem3._loading import encoder_cache_info, shared_encoder
from llama_index_bgem3 import BGEM3Embedding, BGEM3SparseEmbedding, E5Embedding, qdrant_sparse_fns

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

TEXTS = ["BGE M3 supports dense, sparse and multi-vector retrieval.", "hello world",
         "LangChain 에 대해서 알려주세요.", "a much longer sentence " * 20, "short", "one more text", "the last"]


@pytest.fixture(scope="module", autouse=True)
def _keep_encoders_loaded():
    """Hold the encoders for the whole module so the per-test instances reuse them."""
    yield [shared_encoder(tiny_m3_path(), device="cpu", dtype=None),
           shared_encoder(minilm_path(), device=None, dtype=None)]


@pytest.fixture(scope="module")
def m3() -> BGEM3Embedding:
    return BGEM3Embedding(tiny_m3_path(), device="cpu")


@pytest.fixture(scope="module")
def e5_minilm() -> E5Embedding:
    return E5Embedding(minilm_path())


@pytest.fixture
def restore_settings():
    saved = Settings._embed_model
    yield
    Settings._embed_model = saved


# --------------------------------------------------------------------------- values

def test_bgem3_values_are_the_encoders(m3):
    enc = m3.encoder
    rows = m3.get_text_embedding_batch(TEXTS)
    assert all(type(x) is float for row in rows for x in row)
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.float32), enc.encode_documents(TEXTS).dense)
    q = m3.get_query_embedding(TEXTS[0])
    np.testing.assert_array_equal(np.asarray(q, dtype=np.float32), enc.encode_queries([TEXTS[0]]).dense[0])
    one = m3.get_text_embedding(TEXTS[1])
    np.testing.assert_array_equal(np.asarray(one, dtype=np.float32), enc.encode_documents([TEXTS[1]]).dense[0])


def test_e5_prefixes_and_overrides(e5_minilm):
    enc = e5_minilm.encoder
    np.testing.assert_allclose(e5_minilm.get_query_embedding("cats"), enc.encode(["query: cats"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(e5_minilm.get_text_embedding("dogs"), enc.encode(["passage: dogs"]).dense[0], atol=1e-6)
    custom = E5Embedding(encoder=enc, query_instruction="", text_instruction="doc: ")
    assert custom.encoder is enc
    np.testing.assert_allclose(custom.get_query_embedding("cats"), enc.encode(["cats"]).dense[0], atol=1e-6)
    np.testing.assert_allclose(custom.get_text_embedding("dogs"), enc.encode(["doc: dogs"]).dense[0], atol=1e-6)


def test_e5_instruct_task():
    task = "Given a question, retrieve passages that answer it"
    emb = E5Embedding(tiny_e5_path(), device="cpu", task=task)
    enc = emb.encoder
    np.testing.assert_allclose(emb.get_query_embedding("why"), enc.encode([f"Instruct: {task}\nQuery: why"]).dense[0],
                               atol=1e-6)
    np.testing.assert_allclose(emb.get_text_embedding("because"), enc.encode(["because"]).dense[0], atol=1e-6)
    with pytest.raises(ValueError, match="BGEM3Embedding"):
        E5Embedding(tiny_m3_path(), device="cpu")


def test_embed_batch_size_is_honoured(m3, monkeypatch):
    emb = BGEM3Embedding(encoder=m3.encoder, embed_batch_size=3)
    spy = RecordingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)
    rows = emb.get_text_embedding_batch(TEXTS)
    assert [(n, bs) for n, bs, _ in spy.calls] == [(3, 3), (3, 3), (1, 3)]
    assert [t for _, _, texts in spy.calls for t in texts] == TEXTS  # in order, each once
    assert len(rows) == len(TEXTS)


def test_get_text_embedding_batch_shows_progress(m3, capfd):
    m3.get_text_embedding_batch(TEXTS, show_progress=True)
    assert "Generating embeddings" in capfd.readouterr().err
    m3.get_text_embedding_batch(TEXTS, show_progress=False)
    assert "Generating embeddings" not in capfd.readouterr().err


def test_max_length_truncates(m3):
    short = BGEM3Embedding(encoder=m3.encoder, max_length=8)
    got = short.get_text_embedding(TEXTS[3])
    np.testing.assert_array_equal(np.asarray(got, dtype=np.float32), m3.encoder.encode([TEXTS[3]], max_length=8).dense[0])
    assert not np.allclose(got, m3.get_text_embedding(TEXTS[3]))


# --------------------------------------------------------------------------- serialisation

def test_to_dict_from_dict_round_trip_reloads_the_model(m3):
    emb = BGEM3Embedding(tiny_m3_path(), device="cpu", embed_batch_size=5, max_length=64,
                         query_instruction="q: ", text_instruction="")
    data = emb.to_dict()
    assert data["class_name"] == "BGEM3Embedding" == BGEM3Embedding.class_name()
    assert {k: data[k] for k in ("model_name", "device", "embed_batch_size", "max_length",
                                 "query_instruction", "text_instruction")} == {
        "model_name": tiny_m3_path(), "device": "cpu", "embed_batch_size": 5, "max_length": 64,
        "query_instruction": "q: ", "text_instruction": ""}
    assert "encoder" not in data and "_encoder" not in data
    json.dumps(data)  # plain JSON: no model, no tensors
    back = BGEM3Embedding.from_dict(data)
    assert back.to_dict() == data
    assert back.encoder is emb.encoder  # same options -> the already loaded weights
    assert back.get_query_embedding("x") == emb.get_query_embedding("x")
    again = BGEM3Embedding.from_json(emb.to_json())
    assert again.get_text_embedding("y") == emb.get_text_embedding("y")


def test_e5_round_trip_keeps_task_and_prefixes():
    task = "Retrieve relevant answers"
    emb = E5Embedding(tiny_e5_path(), device="cpu", task=task, text_instruction="doc: ")
    data = emb.to_dict()
    assert data["class_name"] == "E5Embedding" and data["task"] == task and data["text_instruction"] == "doc: "
    back = E5Embedding.from_json(emb.to_json())
    assert back.get_query_embedding("q") == emb.get_query_embedding("q")
    assert back.get_text_embedding("d") == emb.get_text_embedding("d")


def test_round_trip_of_a_facade_built_from_an_encoder(m3):
    emb = BGEM3Embedding(encoder=m3.encoder)
    data = emb.to_dict()
    assert data["device"] == "cpu" and data["dtype"] == "fp32" and data["model_name"] == tiny_m3_path()
    back = BGEM3Embedding.from_dict(data)
    assert back.get_query_embedding("z") == emb.get_query_embedding("z")


def test_sparse_round_trip(m3):
    sparse = BGEM3SparseEmbedding(encoder=m3.encoder, embed_batch_size=4)
    data = sparse.model_dump()
    assert data["class_name"] == "BGEM3SparseEmbedding" and data["embed_batch_size"] == 4
    data.pop("class_name")
    back = BGEM3SparseEmbedding(**data)
    assert back.encoder is m3.encoder
    assert back.get_query_embedding("hello") == sparse.get_query_embedding("hello")


# --------------------------------------------------------------------------- sparse

def test_sparse_values_are_the_encoders(m3):
    sparse = BGEM3SparseEmbedding(encoder=m3.encoder)
    assert isinstance(sparse, BaseSparseEmbedding)
    ref_docs = m3.encoder.encode_documents(TEXTS, dense=False, sparse=True).sparse
    assert sparse.get_text_embedding_batch(TEXTS) == ref_docs
    # alone vs in a padded batch: the same up to float rounding
    assert sparse.get_text_embedding(TEXTS[0]) == pytest.approx(ref_docs[0], rel=1e-5)
    assert sparse.get_query_embedding("hello world") == \
        m3.encoder.encode_queries(["hello world"], dense=False, sparse=True).sparse[0]
    assert all(type(k) is int and type(v) is float and v > 0 for k, v in ref_docs[0].items())


def test_qdrant_sparse_fns_have_the_stores_signature(m3):
    sparse = BGEM3SparseEmbedding(encoder=m3.encoder)
    fns = qdrant_sparse_fns(sparse)
    assert set(fns) == {"sparse_doc_fn", "sparse_query_fn"}
    ids, vals = fns["sparse_doc_fn"](TEXTS[:3])
    ref = m3.encoder.encode_documents(TEXTS[:3], dense=False, sparse=True).sparse
    assert len(ids) == len(vals) == 3
    for i, v, want in zip(ids, vals, ref):
        assert i == sorted(want) and v == [want[k] for k in i]
    qi, qv = fns["sparse_query_fn"](["hello world"])
    assert dict(zip(qi[0], qv[0])) == sparse.get_query_embedding("hello world")
    # from an encoder or a name: same numbers, same loaded weights
    assert qdrant_sparse_fns(m3.encoder)["sparse_doc_fn"](TEXTS[:3]) == (ids, vals)
    assert qdrant_sparse_fns(tiny_m3_path(), device="cpu")["sparse_doc_fn"](TEXTS[:3]) == (ids, vals)
    with pytest.raises(TypeError, match="BGEM3SparseEmbedding"):
        qdrant_sparse_fns(42)
    with pytest.raises(ValueError, match="existing"):
        qdrant_sparse_fns(sparse, device="cpu")


def test_sparse_refuses_a_model_without_heads():
    with pytest.raises(ValueError, match="sparse_linear.pt"):
        BGEM3SparseEmbedding(tiny_no_heads_path(), device="cpu", model_kwargs={"profile": "m3"})


def test_dense_and_sparse_share_one_loaded_encoder():
    before = encoder_cache_info()["loads"]
    dense = BGEM3Embedding(tiny_m3_path(), device="cpu", model_kwargs={"max_tokens_per_batch": 2048})
    sparse = BGEM3SparseEmbedding(tiny_m3_path(), device="cpu", model_kwargs={"max_tokens_per_batch": 2048})
    assert dense.encoder is sparse.encoder is BGEM3SparseEmbedding(encoder=dense.encoder).encoder
    assert encoder_cache_info()["loads"] == before + 1


# --------------------------------------------------------------------------- async

async def test_async_matches_sync_and_does_not_block(m3, monkeypatch):
    emb = BGEM3Embedding(encoder=m3.encoder, embed_batch_size=2)
    want_batch = emb.get_text_embedding_batch(TEXTS[:3])
    assert await emb.aget_text_embedding_batch(TEXTS[:3]) == want_batch
    assert await emb.aget_query_embedding("q") == emb.get_query_embedding("q")
    sparse = BGEM3SparseEmbedding(encoder=m3.encoder)
    assert await sparse.aget_query_embedding("q") == sparse.get_query_embedding("q")
    assert await sparse.aget_text_embedding_batch(TEXTS[:3]) == sparse.get_text_embedding_batch(TEXTS[:3])

    spy = BlockingSpy(m3.encoder.encode)
    monkeypatch.setattr(m3.encoder, "encode", spy)

    async def release_soon():
        await asyncio.sleep(0.05)
        spy.released.set()

    got, _ = await asyncio.gather(emb.aget_query_embedding("q"), release_soon())
    assert spy.ran_while_waiting is True and spy.threads[0] != threading.main_thread().name
    monkeypatch.undo()
    assert got == emb.get_query_embedding("q")


# --------------------------------------------------------------------------- errors

def test_bad_options_are_named(m3):
    with pytest.raises(ValueError, match="devices"):
        BGEM3Embedding(tiny_m3_path(), model_kwargs={"devices": "cpu"})
    with pytest.raises(ValueError, match="own argument"):
        BGEM3Embedding(tiny_m3_path(), model_kwargs={"device": "cpu"})
    with pytest.raises(ValueError, match="encoder="):
        BGEM3Embedding(encoder=m3.encoder, model_kwargs={"revision": "main"})
    with pytest.raises(ValueError, match="does not match"):
        BGEM3Embedding("BAAI/bge-m3", encoder=m3.encoder)
    with pytest.raises(TypeError, match="bgem3.Encoder"):
        BGEM3Embedding(encoder="BAAI/bge-m3")
    with pytest.raises(ValueError):
        BGEM3Embedding(encoder=m3.encoder, embed_batch_size=0)
    with pytest.raises(ValueError, match="fp16 on CPU"):
        BGEM3Embedding(tiny_m3_path(), device="cpu", dtype="fp16")
    with pytest.raises(OSError, match="does not exist"):
        BGEM3Embedding("./no/such/folder")


def test_missing_llama_index_names_the_extra():
    res = run_python(
        "import sys; sys.modules['llama_index'] = None; sys.modules['llama_index.core'] = None\n"
        "try:\n    import llama_index_bgem3\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    assert "ERR" in res.stdout, res.stderr
    assert "pip install 'bgem3[llama-index]'" in res.stdout


def test_all_lists_exactly_the_public_names():
    assert sorted(llama_index_bgem3.__all__) == ["BGEM3Embedding", "BGEM3HybridRetriever", "BGEM3Reranker",
                                                 "BGEM3SparseEmbedding", "BGERerank", "E5Embedding",
                                                 "qdrant_sparse_fns"]
    for name in llama_index_bgem3.__all__:
        obj = getattr(llama_index_bgem3, name)
        assert obj.__name__ == name
    assert issubclass(BGEM3Embedding, BaseEmbedding) and issubclass(E5Embedding, BaseEmbedding)
    assert issubclass(BGEM3SparseEmbedding, BaseSparseEmbedding)
    assert {c.class_name() for c in (BGEM3Embedding, E5Embedding, BGEM3SparseEmbedding)} == \
        {"BGEM3Embedding", "E5Embedding", "BGEM3SparseEmbedding"}


# --------------------------------------------------------------------------- end to end

def test_settings_embed_model_and_vector_store_index_with_real_minilm(e5_minilm, restore_settings):
    Settings.embed_model = e5_minilm
    assert Settings.embed_model is e5_minilm
    docs = [Document(text=t, metadata={"i": i}, excluded_embed_metadata_keys=["i"]) for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex.from_documents(docs)
    retriever = index.as_retriever(similarity_top_k=2)
    for query, want in QUERIES:
        nodes = retriever.retrieve(query)
        assert nodes[0].node.metadata["i"] == want, (query, [n.node.get_content() for n in nodes])
