"""QdrantHybridStore keeps HybridIndex's promises on ids and filters (issue 25): ``""`` is an id
in both, a lone surrogate is simply not in either, and a filter integer Qdrant cannot store is a
clear ValueError, not a multi-line Rust TypeError."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")

from bgem3 import HybridIndex  # noqa: E402
from bgem3.stores.qdrant import QdrantHybridStore, to_qdrant_filter  # noqa: E402

DIM = 8


def _docs(n=3):
    rng = np.random.default_rng(0)
    d = rng.normal(size=(n, DIM)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d, [{1: 0.5, 2 + i: 1.0} for i in range(n)], [d[i:i + 1].copy() for i in range(n)]


@pytest.fixture
def stores(tmp_path):
    d, s, c = _docs()
    ids, texts, metas = ["a", "b", "c"], ["A", "B", "C"], [{"year": 2020}, {"year": 2021}, {"year": 2022}]
    st = QdrantHybridStore(None, model_name="synthetic", dim=DIM, colbert_dim=DIM, edge_path=tmp_path / "e")
    idx = HybridIndex(None, model_name="synthetic", dim=DIM, colbert_dim=DIM, colbert_codec="float32")
    for store in (st, idx):
        store.add_encoded(ids, texts, metas, d, s, c)
    return st, idx


def test_the_empty_id_is_accepted_by_both(stores):
    d, s, c = _docs(1)
    for store in stores:
        store.add_encoded([""], ["empty id"], None, d, s, c)  # before: Qdrant refused "", HybridIndex took it
        assert "" in store and len(store) == 4
        assert store.get([""])[0].text == "empty id"
        store.delete([""])
        assert "" not in store and len(store) == 3


def test_a_lone_surrogate_is_not_in_either(stores):
    for store in stores:
        assert ("\ud800" in store) is False  # before (Qdrant): UnicodeEncodeError


def test_an_integer_qdrant_cannot_store_is_a_clear_value_error(stores):
    st, _ = stores
    d, s, c = _docs(1)
    for flt in ({"year": 2**70}, {"year": [2020, 2**70]}, {"year": -(2**63) - 1}):
        with pytest.raises(ValueError, match="signed 64-bit range"):
            st.search_encoded(d[0], s[0], c[0], k=2, filter=flt)
        with pytest.raises(ValueError, match="signed 64-bit range"):
            to_qdrant_filter(flt)
    assert [h.id for h in st.search_encoded(d[0], s[0], c[0], k=3, filter={"year": 2**63 - 1})] == []
    assert [h.id for h in st.search_encoded(d[0], s[0], c[0], k=3, filter={"year": 2021})] == ["b"]
