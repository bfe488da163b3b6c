"""Encode throughput: bgem3.Encoder vs FlagEmbedding (BGEM3FlagModel) vs sentence-transformers.

All tools run in this one process on the same corpus, same model folder, same device and
precision, same ``max_length``. Before any speed is printed, the outputs are compared
(max abs difference of dense vectors, lexical weights and ColBERT vectors); in exact mode a
difference above ``--tol`` stops the run (exit code 2). Then, per scenario, the tools run in
turn — rotated every repetition so machine-load noise hits all of them alike — after a
warm-up, and the median, min and max wall time are reported with texts/s, tokens/s and the
ratio ours/peer (peer time / our time, >1 means we are faster).

Scenarios: ``all`` (dense + lexical + ColBERT: ours vs FlagEmbedding) and ``dense`` (ours vs
FlagEmbedding vs sentence-transformers). Settings: ``default`` (each tool's own default batch
size: FlagEmbedding 256, sentence-transformers 32, ours its CPU/GPU defaults) and ``matched``
(every tool at ``--batch`` texts per forward pass; ours also capped only by that count).

Examples::

    python benchmarks/encode.py --model small                       # ~3 min on 2 CPU cores
    python benchmarks/encode.py --model full --n 48 --reps 3        # BGE-M3 sizes (builds 2.3 GB once)
    python benchmarks/encode.py --model small --fast int8           # + the opt-in fast mode and its accuracy
    python benchmarks/encode.py --model full --device cuda          # fp16 on a GPU (peers in fp16 too)
    python benchmarks/encode.py --model small --workloads bulk,chunks,query --minilm   # bulk / 32-text / query,
        # bgem3 fp32/bf16/int8 vs FlagEmbedding, sentence-transformers, ONNX Runtime fp32/int8 (_workloads.py)
    python benchmarks/encode.py --model small --workloads bulk,query --bulk-n 200 --bulk-scenarios all \
        --systems bgem3-fp32,bgem3-onnx,bgem3-openvino,bgem3-openvino-bf16,bgem3-int8,bgem3-onnx-int8 \
        --backend-fidelity   # bgem3's forward backends, each bracketed by the exact path, + real-MiniLM gates
    benchmarks/final_encode_run.sh OUT_DIR   # the whole issue-26 run (1 and 2 threads, GEMM rates, full shape)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._models import MODELS, make_corpus, model_path  # noqa: E402

warnings.filterwarnings("ignore")
logging.getLogger("transformers").setLevel(logging.ERROR)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --------------------------------------------------------------------------- tools

class Tool:
    """A named callable ``fn(texts) -> dict(dense=, sparse=, colbert=)`` (numpy / dicts)."""

    def __init__(self, name: str, fn: Callable, outputs: tuple[str, ...]):
        self.name, self.fn, self.outputs = name, fn, outputs


def ours_tool(enc, name: str, want: tuple[str, ...], batch: Optional[int] = None) -> Tool:
    def fn(texts):
        out = enc.encode(texts, dense="dense" in want, sparse="sparse" in want, colbert="colbert" in want,
                         batch_size=batch, show_progress=False)
        return {"dense": out.dense, "sparse": out.sparse, "colbert": out.colbert}
    return Tool(name, fn, want)


def flag_tool(model, name: str, want: tuple[str, ...], batch: int, max_length: int) -> Tool:
    def fn(texts):
        r = model.encode(texts, batch_size=batch, max_length=max_length, return_dense="dense" in want,
                         return_sparse="sparse" in want, return_colbert_vecs="colbert" in want)
        sparse = None
        if "sparse" in want:
            sparse = [{int(k): float(v) for k, v in d.items()} for d in r["lexical_weights"]]
        return {"dense": r["dense_vecs"], "sparse": sparse, "colbert": r["colbert_vecs"] if "colbert" in want else None}
    return Tool(name, fn, want)


def st_tool(model, name: str, batch: int) -> Tool:
    def fn(texts):
        return {"dense": model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False),
                "sparse": None, "colbert": None}
    return Tool(name, fn, ("dense",))


def int8_encoder(path: str, device: str, max_length: int):
    """``Encoder(..., dtype="int8")`` (bgem3.quant: smoothing, per-token activations, sensitive layers fp32)."""
    from bgem3 import Encoder

    return Encoder(path, device=device, dtype="int8", max_length=max_length, backend="torch")


def int8_dynamic_encoder(path: str, device: str, max_length: int):
    """The rejected approach, for the record: an fp32 Encoder whose transformer + ColBERT
    ``nn.Linear`` layers are dynamically quantised to int8 (``torch.ao.quantization.quantize_dynamic``);
    on the real MiniLM weights its dense cosine to fp32 drops to ~0.80-0.90 (docs/benchmarks_encode.md)."""
    from torch.ao.quantization import quantize_dynamic

    from bgem3 import Encoder

    enc = Encoder(path, device=device, max_length=max_length)
    enc.model = quantize_dynamic(enc.model, {torch.nn.Linear}, dtype=torch.qint8)
    if enc.colbert_linear is not None:
        enc.colbert_linear = quantize_dynamic(torch.nn.Sequential(enc.colbert_linear), {torch.nn.Linear},
                                              dtype=torch.qint8)[0]
    return enc


def model_flops(lengths: np.ndarray, cfg) -> float:
    """FLOPs the transformer needs for these texts, unpadded (matmuls only; heads ~0.3% left out)."""
    h, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_token = 2 * layers * (4 * h * h + 2 * h * f)
    attn = 4 * layers * h * np.square(lengths.astype(np.float64))  # QK^T and AV
    return float(per_token * lengths.sum() + attn.sum())


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, reps: int = 5) -> float:
    """Best measured dense matmul FLOP/s on this device/dtype (the ceiling any encoder can reach)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4 if device.startswith("cuda") else 1):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / (4 if device.startswith("cuda") else 1))
    return 2 * size ** 3 / best


