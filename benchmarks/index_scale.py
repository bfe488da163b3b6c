"""One machine, a million passages at BGE-M3's real shape: build (streaming), cold open, query
latency, memory, disk, recall vs exact float32, incremental add + save.

Synthetic vectors at BGE-M3's shape (the index does not care where vectors come from):

* dense 1024-d: ``normalize(topic_centre + 0.6 * noise)``, 2,000 topics (so neighbours exist);
* lexical: 40-100 weights per passage over the 250,002-token vocabulary (half from the
  passage's topic's 300 terms, half Zipf(1.1) over the whole vocabulary), weights U(0.05, 0.4);
* ColBERT: 50-200 tokens x 1024-d per passage. Generating and rotating 125M fresh 1024-d
  vectors would take hours on 2 cores, so token vectors are drawn from a BANK of 65,536
  distinct L2-normalised 1024-d vectors (each topic prefers its own 512 of them), encoded ONCE
  by the index's codec; each passage gathers its tokens' codes (``HybridIndex._add_coded``).
  Everything downstream (segments, mapping, search, MaxSim through the codec) is the normal path.

Build: chunks of ``--segment`` passages, each ``add`` + ``save`` (one new segment per chunk,
bounded memory). Exact reference: the dense top-1000 of every query is kept over the float32
vectors while building; afterwards, per query, the exact candidate set (exact dense top-100
united with lexical top-100; lexical is exact in the index) is scored with float32 ColBERT from
the bank and fused -> the "exact float32 index" top-10. Recall = overlap of the index's top-10.

Serving runs in a fresh subprocess (cold open: new process, page cache as the OS left it):
open time, 100 queries (k=10, precomputed query vectors), p50/p90, peak RSS (VmHWM).

Run under the benchmark lock::

    flock /work/bench.lock nice -n 5 python benchmarks/index_scale.py --n 1000000 --codec 1bit
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bgem3.index import HybridIndex  # noqa: E402
from bgem3.index.lexical import LexicalBlock  # noqa: E402

DIM = 1024
VOCAB = 250_002
BANK = 65_536
TOPICS = 2_000
TOPIC_TOKENS = 512
TOPIC_TERMS = 300
WEIGHTS = (0.4, 0.2, 0.4)


def rss_mb() -> tuple[float, float]:
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def rss_split_mb() -> dict:
    """VmRSS split into anonymous memory and file-backed (memory-mapped page-cache) pages."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            for key in ("RssAnon", "RssFile", "RssShmem"):
                if line.startswith(key + ":"):
                    out[key] = int(line.split()[1]) / 1024
    return out


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class World:
    """The deterministic synthetic corpus: topics, bank, per-chunk generators."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = normalize(rng.standard_normal((TOPICS, DIM), dtype=np.float32))
        self.bank = normalize(rng.standard_normal((BANK, DIM), dtype=np.float32))
        self.topic_tokens = rng.integers(0, BANK, size=(TOPICS, TOPIC_TOKENS))
        self.topic_terms = rng.integers(0, VOCAB, size=(TOPICS, TOPIC_TERMS))
        ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
        p = ranks ** -1.1
        self.zipf_cdf = np.cumsum(p / p.sum())
        self.zipf_perm = rng.permutation(VOCAB)

    def chunk(self, c: int, n: int, start: int) -> dict:
        rng = np.random.default_rng(1000 + c)
        topic = rng.integers(0, TOPICS, size=n)
        dense = self.centres[topic] + 0.6 * rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(DIM)
        dense = normalize(dense)
        tlen = rng.integers(50, 201, size=n)
        off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(tlen, out=off[1:])
        own = rng.random(off[-1]) < 0.7
        doc_of = np.repeat(np.arange(n), tlen)
        tok = rng.integers(0, BANK, size=off[-1])
        pick = rng.integers(0, TOPIC_TOKENS, size=off[-1])
        tok[own] = self.topic_tokens[topic[doc_of[own]], pick[own]]
        nnz = rng.integers(40, 101, size=n)
        ip = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(nnz, out=ip[1:])
        lrow = np.repeat(np.arange(n), nnz)
        terms = self.zipf_perm[np.searchsorted(self.zipf_cdf, rng.random(ip[-1]))]
        topical = rng.random(ip[-1]) < 0.5
        terms[topical] = self.topic_terms[topic[lrow[topical]], rng.integers(0, TOPIC_TERMS, size=int(topical.sum()))]
        vals = rng.uniform(0.05, 0.4, size=ip[-1]).astype(np.float32)
        ids = [f"p{start + i:08d}" for i in range(n)]
        return {"topic": topic, "dense": dense, "tok": tok.astype(np.int32), "tok_off": off, "lex_ip": ip,
                "lex_terms": terms.astype(np.int64), "lex_vals": vals, "ids": ids}

    def queries(self, ch: dict, rows: np.ndarray, seed: int = 7) -> list[dict]:
        rng = np.random.default_rng(seed)
        out = []
        for r in rows:
            d = normalize(ch["dense"][r] + 0.5 * rng.standard_normal(DIM, dtype=np.float32) / np.sqrt(DIM))
            a, b = ch["tok_off"][r], ch["tok_off"][r + 1]
            own = rng.choice(ch["tok"][a:b], size=24)
            other = rng.integers(0, BANK, size=8)
            q = self.bank[np.concatenate([own, other])]
            q = normalize(q + 0.3 * rng.standard_normal(q.shape, dtype=np.float32) / np.sqrt(DIM))
            la, lb = ch["lex_ip"][r], ch["lex_ip"][r + 1]
            terms = rng.choice(ch["lex_terms"][la:lb], size=8, replace=False).tolist()
            terms += rng.integers(0, VOCAB, size=2).tolist()
            sq = {int(t): float(w) for t, w in zip(terms, rng.uniform(0.05, 0.3, size=len(terms)))}
            out.append({"dense": d, "colbert": q, "sparse": sq, "target": ch["ids"][r]})
        return out


def add_chunk(idx: HybridIndex, world: World, ch: dict) -> None:
    codes_bank, aux_bank = world.codes, world.aux
    codes = codes_bank[ch["tok"]]
    aux = aux_bank[ch["tok"]] if aux_bank is not None else None
    n = len(ch["ids"])
    blk = LexicalBlock.from_csr(ch["lex_ip"], ch["lex_terms"], ch["lex_vals"], vocab_size=VOCAB)
    texts = [f"synthetic passage {i} about topic {t}" for i, t in zip(ch["ids"], ch["topic"].tolist())]
    metas = [{"topic": int(t)} for t in ch["topic"].tolist()]
    idx._add_coded(ch["ids"], texts, metas, ch["dense"], blk, codes, aux, ch["tok_off"])
    del n


def build(args: argparse.Namespace) -> dict:
    root = Path(args.dir)
    ref = Path(args.dir + "_ref")
    for p in (root, ref):
        if p.exists():
            shutil.rmtree(p)
    ref.mkdir(parents=True)
    world = World()
    idx = HybridIndex(None, model_name="synthetic-bge-m3-shape", dim=DIM, colbert_dim=DIM, vocab_size=VOCAB,
                      colbert_codec=args.codec, dense_codec=args.dense_codec)
    idx.codec.fit(world.bank)
    world.codes, world.aux = idx.codec.encode(world.bank)
    queries = None
    dense_scores = None  # [Q, N] exact float32 dense scores of every query with every passage
    t0 = time.perf_counter()
    n_chunks = (args.n + args.segment - 1) // args.segment
    save_times = []
    built = 0
    deadline = _deadline(args.deadline)
    for c in range(n_chunks):
        start = c * args.segment
        n = min(args.segment, args.n - start)
        if deadline is not None and c > 0:
            per_chunk = (time.perf_counter() - t0) / c
            if time.time() + per_chunk + args.reserve_s > deadline:
                print(f"stopping at {built} passages: the next chunk would not leave {args.reserve_s:.0f}s "
                      f"before the deadline {args.deadline} UTC", flush=True)
                break
        ch = world.chunk(c, n, start)
        if c == 0:
            rows = np.random.default_rng(3).choice(n, size=args.queries, replace=False)
            queries = world.queries(ch, rows)
            dense_scores = np.empty((len(queries), args.n), dtype=np.float32)
        qd = np.stack([q["dense"] for q in queries])
        dense_scores[:, start:start + n] = (ch["dense"] @ qd.T).T
        sc = None
        np.save(ref / f"tok_{c}.npy", ch["tok"])
        np.save(ref / f"tokoff_{c}.npy", ch["tok_off"])
        add_chunk(idx, world, ch)
        del ch, sc
        ts = time.perf_counter()
        idx.save(root)
        save_times.append(time.perf_counter() - ts)
        built = start + n
        print(f"chunk {c + 1}/{n_chunks}: {start + n} passages, {time.perf_counter() - t0:.0f}s, "
              f"save {save_times[-1]:.1f}s, rss {rss_mb()[0]:.0f} MB (peak {rss_mb()[1]:.0f})", flush=True)
    build_s = time.perf_counter() - t0
    requested, args.n = args.n, built
    dense_scores = dense_scores[:, :built]
    k = min(1000, args.n)
    top_rows = np.argsort(-dense_scores, axis=1, kind="stable")[:, :k]
    np.save(ref / "dense_scores.npy", dense_scores)
    np.savez(ref / "queries.npz", dense=np.stack([q["dense"] for q in queries]),
             colbert=np.stack([q["colbert"] for q in queries]), dense_top_rows=top_rows)
    with open(ref / "queries_sparse.json", "w") as f:
        json.dump([{str(k): v for k, v in q["sparse"].items()} for q in queries], f)
    return {"build_s": build_s, "chunks": len(save_times), "requested_n": requested, "built_n": built,
            "save_s": save_times, "build_peak_rss_mb": rss_mb()[1]}


def _deadline(hhmm: str | None) -> float | None:
    """``"11:10"`` (UTC, today) as a Unix time."""
    if not hhmm:
        return None
    import calendar

    h, m = (int(x) for x in hhmm.split(":"))
    now = time.gmtime()
    return calendar.timegm((now.tm_year, now.tm_mon, now.tm_mday, h, m, 0, 0, 0, 0))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def machine_probe() -> dict:
    """How fast this (virtual) machine is right now, to read the latencies beside: one-thread float32
    GEMM ``[4000, 1024] x [1024, 32]`` (the full MaxSim's shape; ~7.6 ms on a quiet, fast phase of
    the benchmark VM) and a 16 MB copy (memory bandwidth), medians."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4000, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 32), dtype=np.float32)
    src = np.ones(1 << 22, dtype=np.float32)
    dst = np.empty_like(src)
    gemm, copy = [], []
    with threadpool_limits(1):
        for _ in range(20):
            t = time.perf_counter()
            a @ b
            gemm.append(time.perf_counter() - t)
    for _ in range(7):
        t = time.perf_counter()
        np.copyto(dst, src)
        copy.append(time.perf_counter() - t)
    return {"gemm_ms": float(np.median(gemm) * 1e3), "copy_gb_s": float(src.nbytes / np.median(copy) / 1e9)}


