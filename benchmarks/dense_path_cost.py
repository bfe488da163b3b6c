"""Which dense path is faster below 50,000 rows, and what the approximate one costs in recall.

For each index size (one saved segment, as a small index is after its first save) and each vector
set, per query:

* **exact**: every stored dense row scored (``dense_exact``; float16 rows converted in chunks),
  then the top ``candidates``;
* **hamming, every row**: the sign bits of every row scanned (``dense_candidates`` with
  ``dense_probe=1``), the best ``shortlist`` rows rescored exactly, their top ``candidates``;
* **hamming, lists**: the same through the segment's inverted lists at ``dense_probe=0.2``
  (segments of 16,384 rows and more have lists).

Recall is against the exact float32 top-10 / top-100 over the original vectors. The last columns
are the model's choice (:func:`bgem3.index.search.dense_path`) and a whole dense-only
``search_encoded`` under the default (cost) rule and under each forced path.

Vector sets: ``synthetic`` (1024-d, ``normalize(topic + 0.6 * noise)`` with ``--per-topic``
passages per topic, 500 as in benchmarks/index_scale.py's million; queries are passages plus noise) and ``minilm`` (real all-MiniLM-L6-v2
vectors of 384-d from ``benchmarks/dense_lists_real.py --cache FILE``; the last 200 are queries).

Run::

    python benchmarks/dense_path_cost.py --sizes 5000,10000,20000,50000 --minilm /tmp/minilm_dense_20k.npz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgem3.index import HybridIndex  # noqa: E402
from bgem3.index.search import dense_candidates, dense_exact, dense_path, one_blas_thread  # noqa: E402


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic(n: int, queries: int, per_topic: int, dim: int = 1024, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    topics = max(1, n // per_topic)
    centres = normalize(rng.normal(size=(topics, dim)))
    docs = normalize(centres[rng.integers(0, topics, n)] + 0.6 * normalize(rng.normal(size=(n, dim))))
    q = normalize(docs[rng.integers(0, n, queries)] + 0.5 * normalize(rng.normal(size=(queries, dim))))
    return docs, q


def recall(rows: np.ndarray, scores: np.ndarray, exact: np.ndarray, k: int) -> float:
    top = rows[np.argsort(-scores, kind="stable")][:k]
    return len(set(top.tolist()) & set(exact[:k].tolist())) / k


def measure(name: str, docs: np.ndarray, queries: np.ndarray, codec: str, candidates: int, shortlist: int) -> dict:
    n, dim = docs.shape
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :100]
    out: dict = {"vectors": name, "n": n, "dim": dim, "dense_codec": codec, "queries": len(queries)}
    with tempfile.TemporaryDirectory() as tmp:
        idx = HybridIndex(None, dim=dim, channels=["dense"], dense_codec=codec)
        idx.add_encoded([f"d{i}" for i in range(n)], ["-"] * n, None, docs)
        idx.save(tmp + "/i")
        idx = HybridIndex.load(tmp + "/i", load_encoder=False)
        segs = idx._all_segments()
        seg = segs[0]
        out["segments"] = len(segs)
        out["lists"] = 0 if seg.dense_lists() is None else int(len(seg.dense_lists()[0]))
        bases = np.zeros(1, dtype=np.int64)
        paths = {
            "exact": lambda q: exact_top(seg, q, candidates),
            "hamming_every_row": lambda q: dense_candidates([seg], bases, q, [seg.alive], candidates, shortlist, 1.0),
            "hamming_lists_0.2": lambda q: dense_candidates([seg], bases, q, [seg.alive], candidates, shortlist, 0.2),
        }
        with one_blas_thread():
            for key, fn in paths.items():
                for q in queries[:5]:
                    fn(q)  # warm the maps
                ts, r10, r100 = [], [], []
                for qi, q in enumerate(queries):
                    t = time.perf_counter()
                    rows, sc = fn(q)
                    ts.append(time.perf_counter() - t)
                    r10.append(recall(rows, sc, exact[qi], 10))
                    r100.append(recall(rows, sc, exact[qi], 100))
                out[key] = {"median_ms": round(1e3 * float(np.median(ts)), 3),
                            "p90_ms": round(1e3 * float(np.percentile(ts, 90)), 3),
                            "recall_at_10": round(float(np.mean(r10)), 4), "min_recall_at_10": float(np.min(r10)),
                            "recall_at_100": round(float(np.mean(r100)), 4)}
        out["model_choice"] = "hamming" if dense_path(segs, n, shortlist, dim, codec) else "exact"
        for label, rows in (("search_default", None), ("search_exact", 10**9), ("search_hamming", 1)):
            idx.exact_dense_rows = rows
            ts = []
            for q in queries:
                t = time.perf_counter()
                idx.search_encoded(q, k=10, candidates=candidates)
                ts.append(time.perf_counter() - t)
            out[label + "_median_ms"] = round(1e3 * float(np.median(ts)), 3)
    return out


def exact_top(seg, q: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    d = dense_exact(seg, q)
    rows = np.argpartition(-d, candidates - 1)[:candidates]
    return rows, d[rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="5000,10000,20000,50000")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--codecs", default="float16,float32")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--per-topic", type=lambda v: [int(x) for x in v.split(",")], default=[500],
                    help="synthetic passages per topic (the 1M benchmark has 500; 25 is a set with little structure)")
    ap.add_argument("--minilm", default=None, help="npz with 'dense' (benchmarks/dense_lists_real.py --cache)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench_runs"
                                         / "dense_path_cost.json"))
    args = ap.parse_args()
    shortlist = max(1000, 10 * args.candidates)
    sizes = [int(s) for s in args.sizes.split(",")]
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"}),
                    "load_before": os.getloadavg(), "runs": []}
    sets = [(f"synthetic_{pt}_per_topic", synthetic(n, args.queries, pt), n) for pt in args.per_topic
            for n in sizes]
    if args.minilm:
        x = np.load(args.minilm)["dense"].astype(np.float32)
        sets += [("minilm", (x[:n], x[-200:][: args.queries]), n) for n in sizes if n <= len(x) - 200]
    for name, (docs, queries), n in sets:
        for codec in args.codecs.split(","):
            r = measure(name, docs[:n], queries, codec, args.candidates, shortlist)
            result["runs"].append(r)
            print(json.dumps(r), flush=True)
    result["load_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
