"""Query latency and memory per document of ``bgem3.HybridIndex`` vs two peers.

Synthetic vectors (the index does not care where vectors come from):

* dense: random, L2-normalised, ``--dim`` (1024 = BGE-M3);
* lexical: 30-100 nonzeros per document over a 250002-token vocabulary (half drawn from
  5000 "common" ids, half uniform, so common tokens have long postings, as in text);
* ColBERT: ``T ~ U[tmin, tmax]`` L2-normalised vectors per document.

Systems, all given the same precomputed query vectors (query encoding is not timed):

* ``HybridIndex`` default (dense top-100 + lexical top-100 candidates, all three scores,
  weighted fusion) and ``exhaustive=True`` (every document scored: the same work as the
  brute-force baseline);
* ``python-loop``: the brute-force pattern of llama-index's ``BGEM3Index.query`` (dense by one
  matrix product, then a Python loop over documents for the lexical score over dicts and one
  for ColBERT MaxSim over a list of per-document float32 arrays). Written here, not imported;
  with numpy MaxSim per document, it is if anything faster than the original's per-document
  torch conversions;
* ``qdrant-local``: ``QdrantClient(":memory:")`` with a dense vector, a sparse vector and a
  multivector (MAX_SIM); query = prefetch dense top-100 + sparse top-100, rescored by ColBERT
  MaxSim (Qdrant's idiomatic hybrid pipeline; it ranks by ColBERT alone, not a weighted sum).

Run ``python benchmarks/index_latency.py --help``; defaults take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bgem3 import HybridIndex  # noqa: E402

VOCAB = 250002
COMMON = 5000


@dataclass
class Config:
    n: int
    dim: int
    colbert_dim: int
    tmin: int
    tmax: int

    @classmethod
    def parse(cls, text: str, dim: int) -> "Config":
        try:
            n, cdim, tmin, tmax = (int(x) for x in text.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"config must be N:COLBERT_DIM:TMIN:TMAX, got {text!r}") from None
        return cls(n, dim, cdim, tmin, tmax)

    def label(self) -> str:
        return f"N={self.n:,} dense={self.dim} colbert={self.colbert_dim}x[{self.tmin},{self.tmax}] tok fp16"


# --------------------------------------------------------------------------- data
def token_ids(rng: np.random.Generator, size: int) -> np.ndarray:
    common = rng.random(size) < 0.5
    return np.where(common, rng.integers(1, COMMON, size), rng.integers(COMMON, VOCAB, size))


def make_corpus(cfg: Config, seed: int = 0):
    rng = np.random.default_rng(seed)
    dense = rng.random((cfg.n, cfg.dim), dtype=np.float32) - 0.5
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    nnz = rng.integers(30, 101, cfg.n)
    indptr = np.zeros(cfg.n + 1, dtype=np.int64)
    np.cumsum(nnz, out=indptr[1:])
    csr = sp.csr_matrix((rng.uniform(0.01, 0.3, int(indptr[-1])).astype(np.float32),
                         token_ids(rng, int(indptr[-1])), indptr), shape=(cfg.n, VOCAB))
    csr.sum_duplicates()
    lens = rng.integers(cfg.tmin, cfg.tmax + 1, cfg.n)
    offsets = np.zeros(cfg.n + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    flat = np.empty((int(offsets[-1]), cfg.colbert_dim), dtype=np.float16)
    step = 1 << 18
    for a in range(0, len(flat), step):  # chunked: never a full float32 copy
        block = rng.random((min(step, len(flat) - a), cfg.colbert_dim), dtype=np.float32) - 0.5
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        flat[a:a + len(block)] = block
    return dense, csr, flat, offsets


def make_queries(cfg: Config, count: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        d = rng.standard_normal(cfg.dim).astype(np.float32)
        d /= np.linalg.norm(d)
        toks = np.unique(token_ids(rng, int(rng.integers(8, 21))))
        s = {int(t): float(w) for t, w in zip(toks, rng.uniform(0.05, 0.3, len(toks)))}
        c = rng.standard_normal((int(rng.integers(16, 33)), cfg.colbert_dim)).astype(np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        out.append((d, s, c))
    return out


def traced(fn):
    """(result, bytes newly allocated and still held) -- tracemalloc sees numpy buffers too."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        gc.collect()
        return out, tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


def timed(fn, queries) -> np.ndarray:
    fn(*queries[0])  # warm-up (builds caches)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(*q)
        times.append(time.perf_counter() - t)
    return np.array(times) * 1e3


