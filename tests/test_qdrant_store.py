"""QdrantHybridStore on two backends -- qdrant-client's local mode (a Python stand-in) and Qdrant
Edge (Qdrant's own engine, in-process: the server's query plans run by the server's code): parity
with HybridIndex, upserts, deletes, filters, persistence, mismatch errors, bounded upsert retries,
a half-written add, and the retrievers over it. Every test that builds a store runs on both."""

from __future__ import annotations

import itertools
import os
import uuid

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
from qdrant_client import QdrantClient, models  # noqa: E402
from qdrant_client.http.exceptions import ResponseHandlingException  # noqa: E402

from bgem3 import Encoder, HybridIndex, scoring  # noqa: E402
from bgem3.stores.qdrant import (  # noqa: E402
    BGEM3_NAMESPACE,
    CollectionMismatchError,
    QdrantHybridStore,
    QdrantUpsertError,
    point_id,
    to_qdrant_filter,
)
from bgem3.testing import make_m3_checkpoint  # noqa: E402
from bgem3.types import Hit, HybridStore  # noqa: E402

try:
    import qdrant_edge  # noqa: F401

    HAVE_EDGE = True
except ImportError:  # pragma: no cover
    HAVE_EDGE = False

#: "local": qdrant-client's in-process Python stand-in; "edge": Qdrant Edge, Qdrant's own engine
BACKENDS = ["local", pytest.param("edge", marks=pytest.mark.skipif(not HAVE_EDGE, reason="qdrant-edge-py missing"))]
_SHARDS = itertools.count()


def new_store(backend: str, encoder=None, root: str = "", **kw) -> QdrantHybridStore:
    """A fresh store on ``backend`` (an Edge shard gets its own new folder under ``root``)."""
    if backend == "edge":
        return QdrantHybridStore(encoder, edge_path=os.path.join(root, f"shard-{next(_SHARDS)}"), **kw)
    return QdrantHybridStore(encoder, client=QdrantClient(":memory:"), **kw)


@pytest.fixture(scope="module")
def edge_root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("edge-shards"))


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def fresh(backend, edge_root):
    """``fresh(encoder, **kw)``: a new empty store (collection "t") on the test's backend."""

    def make(encoder, **kw) -> QdrantHybridStore:
        kw.setdefault("collection_name", "t")
        return new_store(backend, encoder, edge_root, **kw)

    return make

WORDS = ("alpha beta gamma delta river mountain city data model search index query vector sparse "
         "dense token cat dog bird fish bread oven night train market").split()
N_DOCS = 60
MAX_LENGTH = 64
QUERIES = ["river data model", "cat dog bird", "bread oven night", "alpha"]


def _corpus(n: int = N_DOCS, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 14)))) for _ in range(n)]
    ids = [f"doc-{i}" for i in range(n)]
    metas = [{"group": i % 3, "lang": ["en", "de"][i % 2], "flag": i % 4 == 0} for i in range(n)]
    return texts, ids, metas


@pytest.fixture(scope="module")
def qd_m3_path(tmp_path_factory) -> str:
    return make_m3_checkpoint(str(tmp_path_factory.mktemp("qd_m3")), seed=5)