# --------------------------------------------------------------------------- comparisons

def max_abs_diff(a: dict, b: dict) -> dict:
    """Max abs difference per output present in both."""
    res = {}
    if a.get("dense") is not None and b.get("dense") is not None:
        res["dense"] = float(np.abs(np.asarray(a["dense"], dtype=np.float32) - np.asarray(b["dense"], dtype=np.float32)).max())
    if a.get("sparse") is not None and b.get("sparse") is not None:
        worst, key_mismatch = 0.0, 0
        for x, y in zip(a["sparse"], b["sparse"]):
            keys = set(x) | set(y)
            key_mismatch += len(set(x) ^ set(y))
            worst = max([worst] + [abs(x.get(k, 0.0) - y.get(k, 0.0)) for k in keys])
        res["sparse"] = worst
        res["sparse_key_mismatches"] = key_mismatch
    if a.get("colbert") is not None and b.get("colbert") is not None:
        worst = 0.0
        for x, y in zip(a["colbert"], b["colbert"]):
            if x.shape != y.shape:
                worst = float("inf")
                break
            worst = max(worst, float(np.abs(x.astype(np.float32) - y.astype(np.float32)).max()))
        res["colbert"] = worst
    return res


def fast_mode_accuracy(ref: dict, fast: dict, q_ref: dict, q_fast: dict, k: int = 10) -> dict:
    """Accuracy cost of a fast mode vs exact fp32: cosine, score errors, top-k agreement."""
    from bgem3.scoring import colbert_scores, lexical_scores

    cos = np.sum(ref["dense"] * fast["dense"], axis=1) / (
        np.linalg.norm(ref["dense"], axis=1) * np.linalg.norm(fast["dense"], axis=1))
    out = {"dense_cosine_min": float(cos.min()), "dense_cosine_mean": float(cos.mean())}
    scores = {"dense": (q_ref["dense"] @ ref["dense"].T, q_fast["dense"] @ fast["dense"].T)}
    if ref.get("sparse") is not None:
        scores["lexical"] = (np.asarray(lexical_scores(q_ref["sparse"], ref["sparse"])),
                             np.asarray(lexical_scores(q_fast["sparse"], fast["sparse"])))
    if ref.get("colbert") is not None:
        scores["colbert"] = (np.stack([colbert_scores(q, ref["colbert"]) for q in q_ref["colbert"]]),
                             np.stack([colbert_scores(q, fast["colbert"]) for q in q_fast["colbert"]]))
    for name, (a, b) in scores.items():
        rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-6)
        out[f"{name}_score_rel_err_median"] = float(np.median(rel))
        out[f"{name}_score_rel_err_p95"] = float(np.percentile(rel, 95))
        top_a = np.argsort(-a, axis=1, kind="stable")[:, :k]
        top_b = np.argsort(-b, axis=1, kind="stable")[:, :k]
        overlap = [len(set(x) & set(y)) / k for x, y in zip(top_a, top_b)]
        out[f"{name}_top{k}_overlap_mean"] = float(np.mean(overlap))
        out[f"{name}_top{k}_identical_queries"] = f"{sum(list(x) == list(y) for x, y in zip(top_a, top_b))}/{len(top_a)}"
    return out