def serve(args: argparse.Namespace) -> dict:
    """Runs in a fresh process: cold open, 100 queries, RSS."""
    root = Path(args.dir)
    ref = Path(args.dir + "_ref")
    qz = dict(np.load(ref / "queries.npz"))  # read now, not inside the timed loop
    with open(ref / "queries_sparse.json") as f:
        sparse = [{int(k): v for k, v in q.items()} for q in json.load(f)]
    probe = machine_probe()
    rss0 = rss_mb()[0]
    t = time.perf_counter()
    idx = HybridIndex.load(root, load_encoder=False)
    open_s = time.perf_counter() - t
    lat, hits = [], []
    for i in range(len(sparse)):
        t = time.perf_counter()
        h = idx.search_encoded(qz["dense"][i], sparse[i], qz["colbert"][i], k=10, weights=WEIGHTS,
                               candidates=args.candidates, colbert_rerank=args.colbert_rerank)
        lat.append(time.perf_counter() - t)
        hits.append([x.id for x in h])
    peak_q = rss_mb()[1]  # VmHWM after the 100 queries (before the dense-recall loop below)
    stages = stage_times(idx, qz, sparse, args)
    # dense top-100 of the Hamming shortlist + exact rescoring vs the exact float32 top-100
    from bgem3.index.search import dense_candidates

    segs = idx._all_segments()
    bases = np.concatenate([[0], np.cumsum([s.n for s in segs])[:-1]])
    rec100 = []
    for i in range(len(sparse)):
        rows, sc = dense_candidates(segs, bases, qz["dense"][i], [s.alive for s in segs], 100,
                                    max(1000, 10 * args.candidates))
        exact = set(qz["dense_top_rows"][i][:100].tolist())
        rec100.append(len(exact & set(rows.tolist())) / 100)
    lat_ms = np.array(lat) * 1000
    cur, peak = rss_mb()
    split_after_queries = rss_split_mb()
    return {"open_s": open_s, "p50_ms": float(np.percentile(lat_ms, 50)), "p90_ms": float(np.percentile(lat_ms, 90)),
            "mean_ms": float(lat_ms.mean()), "first_query_ms": float(lat_ms[0]), "rss_start_mb": rss0,
            "rss_after_mb": cur, "peak_rss_mb": peak, "rss_split_mb": split_after_queries,
            "peak_rss_after_queries_mb": peak_q, "stage_ms": stages, "dense_recall_at_100": float(np.mean(rec100)), "hits": hits,
            "segments": len(idx._segments), "count": len(idx), "machine_probe": probe}