@pytest.fixture(scope="module")
def qd_encoder(qd_m3_path) -> Encoder:
    return Encoder(qd_m3_path, device="cpu", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture(scope="module")
def encoded_docs(qd_encoder, corpus):
    texts, _, _ = corpus
    return qd_encoder.encode_documents(texts, dense=True, sparse=True, colbert=True)


@pytest.fixture(scope="module")
def encoded_queries(qd_encoder):
    out = qd_encoder.encode_queries(QUERIES, dense=True, sparse=True, colbert=True)
    return [(out.dense[i], out.sparse[i], out.colbert[i]) for i in range(len(QUERIES))]


@pytest.fixture(scope="module")
def index(qd_encoder, corpus, encoded_docs) -> HybridIndex:
    texts, ids, metas = corpus
    idx = HybridIndex(qd_encoder, colbert_codec="float16")  # the store's own default precision
    idx.add_encoded(ids, texts, metas, encoded_docs.dense, encoded_docs.sparse, encoded_docs.colbert)
    return idx


STORE_KINDS = [pytest.param(("local", "qdrant"), id="local-qdrant"), pytest.param(("local", "client"), id="local-client"),
               pytest.param(("edge", "qdrant"), id="edge-qdrant",
                            marks=pytest.mark.skipif(not HAVE_EDGE, reason="qdrant-edge-py missing")),
               pytest.param(("edge", "client"), id="edge-client",
                            marks=pytest.mark.skipif(not HAVE_EDGE, reason="qdrant-edge-py missing"))]


@pytest.fixture(scope="module", params=STORE_KINDS)
def store(request, qd_encoder, corpus, encoded_docs, edge_root) -> QdrantHybridStore:
    """The corpus in a store: (backend, rescore) = local or Edge x Qdrant-side or client-side re-scoring."""
    backend, rescore = request.param
    texts, ids, metas = corpus
    st = new_store(backend, qd_encoder, edge_root, collection_name="parity", rescore=rescore, batch_size=16)
    st.add_encoded(ids, texts, metas, encoded_docs.dense, encoded_docs.sparse, encoded_docs.colbert)
    st.backend = backend
    yield st
    st.close()


def assert_same_hits(a: list[Hit], b: list[Hit], tol: float = 1e-4) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    for x, y in zip(a, b):
        assert x.text == y.text and x.metadata == y.metadata
        for f in ("score", "dense_score", "sparse_score", "colbert_score"):
            assert getattr(x, f) == pytest.approx(getattr(y, f), abs=tol), (x.id, f)


# ------------------------------------------------------------------ parity with HybridIndex
# The tiny random checkpoint's dense vectors are nearly identical (all dense scores within
# ~1e-5 of 0.99999, some equal in float32), so WHICH documents make a small dense top-N is
# decided by float rounding (Qdrant's local mode sums in another order than numpy's matmul).
# Encoder-based parity therefore uses candidate pools that cover the (filtered) corpus, or
# exhaustive search; small candidate pools are checked on well-spread synthetic vectors below.
SEARCH_OPTIONS = [
    dict(),
    dict(weights=(0.2, 0.5, 0.3)),
    dict(weights=(0.0, 1.0, 0.0), exhaustive=True),
    dict(weights=(0.0, 0.0, 1.0), exhaustive=True),
    dict(exhaustive=True),
    dict(filter={"group": [0, 2]}),
    dict(filter={"lang": "de", "flag": False}, exhaustive=True),
]


@pytest.mark.parametrize("options", SEARCH_OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_weighted_search_matches_hybrid_index(store, index, encoded_queries, options):
    for q in encoded_queries:
        expected = index.search_encoded(*q, k=8, **options)
        got = store.search_encoded(*q, k=8, **options)
        assert len(got) == len(expected) > 0
        assert_same_hits(got, expected)


def test_rrf_matches_hybrid_index_client_rescoring(qd_encoder, corpus, encoded_docs, encoded_queries, index, fresh):
    # client-side rescoring does the index's own arithmetic, so even RRF's rank-based scores
    # (sensitive to 1e-8 differences between near-tied dense scores of the tiny model) agree
    texts, ids, metas = corpus
    st = fresh(qd_encoder, rescore="client")
    st.add_encoded(ids, texts, metas, encoded_docs.dense, encoded_docs.sparse, encoded_docs.colbert)
    for q in encoded_queries:
        for opts in (dict(), dict(weights=(1, 1, 1), exhaustive=True), dict(filter={"group": 1})):
            assert_same_hits(st.search_encoded(*q, k=8, mode="rrf", **opts),
                             index.search_encoded(*q, k=8, mode="rrf", **opts))
    # and through search(text): the query is encoded the same way
    assert_same_hits(st.search(QUERIES[0], k=5, mode="rrf"), index.search(QUERIES[0], k=5, mode="rrf"))


def _synthetic(n: int, dim: int, seed: int, colbert_dim: int = 8):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(t): float(w) for t, w in zip(rng.choice(200, size=int(rng.integers(0, 12)), replace=False),
                                                rng.uniform(0.01, 0.5, size=12))} for _ in range(n)]
    colbert = []
    for _ in range(n):
        c = rng.normal(size=(int(rng.integers(0, 9)), colbert_dim)).astype(np.float32)  # 0: no ColBERT vectors
        colbert.append(c / np.linalg.norm(c, axis=1, keepdims=True) if len(c) else c)
    return dense, sparse, colbert