# --------------------------------------------------------------------------- timing

def time_tools(tools: list[Tool], texts: list[str], reps: int, warmup: int, log) -> tuple[dict, dict]:
    """Warm-up each tool, then ``reps`` rounds (order rotated every round): wall and process CPU seconds."""
    for _ in range(warmup):
        for t in tools:
            t.fn(texts)
    times: dict[str, list[float]] = {t.name: [] for t in tools}
    cpu: dict[str, list[float]] = {t.name: [] for t in tools}
    for r in range(reps):
        order = tools[r % len(tools):] + tools[: r % len(tools)]
        for t in order:
            gc.collect()
            c0, t0 = time.process_time(), time.perf_counter()
            t.fn(texts)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            times[t.name].append(dt)
            cpu[t.name].append(dc)
            log(f"    rep {r + 1}/{reps}  {t.name:<34s} wall {dt:8.2f} s   cpu {dc:8.2f} s")
    return times, cpu


def summarise(timed, n_texts: int, n_tokens: int, ours: str, flops: float = 0.0, peak: float = 0.0) -> list[dict]:
    times, cpu = timed
    rows = []
    base = times[ours]
    for name, ts in times.items():
        med = statistics.median(ts)
        row = {"tool": name, "median_s": med, "min_s": min(ts), "max_s": max(ts),
               "texts_per_s": n_texts / med, "tokens_per_s": n_tokens / med,
               "cpu_median_s": statistics.median(cpu[name]), "wall_s": ts, "cpu_s": cpu[name]}
        if flops:
            row["model_gflops_per_s"] = flops / med / 1e9
            if peak:
                row["share_of_matmul_peak"] = flops / med / peak
        if name != ours:
            paired = [p / o for p, o in zip(ts, base)]
            row["ratio_ours_over_peer"] = med / statistics.median(base)
            row["cpu_ratio_ours_over_peer"] = statistics.median(cpu[name]) / statistics.median(cpu[ours])
            row["paired_ratio_median"] = statistics.median(paired)
            row["paired_ratio_min"] = min(paired)
            row["paired_ratio_max"] = max(paired)
        rows.append(row)
    return rows


def print_table(title: str, rows: list[dict], log) -> None:
    log(f"\n  {title}")
    log(f"  {'tool':<36s}{'median s':>9s}{'min-max s':>16s}{'texts/s':>9s}{'tokens/s':>10s}{'cpu s':>8s}"
        f"   ours faster: wall (paired min..max) | cpu")
    for r in rows:
        ratio = ""
        if "ratio_ours_over_peer" in r:
            ratio = (f"   {r['ratio_ours_over_peer']:.2f}x ({r['paired_ratio_min']:.2f}..{r['paired_ratio_max']:.2f})"
                     f" | {r['cpu_ratio_ours_over_peer']:.2f}x")
        log(f"  {r['tool']:<36s}{r['median_s']:9.2f}{r['min_s']:8.2f}-{r['max_s']:<7.2f}{r['texts_per_s']:9.1f}"
            f"{r['tokens_per_s']:10.0f}{r['cpu_median_s']:8.1f}{ratio}")
    if rows and "share_of_matmul_peak" in rows[0]:
        log("  model GFLOP/s (share of measured matmul peak): " + ", ".join(
            f"{r['tool']}: {r['model_gflops_per_s']:.0f} ({100 * r['share_of_matmul_peak']:.0f}%)" for r in rows))


# --------------------------------------------------------------------------- main

