"""Query latency of ``QdrantHybridStore`` on qdrant-client's local mode, beside ``HybridIndex``.

The same synthetic corpus and queries as ``benchmarks/index_latency.py`` (imported from it:
``make_corpus`` / ``make_queries``; dense 1024-d, 30-100 lexical tokens per document over
BGE-M3's 250k vocabulary, ColBERT ``T ~ U[tmin, tmax]`` vectors per document, fp16), loaded
into both stores. Timed: ``search_encoded`` with the same precomputed query vectors (query
encoding is the same for every store and is measured in ``benchmarks/encode.py``), k=10,
candidates=100, weighted fusion; median / p90 after one warm-up query.

Systems:

* ``HybridIndex`` (embedded, the reference);
* ``QdrantHybridStore(location=":memory:", rescore="client")``: the local-mode default;
* ``QdrantHybridStore(location=":memory:", rescore="qdrant")``: the server default, here run
  by local mode (whose brute-force re-scoring scans the whole collection per channel).

Each Qdrant row also reports whether its top-10 ids equal ``HybridIndex``'s for every query,
and the largest fused-score difference.

Run::

    python benchmarks/qdrant_latency.py                                # 10k docs, ColBERT 128 x [32, 96]
    python benchmarks/qdrant_latency.py --config 2000:1024:50:200      # BGE-M3's own ColBERT width
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.index_latency import Config, build_ours, limit_blas, make_corpus, make_queries, stats  # noqa: E402
from bgem3.stores.qdrant import QdrantHybridStore  # noqa: E402


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill_qdrant(dense, csr, flat, offsets, cfg: Config, batch: int) -> QdrantHybridStore:
    store = QdrantHybridStore(None, model_name="synthetic", dim=cfg.dim, colbert_dim=cfg.colbert_dim,
                              location=":memory:", batch_size=batch)
    chunk = 1000
    for a in range(0, cfg.n, chunk):
        b = min(cfg.n, a + chunk)
        sparse = [dict(zip(csr.indices[csr.indptr[i]:csr.indptr[i + 1]].tolist(),
                           csr.data[csr.indptr[i]:csr.indptr[i + 1]].tolist())) for i in range(a, b)]
        colbert = [flat[offsets[i]:offsets[i + 1]] for i in range(a, b)]
        store.add_encoded([str(i) for i in range(a, b)], [""] * (b - a), None, dense[a:b], sparse, colbert)
    return store


def timed_hits(fn, queries):
    fn(*queries[0])  # warm-up
    times, hits = [], []
    for q in queries:
        t = time.perf_counter()
        hits.append(fn(*q))
        times.append(time.perf_counter() - t)
    return np.array(times) * 1e3, hits


def run(cfg: Config, args) -> list[dict]:
    rows: list[dict] = []
    t0 = time.perf_counter()
    dense, csr, flat, offsets = make_corpus(cfg)
    queries = make_queries(cfg, args.queries)
    print(f"\n== {cfg.label()}  (data generated in {time.perf_counter() - t0:.1f}s)", flush=True)

    def report(system, ms, note, extra=None):
        row = {"config": cfg.label(), "n": cfg.n, "system": system, **stats(ms), "note": note, **(extra or {})}
        rows.append(row)
        print(f"  {system:<44} median {row['median_ms']:9.1f} ms  p90 {row['p90_ms']:9.1f} ms  "
              f"({row['queries']} q)  {note}", flush=True)

    kw = dict(k=10, candidates=args.candidates)
    t = time.perf_counter()
    idx = build_ours(dense, csr, flat, offsets, cfg)
    build_s = time.perf_counter() - t
    ref_ms, ref = timed_hits(lambda dq, sq, cq: idx.search_encoded(dq, sq, cq, **kw), queries)
    report("HybridIndex (embedded)", ref_ms, f"build {build_s:.1f}s")
    del idx
    gc.collect()

    r0 = rss()
    t = time.perf_counter()
    store = fill_qdrant(dense, csr, flat, offsets, cfg, args.batch)
    fill_s = time.perf_counter() - t
    grow = rss() - r0
    print(f"  QdrantHybridStore :memory: filled in {fill_s:.1f}s ({cfg.n / fill_s:.0f} docs/s), "
          f"RSS growth {grow / cfg.n / 1024:.1f} KiB/doc", flush=True)
    for rescore in ("client", "qdrant"):
        store.rescore = rescore
        ms, got = timed_hits(lambda dq, sq, cq: store.search_encoded(dq, sq, cq, **kw), queries)
        same = sum([h.id for h in a] == [h.id for h in b] for a, b in zip(got, ref))
        diff = max((abs(x.score - y.score) for a, b in zip(got, ref) for x, y in zip(a, b)), default=0.0)
        report(f"QdrantHybridStore :memory: rescore={rescore!r}", ms,
               f"same top-10 as HybridIndex {same}/{len(ref)}, max |score diff| {diff:.1e}",
               {"same_top10": same, "max_score_diff": diff, "fill_s": fill_s,
                "ratio_vs_hybrid_index": float(np.median(ms) / np.median(ref_ms))})
    store.close()
    del store
    gc.collect()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dim", type=int, default=1024, help="dense dimension")
    p.add_argument("--config", action="append", default=None, metavar="N:COLBERT_DIM:TMIN:TMAX",
                   help="corpus size and ColBERT shape; repeatable (default: 10000:128:32:96)")
    p.add_argument("--queries", type=int, default=20, help="queries timed per system")
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="points per upsert request")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads (threadpoolctl), as in index_latency.py; 0 = library default")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    configs = [Config.parse(c, args.dim) for c in (args.config or ["10000:128:32:96"])]
    limiter = limit_blas(args.blas_threads)
    import importlib.metadata as md

    print(f"python {platform.python_version()}, numpy {np.__version__}, qdrant-client {md.version('qdrant-client')}, "
          f"{os.cpu_count()} CPU cores, {platform.machine()}, BLAS threads: {args.blas_threads or 'default'}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for cfg in configs:
        rows += run(cfg, args)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    del limiter
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