def stage_times(idx: HybridIndex, qz: dict, sparse: list, args: argparse.Namespace) -> dict:
    """Median ms per query of each search stage, run on their own (same calls as search_encoded)."""
    from bgem3.index.lexical import QueryTerms
    from bgem3.index.search import DEFAULT_COLBERT_RERANK, colbert_pruned, dense_candidates, top_positive

    segs = idx._all_segments()
    bases = np.concatenate([[0], np.cumsum([s.n for s in segs])[:-1]])
    alive = [s.alive for s in segs]
    out: dict = {"dense_hamming_and_rescore": [], "lexical": [], "colbert": []}
    for i in range(min(30, len(sparse))):
        t = time.perf_counter()
        drows, d_sc = dense_candidates(segs, bases, qz["dense"][i], alive, args.candidates,
                                       max(1000, 10 * args.candidates))
        out["dense_hamming_and_rescore"].append(time.perf_counter() - t)
        t = time.perf_counter()
        lex = np.concatenate(idx.lexical.score(QueryTerms.from_mapping(sparse[i]), [s.lexical_view() for s in segs]))
        lrows = top_positive(lex, args.candidates)
        out["lexical"].append(time.perf_counter() - t)
        cand = np.union1d(drows, lrows)
        seg_of = np.searchsorted(bases, cand, side="right") - 1
        t = time.perf_counter()
        prepared = idx.codec.prepare_query(qz["colbert"][i])
        colbert_pruned(idx.codec, prepared, segs, seg_of, cand - bases[seg_of], np.zeros(len(cand), np.float32),
                       WEIGHTS[2], args.colbert_rerank or DEFAULT_COLBERT_RERANK)
        out["colbert"].append(time.perf_counter() - t)
    res = {k: float(np.median(v) * 1000) for k, v in out.items()}
    for short in (300, 500, 1000):  # dense top-100 recall of smaller Hamming shortlists
        rec = []
        for i in range(len(sparse)):
            rows, _ = dense_candidates(segs, bases, qz["dense"][i], alive, 100, short)
            rec.append(len(set(qz["dense_top_rows"][i][:100].tolist()) & set(rows.tolist())) / 100)
        res[f"dense_recall_at_100_shortlist_{short}"] = float(np.mean(rec))
    return res


