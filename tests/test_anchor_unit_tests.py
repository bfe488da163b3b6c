"""The anchors' own hub-free unit tests, adapted to our classes.

* langchain-huggingface ``tests/unit_tests/test_embeddings.py`` (``HuggingFaceEmbeddings``): each
  test below keeps the anchor's name and expectation; where the anchor mocks
  ``SentenceTransformer.encode`` we spy on ``bgem3.Encoder.encode`` instead. Two anchor tests are
  about sentence-transformers' return types (tensor vs numpy ``.tolist()`` paths, a list return
  raising ``TypeError``); they have no counterpart because bgem3's encoder always returns numpy.
* llama-index-core ``tests/embeddings/test_base.py`` / ``test_with_cache.py`` (``BaseEmbedding``
  behaviour every embedding class inherits): batching order, similarity, ``mean_agg`` of query
  embeddings, the ``embeddings_cache``.
"""

from __future__ import annotations

import numpy as np
import pytest

from bgem3._loading import shared_encoder
from langchain_bgem3 import BGEM3Embeddings
from llama_index_bgem3 import BGEM3Embedding

from _adapter_fixtures import tiny_m3_path


@pytest.fixture(scope="module", autouse=True)
def _held():
    yield shared_encoder(tiny_m3_path(), device="cpu")


def _make_model(**kwargs) -> BGEM3Embeddings:
    kwargs.setdefault("model_name", tiny_m3_path())
    return BGEM3Embeddings(**kwargs)


@pytest.fixture
def spy(monkeypatch):
    enc = shared_encoder(tiny_m3_path(), device="cpu")
    calls = []
    real = enc.encode

    def encode(texts, **kw):
        calls.append((list(texts), kw))
        return real(texts, **kw)

    monkeypatch.setattr(enc, "encode", encode)
    return calls


# --------------------------------------------------------------------------- langchain-huggingface

def test_default_batch_size() -> None:
    assert _make_model().batch_size == 32


def test_custom_batch_size() -> None:
    assert _make_model(batch_size=128).batch_size == 128


def test_default_construction_has_no_device_in_model_kwargs() -> None:
    assert "device" not in _make_model().model_kwargs


def test_encode_kwargs_can_override_convert_to_tensor(spy) -> None:
    # sentence-transformers' output-type switch: accepted, LangChain gets list[float] either way
    out = _make_model(encode_kwargs={"convert_to_tensor": False}).embed_documents(["hello"])
    assert isinstance(out, list) and isinstance(out[0], list) and isinstance(out[0][0], float)


def test_batch_size_forwarded_to_encode(spy) -> None:
    _make_model(batch_size=64).embed_documents(["hello"])
    assert spy[-1][1]["batch_size"] == 64


def test_encode_kwargs_batch_size_overrides_field(spy) -> None:
    _make_model(batch_size=32, encode_kwargs={"batch_size": 16}).embed_documents(["hello"])
    assert spy[-1][1]["batch_size"] == 16


def test_newlines_replaced_before_encoding(spy) -> None:
    _make_model().embed_documents(["hello\nworld"])
    assert spy[-1][0] == ["hello world"]


def test_embed_query_uses_query_encode_kwargs_when_non_empty() -> None:
    model = _make_model(encode_kwargs={"normalize_embeddings": False},
                        query_encode_kwargs={"normalize_embeddings": True})
    assert np.linalg.norm(model.embed_query("test")) == pytest.approx(1.0, abs=1e-5)


def test_embed_query_falls_back_to_encode_kwargs_when_query_kwargs_empty() -> None:
    model = _make_model(encode_kwargs={"normalize_embeddings": False})
    assert abs(np.linalg.norm(model.embed_query("test")) - 1.0) > 1e-3


# --------------------------------------------------------------------------- llama-index-core BaseEmbedding

@pytest.fixture(scope="module")
def li_model() -> BGEM3Embedding:
    return BGEM3Embedding(model_name=tiny_m3_path(), device="cpu", embed_batch_size=3)


def test_get_text_embeddings(li_model) -> None:
    texts = ["Hello world."] * 8 + ["This is a test."] * 8 + ["This is another test."] * 4 + ["This is a test v2."] * 4
    result = li_model.get_text_embedding_batch(texts)
    singles = {t: li_model.get_text_embedding(t) for t in set(texts)}
    assert len(result) == len(texts)
    for t, r in zip(texts, result):
        assert r == pytest.approx(singles[t], abs=1e-5)


def test_embedding_similarity(li_model) -> None:
    a = li_model.get_text_embedding("Hello world.")
    assert li_model.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    assert li_model.similarity([0.0, 1.0, 0.0], [3.0, 4.0, 0.0]) == pytest.approx(0.8)


def test_agg_embedding_from_queries_is_the_mean(li_model) -> None:
    qs = ["Hello world.", "This is a test."]
    agg = li_model.get_agg_embedding_from_queries(qs)
    assert agg == pytest.approx(np.mean([li_model.get_query_embedding(q) for q in qs], axis=0).tolist(), abs=1e-6)


def test_sync_methods_with_cache(spy) -> None:
    from llama_index.core.storage.kvstore import SimpleKVStore

    model = BGEM3Embedding(model_name=tiny_m3_path(), device="cpu", embeddings_cache=SimpleKVStore())
    first = model.get_text_embedding("Hello")
    n = len(spy)
    assert model.embeddings_cache.get(key="Hello", collection="embeddings") is not None
    assert model.get_text_embedding_batch(["Hello"]) == [first]
    assert len(spy) == n  # served from the cache, not encoded again


async def test_async_methods_with_cache() -> None:
    from llama_index.core.storage.kvstore import SimpleKVStore

    model = BGEM3Embedding(model_name=tiny_m3_path(), device="cpu", embeddings_cache=SimpleKVStore())
    first = await model.aget_text_embedding("Hello")
    assert await model.aget_text_embedding_batch(["Hello"]) == [first]
