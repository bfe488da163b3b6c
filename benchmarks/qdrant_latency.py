"""Query latency and memory per passage of ``QdrantHybridStore`` on Qdrant Edge and on qdrant-client's local mode, beside ``HybridIndex``.

The same synthetic corpus and queries as ``benchmarks/index_latency.py`` (imported from it:
``make_corpus`` / ``make_queries``; dense 1024-d, 30-100 lexical tokens per document over
BGE-M3's 250k vocabulary, ColBERT ``T ~ U[tmin, tmax]`` vectors per document, fp16), loaded
into both stores. Timed: ``search_encoded`` with the same precomputed query vectors (query
encoding is the same for every store and is measured in ``benchmarks/encode.py``), k=10,
candidates=100, weighted fusion; median / p90 after one warm-up query.

Systems:

* ``HybridIndex`` (embedded, the reference);
* ``QdrantHybridStore(edge_path=..., rescore="qdrant")``: **Qdrant Edge**, Qdrant's own engine
  in-process, running the server query plan (dense + lexical prefetch, three re-scoring
  queries), once per ``--edge-datatype`` (the ColBERT storage datatype), timed after
  ``optimize()`` (segments merged, HNSW built where past the indexing threshold: the state a
  server reaches by itself);
* ``QdrantHybridStore(location=":memory:", rescore="client")``: the local-mode default, and
  ``rescore="qdrant"`` run by local mode (corpora up to ``--local-max-n`` only: local mode
  holds every vector as Python floats, ~0.5 MiB per passage at BGE-M3's shape).

Memory per passage: resident-set growth while filling (and, for Edge, the shard's size on
disk, whose vectors are memory-mapped). Each Qdrant row also reports whether its top-10 ids
equal ``HybridIndex``'s for every query, and the largest fused-score difference.

Run::

    python benchmarks/qdrant_latency.py                                # 10k docs, ColBERT 128 x [32, 96]
    python benchmarks/qdrant_latency.py --config 10000:1024:50:200 --edge-datatype float16   # BGE-M3's shape
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.index_latency import Config, build_ours, limit_blas, make_corpus, make_queries, stats  # noqa: E402
from bgem3.stores.qdrant import QdrantHybridStore  # noqa: E402


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under ``path`` (blocks, not apparent sizes: the engine preallocates)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def fill_qdrant(dense, csr, flat, offsets, cfg: Config, batch: int, **where) -> QdrantHybridStore:
    store = QdrantHybridStore(None, model_name="synthetic", dim=cfg.dim, colbert_dim=cfg.colbert_dim,
                              batch_size=batch, **(where or {"location": ":memory:"}))
    chunk = 200
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
    gc.collect()
    r0 = rss()
    t = time.perf_counter()
    idx = build_ours(dense, csr, flat, offsets, cfg)
    build_s = time.perf_counter() - t
    grow = rss() - r0
    ref_ms, ref = timed_hits(lambda dq, sq, cq: idx.search_encoded(dq, sq, cq, **kw), queries)
    report("HybridIndex (embedded)", ref_ms, f"build {build_s:.1f}s, RSS growth {grow / cfg.n / 1024:.1f} KiB/passage",
           {"rss_kib_per_passage": grow / cfg.n / 1024, "fill_s": build_s})
    del idx
    gc.collect()

    def compare(got):
        """(queries with the same top-10 ids in order, mean top-10 overlap, max |fused score diff| of
        the documents found by both)."""
        same = sum([h.id for h in a] == [h.id for h in b] for a, b in zip(got, ref))
        overlap = float(np.mean([len({h.id for h in a} & {h.id for h in b}) / max(1, len(b)) for a, b in zip(got, ref)]))
        diff = 0.0
        for a, b in zip(got, ref):
            by = {h.id: h.score for h in b}
            diff = max([diff] + [abs(h.score - by[h.id]) for h in a if h.id in by])
        return same, overlap, diff

    for datatype in args.edge_datatype:
        folder = tempfile.mkdtemp(prefix="bgem3-edge-", dir=args.workdir)
        try:
            gc.collect()
            r0 = rss()
            t = time.perf_counter()
            store = fill_qdrant(dense, csr, flat, offsets, cfg, args.batch, edge_path=os.path.join(folder, "shard"),
                                server_colbert_datatype=datatype, rescore="qdrant")
            fill_s = time.perf_counter() - t
            t = time.perf_counter()
            store.optimize()
            opt_s = time.perf_counter() - t
            grow = rss() - r0
            disk = disk_bytes(folder)
            info = store.client.shard.info()
            print(f"  Edge {datatype}: filled in {fill_s:.1f}s ({cfg.n / fill_s:.0f} docs/s), optimize {opt_s:.1f}s "
                  f"({info.segments_count} segments), RSS growth {grow / cfg.n / 1024:.1f} KiB/passage, "
                  f"disk {disk / cfg.n / 1024:.1f} KiB/passage", flush=True)
            for ef in (None, args.hnsw_ef, "exact"):
                store.hnsw_ef = ef if isinstance(ef, int) else None
                store.exact_candidates = ef == "exact"
                ms, got = timed_hits(lambda dq, sq, cq: store.search_encoded(dq, sq, cq, **kw), queries)
                same, overlap, diff = compare(got)
                label = "exact_candidates=True" if ef == "exact" else f"hnsw_ef={ef or 'default'}"
                report(f"QdrantHybridStore Edge colbert={datatype} {label}", ms,
                       f"same top-10 as HybridIndex {same}/{len(ref)}, top-10 overlap {overlap:.3f}, "
                       f"max |score diff| (same docs) {diff:.1e}",
                       {"same_top10": same, "top10_overlap": overlap, "max_score_diff": diff, "fill_s": fill_s,
                        "optimize_s": opt_s, "hnsw_ef": ef,
                        "rss_kib_per_passage": grow / cfg.n / 1024, "disk_kib_per_passage": disk / cfg.n / 1024,
                        "segments": info.segments_count,
                        "ratio_vs_hybrid_index": float(np.median(ms) / np.median(ref_ms))})
            store.close()
            del store
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # our own temporary folder
        gc.collect()

    if cfg.n > args.local_max_n:
        print(f"  qdrant-client local mode: not run at {cfg.n} passages (> --local-max-n {args.local_max_n}; it holds "
              f"every vector as Python floats)", flush=True)
        return rows
    gc.collect()
    r0 = rss()
    t = time.perf_counter()
    store = fill_qdrant(dense, csr, flat, offsets, cfg, args.batch)
    fill_s = time.perf_counter() - t
    grow = rss() - r0
    print(f"  QdrantHybridStore :memory: filled in {fill_s:.1f}s ({cfg.n / fill_s:.0f} docs/s), "
          f"RSS growth {grow / cfg.n / 1024:.1f} KiB/passage", flush=True)
    for rescore in ("client", "qdrant"):
        store.rescore = rescore
        ms, got = timed_hits(lambda dq, sq, cq: store.search_encoded(dq, sq, cq, **kw), queries)
        same, overlap, diff = compare(got)
        report(f"QdrantHybridStore :memory: rescore={rescore!r}", ms,
               f"same top-10 as HybridIndex {same}/{len(ref)}, top-10 overlap {overlap:.3f}, max |score diff| {diff:.1e}",
               {"same_top10": same, "top10_overlap": overlap, "max_score_diff": diff, "fill_s": fill_s,
                "rss_kib_per_passage": grow / cfg.n / 1024,
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
    p.add_argument("--batch", type=int, default=64, help="points per upsert request")
    p.add_argument("--edge-datatype", action="append", default=None, metavar="DATATYPE",
                   help="ColBERT storage datatype of a Qdrant Edge row (float32, float16, turbo16, turbo8); "
                        "repeatable (default: float16); 'none' for no Edge row")
    p.add_argument("--hnsw-ef", type=int, default=512,
                   help="the Edge rows are timed with the engine's default HNSW beam and with this hnsw_ef")
    p.add_argument("--local-max-n", type=int, default=10000,
                   help="run qdrant-client's local mode only on corpora up to this many passages")
    p.add_argument("--workdir", default=None, help="where the Edge shards are written (default: the temp folder)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads (threadpoolctl), as in index_latency.py; 0 = library default")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    configs = [Config.parse(c, args.dim) for c in (args.config or ["10000:128:32:96"])]
    args.edge_datatype = [d for d in (args.edge_datatype or ["float16"]) if d != "none"]
    limiter = limit_blas(args.blas_threads)
    import importlib.metadata as md

    print(f"python {platform.python_version()}, numpy {np.__version__}, qdrant-client {md.version('qdrant-client')}, "
          f"qdrant-edge-py {md.version('qdrant-edge-py')}, "
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