# --------------------------------------------------------------------------- systems
class PythonLoopBaseline:
    """Brute force in the style of llama-index's BGEM3Index: per-document Python loops."""

    def __init__(self, dense, csr, flat, offsets):
        self.dense = dense
        self.lexical = [dict(zip(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tolist(),
                                 csr.data[csr.indptr[i]:csr.indptr[i + 1]].tolist())) for i in range(csr.shape[0])]
        self.colbert = [flat[offsets[i]:offsets[i + 1]].astype(np.float32) for i in range(len(offsets) - 1)]

    def search(self, dq, sq, cq, k=10, w=(0.4, 0.2, 0.4)):
        dense = self.dense @ dq
        lex = np.array([sum(v * doc[t] for t, v in sq.items() if t in doc) for doc in self.lexical])
        col = np.array([float((cq @ doc.T).max(axis=1).mean()) if len(doc) else 0.0 for doc in self.colbert])
        fused = (w[0] * dense + w[1] * lex + w[2] * col) / sum(w)
        return np.argsort(-fused)[:k]


class QdrantLocal:
    def __init__(self, dense, csr, flat, offsets, batch=256):
        from qdrant_client import QdrantClient, models

        self.models = models
        self.client = QdrantClient(":memory:")
        self.client.create_collection(
            "bench",
            vectors_config={
                "dense": models.VectorParams(size=dense.shape[1], distance=models.Distance.DOT),
                "colbert": models.VectorParams(size=flat.shape[1], distance=models.Distance.DOT,
                                               multivector_config=models.MultiVectorConfig(
                                                   comparator=models.MultiVectorComparator.MAX_SIM)),
            },
            sparse_vectors_config={"sparse": models.SparseVectorParams()},
        )
        n = dense.shape[0]
        for a in range(0, n, batch):
            points = []
            for i in range(a, min(n, a + batch)):
                lo, hi = csr.indptr[i], csr.indptr[i + 1]
                vec = {"dense": dense[i].tolist(),
                       "sparse": models.SparseVector(indices=csr.indices[lo:hi].tolist(), values=csr.data[lo:hi].tolist())}
                if offsets[i + 1] > offsets[i]:
                    vec["colbert"] = flat[offsets[i]:offsets[i + 1]].astype(np.float32).tolist()
                points.append(models.PointStruct(id=i, vector=vec, payload={}))
            self.client.upsert("bench", points=points, wait=True)

    def search(self, dq, sq, cq, k=10, n=100):
        m = self.models
        res = self.client.query_points(
            "bench",
            prefetch=[m.Prefetch(query=dq.tolist(), using="dense", limit=n),
                      m.Prefetch(query=m.SparseVector(indices=list(sq.keys()), values=list(sq.values())),
                                 using="sparse", limit=n)],
            query=cq.tolist(), using="colbert", limit=k)
        return [p.id for p in res.points]


def build_ours(dense, csr, flat, offsets, cfg: Config, codec=None) -> HybridIndex:
    kw = {"colbert_codec": codec} if codec else {}
    idx = HybridIndex(None, model_name="synthetic", dim=cfg.dim, colbert_dim=cfg.colbert_dim, vocab_size=VOCAB, **kw)
    ids = [str(i) for i in range(cfg.n)]
    idx.add_encoded(ids, [""] * cfg.n, None, dense, csr, (flat, offsets))
    return idx


def stats(ms: np.ndarray) -> dict:
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "queries": int(len(ms))}