@pytest.mark.parametrize("rescore", ["qdrant", "client"])
def test_synthetic_vectors_match_hybrid_index_weighted_and_rrf(rescore, fresh):
    n, dim = 300, 16
    dense, sparse, colbert = _synthetic(n, dim, seed=1)
    ids = [f"v{i}" for i in range(n)]
    texts = [f"text {i}" for i in range(n)]
    metas = [{"shard": i % 5} for i in range(n)]
    assert any(len(c) == 0 for c in colbert) and any(len(s) == 0 for s in sparse)
    idx = HybridIndex(None, model_name="synthetic", dim=dim, colbert_dim=8, colbert_codec="float16")
    idx.add_encoded(ids, texts, metas, dense, sparse, colbert)
    st = fresh(None, model_name="synthetic", dim=dim, colbert_dim=8, rescore=rescore, batch_size=50)
    st.add_encoded(ids, texts, metas, dense, sparse, colbert)
    qd, qs, qc = _synthetic(5, dim, seed=2)
    for i in range(5):
        for opts in (dict(), dict(candidates=20), dict(candidates=3, weights=(0.2, 0.6, 0.2)),
                     dict(mode="rrf", candidates=20), dict(mode="rrf", rrf_k=10),
                     dict(filter={"shard": [1, 3]}, candidates=15), dict(filter={"shard": 4}, candidates=5, mode="rrf"),
                     dict(exhaustive=True, weights=(1, 0, 2)), dict(exhaustive=True, filter={"shard": 2})):
            expected = idx.search_encoded(qd[i], qs[i], qc[i], k=10, **opts)
            assert_same_hits(st.search_encoded(qd[i], qs[i], qc[i], k=10, **opts), expected)


@pytest.fixture(scope="module")
def docs_one_by_one(qd_encoder, corpus):
    texts, _, _ = corpus
    return [qd_encoder.encode_documents([t], dense=True, sparse=True, colbert=True) for t in texts]


def test_exhaustive_equals_brute_force_reference(store, qd_encoder, corpus, docs_one_by_one):
    """Oracle independent of HybridIndex: pair-by-pair bgem3.scoring on Encoder outputs (each
    document encoded alone), fused as FlagEmbedding's compute_score (weighted sum / weight sum)."""
    texts, ids, _ = corpus
    w = (0.3, 0.3, 0.4)
    for query in QUERIES[:2]:
        q = qd_encoder.encode_queries([query], dense=True, sparse=True, colbert=True)
        ref = []
        for i, d in enumerate(docs_one_by_one):
            ds = float(np.dot(q.dense[0].astype(np.float64), d.dense[0]))
            ls = scoring.lexical_score(q.sparse[0], d.sparse[0])
            cs = scoring.colbert_score(q.colbert[0], d.colbert[0])
            ref.append(((w[0] * ds + w[1] * ls + w[2] * cs) / sum(w), ids[i], ds, ls, cs))
        ref.sort(key=lambda r: -r[0])
        hits = store.search(query, k=5, weights=w, exhaustive=True)
        assert [h.id for h in hits] == [r[1] for r in ref[:5]]
        for h, r in zip(hits, ref):
            # ColBERT vectors are stored as float16 (like HybridIndex's default): ~1e-4 of fp32
            assert (h.score, h.dense_score, h.sparse_score, h.colbert_score) == pytest.approx(r[:1] + r[2:], abs=1e-3)


def test_candidates_cover_corpus_equals_exhaustive(store, encoded_queries):
    for q in encoded_queries:
        # the same scores up to float rounding: an exhaustive query and a prefetch may sum in another order
        assert_same_hits(store.search_encoded(*q, k=10, candidates=N_DOCS),
                         store.search_encoded(*q, k=10, exhaustive=True), tol=1e-6)


def test_add_with_encoder_equals_add_encoded(qd_encoder, corpus, store, edge_root):
    texts, ids, metas = corpus
    st = new_store(store.backend, qd_encoder, edge_root, collection_name="t", rescore=store.rescore, batch_size=7)
    assert st.add(texts, ids=ids, metadatas=metas) == ids
    assert len(st) == N_DOCS
    for q in QUERIES[:2]:
        assert_same_hits(st.search(q, k=6), store.search(q, k=6), tol=1e-6)


def test_store_satisfies_protocol(store):
    assert isinstance(store, HybridStore)


# ------------------------------------------------------------------ upsert / delete / get
def test_readding_an_id_updates_in_place(qd_encoder, fresh):
    st = fresh(qd_encoder)
    st.add(["cat dog bird", "river mountain city", "bread oven"], ids=["a", "b", "c"],
           metadatas=[{"v": 1}, {"v": 1}, {"v": 1}])
    st.add(["market train night data"], ids=["b"], metadatas=[{"v": 2}])
    assert len(st) == 3
    (hit,) = st.get(["b"])
    assert (hit.text, hit.metadata) == ("market train night data", {"v": 2})
    top = st.search("market train night", k=1)[0]
    assert top.id == "b" and top.text == "market train night data"
    # no point holds the old text any more
    assert all(h.text != "river mountain city" for h in st.search("river mountain city", k=3, exhaustive=True))