def reference(args: argparse.Namespace, hits: list) -> dict:
    """Exact float32 fused top-10 per query (see the module docstring) and the index's recall."""
    root = Path(args.dir)
    ref = Path(args.dir + "_ref")
    world = World()
    qz = dict(np.load(ref / "queries.npz"))
    with open(ref / "queries_sparse.json") as f:
        sparse = [{int(k): v for k, v in q.items()} for q in json.load(f)]
    idx = HybridIndex.load(root, load_encoder=False)
    segs = idx._all_segments()
    from bgem3.index.lexical import QueryTerms

    dense_scores = np.load(ref / "dense_scores.npy", mmap_mode="r")
    toks = [np.load(ref / f"tok_{c}.npy", mmap_mode="r") for c in range(len(segs))]
    offs = [np.load(ref / f"tokoff_{c}.npy") for c in range(len(segs))]
    recalls = []
    for i in range(len(sparse)):
        drows = qz["dense_top_rows"][i][: args.candidates]
        lex = np.concatenate(idx.lexical.score(QueryTerms.from_mapping(sparse[i]), [s.lexical_view() for s in segs]))
        pos = np.flatnonzero(lex > 0)
        lrows = pos[np.argpartition(-lex[pos], args.candidates - 1)[: args.candidates]] if len(pos) > args.candidates else pos
        cand = np.union1d(drows, lrows)
        d = dense_scores[i, cand].astype(np.float64)
        s = lex[cand]
        c = np.empty(len(cand))
        for j, r in enumerate(cand):
            seg, rr = divmod(int(r), args.segment)
            a, b = offs[seg][rr], offs[seg][rr + 1]
            c[j] = (qz["colbert"][i] @ world.bank[toks[seg][a:b]].T).max(axis=1).mean()
        fused = (WEIGHTS[0] * d + WEIGHTS[1] * s + WEIGHTS[2] * c) / sum(WEIGHTS)
        top = cand[np.argsort(-fused, kind="stable")[:10]]
        exact_ids = {f"p{int(r):08d}" for r in top}
        recalls.append(len(exact_ids & set(hits[i])) / 10)
    return {"fused_recall_at_10": float(np.mean(recalls)), "min_recall_at_10": float(np.min(recalls))}


