"""Cross-encoder reranking speed: bgem3 ``Reranker`` vs FlagEmbedding's ``FlagReranker`` vs sentence-transformers'
``CrossEncoder``, all fp32, on the same checkpoint, in one interleaved run.

The workload is a RAG pipeline's rerank step: ``--queries`` real queries, each with ``--candidates`` real passages of
80-400 words (paragraphs of Python's reference documentation, trimmed to the token counts a real subword tokenizer
gives them, as ``benchmarks/encode.py`` does), one ``compute_score`` / ``predict`` call per query. The checkpoint is a
random-weight ``XLMRobertaForSequenceClassification`` with one label (the bge-reranker-v2-m3 architecture) at the
benchmark's ``small`` size (6 layers, hidden 384, 12 heads, FFN 1536) or ``full`` size (24 layers, hidden 1024: the
real bge-reranker-v2-m3 / -large shape), built offline once into ``.bench_models/``. Speed does not depend on the weight
values.

Interleaving: the queries are cut into blocks of ``--block``; each block is run by every system in turn (the order
rotated per block), so a change in the machine's speed during the run (other jobs) hits every system alike.
Before timing, each system's scores are compared with FlagReranker's (max abs difference, top-10 agreement).

Example::

    flock /tmp/bench.lock python benchmarks/rerank.py --queries 100 --candidates 50 --threads 1 \\
        --out docs/bench_runs/rerank_small.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from typing import Callable, Optional

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks._workloads import bulk_corpus, real_token_lengths  # noqa: E402
from bgem3.quant.fidelity import real_queries  # noqa: E402
from bgem3.testing import BGE_M3_SIZES, SMALL_SIZES, make_reranker_checkpoint  # noqa: E402

SIZES = {"small": (SMALL_SIZES, "6 layers, hidden 384, 12 heads, FFN 1536 (XLM-R sequence classification, 1 label)"),
         "full": (BGE_M3_SIZES, "24 layers, hidden 1024, 16 heads, FFN 4096 (the bge-reranker-v2-m3 shape)")}


def model_path(size: str, cache_dir: Optional[str] = None) -> str:
    folder = os.path.join(cache_dir or os.path.join(ROOT, ".bench_models"), f"reranker-{size}")
    done = os.path.join(folder, ".complete")
    if not os.path.isfile(done):
        print(f"[build] reranker {SIZES[size][1]} -> {folder} (once)", flush=True)
        make_reranker_checkpoint(folder, "xlmr", seed=0, **SIZES[size][0])
        with open(done, "w") as fh:
            fh.write("ok\n")
    return folder


def cpu_conditions() -> dict:
    cpu, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    want = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    return {"cpu": cpu, "cpu_flags": [f for f in want if f in flags], "logical_cpus": os.cpu_count()}


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def workload(n_queries: int, n_cands: int, pool: int, tokenizer, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    passages = real_token_lengths(bulk_corpus(pool, seed=seed), tokenizer)
    queries = real_queries(n_queries)
    rng = random.Random(seed)
    return queries, [rng.sample(passages, n_cands) for _ in queries]


def systems(path: str, names: list[str], max_length: int, batch: int) -> dict[str, Callable]:
    out: dict[str, Callable] = {}
    for name in names:
        if name == "bgem3":
            from bgem3 import Reranker

            rr = Reranker(path, device="cpu", dtype="fp32", max_length=max_length, batch_size=batch)
            out[name] = lambda q, cands, rr=rr: rr.compute_score([(q, c) for c in cands], show_progress=False)
        elif name == "flag":
            from FlagEmbedding import FlagReranker

            fr = FlagReranker(path, use_fp16=False, devices="cpu", max_length=max_length, batch_size=batch)
            out[name] = lambda q, cands, fr=fr: list(fr.compute_score([(q, c) for c in cands]))
        elif name == "st":
            from sentence_transformers import CrossEncoder

            ce = CrossEncoder(path, device="cpu", max_length=max_length)
            # raw logits, as the others return with normalize=False (ST applies no activation to a 1-label head
            # when activation_fn is Identity)
            out[name] = lambda q, cands, ce=ce: ce.predict([(q, c) for c in cands], batch_size=batch,
                                                           show_progress_bar=False, activation_fn=torch.nn.Identity(),
                                                           convert_to_numpy=True).tolist()
        elif name == "served":
            out[name] = served_system(path, max_length)
        else:
            raise SystemExit(f"unknown system {name!r}; use bgem3, flag, st, served")
    return out


def served_system(path: str, max_length: int) -> Callable:
    """``bgem3 serve --reranker`` in a child process (same torch threads), scored through RemoteReranker."""
    import atexit
    import subprocess

    from bgem3.remote_rerank import RemoteReranker

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "bgem3", "serve", "--reranker", path, "--device", "cpu", "--port", "0",
                             "--reranker-max-length", str(max_length), "--threads", str(torch.get_num_threads()),
                             "--max-client-batch-size", "1024", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    atexit.register(lambda: (proc.terminate(), proc.wait(30)))
    url = None
    for line in proc.stdout:
        if "listening on " in line:
            url = line.strip().rsplit(" ", 1)[-1]
            break
    if url is None:
        raise SystemExit("bgem3 serve --reranker did not start")
    deadline = time.monotonic() + 120
    while True:
        try:
            rr = RemoteReranker(url, timeout=600, max_retries=0)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return lambda q, cands, rr=rr: rr.compute_score([(q, c) for c in cands])


def fidelity(ref: list[list[float]], got: list[list[float]], k: int = 10) -> dict:
    diffs = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ref, got)]
    agree = []
    for a, b in zip(ref, got):
        ta = set(np.argsort(-np.asarray(a), kind="stable")[:k].tolist())
        tb = set(np.argsort(-np.asarray(b), kind="stable")[:k].tolist())
        agree.append(len(ta & tb) / k)
    return {"max_abs_diff": max(diffs), f"top{k}_agreement_mean": float(np.mean(agree)),
            f"top{k}_agreement_min": float(np.min(agree))}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("--pool", type=int, default=600, help="distinct passages the candidates are drawn from")
    ap.add_argument("--block", type=int, default=5, help="queries per interleaving block")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="pairs per forward pass (FlagReranker's default 128)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--systems", default="bgem3,flag,st",
                    help="comma list of: bgem3, flag, st, served (bgem3 serve --reranker + RemoteReranker)")
    ap.add_argument("--check-queries", type=int, default=5, help="queries scored by every system for fidelity")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = model_path(args.size, args.models_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    queries, cands = workload(args.queries, args.candidates, args.pool, tok)
    words = [len(c.split()) for cs in cands for c in cs]
    pair_tokens = []
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    run = systems(path, names, args.max_length, args.batch)
    from bgem3 import Reranker

    counter = Reranker(path, device="cpu", max_length=args.max_length)
    for q, cs in zip(queries, cands):
        ids, _ = counter.tokenize_pairs([(q, c) for c in cs])
        pair_tokens.extend(len(x) for x in ids)
    pair_tokens = np.asarray(pair_tokens)
    print(f"{len(queries)} queries x {args.candidates} candidates; passage words {min(words)}-{max(words)}; pair tokens "
          f"min {pair_tokens.min()} median {np.median(pair_tokens):.0f} max {pair_tokens.max()} (cut at "
          f"{args.max_length}); torch threads {torch.get_num_threads()}; load {load()}", flush=True)

    # fidelity (also the warm-up of every system)
    nchk = min(args.check_queries, len(queries))
    scores = {n: [run[n](q, cs) for q, cs in zip(queries[:nchk], cands[:nchk])] for n in names}
    fid = {n: fidelity(scores["flag"], scores[n]) for n in names if n != "flag"} if "flag" in scores else {}
    for n, f in fid.items():
        print(f"  {n} vs flag: {f}", flush=True)

    load_before = load()
    elapsed = {n: 0.0 for n in names}
    per_block: list[dict] = []
    blocks = [(i, min(i + args.block, len(queries))) for i in range(0, len(queries), args.block)]
    for b, (a, z) in enumerate(blocks):
        order = names[b % len(names):] + names[:b % len(names)]
        row = {}
        for n in order:
            t0 = time.perf_counter()
            for q, cs in zip(queries[a:z], cands[a:z]):
                run[n](q, cs)
            dt = time.perf_counter() - t0
            elapsed[n] += dt
            row[n] = dt
        per_block.append(row)
        print(f"  block {b + 1}/{len(blocks)}: " + ", ".join(f"{n} {row[n]:.2f}s" for n in names) + f"; load {load()}",
              flush=True)
    load_after = load()
    n_pairs = len(queries) * args.candidates
    results = {}
    for n in names:
        results[n] = {"seconds": round(elapsed[n], 3), "pairs_per_s": round(n_pairs / elapsed[n], 2),
                      "ms_per_query": round(1000 * elapsed[n] / len(queries), 2)}
    if "bgem3" in results:
        for n in names:
            if n != "bgem3":
                results["bgem3"][f"x_vs_{n}"] = round(elapsed[n] / elapsed["bgem3"], 2)
                # the same ratio per block: its spread says how steady the machine was
                ratios = [row[n] / row["bgem3"] for row in per_block]
                results["bgem3"][f"x_vs_{n}_blocks_min_median_max"] = [round(min(ratios), 2),
                                                                       round(float(np.median(ratios)), 2),
                                                                       round(max(ratios), 2)]
    print("\nsystem   pairs/s   ms/query   ratio")
    for n in names:
        r = results[n]
        extra = ", ".join(f"{k[5:]} {v}x" for k, v in r.items() if k.startswith("x_vs_") and not k.endswith("max"))
        print(f"{n:<8} {r['pairs_per_s']:>8} {r['ms_per_query']:>10}   {extra}")
    import transformers
    from importlib.metadata import version

    cond = {**cpu_conditions(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "FlagEmbedding": version("FlagEmbedding"),
            "sentence_transformers": version("sentence-transformers"), "python": platform.python_version(),
            "model": f"reranker-{args.size}: {SIZES[args.size][1]}", "dtype": "fp32", "device": "cpu",
            "queries": len(queries), "candidates": args.candidates, "pairs": n_pairs, "max_length": args.max_length,
            "batch": args.batch, "block": args.block, "passage_words": [min(words), int(np.median(words)), max(words)],
            "pair_tokens_min_median_max": [int(pair_tokens.min()), float(np.median(pair_tokens)),
                                           int(pair_tokens.max())],
            "load_before": load_before, "load_after": load_after}
    out = {"conditions": cond, "results": results, "fidelity_vs_flag": fid, "blocks": per_block}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