def test_point_ids_are_uuid5_of_the_user_id(qd_encoder, fresh):
    st = fresh(qd_encoder)
    st.add(["cat dog"], ids=["doc/1"])
    expected = str(uuid.uuid5(BGEM3_NAMESPACE, "doc/1"))
    assert point_id("doc/1") == expected
    (rec,) = st.client.retrieve("t", ids=[expected], with_payload=True)
    assert rec.payload["id"] == "doc/1" and rec.payload["text"] == "cat dog"


def test_delete(qd_encoder, corpus, fresh):
    texts, ids, metas = corpus
    st = fresh(qd_encoder)
    st.add(texts[:10], ids=ids[:10], metadatas=metas[:10])
    best = st.search(texts[3], k=1, exhaustive=True)[0].id
    st.delete([best, ids[7]])
    assert len(st) == 8 and best not in st and ids[7] not in st and ids[0] in st
    assert best not in {h.id for h in st.search(texts[3], k=10, exhaustive=True)}
    with pytest.raises(KeyError):
        st.get([best])
    with pytest.raises(KeyError, match="nothing was deleted"):
        st.delete([ids[0], "no-such-id"])
    assert ids[0] in st and len(st) == 8
    st.delete([ids[0], "no-such-id"], ignore_missing=True)
    assert len(st) == 7 and ids[0] not in st


def test_get_returns_documents_in_order(store, corpus):
    texts, ids, metas = corpus
    hits = store.get([ids[5], ids[2]])
    assert [(h.id, h.text, h.metadata) for h in hits] == [(ids[5], texts[5], metas[5]), (ids[2], texts[2], metas[2])]


def test_empty_store_and_bad_input(qd_encoder, fresh):
    st = fresh(qd_encoder)
    assert len(st) == 0 and st.search("anything") == [] and st.search("x", exhaustive=True) == []
    st.add(["cat dog"], ids=["a"])
    with pytest.raises(ValueError, match="k must be"):
        st.search("cat", k=0)
    with pytest.raises(ValueError, match="query is empty"):
        st.search("   ")
    with pytest.raises(ValueError, match="weights"):
        st.search("cat", weights=(1, 2))
    with pytest.raises(ValueError, match="mode"):
        st.search("cat", mode="max")
    with pytest.raises(ValueError, match="duplicate|repeat"):
        st.add(["x", "y"], ids=["z", "z"])
    with pytest.raises(TypeError, match="list of strings"):
        st.add("just one string")
    with pytest.raises(ValueError, match="JSON"):
        st.add(["x"], ids=["j"], metadatas=[{"bad": object()}])
    assert len(st) == 1  # nothing half-written by the refused calls
    nost = QdrantHybridStore(None, dim=st.dim, colbert_dim=st.colbert_dim, client=st.client, collection_name="t")
    with pytest.raises(TypeError, match="needs an encoder"):
        nost.search("cat")
    assert len(nost) == 1


# ------------------------------------------------------------------ filters
def test_filter_translation():
    f = to_qdrant_filter({"lang": "de", "year": [2023, 2024], "a.b": True, "score": 0.5, "gone": None,
                          "mixed": ["x", 1]})
    by_key = {getattr(c, "key", None): c for c in f.must}
    assert by_key["metadata.lang"].match == models.MatchValue(value="de")
    assert by_key["metadata.year"].match == models.MatchAny(any=[2023, 2024])
    assert by_key['metadata."a.b"'].match == models.MatchValue(value=True)
    assert by_key["metadata.score"].range == models.Range(gte=0.5, lte=0.5)
    assert any(isinstance(c, models.IsEmptyCondition) and c.is_empty.key == "metadata.gone" for c in f.must)
    assert any(isinstance(c, models.Filter) and len(c.should) == 2 for c in f.must)
    assert to_qdrant_filter(None) is None and to_qdrant_filter({}) is None
    with pytest.raises(ValueError, match="empty list"):
        to_qdrant_filter({"lang": []})
    with pytest.raises(ValueError, match="must be a str"):
        to_qdrant_filter({"lang": {"nested": 1}})


FILTERS = [{"group": 1}, {"lang": "en", "group": [0, 1]}, {"flag": True}, {"group": (2,), "flag": False},
           {"lang": {"de"}}, {"missing": None}, {"group": 7}]


