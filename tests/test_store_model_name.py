"""`model_name=` names the model to load on the stores too (issue #13): never a label beside another encoder."""
import numpy as np
import pytest

from bgem3 import HybridIndex


def test_hybrid_index_model_name_loads_that_model(m3_path):
    index = HybridIndex(model_name=m3_path, device="cpu")
    assert index.encoder is not None and index.encoder.model_name == index.model_name
    index.add(["alpha beta", "gamma delta"], ids=["a", "b"])
    assert index.search("alpha beta", k=1)[0].id == "a"


def test_hybrid_index_encoder_and_other_model_name_refused(m3_encoder):
    with pytest.raises(ValueError, match="model_name='BAAI/bge-m3' names the model to load"):
        HybridIndex(m3_encoder, model_name="BAAI/bge-m3")


def test_hybrid_index_same_model_name_beside_encoder_accepted(m3_encoder, m3_path):
    index = HybridIndex(m3_encoder, model_name=m3_path)
    assert index.encoder is m3_encoder


def test_precomputed_vectors_record_their_model():
    index = HybridIndex(None, model_name="my-vectors", dim=4)
    assert index.encoder is None and index.model_name == "my-vectors"


def test_qdrant_store_encoder_and_other_model_name_refused(m3_encoder):
    pytest.importorskip("qdrant_client")
    from bgem3.stores.qdrant import QdrantHybridStore

    with pytest.raises(ValueError, match="names the model to load"):
        QdrantHybridStore(m3_encoder, location=":memory:", model_name="intfloat/multilingual-e5-large")
