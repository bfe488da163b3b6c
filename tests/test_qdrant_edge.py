"""Qdrant Edge as the real-engine check of QdrantHybridStore's server query plans.

qdrant-client's local mode is a Python re-implementation; Qdrant Edge is Qdrant's own engine in
the process. Here the server plans (``rescore="qdrant"``: dense + lexical prefetch, three
re-scoring queries, MAX_SIM sum -> mean) run on it with each ColBERT storage datatype and
quantisation, and are compared with HybridIndex on the same vectors within the tolerance
documented per datatype in docs/qdrant.md; plus snapshots, a half-written add, and the errors
(missing packages, connection refused, gRPC, a locked or foreign folder).
"""

from __future__ import annotations

import builtins
import os
import sys

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
qe = pytest.importorskip("qdrant_edge")

from bgem3 import HybridIndex  # noqa: E402
from bgem3.stores.qdrant import (  # noqa: E402
    COLBERT_QUANTIZATIONS,
    QdrantConnectionError,
    QdrantHybridStore,
    QdrantServerError,
)
from bgem3.stores.qdrant_edge import SIDECAR, EdgeClient, EdgeError  # noqa: E402

N, DIM, CDIM = 400, 32, 32
QUERIES = 6


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _vectors(n: int, seed: int):
    """BGE-M3-like outputs: clustered unit dense vectors, 5-20 lexical weights, 4-24 ColBERT unit
    vectors drawn around the document's own direction (so MaxSim separates documents)."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(12, DIM)))
    dense, sparse, colbert = [], [], []
    for i in range(n):
        base = centers[i % 12] + 0.6 * rng.normal(size=DIM)
        dense.append(_unit(base))
        toks = rng.choice(500, size=int(rng.integers(5, 21)), replace=False)
        sparse.append({int(t): float(w) for t, w in zip(toks, rng.uniform(0.01, 0.4, size=len(toks)))})
        colbert.append(_unit(base + 0.9 * rng.normal(size=(int(rng.integers(4, 25)), CDIM))))
    return np.stack(dense), sparse, colbert


@pytest.fixture(scope="module")
def data():
    dense, sparse, colbert = _vectors(N, seed=11)
    ids = [f"d{i}" for i in range(N)]
    metas = [{"part": i % 4, "even": i % 2 == 0} for i in range(N)]
    qd, qs, qc = _vectors(QUERIES, seed=12)
    return ids, [f"text {i}" for i in range(N)], metas, dense, sparse, colbert, list(zip(qd, qs, qc))


@pytest.fixture(scope="module")
def exact_index(data):
    ids, texts, metas, dense, sparse, colbert, _ = data
    idx = HybridIndex(None, model_name="synthetic", dim=DIM, colbert_dim=CDIM, colbert_dtype="float32")
    idx.add_encoded(ids, texts, metas, dense, sparse, colbert)
    return idx


def _edge(tmp, data, **kw) -> QdrantHybridStore:
    ids, texts, metas, dense, sparse, colbert, _ = data
    kw.setdefault("colbert_dtype", "float32")
    st = QdrantHybridStore(None, model_name="synthetic", dim=DIM, colbert_dim=CDIM, edge_path=tmp,
                           rescore="qdrant", batch_size=100, **kw)
    st.add_encoded(ids, texts, metas, dense, sparse, colbert)
    return st


# Per datatype: the largest |ColBERT-score| difference to exact float32 allowed (documented in
# docs/qdrant.md; measured ~0.3-0.5x these). The top-k must be HybridIndex's, except that two
# documents whose exact fused scores are closer than the datatype's rounding may swap.
DATATYPES = {"float32": 2e-6, "float16": 1.5e-3, "turbo16": 2e-4, "turbo8": 1.5e-2}
OPTIONS = [dict(), dict(candidates=30), dict(weights=(0.2, 0.3, 0.5), candidates=50),
           dict(filter={"part": [1, 3]}, candidates=40), dict(filter={"even": True}), dict(exhaustive=True),
           dict(exhaustive=True, filter={"part": 2}, weights=(0, 0, 1))]


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_server_plan_on_the_engine_matches_hybrid_index(datatype, data, exact_index, tmp_path):
    tol = DATATYPES[datatype]
    st = _edge(tmp_path / "s", data, server_colbert_datatype=datatype)
    assert st.rescore == "qdrant" and st.client.get_collection("bgem3").config.params.vectors["colbert"].datatype \
        in (None, datatype)
    worst, overlap, total = 0.0, 0, 0
    for q in data[-1]:
        for opts in OPTIONS:
            exp = exact_index.search_encoded(*q, k=10, **opts)
            got = st.search_encoded(*q, k=10, **opts)
            assert len(got) == len(exp) == 10
            overlap += len({h.id for h in got} & {h.id for h in exp})
            total += 10
            w = np.asarray(opts.get("weights", (0.4, 0.2, 0.4)), dtype=float)
            slack = 2 * tol * w[2] / w.sum()  # how far rounding can move a fused score
            if [h.id for h in got] != [h.id for h in exp]:
                exact_all = {h.id: h.score for h in exact_index.search_encoded(
                    *q, k=N, **{**opts, "exhaustive": True})}
                for a, b in zip(got, exp):  # a swap is only allowed between near ties
                    assert abs(exact_all[a.id] - b.score) <= slack, (datatype, opts, a.id, b.id)
            by_id = {h.id: h for h in exp}
            for h in got:
                if h.id in by_id:  # dense and lexical are float32 in both stores
                    e = by_id[h.id]
                    assert h.dense_score == pytest.approx(e.dense_score, abs=2e-6)
                    assert h.sparse_score == pytest.approx(e.sparse_score, abs=2e-6)
                    worst = max(worst, abs(h.colbert_score - e.colbert_score))
            flt = opts.get("filter") or {}
            for h in got:
                for key, want in flt.items():
                    assert h.metadata[key] in (want if isinstance(want, list) else [want])
    assert worst <= tol, (datatype, worst)
    if datatype != "float32":
        assert worst > 0  # the datatype really reached the engine (it rounds the stored vectors)
    assert overlap / total >= 0.97
    st.close()


def test_rrf_on_the_engine_matches_hybrid_index(data, exact_index, tmp_path):
    st = _edge(tmp_path / "s", data)
    for q in data[-1]:
        for opts in (dict(mode="rrf"), dict(mode="rrf", rrf_k=5, candidates=25), dict(mode="rrf", exhaustive=True)):
            exp = exact_index.search_encoded(*q, k=10, **opts)
            got = st.search_encoded(*q, k=10, **opts)
            assert [h.id for h in got] == [h.id for h in exp]
            assert [h.score for h in got] == pytest.approx([h.score for h in exp], abs=1e-9)
    st.close()


# the top-10 overlap the codes alone keep at this 32-d toy width (binary codes need wide vectors:
# see docs/qdrant.md for recall on real 384-d MiniLM token vectors)
@pytest.mark.parametrize("quant,min_overlap", [("int8", 0.8), ("binary-2bit", 0.0), ("turbo-4bit", 0.6)])
def test_colbert_quantisation_with_and_without_rescoring(quant, min_overlap, data, exact_index, tmp_path):
    """Codes are built by the engine's optimizer; rescoring with the originals gives exact scores,
    scoring with the codes moves them (so the codes are really used)."""
    st = _edge(tmp_path / "s", data, colbert_quantization=quant, edge_optimizers={"indexing_threshold": 1})
    st.optimize()
    seg = os.path.join(st.client.path, "segments")
    assert any(os.path.exists(os.path.join(seg, s, "vector_storage-colbert", "quantized.data")) for s in os.listdir(seg))
    worst_exact = worst_codes = 0.0
    overlap = 0
    for q in data[-1]:  # candidates = the whole corpus: what differs is the ColBERT scoring alone
        exp = exact_index.search_encoded(*q, k=10, candidates=N)
        st.colbert_rescore = True
        got = st.search_encoded(*q, k=10, candidates=N)
        assert [h.id for h in got] == [h.id for h in exp]
        worst_exact = max(worst_exact, max(abs(a.colbert_score - b.colbert_score) for a, b in zip(got, exp)))
        st.colbert_rescore = False
        codes = st.search_encoded(*q, k=10, candidates=N)
        overlap += len({h.id for h in codes} & {h.id for h in exp})
        by_id = {h.id: h for h in exp}
        worst_codes = max([worst_codes] + [abs(h.colbert_score - by_id[h.id].colbert_score) for h in codes if h.id in by_id])
    assert worst_exact <= 2e-6
    assert worst_codes > 1e-4  # the codes scored the candidates
    assert overlap / (10 * QUERIES) >= min_overlap
    st.close()


def test_reopened_edge_store_keeps_datatype_and_quantisation(data, tmp_path):
    st = _edge(tmp_path / "s", data, server_colbert_datatype="float16", colbert_quantization="int8")
    st.close()
    again = QdrantHybridStore(None, edge_path=tmp_path / "s")
    assert (again.server_colbert_datatype, again.colbert_quantization, again.dim, again.model_name) == \
        ("float16", "int8", DIM, "synthetic")
    assert len(again) == N
    again.close()
    from bgem3.stores.qdrant import CollectionMismatchError

    with pytest.raises(CollectionMismatchError, match="'float16', not server_colbert_datatype='turbo8'"):
        QdrantHybridStore(None, edge_path=tmp_path / "s", server_colbert_datatype="turbo8")
    with pytest.raises(CollectionMismatchError, match="'int8', not colbert_quantization='binary'"):
        QdrantHybridStore(None, edge_path=tmp_path / "s", colbert_quantization="binary")


def test_colbert_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="uint8.*score 0"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", server_colbert_datatype="uint8")
    with pytest.raises(ValueError, match="turbo4.*server only"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", server_colbert_datatype="turbo4")
    with pytest.raises(ValueError, match="colbert_quantization"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", colbert_quantization="pq")
    with pytest.raises(ValueError, match="binary.*colbert_rescore=False is refused.*another scale"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", colbert_quantization="binary-2bit",
                          colbert_rescore=False)
    with pytest.raises(ValueError, match="shard_number.*one shard"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", shard_number=2)
    with pytest.raises(ValueError, match="edge_optimizers.*edge_path"):
        QdrantHybridStore(None, dim=4, location=":memory:", edge_optimizers={"indexing_threshold": 1})
    with pytest.raises(ValueError, match="at most one"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "a", location=":memory:")
    assert not os.path.exists(tmp_path / "a")  # refused calls create nothing
    assert set(COLBERT_QUANTIZATIONS) >= {"int8", "binary", "turbo-1bit"}


def test_edge_bool_filter_needs_numpy_bool(tmp_path):
    """Pins the qdrant-edge-py 0.9.0 behaviour EdgeClient works around: a Python bool in a
    MatchValue reaches the engine as an integer and matches no boolean payload."""
    shard = qe.EdgeShard.create(str(tmp_path / "b"), qe.EdgeConfig(vectors={"v": qe.EdgeVectorParams(
        size=2, distance=qe.Distance.Dot)}))
    shard.update(qe.UpdateOperation.upsert_points([qe.Point(i + 1, {"v": [1.0, 0.0]}, {"f": i % 2 == 0})
                                                   for i in range(4)]))

    def count(value):
        return shard.count(qe.CountRequest(filter=qe.Filter(must=[qe.FieldCondition(key="f", match=qe.MatchValue(value))])))

    assert count(True) == 0 and count(np.bool_(True)) == 2 and count(np.bool_(False)) == 2
    shard.close()


# ------------------------------------------------------------------ snapshots
def test_snapshot_round_trip_on_edge(data, tmp_path):
    st = _edge(tmp_path / "s", data, server_colbert_datatype="float16")
    st.delete(["d3", "d7"])  # tombstones travel too
    q = data[-1][0]
    before = st.search_encoded(*q, k=10)
    path = st.snapshot(tmp_path / "shard.snapshot")
    manifest = st.snapshot_manifest()
    assert os.path.getsize(path) > 0
    with pytest.raises(FileExistsError, match="left untouched"):
        st.snapshot(path)
    with pytest.raises(ValueError, match="inside the shard folder"):
        st.snapshot(tmp_path / "s" / "x.snapshot")
    import tarfile

    with tarfile.open(path) as tar:
        top = {n.split("/")[0] for n in tar.getnames()}
    assert {"segments", "wal", "edge_config.json"} <= top and SIDECAR not in top
    st.close()

    qe.EdgeShard.unpack_snapshot(path, str(tmp_path / "restored"))
    shard = qe.EdgeShard.load(str(tmp_path / "restored"))
    assert shard.snapshot_manifest() == manifest
    assert shard.info().points_count == N - 2
    shard.close()
    # the restored shard is a store again (the model name lives on the server / in the sidecar)
    again = QdrantHybridStore(None, edge_path=tmp_path / "restored", model_name="synthetic")
    assert again.server_colbert_datatype == "float16" and len(again) == N - 2
    after = again.search_encoded(*q, k=10)
    assert [(h.id, h.score) for h in after] == [(h.id, h.score) for h in before]
    assert "d3" not in again
    again.close()


def test_snapshot_and_optimize_need_edge():
    st = QdrantHybridStore(None, dim=4, location=":memory:")
    with pytest.raises(NotImplementedError, match="Qdrant Edge store.*create_shard_snapshot"):
        st.snapshot("x.snapshot")
    with pytest.raises(NotImplementedError, match="Qdrant Edge"):
        st.optimize()


# ------------------------------------------------------------------ folders and locks
def test_foreign_folder_is_refused_and_untouched(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty and holds no Qdrant Edge shard.*left untouched"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "app")
    assert os.listdir(tmp_path / "app") == ["manifest.json"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        QdrantHybridStore(None, dim=4, edge_path=tmp_path / "file")


def test_second_store_on_an_open_shard_is_a_clear_error(tmp_path):
    st = QdrantHybridStore(None, dim=4, colbert_dim=4, edge_path=tmp_path / "s")
    with pytest.raises(EdgeError, match="open in another store or process"):
        QdrantHybridStore(None, edge_path=tmp_path / "s")
    st.close()
    QdrantHybridStore(None, edge_path=tmp_path / "s").close()  # closed: opens again


def test_unreadable_sidecar_is_named(tmp_path):
    QdrantHybridStore(None, dim=4, colbert_dim=4, edge_path=tmp_path / "s").close()
    (tmp_path / "s" / SIDECAR).write_text("{not json")
    with pytest.raises(EdgeError, match=SIDECAR):
        QdrantHybridStore(None, edge_path=tmp_path / "s")


def test_edge_client_refuses_what_it_cannot_translate(tmp_path):
    from qdrant_client import models

    client = EdgeClient(tmp_path / "s")
    client.create_collection("c", vectors_config={"v": models.VectorParams(size=2, distance=models.Distance.DOT)})
    geo = models.Filter(must=[models.FieldCondition(key="loc", geo_radius=models.GeoRadius(
        center=models.GeoPoint(lon=0, lat=0), radius=1.0))])
    with pytest.raises(NotImplementedError, match="geo_radius"):
        client.count("c", count_filter=geo)
    with pytest.raises(NotImplementedError, match="distance"):
        EdgeClient(tmp_path / "t").create_collection("c", vectors_config={
            "v": models.VectorParams(size=2, distance=models.Distance.EUCLID)})
    client.close()


# ------------------------------------------------------------------ errors
def test_missing_packages_are_named_before_any_model_loads(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no(name):
        def fake(mod, globals=None, locals=None, fromlist=(), level=0):
            if level == 0 and (mod == name or mod.startswith(name + ".")):
                raise ImportError(f"No module named {mod!r}")
            return real_import(mod, globals, locals, fromlist, level)
        return fake

    # "no-such-model" would fail to load (OSError) if the store tried before checking packages
    monkeypatch.setattr(builtins, "__import__", no("qdrant_edge"))
    monkeypatch.delitem(sys.modules, "qdrant_edge", raising=False)
    with pytest.raises(ImportError, match=r"bgem3\[qdrant-edge\]"):
        QdrantHybridStore(str(tmp_path / "no-such-model"), edge_path=tmp_path / "s")
    monkeypatch.setattr(builtins, "__import__", no("qdrant_client"))
    with pytest.raises(ImportError, match=r"bgem3\[qdrant\]"):
        QdrantHybridStore(str(tmp_path / "no-such-model"), location=":memory:")
    assert not os.path.exists(tmp_path / "s")


def test_connection_refused_names_the_url():
    url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(QdrantConnectionError, match=r"cannot reach Qdrant at http://127\.0\.0\.1:9") as info:
        QdrantHybridStore(None, dim=4, url=url, client_kwargs={"timeout": 2, "check_compatibility": False})
    assert "\n" not in str(info.value) and info.value.__cause__ is not None


def test_connection_refused_over_grpc_is_one_line():
    with pytest.raises(QdrantConnectionError, match=r"over gRPC \(UNAVAILABLE") as info:
        QdrantHybridStore(None, dim=4, url="http://127.0.0.1:9",
                          client_kwargs={"prefer_grpc": True, "grpc_port": 9, "timeout": 2,
                                         "check_compatibility": False})
    assert "\n" not in str(info.value) and "debug_error_string" not in str(info.value)


class _FakeRpcError(Exception):
    """What grpc raises: an RpcError with code() and details()."""

    def __init__(self, code, details):
        import grpc

        super().__init__(f"<_InactiveRpcError of RPC that terminated with:\n\tstatus = {code}\n\tdetails = "
                         f'"{details}"\n\tdebug_error_string = "UNKNOWN:Error received from peer"\n>')
        self._code, self._details = getattr(grpc.StatusCode, code), details

    def code(self):
        return self._code

    def details(self):
        return self._details


def test_server_errors_are_one_readable_line(tmp_path):
    import grpc
    from qdrant_client.http.exceptions import UnexpectedResponse

    class RpcError(_FakeRpcError, grpc.RpcError):
        pass

    st = QdrantHybridStore(None, dim=4, colbert_dim=4, edge_path=tmp_path / "s")
    real = st.client

    class Failing:
        def __init__(self, exc):
            self.exc = exc

        def count(self, *a, **kw):
            raise self.exc

        def __getattr__(self, name):
            return getattr(real, name)

    st.client = Failing(RpcError("INVALID_ARGUMENT", "Wrong input: Vector dimension error"))
    with pytest.raises(QdrantServerError, match=r"gRPC INVALID_ARGUMENT: Wrong input: Vector dimension error$") as info:
        len(st)
    assert "\n" not in str(info.value) and info.value.code == "INVALID_ARGUMENT"
    import httpx

    st.client = Failing(UnexpectedResponse(status_code=403, reason_phrase="Forbidden",
                                           content=b'{"status":\n {"error": "Forbidden: bad api key"}}',
                                           headers=httpx.Headers()))
    with pytest.raises(QdrantServerError, match=r"HTTP 403 Forbidden: .*bad api key") as info:
        len(st)
    assert "\n" not in str(info.value) and info.value.code == 403
    st.client = real
    st.close()


def test_exact_candidates_on_an_indexed_shard(data, exact_index, tmp_path):
    """After optimize() the dense vectors have an HNSW graph; exact_candidates=True takes the
    dense top-N by an exact scan (HybridIndex's rule) and so returns HybridIndex's hits."""
    st = _edge(tmp_path / "s", data, exact_candidates=True, edge_optimizers={"indexing_threshold": 1})
    st.optimize()
    sent = []
    real = st.client.query_batch_points
    st.client.query_batch_points = lambda name, requests: sent.extend(requests) or real(name, requests)
    for q in data[-1]:
        assert [h.id for h in st.search_encoded(*q, k=10, candidates=20)] == \
            [h.id for h in exact_index.search_encoded(*q, k=10, candidates=20)]
    assert sent and all(p.params.exact for r in sent for p in r.prefetch if p.using == "dense")
    with pytest.raises(ValueError, match="exact_candidates=True.*hnsw_ef"):
        QdrantHybridStore(None, dim=4, location=":memory:", exact_candidates=True, hnsw_ef=64)
    st.close()


def test_rich_filters_from_the_adapters_run_on_the_engine(data, tmp_path):
    """bgem3.stores.qdrant_filters.to_qdrant (the adapters' operators: ranges, !=, in, nested or/not, and tests
    Qdrant cannot run, sent as an id condition) selects on Edge what Where.matches selects."""
    from bgem3.filters import Cond, Where
    from bgem3.stores.qdrant_filters import to_qdrant

    ids, texts, metas, dense, sparse, colbert, queries = data
    st = _edge(tmp_path / "s", data)
    wheres = [Where("and", [Cond("part", ">", 1)]), Where("and", [Cond("part", "!=", 2), Cond("even", "==", True)]),
              Where("or", [Cond("part", "in", [0, 3]), Cond("even", "==", False)]),
              Where("not", [Cond("part", "<=", 1)]), Where("and", [Cond("part", "in", [])]),
              Where("and", [Cond("part", ">", "1")])]  # a range over a string: evaluated on the stored metadata
    for w in wheres:
        got = {h.id for h in st.search_encoded(*queries[0], k=N, filter=to_qdrant(w, st), exhaustive=True)}
        assert got == {i for i, m in zip(ids, metas) if w.matches(m)}, w
    st.close()