@pytest.mark.parametrize("flt", FILTERS, ids=str)
def test_filters_select_same_documents_as_hybrid_index(store, index, encoded_queries, flt):
    q = encoded_queries[1]
    for exhaustive in (False, True):
        got = store.search_encoded(*q, k=N_DOCS, filter=flt, exhaustive=exhaustive)
        expected = index.search_encoded(*q, k=N_DOCS, filter=flt, exhaustive=exhaustive)
        assert_same_hits(got, expected)
        for h in got:
            for key, want in flt.items():
                allowed = list(want) if isinstance(want, (list, tuple, set)) else [want]
                assert h.metadata.get(key) in allowed


def test_filter_key_with_dot_and_payload_index(qd_encoder, fresh):
    st = fresh(qd_encoder)
    st.add(["cat dog", "cat bird", "dog fish"], ids=["1", "2", "3"],
           metadatas=[{"a.b": "x"}, {"a.b": "y"}, {"a": {"b": "x"}}])
    st.create_metadata_index("a.b")
    assert [h.id for h in st.search("cat dog", k=5, filter={"a.b": "x"})] == ["1"]


# ------------------------------------------------------------------ collections: idempotence, persistence, mismatch
def test_collection_creation_is_idempotent(qd_encoder, fresh):
    a = fresh(qd_encoder, collection_name="c")
    client = a.client
    a.add(["cat dog", "bread oven"], ids=["1", "2"])
    b = QdrantHybridStore(qd_encoder, client=client, collection_name="c")
    assert len(b) == 2 and b.get(["1"])[0].text == "cat dog"
    assert sorted(b.iter_ids()) == ["1", "2"] and "1" in b and "3" not in b
    meta = client.get_collection("c").config.metadata["bgem3"]
    assert meta["model_name"] == qd_encoder.model_name and meta["dim"] == qd_encoder.hidden_size
    params = client.get_collection("c").config.params
    assert params.vectors["colbert"].multivector_config.comparator == models.MultiVectorComparator.MAX_SIM
    assert params.vectors["colbert"].hnsw_config.m == 0
    assert "sparse" in params.sparse_vectors


@pytest.mark.parametrize("where", ["path", pytest.param("edge_path", marks=pytest.mark.skipif(not HAVE_EDGE, reason="no Edge"))])
def test_path_store_persists_across_reopen(qd_encoder, corpus, tmp_path, where):
    texts, ids, metas = corpus
    loc = {where: tmp_path / "qdrant"}
    st = QdrantHybridStore(qd_encoder, **loc, collection_name="docs")
    st.add(texts[:20], ids=ids[:20], metadatas=metas[:20])
    before = st.search(QUERIES[0], k=5)
    st.close()
    again = QdrantHybridStore(qd_encoder, **loc, collection_name="docs")
    assert len(again) == 20
    assert_same_hits(again.search(QUERIES[0], k=5), before, tol=1e-9)
    again.add(["new text"], ids=["new"])
    again.close()
    third = QdrantHybridStore(None, **loc, collection_name="docs")
    assert len(third) == 21 and third.model_name == qd_encoder.model_name and third.dim == qd_encoder.hidden_size
    third.close()


def test_dimension_mismatch_is_a_clear_error(qd_encoder, fresh):
    client = fresh(None, model_name="other-model", dim=8, colbert_dim=8, collection_name="c").client
    with pytest.raises(CollectionMismatchError, match=r"8-dimensional.*32-dimensional"):
        QdrantHybridStore(qd_encoder, client=client, collection_name="c")


def test_model_mismatch_is_a_clear_error(qd_encoder, tmp_path, fresh):
    other = Encoder(make_m3_checkpoint(str(tmp_path / "other-model"), seed=9), device="cpu", max_length=MAX_LENGTH)
    first = fresh(other, collection_name="c")
    first.add(["cat"], ids=["1"])
    client = first.client
    with pytest.raises(CollectionMismatchError, match="was built with model .*other-model"):
        QdrantHybridStore(qd_encoder, client=client, collection_name="c")
    # the same model under another folder (same last path component) is accepted
    QdrantHybridStore(None, model_name="/elsewhere/other-model", client=client, collection_name="c")


