"""Issue 23: the vectors the anchors return for normalize=False and truncate_dim, checked against
sentence-transformers itself on the real all-MiniLM-L6-v2 weights (its folder ends with a
Normalize module). The anchor classes pass these options straight to SentenceTransformer.encode:

* ``HuggingFaceEmbeddings(encode_kwargs={"normalize_embeddings": False})`` and
  ``HuggingFaceEmbedding(normalize=False)``: the folder's Normalize module still runs -> unit vectors;
* LangChain ``truncate_dim`` (model_kwargs or encode_kwargs, normalize_embeddings left False):
  the truncated vector as is (not unit length); with ``normalize_embeddings=True``: re-normalised;
* LlamaIndex ``truncate_dim`` (normalize=True by default): re-normalised.

tests_anchors/ runs the anchor classes themselves (in their own environment); these run here.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bgem3 import Encoder, Profile
from langchain_bgem3 import BGEM3Embeddings
from llama_index_bgem3 import BGEM3Embedding

from _adapter_fixtures import CORPUS, QUERIES, minilm_path

TEXTS = CORPUS[:6] + [q for q, _ in QUERIES[:3]]


@pytest.fixture(scope="module")
def st_model():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_path(), device="cpu")


def _st(model, **kw) -> np.ndarray:
    return np.asarray(model.encode(TEXTS, **kw), dtype=np.float32)


def test_normalize_false_on_a_folder_with_a_normalize_module_gives_unit_vectors(st_model, caplog):
    want = _st(st_model, normalize_embeddings=False)
    assert np.allclose(np.linalg.norm(want, axis=1), 1, atol=1e-5)  # the folder's Normalize module ran
    with caplog.at_level(logging.WARNING, logger="bgem3._adapters.text_encoder"):
        lc = np.asarray(BGEM3Embeddings(model_name=minilm_path(), model_kwargs={"device": "cpu"},
                                        encode_kwargs={"normalize_embeddings": False}).embed_documents(TEXTS))
    np.testing.assert_allclose(lc, want, atol=1e-6)
    li = np.asarray(BGEM3Embedding(model_name=minilm_path(), device="cpu", normalize=False)
                    .get_text_embedding_batch(TEXTS))
    np.testing.assert_allclose(li, want, atol=1e-6)
    assert "Normalize module" in caplog.text  # said once, with the way to get raw vectors


def test_raw_pooled_vectors_through_a_profile_that_does_not_normalise(st_model):
    enc = Encoder(minilm_path(), device="cpu", profile=Profile(name="raw", pooling="mean", normalize=False))
    raw = np.asarray(BGEM3Embeddings(encoder=enc, encode_kwargs={"normalize_embeddings": False}).embed_documents(TEXTS))
    want = _st(st_model)
    assert np.linalg.norm(raw, axis=1).min() > 1.5  # mean-pooled MiniLM states are far from unit length
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), want, atol=1e-6)


@pytest.mark.parametrize("where", ["model_kwargs", "encode_kwargs"])
def test_langchain_truncate_dim_is_the_truncated_vector_as_is(st_model, where):
    want = _st(st_model, truncate_dim=128)
    assert np.linalg.norm(want, axis=1).max() < 0.9  # not re-normalised by sentence-transformers
    kw = {"model_kwargs": {"device": "cpu", "truncate_dim": 128}} if where == "model_kwargs" else \
        {"model_kwargs": {"device": "cpu"}, "encode_kwargs": {"truncate_dim": 128}}
    got = np.asarray(BGEM3Embeddings(model_name=minilm_path(), **kw).embed_documents(TEXTS))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_langchain_truncate_dim_with_normalize_embeddings_true_is_renormalised(st_model):
    want = _st(st_model, truncate_dim=128, normalize_embeddings=True)
    got = np.asarray(BGEM3Embeddings(model_name=minilm_path(), model_kwargs={"device": "cpu"},
                                     encode_kwargs={"truncate_dim": 128, "normalize_embeddings": True})
                     .embed_documents(TEXTS))
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_llama_index_truncate_dim_matches_the_anchor(st_model, normalize):
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    anchor = HuggingFaceEmbedding(model_name=minilm_path(), device="cpu", normalize=normalize, truncate_dim=128)
    want = np.asarray(anchor.get_text_embedding_batch(TEXTS))
    got = np.asarray(BGEM3Embedding(model_name=minilm_path(), device="cpu", normalize=normalize, truncate_dim=128)
                     .get_text_embedding_batch(TEXTS))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(want, _st(st_model, truncate_dim=128, normalize_embeddings=normalize), atol=1e-6)