def conditions(args, device: str, dtype: str, n_tokens: int, lengths: np.ndarray) -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import transformers

    cond = {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": device, "dtype": dtype, "model": args.model, "model_desc": MODELS[args.model][1],
        "n_texts": len(lengths), "n_tokens": n_tokens, "tokens_min": int(lengths.min()),
        "tokens_median": float(np.median(lengths)), "tokens_max": int(lengths.max()), "max_length": args.max_length,
        "reps": args.reps, "warmup": args.warmup, "matched_batch": args.batch,
    }
    try:
        import FlagEmbedding  # noqa: F401
        from importlib.metadata import version
        cond["FlagEmbedding"] = version("FlagEmbedding")
        cond["sentence_transformers"] = version("sentence-transformers")
    except Exception:
        pass
    if device.startswith("cuda"):
        cond["gpu"] = torch.cuda.get_device_name(0)
    return cond


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="small", help="benchmark model shape (default small)")
    ap.add_argument("--models-dir", default=None, help="where benchmark models are built/cached (default .bench_models/)")
    ap.add_argument("--n", type=int, default=None, help="corpus size (default: 256 small/tiny, 48 full)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per tool (default 3)")
    ap.add_argument("--warmup", type=int, default=0,
                    help="extra untimed runs per tool; the agreement check already runs each tool once (default 0)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--scenarios", default="all,dense", help="comma list of: all, dense")
    ap.add_argument("--settings", default="default,matched", help="comma list of: default, matched")
    ap.add_argument("--batch", type=int, default=32, help="texts per forward pass in the matched setting (default 32)")
    ap.add_argument("--peers", default="flag,st", help="comma list of: flag, st")
    ap.add_argument("--fast", default=None, choices=["int8", "int8-dynamic", "bf16"], help="also time + score the opt-in fast mode")
    ap.add_argument("--fast-scenarios", default=None, help="scenarios timed for the fast mode (default: --scenarios)")
    ap.add_argument("--ablation", action="store_true", help="also time ours with the unpadded path off")
    ap.add_argument("--tol", type=float, default=None, help="agreement tolerance (default 1e-5 fp32, 2e-2 fp16)")
    ap.add_argument("--json", default=None, help="write all figures and conditions to this JSON file")
    ap.add_argument("--workloads", default=None,
                    help="comma list of bulk,chunks,query: the workload-labelled run (benchmarks/_workloads.py) "
                         "instead of the scenario run")
    ap.add_argument("--systems", default="bgem3-fp32,bgem3-bf16,bgem3-int8,flag,st,ort-fp32,ort-int8",
                    help="systems of the workload run, a comma list of: bgem3-fp32, bgem3-fp32-unpacked (the exact path without "
                         "pre-packed weights), bgem3-fp32-blas (the exact path on "
                         "MKL linears), bgem3-bf16 / bgem3-int8 (torch), bgem3-onnx, bgem3-onnx-int8 (dynamic), "
                         "bgem3-openvino, bgem3-openvino-bf16, bgem3-openvino-int8 (NNCF), bgem3-openvino-{bf16,int8}-1req "
                         "(bulk as one request of 16384-token batches, as before the streams), flag, st, ort-fp32, ort-int8")
    ap.add_argument("--bulk-n", type=int, default=600, help="passages in the bulk call (default 600)")
    ap.add_argument("--bulk-scenarios", default="all,dense",
                    help="bulk scenarios to run: all (dense + lexical + ColBERT), dense (default both); "
                         "split a long run into parts that each hold the bench lock < 10 min, then --merge them")
    ap.add_argument("--bulk-tokens", choices=["real", "toy"], default="real",
                    help="bulk passages' token lengths: 'real' (trimmed to what a real WordPiece tokenizer counts "
                         "for the 80-400 words; default) or 'toy' (the checkpoint's toy tokenizer as is: ~3x more "
                         "pieces, most passages truncated at --max-length)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART.json",
                    help="merge the JSON files of earlier workload runs (parts) into --json and print a summary")
    ap.add_argument("--bulk-reps", type=int, default=1, help="timed bulk calls per system (default 1; the best is reported)")
    ap.add_argument("--chunk-calls", type=int, default=8, help="32-text calls in the chunks workload (default 8)")
    ap.add_argument("--query-n", type=int, default=30, help="single-query calls timed (default 30)")
    ap.add_argument("--force-bf16", action="store_true", help="time bf16 even where the CPU emulates it")
    ap.add_argument("--minilm", action="store_true", help="also report int8 fidelity on the real MiniLM weights")
    ap.add_argument("--backend-fidelity", action="store_true",
                    help="also score bgem3's ONNX Runtime / OpenVINO / bf16 / int8 paths against the exact one on the "
                         "real MiniLM (300 passages, 50 queries; the int8/bf16 gates)")
    ap.add_argument("--gemm-seconds", type=float, default=0.0,
                    help="workload run: first measure the machine's fp32 (MKL and oneDNN) / bf16 / int8 GEMM rates for "
                         "this long (60 = the one-minute microbenchmark) and report each path's share of its "
                         "precision's rate (default 0: only the quick fp32 / int8 peaks)")
    ap.add_argument("--no-bracket", dest="bracket", action="store_false",
                    help="bulk: do not time the exact path right before and after each other system")
    args = ap.parse_args(argv)
    if args.workloads:  # a typo in --systems stops the run before anything is built or timed
        from benchmarks._workloads import check_systems

        try:
            check_systems(args.systems)
        except ValueError as exc:
            ap.error(str(exc))

    def log(msg=""):
        print(msg, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.startswith("cuda")
    dtype = "fp16" if gpu else "fp32"
    tol = args.tol if args.tol is not None else (2e-2 if gpu else 1e-5)
    n = args.n or (48 if args.model == "full" else 256)
    scenarios = [s for s in args.scenarios.split(",") if s]
    settings = [s for s in args.settings.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]

    from bgem3 import Encoder

    if args.merge:
        from benchmarks._workloads import merge_parts

        merged = merge_parts(args.merge, log)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(merged, fh, indent=2)
            log(f"wrote {args.json}")
        return 0
    path = model_path(args.model, args.models_dir)
    if args.workloads:
        from benchmarks._workloads import minilm_fidelity, run_workloads

        import transformers
        from benchmarks._workloads import cpu_flags

        cond = {"cpu": conditions(args, device, dtype, 0, np.array([1]))["cpu"], "threads": torch.get_num_threads(),
                "cpu_flags": cpu_flags(),
                "torch": torch.__version__, "transformers": transformers.__version__, "model": args.model,
                "model_desc": MODELS[args.model][1], "max_length": args.max_length}
        log("conditions: " + json.dumps(cond))
        report = {"conditions": cond}
        if args.minilm:
            report["minilm_int8_fidelity"] = minilm_fidelity(log)
        if args.backend_fidelity:
            from benchmarks._workloads import minilm_backend_fidelity

            report["minilm_backend_fidelity"] = minilm_backend_fidelity(log)
        report.update(run_workloads(args, path, log, model_flops, matmul_peak(device, torch.float32)))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2)
            log(f"wrote {args.json}")
        return 0
    ours = Encoder(path, device=device, dtype=dtype, max_length=args.max_length)
    texts = make_corpus(n, seed=0, tokenizer=ours.tokenizer)
    lengths = np.array([len(x) for x in ours.tokenize(texts, args.max_length)])
    n_tokens = int(lengths.sum())
    cond = conditions(args, device, dtype, n_tokens, lengths)
    log("conditions: " + json.dumps(cond))
    report: dict = {"conditions": cond, "agreement": {}, "results": {}, "fast": {}}
    flops = model_flops(lengths, ours.config)
    peak = matmul_peak(device, ours.dtype)
    cond["model_gflop_per_pass"] = flops / 1e9
    cond["measured_matmul_peak_gflops"] = peak / 1e9
    log(f"model work: {flops / 1e9:.0f} GFLOP per pass over the corpus (unpadded); "
        f"measured {dtype} matmul peak: {peak / 1e9:.0f} GFLOP/s")

    flag = st = None
    if "flag" in peers:
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(path, use_fp16=gpu, devices=device if not gpu else "cuda:0",
                              passage_max_length=args.max_length, query_max_length=args.max_length)
    if "st" in peers and "dense" in scenarios:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device=device)
        st.max_seq_length = args.max_length
        if gpu:
            st.half()

    FLAG_DEFAULT_BATCH, ST_DEFAULT_BATCH = 256, 32
    matched_enc = Encoder(path, device=device, dtype=dtype, max_length=args.max_length, batch_size=args.batch,
                          max_tokens_per_batch=args.batch * args.max_length)
    encs = {"default": ours, "matched": matched_enc}
    outputs = {"all": ("dense", "sparse", "colbert"), "dense": ("dense",)}

    # ---- 1. agreement, before any speed (this run is also each tool's warm-up)
    log(f"\nagreement check (max abs diff vs ours, tolerance {tol:g}):")
    ok = True
    first_out = {}
    ref_all = ours_tool(ours, "ours", outputs["all"]).fn(texts)
    first_out["ours"] = ref_all
    checks = []
    if flag is not None:
        checks.append(("FlagEmbedding (all three)", flag_tool(flag, "flag", outputs["all"], args.batch, args.max_length)))
    if st is not None:
        checks.append(("sentence-transformers (dense)", st_tool(st, "st", args.batch)))
    checks.append(("ours, matched batching", ours_tool(matched_enc, "ours-matched", outputs["all"])))
    for label, tool in checks:
        diff = max_abs_diff(ref_all, tool.fn(texts))
        bad = [k for k in ("dense", "sparse", "colbert") if k in diff and diff[k] > tol]
        if diff.get("sparse_key_mismatches"):
            bad.append("sparse keys")
        ok &= not bad
        report["agreement"][label] = diff
        log(f"  {label:<34s} " + "  ".join(f"{k}={v:.2e}" if isinstance(v, float) else f"{k}={v}" for k, v in diff.items())
            + ("   MISMATCH: " + ", ".join(bad) if bad else "   ok"))
    if not ok:
        log("\noutputs do not agree within the tolerance: no speed is reported.")
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=2)
        return 2

    # ---- 2. speed
    for scen in scenarios:
        want = outputs[scen]
        for setting in settings:
            tools = []
            if setting == "default":
                tools.append(ours_tool(ours, "bgem3", want))
                if flag is not None:
                    tools.append(flag_tool(flag, f"FlagEmbedding (bs {FLAG_DEFAULT_BATCH})", want, FLAG_DEFAULT_BATCH, args.max_length))
                if st is not None and scen == "dense":
                    tools.append(st_tool(st, f"sentence-transformers (bs {ST_DEFAULT_BATCH})", ST_DEFAULT_BATCH))
            else:
                tools.append(ours_tool(matched_enc, f"bgem3 (bs {args.batch})", want))
                if flag is not None:
                    tools.append(flag_tool(flag, f"FlagEmbedding (bs {args.batch})", want, args.batch, args.max_length))
                if st is not None and scen == "dense":
                    tools.append(st_tool(st, f"sentence-transformers (bs {args.batch})", args.batch))
            if args.ablation:
                padded = Encoder(path, device=device, dtype=dtype, max_length=args.max_length,
                                 batch_size=encs[setting].batch_size, max_tokens_per_batch=encs[setting].max_tokens_per_batch)
                padded._packed = None
                tools.append(ours_tool(padded, "bgem3 padded path (ablation)", want))
            title = f"[{scen}: {'+'.join(want)}] [{setting} batch sizes] {n} texts, {n_tokens} tokens, {device} {dtype}"
            log(f"\n{title}")
            times = time_tools(tools, texts, args.reps, args.warmup, log)
            rows = summarise(times, n, n_tokens, tools[0].name, flops, peak)
            print_table(title, rows, log)
            report["results"][f"{scen}/{setting}"] = rows

    # ---- 3. fast mode: speed next to its accuracy cost
    if args.fast and not gpu:
        log(f"\nfast mode: {args.fast}")
        if args.fast == "bf16":
            fast = Encoder(path, device=device, dtype="bf16", max_length=args.max_length)
        elif args.fast == "int8":
            fast = int8_encoder(path, device, args.max_length)
        else:  # the rejected quantize_dynamic approach, measured for the record only
            fast = int8_dynamic_encoder(path, device, args.max_length)
        queries = make_corpus(32, seed=1, min_tokens=6, max_tokens=40, tokenizer=ours.tokenizer)
        fast_all = ours_tool(fast, "fast", outputs["all"]).fn(texts)
        q_ref = ours_tool(ours, "q", outputs["all"]).fn(queries)
        q_fast = ours_tool(fast, "q", outputs["all"]).fn(queries)
        acc = fast_mode_accuracy(ref_all, fast_all, q_ref, q_fast)
        report["fast"]["accuracy"] = acc
        log("  accuracy vs exact fp32 (corpus as documents, 32 short queries): " + json.dumps(acc, indent=None))
        for scen in (args.fast_scenarios.split(",") if args.fast_scenarios else scenarios):
            want = outputs[scen]
            tools = [ours_tool(fast, f"bgem3 {args.fast}", want), ours_tool(ours, "bgem3 fp32", want)]
            if flag is not None:
                if "default" in settings:
                    tools.append(flag_tool(flag, f"FlagEmbedding fp32 (bs {FLAG_DEFAULT_BATCH})", want, FLAG_DEFAULT_BATCH, args.max_length))
                if "matched" in settings:
                    tools.append(flag_tool(flag, f"FlagEmbedding fp32 (bs {args.batch})", want, args.batch, args.max_length))
            title = f"[fast {args.fast}] [{scen}: {'+'.join(want)}] {n} texts, {n_tokens} tokens"
            log(f"\n{title}")
            times = time_tools(tools, texts, args.reps, args.warmup, log)
            rows = summarise(times, n, n_tokens, tools[0].name, flops, peak)
            print_table(title, rows, log)
            report["fast"][scen] = rows

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
        log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