def incremental(args: argparse.Namespace) -> dict:
    root = Path(args.dir)
    before = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    disk_before = du(root)
    world = World()
    idx = HybridIndex.load(root, load_encoder=False)
    world.codes, world.aux = idx.codec.encode(world.bank)
    ch = world.chunk(10_000, 1000, 10_000_000)
    add_chunk(idx, world, ch)
    t = time.perf_counter()
    idx.save(root)
    save_s = time.perf_counter() - t
    after = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    written = sum(sz for p, (sz, mt) in after.items() if before.get(p) != (sz, mt))
    untouched = all(after.get(p) == v for p, v in before.items()  # the lock file records its last holder
                    if not p.endswith(("manifest.json", "write.lock")))
    return {"added": 1000, "save_s": save_s, "bytes_written": written, "old_files_untouched": untouched,
            "disk_before": disk_before, "disk_after": du(root), "count_after": len(idx)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--segment", type=int, default=50_000)
    ap.add_argument("--codec", default="1bit")
    ap.add_argument("--dense-codec", default="float16")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--colbert-rerank", type=int, default=None, help="search_encoded(colbert_rerank=); default: the "
                    "index's default")
    ap.add_argument("--dir", default="/work/bench_data/index_scale")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "bench_runs"
                                          / "index_scale.json"))
    ap.add_argument("--phase", default="all", choices=["all", "build", "measure", "serve"],
                    help="all: build, serve, recall, incremental add, then delete the index (unless --keep); "
                    "build: build and keep the index (no serving); measure: reuse the index an earlier build "
                    "left in --dir (open + serve + recall only; the index is not modified); serve: internal")
    ap.add_argument("--incremental", action="store_true", help="with --phase measure: also add 1,000 passages and "
                    "save (this modifies the kept index)")
    ap.add_argument("--deadline", default=None, help="HH:MM UTC: build only as many chunks as leave --reserve-s "
                    "seconds before it for serving, recall and the incremental save (the run reports the size built)")
    ap.add_argument("--reserve-s", type=float, default=480.0)
    ap.add_argument("--keep", action="store_true", help="keep the index folder (default: delete it at the end)")
    args = ap.parse_args()
    if args.phase == "serve":
        print(json.dumps(serve(args)))
        return
    result: dict = {"n": args.n, "codec": args.codec, "dense_codec": args.dense_codec, "segment": args.segment,
                    "candidates": args.candidates, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)

    if args.phase == "measure":
        if not (Path(args.dir) / "manifest.json").is_file() or not Path(args.dir + "_ref").is_dir():
            raise SystemExit(f"--phase measure needs an index built by --phase build in {args.dir} "
                             f"(and its reference data in {args.dir}_ref); none found")
        prev = Path(args.dir + "_ref") / "build.json"
        if prev.is_file():
            result["build"] = json.loads(prev.read_text())
            args.n = result["build"]["built_n"]
        result["reused_index"] = True
    else:
        result["build"] = build(args)
        (Path(args.dir + "_ref") / "build.json").write_text(json.dumps(result["build"]))
    result["n"] = args.n
    result["disk_bytes"] = du(Path(args.dir))
    result["disk_bytes_per_passage"] = result["disk_bytes"] / args.n
    print(f"built in {result['build']['build_s']:.0f}s; {result['disk_bytes'] / 1e9:.2f} GB on disk", flush=True)
    dump()
    if args.phase == "build":
        print(f"kept the index in {args.dir}; measure with --phase measure --dir {args.dir}")
        return
    cmd = [sys.executable, __file__, "--phase", "serve", "--n", str(args.n), "--segment", str(args.segment),
           "--dir", args.dir, "--candidates", str(args.candidates)]
    if args.colbert_rerank is not None:
        cmd += ["--colbert-rerank", str(args.colbert_rerank)]
    result["colbert_rerank"] = args.colbert_rerank
    hits = None
    for key, extra in (("serve", {}), ("serve_one_blas_thread",
                                       {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})):
        try:
            out = subprocess.run(cmd, env=dict(os.environ, **extra), capture_output=True, text=True, check=True)
            served = json.loads(out.stdout.strip().splitlines()[-1])
            h = served.pop("hits")
            hits = hits or h
            served["load_average_after"] = os.getloadavg()
            result[key] = served
        except Exception as exc:  # keep what was measured
            result[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000],
                           "stderr": getattr(exc, "stderr", "")[-2000:] if getattr(exc, "stderr", None) else ""}
        print(key, json.dumps(result[key], indent=1), flush=True)
        dump()
    steps = [("recall", lambda: reference(args, hits))]
    if args.phase == "all" or args.incremental:
        steps.append(("incremental", lambda: incremental(args)))
    for key, fn in steps:
        try:
            result[key] = fn()
        except Exception as exc:
            import traceback

            result[key] = {"error": traceback.format_exc()[-2000:]}
        print(key, json.dumps(result[key]), flush=True)
        dump()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dump()
    print(f"wrote {args.out}")
    if args.phase == "all" and not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
        shutil.rmtree(args.dir + "_ref", ignore_errors=True)


if __name__ == "__main__":
    main()