def test_foreign_collection_is_refused(qd_encoder, backend, tmp_path):
    if backend == "local":
        client = QdrantClient(":memory:")
        client.create_collection("plain", vectors_config=models.VectorParams(size=32, distance=models.Distance.COSINE))
        with pytest.raises(CollectionMismatchError, match="not made by QdrantHybridStore"):
            QdrantHybridStore(qd_encoder, client=client, collection_name="plain")
        return
    import qdrant_edge as qe

    shard = qe.EdgeShard.create(str(tmp_path / "plain"), qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=32, distance=qe.Distance.Cosine)))
    shard.close()
    with pytest.raises(CollectionMismatchError, match="not made by QdrantHybridStore"):
        QdrantHybridStore(qd_encoder, edge_path=tmp_path / "plain", collection_name="plain")
    assert sorted(os.listdir(tmp_path / "plain")) == ["edge_config.json", "segments", "wal"]  # left as it was


def test_constructor_arguments_are_checked(qd_encoder):
    with pytest.raises(ValueError, match="at most one"):
        QdrantHybridStore(qd_encoder, location=":memory:", url="http://localhost:6333")
    with pytest.raises(ValueError, match="dim"):
        QdrantHybridStore(None, client=QdrantClient(":memory:"), collection_name="new")
    with pytest.raises(ValueError, match="rescore"):
        QdrantHybridStore(qd_encoder, rescore="server")
    st = QdrantHybridStore(qd_encoder, location=":memory:")  # default collection "bgem3"
    assert st.collection_name == "bgem3" and len(st) == 0
    assert st.rescore == "client"  # "auto" in local mode