# --------------------------------------------------------------------------- main
def run_config(cfg: Config, args, qdrant_n: int) -> list[dict]:
    rows: list[dict] = []
    t0 = time.perf_counter()
    dense, csr, flat, offsets = make_corpus(cfg)
    queries = make_queries(cfg, args.queries)
    print(f"\n== {cfg.label()}  (data generated in {time.perf_counter() - t0:.1f}s)", flush=True)

    def report(system, n, ms, bytes_per_doc, note=""):
        row = {"config": cfg.label(), "n": n, "system": system, **stats(ms), "bytes_per_doc": bytes_per_doc, "note": note}
        rows.append(row)
        print(f"  {system:<28} N={n:<7,} median {row['median_ms']:9.2f} ms  p90 {row['p90_ms']:9.2f} ms  "
              f"({row['queries']} q)  {bytes_per_doc / 1024:8.1f} KiB/doc {note}", flush=True)

    def ours_and_baseline(n: int, nq_baseline: int):
        d, c = dense[:n], csr[:n]
        off = offsets[: n + 1]
        f = flat[: off[-1]]
        sub = Config(n, cfg.dim, cfg.colbert_dim, cfg.tmin, cfg.tmax)
        t = time.perf_counter()
        idx = build_ours(d, c, f, off, sub, args.codec)
        build_s = time.perf_counter() - t
        ours = timed(lambda dq, sq, cq: idx.search_encoded(dq, sq, cq, k=10), queries)
        mem = idx.memory_usage()
        report("HybridIndex (candidates)", n, ours, mem["used"] / n,
               f"colbert_codec={idx.colbert_codec}; build {build_s:.1f}s; arrays incl. lexical search copy")
        exh = timed(lambda dq, sq, cq: idx.search_encoded(dq, sq, cq, k=10, exhaustive=True),
                    queries[: args.exhaustive_queries])
        report("HybridIndex (exhaustive)", n, exh, mem["used"] / n)
        # the exhaustive ranking equals brute force: check on the first query
        base = None
        if nq_baseline:
            base, held = traced(lambda: PythonLoopBaseline(d, c, f, off))
            bl = timed(lambda dq, sq, cq: base.search(dq, sq, cq), queries[:nq_baseline])
            report("python-loop baseline", n, bl, (held + d.nbytes) / n, "(tracemalloc + shared dense matrix)")
            want = base.search(*queries[0])
            got = [int(h.id) for h in idx.search_encoded(*queries[0], k=10, exhaustive=True)]
            agree = len(set(want.tolist()) & set(got))
            print(f"    exhaustive top-10 overlap with brute force: {agree}/10 ({idx.colbert_codec} vs fp32 ColBERT)")
            rows[-1]["exhaustive_top10_overlap_with_brute_force"] = agree
            rows[-1]["ratio_vs_ours_candidates"] = float(np.median(bl) / np.median(ours))
            rows[-1]["ratio_vs_ours_exhaustive"] = float(np.median(bl) / np.median(exh))
            print(f"    baseline / HybridIndex: {rows[-1]['ratio_vs_ours_candidates']:.0f}x (candidates), "
                  f"{rows[-1]['ratio_vs_ours_exhaustive']:.1f}x (exhaustive)")
        del base
        gc.collect()
        if args.fp32 and nq_baseline:
            idx32 = HybridIndex(None, model_name="synthetic", dim=cfg.dim, colbert_dim=cfg.colbert_dim,
                                vocab_size=VOCAB, colbert_dtype="float32")
            idx32.add_encoded([str(i) for i in range(n)], [""] * n, None, d, c, (f, off))
            f32 = timed(lambda dq, sq, cq: idx32.search_encoded(dq, sq, cq, k=10), queries)
            report("HybridIndex fp32 (candidates)", n, f32, idx32.memory_usage()["used"] / n,
                   "colbert_dtype='float32'")
            del idx32
            gc.collect()
        return idx, ours

    idx, ours = ours_and_baseline(cfg.n, min(args.baseline_queries, args.queries))
    del idx
    gc.collect()
    if qdrant_n:
        n = min(qdrant_n, cfg.n)
        if n != cfg.n:
            _, ours = ours_and_baseline(n, 0)
        try:
            import qdrant_client  # noqa: F401
        except ImportError:
            print("  qdrant-client not installed: skipped")
            return rows
        t = time.perf_counter()
        q, held = traced(lambda: QdrantLocal(dense[:n], csr[:n], flat, offsets[: n + 1]))
        build_s = time.perf_counter() - t
        ql = timed(lambda dq, sq, cq: q.search(dq, sq, cq), queries[: args.qdrant_queries])
        report("qdrant-client :memory:", n, ql, held / n, f"build {build_s:.1f}s incl. tracemalloc overhead")
        rows[-1]["ratio_vs_ours_candidates"] = float(np.median(ql) / np.median(ours))
        print(f"    qdrant local / HybridIndex: {rows[-1]['ratio_vs_ours_candidates']:.0f}x")
        del q
        gc.collect()
    return rows


def limit_blas(threads: int):
    """Cap BLAS threads with threadpoolctl (0: library default); keep the returned limiter alive."""
    if not threads:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("threadpoolctl not installed: BLAS threads left at the library default")
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dim", type=int, default=1024, help="dense dimension")
    p.add_argument("--config", action="append", default=None, metavar="N:COLBERT_DIM:TMIN:TMAX",
                   help="corpus size and ColBERT shape; repeatable "
                        "(default: 10000:1024:50:200 and 100000:128:32:96)")
    p.add_argument("--queries", type=int, default=50, help="queries timed per system")
    p.add_argument("--exhaustive-queries", type=int, default=10, help="queries for HybridIndex exhaustive=True")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for every system (threadpoolctl); 1 gives stable figures on a shared "
                        "machine; 0 = library default")
    p.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=True,
                   help="also time HybridIndex with colbert_dtype='float32' (configs that run the baseline)")
    p.add_argument("--baseline-queries", type=int, default=5, help="queries for the (slow) python-loop baseline")
    p.add_argument("--qdrant-n", type=int, default=2000,
                   help="documents for qdrant local mode, on the LAST config's shapes (0 = skip)")
    p.add_argument("--qdrant-queries", type=int, default=20)
    p.add_argument("--codec", default=None, help="HybridIndex colbert_codec (default: the index's default)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    configs = [Config.parse(c, args.dim) for c in (args.config or ["10000:1024:50:200", "100000:128:32:96"])]
    import scipy

    limiter = limit_blas(args.blas_threads)
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"{os.cpu_count()} CPU cores, {platform.machine()}, BLAS threads: {args.blas_threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = []
    for i, cfg in enumerate(configs):
        rows += run_config(cfg, args, args.qdrant_n if i == len(configs) - 1 else 0)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    del limiter
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