# ------------------------------------------------------------------ bounded retry on transient errors
class FlakyClient:
    """Wraps a real client; ``upsert`` raises ``errors`` (in order) before delegating."""

    def __init__(self, inner: QdrantClient, errors: list[BaseException]) -> None:
        self._inner = inner
        self.errors = list(errors)
        self.upsert_calls = 0

    def upsert(self, *args, **kwargs):
        self.upsert_calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self._inner.upsert(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _flaky_store(encoder, errors, backend="local", root="", **kw):
    if backend == "edge":
        from bgem3.stores.qdrant_edge import EdgeClient

        inner = EdgeClient(os.path.join(root, f"flaky-{next(_SHARDS)}"))
    else:
        inner = QdrantClient(":memory:")
    client = FlakyClient(inner, errors)
    st = QdrantHybridStore(encoder, client=client, collection_name="f", batch_size=2, retry_backoff=0.25, **kw)
    sleeps: list[float] = []
    st._sleep = sleeps.append
    return st, client, sleeps


def test_upsert_retries_transient_errors(qd_encoder, backend, edge_root):
    errors = [ResponseHandlingException(ConnectionError("reset")), ConnectionError("refused")]
    st, client, sleeps = _flaky_store(qd_encoder, errors, backend, edge_root, max_retries=3)
    st.add(["a b", "c d", "e f"], ids=["1", "2", "3"])
    assert len(st) == 3
    assert client.upsert_calls == 4  # batch 1: two failures + success; batch 2: success
    assert sleeps == [0.25, 0.5]  # exponential backoff


def test_upsert_gives_up_after_max_retries_and_reports_progress(qd_encoder, backend, edge_root):
    # batch 1 succeeds; batch 2 fails 3 times (> max_retries=2)
    errors = [ResponseHandlingException(TimeoutError("t"))] * 3
    st, client, sleeps = _flaky_store(qd_encoder, [], backend, edge_root, max_retries=2)
    st.add(["a b", "c d"], ids=["1", "2"])
    client.errors = errors
    with pytest.raises(QdrantUpsertError, match="after 3 tries") as info:
        st.add(["e f", "g h", "i j"], ids=["3", "4", "5"])
    assert info.value.written_ids == [] and info.value.failed_ids == ["3", "4", "5"]
    assert isinstance(info.value.__cause__, ResponseHandlingException)
    assert client.upsert_calls == 1 + 3 and len(sleeps) == 2
    assert len(st) == 2


def test_upsert_failure_mid_add_names_written_and_failed_ids(qd_encoder, backend, edge_root):
    st, client, sleeps = _flaky_store(qd_encoder, [], backend, edge_root, max_retries=0)
    real_upsert = client.upsert

    def fail_second(*args, **kwargs):
        if client.upsert_calls == 1:
            client.upsert_calls += 1
            raise ConnectionError("down")
        return real_upsert(*args, **kwargs)

    client.upsert = fail_second
    with pytest.raises(QdrantUpsertError) as info:
        st.add(["a", "b", "c", "d", "e"], ids=["1", "2", "3", "4", "5"])
    assert info.value.written_ids == ["1", "2"] and info.value.failed_ids == ["3", "4", "5"]
    assert len(st) == 2 and sleeps == []


def test_non_transient_errors_are_not_retried(qd_encoder, backend, edge_root):
    st, client, sleeps = _flaky_store(qd_encoder, [ValueError("bad request")], backend, edge_root, max_retries=5)
    with pytest.raises(QdrantUpsertError, match="bad request"):
        st.add(["a"], ids=["1"])
    assert client.upsert_calls == 1 and sleeps == []


class FailingEncoder:
    """The real encoder, except that encoding documents fails on call number ``fail_on``."""

    def __init__(self, inner, fail_on: int) -> None:
        self._inner, self.fail_on, self.calls = inner, fail_on, 0

    def encode_documents(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self._inner.encode_documents(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_encoding_failure_mid_add_reports_what_was_written(qd_encoder, fresh):
    """add() encodes 256 texts at a time: if the second chunk fails, the first is already in the
    store. The error says so and carries the ids (it used to be the raw exception, 256 written)."""
    texts = [f"cat dog {i} river" for i in range(300)]
    ids = [f"h{i}" for i in range(300)]
    st = fresh(FailingEncoder(qd_encoder, fail_on=2))
    with pytest.raises(QdrantUpsertError, match=r"encoding documents 'h256'..'h299' failed \(RuntimeError: CUDA out "
                                                r"of memory \(simulated\)\) after 256 documents were written") as info:
        st.add(texts, ids=ids)
    assert info.value.written_ids == ids[:256] and info.value.failed_ids == ids[256:]
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(st) == 256 and all(x in st for x in ids[:256]) and ids[256] not in st
    # re-adding the failed ids completes the call
    st.encoder = qd_encoder
    st.add(texts[256:], ids=info.value.failed_ids)
    assert len(st) == 300
    # a failure in the first chunk writes nothing and is the encoder's own error
    st2 = fresh(FailingEncoder(qd_encoder, fail_on=1), collection_name="t2")
    with pytest.raises(RuntimeError, match="simulated"):
        st2.add(texts[:10], ids=ids[:10])
    assert len(st2) == 0


# ------------------------------------------------------------------ the retrievers over this store
RETRIEVER_QUERY = "cat dog river"


@pytest.fixture(scope="module", params=BACKENDS)
def qdrant_for_retrievers(request, qd_encoder, corpus, encoded_docs, edge_root) -> QdrantHybridStore:
    texts, ids, metas = corpus
    st = new_store(request.param, qd_encoder, edge_root, collection_name="retrievers")
    st.add_encoded(ids, texts, metas, encoded_docs.dense, encoded_docs.sparse, encoded_docs.colbert)
    yield st
    st.close()


def test_langchain_retriever_over_qdrant_store(qdrant_for_retrievers, index, qd_encoder, edge_root):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document

    from langchain_bgem3 import BGEM3HybridRetriever

    on_qdrant = BGEM3HybridRetriever(store=qdrant_for_retrievers, k=5)
    on_index = BGEM3HybridRetriever(store=index, k=5)
    got, expected = on_qdrant.invoke(RETRIEVER_QUERY), on_index.invoke(RETRIEVER_QUERY)
    assert [d.id for d in got] == [d.id for d in expected] and len(got) == 5
    for a, b in zip(got, expected):
        assert a.page_content == b.page_content
        for key in ("score", "dense_score", "sparse_score", "colbert_score", "group", "lang"):
            assert a.metadata[key] == pytest.approx(b.metadata[key], abs=1e-4)
    # per-call k and filter reach the store
    docs = on_qdrant.invoke(RETRIEVER_QUERY, k=3, filter={"lang": "de"})
    assert len(docs) == 3 and all(d.metadata["lang"] == "de" for d in docs)
    assert [d.id for d in docs] == [h.id for h in qdrant_for_retrievers.search(RETRIEVER_QUERY, k=3, filter={"lang": "de"})]

    # add_documents / delete go through the store (on a fresh collection)
    backend = "edge" if qdrant_for_retrievers._is_edge() else "local"
    fresh = BGEM3HybridRetriever(store=new_store(backend, qd_encoder, edge_root, collection_name="t"), k=2)
    ids = fresh.add_documents([Document(page_content="bread oven night", metadata={"t": 1}, id="x"),
                               Document(page_content="cat dog bird", metadata={"t": 2}, id="y")])
    assert ids == ["x", "y"] and len(fresh.store) == 2
    assert fresh.invoke("bread oven")[0].id == "x"
    fresh.delete(["x"])
    assert [d.id for d in fresh.invoke("bread oven")] == ["y"]


async def test_langchain_retriever_over_qdrant_store_async(qdrant_for_retrievers):
    pytest.importorskip("langchain_core")
    from langchain_bgem3 import BGEM3HybridRetriever

    r = BGEM3HybridRetriever(store=qdrant_for_retrievers, k=4)
    assert [d.id for d in await r.ainvoke(RETRIEVER_QUERY)] == [d.id for d in r.invoke(RETRIEVER_QUERY)]


def test_llama_index_retriever_over_qdrant_store(qdrant_for_retrievers, index, qd_encoder, edge_root):
    pytest.importorskip("llama_index.core")
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import ExactMatchFilter, MetadataFilters

    from llama_index_bgem3 import BGEM3HybridRetriever

    on_qdrant = BGEM3HybridRetriever(qdrant_for_retrievers, similarity_top_k=5)
    on_index = BGEM3HybridRetriever(index, similarity_top_k=5)
    got, expected = on_qdrant.retrieve(RETRIEVER_QUERY), on_index.retrieve(RETRIEVER_QUERY)
    assert [n.node.node_id for n in got] == [n.node.node_id for n in expected] and len(got) == 5
    for a, b in zip(got, expected):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.node.get_content() == b.node.get_content()
        for key in ("dense_score", "sparse_score", "colbert_score"):
            assert a.node.metadata[key] == pytest.approx(b.node.metadata[key], abs=1e-4)
    flt = MetadataFilters(filters=[ExactMatchFilter(key="group", value=2)])
    filtered = BGEM3HybridRetriever(qdrant_for_retrievers, similarity_top_k=4, filters=flt).retrieve(RETRIEVER_QUERY)
    assert len(filtered) == 4 and all(n.node.metadata["group"] == 2 for n in filtered)

    # nodes round-trip through the Qdrant payload (LlamaIndex's _node_content record included)
    backend = "edge" if qdrant_for_retrievers._is_edge() else "local"
    fresh = BGEM3HybridRetriever(new_store(backend, qd_encoder, edge_root, collection_name="t"), similarity_top_k=1)
    fresh.add_nodes([TextNode(text="bread oven night", id_="n1", metadata={"src": "a"}),
                     TextNode(text="cat dog bird", id_="n2", metadata={"src": "b"})])
    (hit,) = fresh.retrieve("bread oven")
    assert hit.node.node_id == "n1" and hit.node.metadata["src"] == "a" and hit.node.get_content() == "bread oven night"
    fresh.delete(["n1"])
    assert fresh.retrieve("bread oven")[0].node.node_id == "n2"


def test_bad_vectors_write_nothing(fresh):
    dense, sparse, colbert = _synthetic(5, 16, seed=3)
    st = fresh(None, model_name="synthetic", dim=16, colbert_dim=8, batch_size=2)
    bad = list(colbert)
    bad[4] = np.full((2, 8), np.nan, dtype=np.float32)  # the last batch is bad
    with pytest.raises(ValueError, match="NaN"):
        st.add_encoded([f"v{i}" for i in range(5)], ["t"] * 5, None, dense, sparse, bad)
    wrong = list(colbert)
    wrong[3] = np.zeros((2, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=r"shape \(tokens, 8\)"):
        st.add_encoded([f"v{i}" for i in range(5)], ["t"] * 5, None, dense, sparse, wrong)
    with pytest.raises(ValueError, match="dimension 12"):
        st.add_encoded(["a"], ["t"], None, np.ones((1, 12), np.float32), [{}], [np.ones((1, 8), np.float32)])
    assert len(st) == 0


try:
    from langchain_tests.integration_tests import RetrieversIntegrationTests
except ImportError:  # pragma: no cover
    RetrieversIntegrationTests = None

if RetrieversIntegrationTests is not None:

    class TestLangChainStandardSuiteOnQdrant(RetrieversIntegrationTests):
        """langchain-tests' standard retriever suite, with QdrantHybridStore as the store."""

        _store = None

        @pytest.fixture(autouse=True)
        def _bind_store(self, qdrant_for_retrievers):
            type(self)._store = qdrant_for_retrievers

        @property
        def retriever_constructor(self):
            from langchain_bgem3 import BGEM3HybridRetriever

            return BGEM3HybridRetriever

        @property
        def retriever_constructor_params(self) -> dict:
            return {"store": self._store}

        @property
        def retriever_query_example(self) -> str:
            return RETRIEVER_QUERY
