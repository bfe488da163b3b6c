"""Workload-labelled encode benchmark (``benchmarks/encode.py --workloads ...``).

Workloads, each run side by side in one process on the same model folder:

* ``bulk``   — the indexing job: ``--bulk-n`` real passages of 80-400 words in ONE call, all three
  outputs (dense + lexical + ColBERT) and dense-only;
* ``chunks`` — 32-text calls, as vector stores make them (``--chunk-calls`` calls);
* ``query``  — one short query per call, p50 / p99 latency.

Systems: bgem3 fp32 / bf16 (only where the CPU has native bf16, else reported as skipped) /
int8; FlagEmbedding fp32 (BGEM3FlagModel); sentence-transformers fp32 (dense); ONNX Runtime
fp32 and int8 (``onnxruntime.quantization.quantize_dynamic``, per-channel QInt8) on a
``torch.onnx`` export of the same checkpoint, with the same heads applied to its hidden states.

Every system's outputs are scored against bgem3 fp32 (dense cosine median/min, top-10 agreement
on real queries, ColBERT / lexical cosine) before its time is reported. Text: paragraphs of
Python's reference documentation (``bgem3.quant.fidelity.real_passages``), real prose shipped
with every Python.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch

from bgem3.quant.fidelity import (colbert_fidelity, dense_fidelity, lexical_fidelity, real_passages,
                                  real_queries, topk_agreement)


def bulk_corpus(n: int, seed: int = 0, min_words: int = 80, max_words: int = 400) -> list[str]:
    """``n`` passages of ``min_words``-``max_words`` words (uniform), built from real paragraphs."""
    paras = real_passages(10_000, min_words=1)
    words = " ".join(paras).split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = int(min_words + (max_words - min_words) * (i + rng.random()) / n)
        s = rng.randrange(0, len(words) - k)
        out.append(" ".join(words[s:s + k]))
    rng.shuffle(out)
    return out


def real_token_lengths(texts: list[str], tokenizer, reference=None) -> list[str]:
    """Trim each text (whole words) so ``tokenizer`` counts about as many tokens as a real
    subword tokenizer does for the untrimmed text (``reference``; default the real
    all-MiniLM-L6-v2 WordPiece tokenizer, ~1.3 tokens per English word).

    The benchmark checkpoints' toy tokenizer (trained on a few sentences) splits English into ~3x
    more pieces than BGE-M3's, so 80-400 words would nearly all hit ``max_length=512``; this keeps
    the real words and gives the model the token lengths a real tokenizer would.
    """
    if reference is None:
        from transformers import AutoTokenizer

        from bgem3.testing import minilm_path

        reference = AutoTokenizer.from_pretrained(minilm_path())
    targets = [len(x) for x in reference(texts, add_special_tokens=True)["input_ids"]]
    out = []
    for text, target in zip(texts, targets):
        words = text.split()
        lo, hi = 1, len(words)  # the longest word prefix with <= target tokens (binary search)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= target:
                lo = mid
            else:
                hi = mid - 1
        out.append(" ".join(words[:lo]))
    return out


# --------------------------------------------------------------------------- ONNX Runtime peer

def export_onnx(path: str, out_dir: str, log) -> tuple[str, str]:
    """fp32 and int8 ONNX graphs of the checkpoint's transformer (hidden states out), cached."""
    fp32 = os.path.join(out_dir, "model.onnx")
    int8 = os.path.join(out_dir, "model_int8.onnx")
    if os.path.isfile(fp32) and os.path.isfile(int8):
        return fp32, int8
    os.makedirs(out_dir, exist_ok=True)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="eager").eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(5, 100, (2, 16))
    raw = os.path.join(out_dir, "raw.onnx")
    log(f"[onnx] exporting {path} -> {raw}")
    torch.onnx.export(Wrap(model), (ids, torch.ones_like(ids)), raw, input_names=["input_ids", "attention_mask"],
                      output_names=["hidden"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": {0: "b", 1: "t"}, "attention_mask": {0: "b", 1: "t"}, "hidden": {0: "b", 1: "t"}})
    from onnxruntime.transformers.optimizer import optimize_model

    cfg = model.config
    opt = optimize_model(raw, model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
    log(f"[onnx] fused operators: {opt.get_fused_operator_statistics()}")
    opt.save_model_to_file(fp32)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True,
                     extra_options={"DefaultTensorType": 1})
    return fp32, int8


def ort_tool(onnx_path: str, enc, threads: int, batch: int = 32):
    """``fn(texts, dense, sparse, colbert)`` on an ONNX Runtime session; heads = ``enc``'s (fp32)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def fn(texts, dense=True, sparse=False, colbert=False):
        ids = enc.tokenize(texts, enc.max_length)
        order = np.argsort([-len(x) for x in ids], kind="stable")
        d_out = np.zeros((len(texts), enc.hidden_size), dtype=np.float32) if dense else None
        s_out = [None] * len(texts) if sparse else None
        c_out = [None] * len(texts) if colbert else None
        for a in range(0, len(order), batch):
            idx = order[a:a + batch]
            input_ids, mask = enc._pad([ids[i] for i in idx])
            hidden = torch.from_numpy(sess.run(None, {"input_ids": input_ids.numpy(), "attention_mask": mask.numpy()})[0])
            with torch.inference_mode():
                if dense:
                    d_out[idx] = enc._pool(hidden, mask).numpy()
                if sparse:
                    for j, v in zip(idx, enc._sparse(hidden, input_ids, mask)):
                        s_out[j] = v
                if colbert:
                    for j, v in zip(idx, enc._colbert(hidden, mask)):
                        c_out[j] = v
        return {"dense": d_out, "sparse": s_out, "colbert": c_out}
    return fn


# --------------------------------------------------------------------------- the run

def int8_matmul_peak(size: int = 2048, reps: int = 3) -> float:
    """Best measured FBGEMM int8 (dynamic) matmul OPS/s here (2*M*N*K per call)."""
    w = torch.randn(size, size)
    scale = (w.abs().amax(1) / 127).double()
    qw = torch.quantize_per_channel(w, scale, torch.zeros(size, dtype=torch.long), 0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(qw, None)
    x = torch.rand(size, size)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        torch.ops.quantized.linear_dynamic(x, packed, True)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def cpu_flags() -> list:
    """The CPU features every figure depends on (AVX2, AVX-512, VNNI, BF16, AMX), from /proc/cpuinfo."""
    want = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in want if f in have]
    except OSError:
        pass
    return []


def figure_conditions() -> dict:
    """What sits beside every figure in the JSON: threads, load average (1/5/15 min), CPU flags."""
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    return {"threads": torch.get_num_threads(), "loadavg": load, "cpu_flags": cpu_flags()}


#: GEMM shapes of the microbenchmark: (rows, in, out) of the small model's FFN and of BGE-M3's
GEMM_SHAPES = ((512, 384, 1536), (2048, 1024, 4096))


def gemm_rates(seconds: float, log) -> dict:
    """The machine's GEMM rates (GFLOP/s, or GOP/s for int8) at the current thread count, best over
    ``seconds`` in all: fp32 through PyTorch's BLAS call (MKL) and through oneDNN (what the exact path
    uses where it is faster), bf16 (oneDNN), int8 (FBGEMM u8 x s8, what ``dtype="int8"`` runs)."""
    import torch.nn.functional as F

    def onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")

    def fbgemm(x, w):
        return torch.ops.quantized.linear_dynamic(x, w, True)

    kinds = {"fp32 (PyTorch BLAS / MKL)": ("fp32", torch.float32, F.linear), "fp32 (oneDNN)": ("fp32", torch.float32, onednn),
             "bf16 (oneDNN)": ("bf16", torch.bfloat16, F.linear), "int8 (FBGEMM)": ("int8", None, fbgemm)}
    slot = seconds / (len(kinds) * len(GEMM_SHAPES))
    out: dict = {"seconds": seconds, "shapes": [list(s) for s in GEMM_SHAPES], **figure_conditions(), "by_kernel": {}}
    for label, (prec, dt, fn) in kinds.items():
        best = 0.0
        for m, k, n in GEMM_SHAPES:
            x, w = torch.randn(m, k), torch.randn(n, k)
            if prec == "int8":
                scale = (w.abs().amax(1) / 127).double()
                qw = torch.quantize_per_channel(w, scale, torch.zeros(n, dtype=torch.long), 0, torch.qint8)
                w = torch.ops.quantized.linear_prepack(qw, None)
                x = torch.rand(m, k)
            else:
                x, w = x.to(dt), w.to(dt)
            try:
                fn(x, w)
            except Exception as exc:  # e.g. no oneDNN op in this PyTorch: say so
                out["by_kernel"][label] = f"unavailable: {type(exc).__name__}"
                break
            t_end = time.perf_counter() + slot
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn(x, w)
                best = max(best, 2 * m * k * n / (time.perf_counter() - t0) / 1e9)
        else:
            out["by_kernel"][label] = best
            out[prec] = max(out.get(prec, 0.0), best)
    log(f"GEMM rates ({out['threads']} threads, best over {seconds:.0f} s): "
        + ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}" for k, v in out["by_kernel"].items())
        + f"  load {out['loadavg']}")
    return out


def flag_executed_flops(lengths: np.ndarray, batch: int, model_flops: Callable, cfg) -> float:
    """FLOPs FlagEmbedding's ``BGEM3FlagModel.encode`` executes: texts sorted longest first, its first
    batch run once more as a probe (its batch-size search), every batch padded to its longest text."""
    srt = np.sort(np.asarray(lengths))[::-1]
    total = 0.0
    batches = [srt[:batch]] + [srt[a:a + batch] for a in range(0, len(srt), batch)]
    for b in batches:
        total += model_flops(np.full(len(b), int(b.max())), cfg)
    return total


def _precision_of(name: str) -> str:
    return "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"


#: every name --systems takes
SYSTEMS = ("bgem3-fp32", "bgem3-fp32-unpacked", "bgem3-fp32-blas", "bgem3-bf16", "bgem3-int8", "bgem3-onnx", "bgem3-onnx-int8", "bgem3-openvino",
           "bgem3-openvino-bf16", "bgem3-openvino-int8", "bgem3-openvino-bf16-1req", "bgem3-openvino-int8-1req",
           "flag", "st", "ort-fp32", "ort-int8")


def check_systems(text: str) -> list:
    """The comma list of --systems, each one of :data:`SYSTEMS` (a typo is an error, never a silently missing row)."""
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown {unknown}; choose from {', '.join(SYSTEMS)}")
    return systems


#: Encoder options that run a graph backend's bulk as before issue 26d (one synchronous request, 16384-token batches)
ONE_REQUEST = {"max_tokens_per_batch": 16384, "model_kwargs": {"ov_config": {"PERFORMANCE_HINT": "LATENCY"}}}


def run_workloads(args, path: str, log, model_flops: Callable, fp32_peak: float) -> dict:
    from bgem3 import Encoder
    from bgem3.encoder import cpu_has_fast_bf16
    from bgem3.quant.engine import has_vnni, int8_cpu_features

    workloads = [w for w in args.workloads.split(",") if w]
    systems = check_systems(args.systems)
    report: dict = {"workloads": {}, "fidelity": {}, "skipped": {}, "load": {}}
    report["load"]["loadavg_start"] = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None
    report["cpu_int8"] = {"features": sorted(int8_cpu_features()), "vnni": has_vnni(), "fast_bf16": cpu_has_fast_bf16()}
    report["figure_conditions_start"] = figure_conditions()

    ref = Encoder(path, device="cpu", max_length=args.max_length)
    corpus = bulk_corpus(args.bulk_n)
    if getattr(args, "bulk_tokens", "real") == "real":
        corpus = real_token_lengths(corpus, ref.tokenizer)
    queries = real_queries(50)
    lengths = np.array([len(x) for x in ref.tokenize(corpus, args.max_length)])
    flops = model_flops(lengths, ref.config)  # .config: .model would unpack its weights
    rates = None
    if getattr(args, "gemm_seconds", 0) > 0:  # the machine's GEMM rates, the yardstick of every path
        rates = report["gemm_rates"] = gemm_rates(args.gemm_seconds, log)
        fp32_peak = max(fp32_peak, rates.get("fp32", 0.0) * 1e9)
    i8_peak = rates["int8"] * 1e9 if rates and "int8" in rates else int8_matmul_peak()
    report["corpus"] = {"n": len(corpus), "tokens": int(lengths.sum()), "tokens_min": int(lengths.min()),
                        "tokens_median": float(np.median(lengths)), "tokens_max": int(lengths.max()),
                        "words": "80-400", "token_lengths": getattr(args, "bulk_tokens", "real"),
                        "model_gflop_per_pass": flops / 1e9,
                        "fp32_matmul_peak_gflops": fp32_peak / 1e9, "int8_matmul_peak_gops": i8_peak / 1e9}
    log(f"bulk corpus: {len(corpus)} passages, {int(lengths.sum())} tokens (median {np.median(lengths):.0f}); "
        f"model work {flops / 1e9:.0f} GFLOP/pass; measured peaks: fp32 {fp32_peak / 1e9:.0f} GFLOP/s, "
        f"int8 (FBGEMM) {i8_peak / 1e9:.0f} GOP/s; CPU int8 features {sorted(int8_cpu_features())}")

    tools: dict[str, Callable] = {}
    outputs_of: dict[str, tuple] = {}

    def ours(enc):
        return lambda texts, dense=True, sparse=False, colbert=False: _ours_out(enc.encode(
            texts, dense=dense, sparse=sparse, colbert=colbert, show_progress=False))

    if "bgem3-fp32" in systems:
        tools["bgem3 fp32"] = ours(ref)
    unpacked = None
    if "bgem3-fp32-unpacked" in systems or "bgem3-fp32-blas" in systems:
        import bgem3._cpu_linear as cpu_linear

        old_prepack, cpu_linear.PREPACK = cpu_linear.PREPACK, False  # weights as loaded: no oneDNN pre-packing
        try:
            unpacked = Encoder(path, device="cpu", max_length=args.max_length)
        finally:
            cpu_linear.PREPACK = old_prepack
    if "bgem3-fp32-unpacked" in systems:  # the exact path before session 8: oneDNN re-packs each weight per call
        tools["bgem3 fp32, weights not pre-packed"] = ours(unpacked)
    if "bgem3-fp32-blas" in systems:  # the exact path before issue 26b: fp32 linears on PyTorch's BLAS call (MKL)
        def blas(texts, dense=True, sparse=False, colbert=False, _fn=ours(unpacked)):
            old, cpu_linear.ONEDNN = cpu_linear.ONEDNN, False
            try:
                return _fn(texts, dense, sparse, colbert)
            finally:
                cpu_linear.ONEDNN = old
        tools["bgem3 fp32, MKL linears"] = blas
    if "bgem3-bf16" in systems:
        if cpu_has_fast_bf16() or args.force_bf16:
            tools["bgem3 torch bf16"] = ours(Encoder(path, device="cpu", dtype="bf16", backend="torch",
                                                     max_length=args.max_length))
        else:
            report["skipped"]["bgem3 torch bf16"] = "this CPU has no avx512_bf16/AMX: bf16 runs emulated (~5x slower than fp32)"
    if "bgem3-int8" in systems:
        t0 = time.perf_counter()
        q = Encoder(path, device="cpu", dtype="int8", backend="torch", max_length=args.max_length)
        report["int8_load_s"] = time.perf_counter() - t0
        report["int8_quantization"] = {k: v for k, v in q.quantization.items() if k != "layer_rel_error"}
        tools["bgem3 int8"] = ours(q)
    # the forward backends of bgem3 itself (bgem3.backends): same templates, batching and heads
    for sys_name, label, kw in (("bgem3-onnx", "bgem3 onnx fp32", {"backend": "onnx"}),
                                ("bgem3-onnx-int8", "bgem3 onnx int8 (dynamic)",
                                 {"backend": "onnx", "model_kwargs": {"file_name": "onnx/model_qint8.onnx"}}),
                                ("bgem3-openvino", "bgem3 openvino fp32", {"backend": "openvino"}),
                                ("bgem3-openvino-bf16", "bgem3 openvino bf16", {"backend": "openvino", "dtype": "bf16"}),
                                ("bgem3-openvino-int8", "bgem3 openvino int8 (NNCF)", {"backend": "openvino", "dtype": "int8"}),
                                # the graph backends as they ran bulk before issue 26d: one infer request on every
                                # thread, batches of 16384 padded tokens (an A/B of the streams and the budget)
                                ("bgem3-openvino-bf16-1req", "bgem3 openvino bf16, one request",
                                 dict(ONE_REQUEST, backend="openvino", dtype="bf16")),
                                ("bgem3-openvino-int8-1req", "bgem3 openvino int8 (NNCF), one request",
                                 dict(ONE_REQUEST, backend="openvino", dtype="int8"))):
        if sys_name not in systems:
            continue
        try:
            if sys_name == "bgem3-onnx-int8":
                from bgem3.backends.export import cached_graph

                cached_graph(ref.model_dir, "onnx", quantize="int8")
            tools[label] = ours(Encoder(path, max_length=args.max_length, **kw))
        except Exception as exc:  # report, never hide
            report["skipped"][label] = f"{type(exc).__name__}: {exc}"
    if "flag" in systems:
        from FlagEmbedding import BGEM3FlagModel

        flag = BGEM3FlagModel(path, use_fp16=False, devices="cpu", passage_max_length=args.max_length,
                              query_max_length=args.max_length)

        def flag_fn(texts, dense=True, sparse=False, colbert=False, _bs=256):
            r = flag.encode(texts, batch_size=_bs, max_length=args.max_length, return_dense=dense,
                            return_sparse=sparse, return_colbert_vecs=colbert)
            sp = [{int(k): float(v) for k, v in d.items()} for d in r["lexical_weights"]] if sparse else None
            return {"dense": r["dense_vecs"] if dense else None, "sparse": sp, "colbert": r["colbert_vecs"] if colbert else None}
        tools["FlagEmbedding fp32"] = flag_fn
    if "st" in systems:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu")
        st.max_seq_length = args.max_length
        tools["sentence-transformers fp32"] = lambda texts, dense=True, sparse=False, colbert=False: {
            "dense": st.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False), "sparse": None, "colbert": None}
        outputs_of["sentence-transformers fp32"] = ("dense",)
    if "ort-fp32" in systems or "ort-int8" in systems:
        try:
            fp32_onnx, int8_onnx = export_onnx(path, os.path.join(path, "onnx"), log)
            if "ort-fp32" in systems:
                tools["ONNX Runtime fp32"] = ort_tool(fp32_onnx, ref, torch.get_num_threads())
            if "ort-int8" in systems:
                tools["ONNX Runtime int8"] = ort_tool(int8_onnx, ref, torch.get_num_threads())
        except Exception as exc:  # report, never hide
            report["skipped"]["ONNX Runtime"] = f"export failed: {type(exc).__name__}: {exc}"
    for name, why in report["skipped"].items():
        log(f"  skipped {name}: {why}")

    # ---- fidelity vs bgem3 fp32 (queries: real, short; corpus: the bulk corpus)
    ref_fn = tools.get("bgem3 fp32") or ours(ref)
    q_ref = ref_fn(queries, dense=True)
    # ---- bulk: one call each, all three then dense-only (the all-three pass also gives fidelity)
    if "bulk" in workloads:
        bulk_scen = [x for x in getattr(args, "bulk_scenarios", "all,dense").split(",") if x]
        bad = sorted(set(bulk_scen) - {"all", "dense"})
        if bad:
            raise ValueError(f"--bulk-scenarios: unknown {bad}; use all and/or dense")
        for scen, want in (("all", (True, True, True)), ("dense", (True, False, False))):
            if scen not in bulk_scen:
                continue
            rows = []
            ref_out = None
            names = list(tools)
            last_exact = None  # the exact path's latest time, when nothing ran since: the next bracket's start
            for name in names:
                if want[1] and outputs_of.get(name) == ("dense",):
                    continue
                times = []
                out = None
                # warm (first-call allocations, thread pools), with batches enough that a graph backend's
                # bulk path (OpenVINO's throughput model, compiled on its first bulk call) is warm too
                tools[name](corpus[:24], *want)
                bracket = []

                def exact_once():
                    t0 = time.perf_counter()
                    tools["bgem3 fp32"](corpus, *want)
                    return time.perf_counter() - t0
                if getattr(args, "bracket", True) and name != "bgem3 fp32" and "bgem3 fp32" in tools:
                    # the exact path right before (shared with the previous system's "after") ...
                    bracket.append(last_exact if last_exact is not None else exact_once())
                for _r in range(args.bulk_reps):
                    c0, t0 = time.process_time(), time.perf_counter()
                    out = tools[name](corpus, *want)
                    times.append((time.perf_counter() - t0, time.process_time() - c0))
                last_exact = min(t for t, _ in times) if name == "bgem3 fp32" else None
                if bracket:
                    bracket.append(exact_once())  # ... and right after: the ratio holds for this stretch of load
                    last_exact = bracket[-1]
                wall = min(t for t, _ in times)
                row = {"system": name, "wall_s": wall, "walls": [t for t, _ in times], "cpu_s": [c for _, c in times],
                       "tokens_per_s": float(lengths.sum()) / wall, "model_gflops_per_s": flops / wall / 1e9,
                       "share_of_fp32_peak": flops / wall / fp32_peak, "share_of_int8_peak": flops / wall / i8_peak,
                       "loadavg": open("/proc/loadavg").read().split()[0], "conditions": figure_conditions()}
                prec = _precision_of(name)
                if rates and prec in rates:  # the share of the machine's GEMM rate in this path's own precision
                    row["gemm_precision"], row["share_of_gemm_rate"] = prec, flops / wall / 1e9 / rates[prec]
                if name == "FlagEmbedding fp32":  # what it executes (probe batch + padding) beside the useful work
                    executed = flag_executed_flops(lengths, 256, model_flops, ref.config)
                    row.update(executed_gflop=executed / 1e9, useful_gflop=flops / 1e9,
                               executed_over_useful=executed / flops, executed_gflops_per_s=executed / wall / 1e9)
                if bracket:
                    row["exact_bracket_s"] = bracket
                    row["speedup_vs_exact_bracketed"] = (sum(bracket) / len(bracket)) / wall
                if name == "bgem3 fp32":
                    ref_out = out
                elif ref_out is not None:
                    fid = {"dense": dense_fidelity(ref_out["dense"], out["dense"])}
                    qo = tools[name](queries, dense=True)
                    fid["dense_top10_agreement"] = topk_agreement(q_ref["dense"] @ ref_out["dense"].T, qo["dense"] @ out["dense"].T)
                    if want[1]:
                        fid["lexical"] = lexical_fidelity(ref_out["sparse"], out["sparse"])
                        fid["colbert"] = colbert_fidelity(ref_out["colbert"], out["colbert"])
                    report["fidelity"].setdefault(name, {})[scen] = fid
                    row["fidelity"] = fid
                rows.append(row)
                br = (f"  {row['speedup_vs_exact_bracketed']:.2f}x exact (bracket {bracket[0]:.1f}/{bracket[1]:.1f} s)"
                      if bracket else "")
                own = (f", {100 * row['share_of_gemm_rate']:.0f}% of the {row['gemm_precision']} GEMM rate"
                       if "share_of_gemm_rate" in row else "")
                own += (f"; executes {row['executed_gflop']:.0f} GFLOP = {row['executed_over_useful']:.2f}x the useful "
                        f"{row['useful_gflop']:.0f}" if "executed_gflop" in row else "")
                log(f"  [bulk {scen}] {name:<28s} {wall:8.1f} s{br}  {row['tokens_per_s']:8.0f} tok/s  "
                    f"{row['model_gflops_per_s']:6.1f} GFLOP/s ({100 * row['share_of_fp32_peak']:.0f}% of fp32 peak{own})  "
                    f"load {row['loadavg']}" + (f"  fidelity {json.dumps(row.get('fidelity'))}" if "fidelity" in row else ""))
            flag_row = next((r for r in rows if r["system"] == "FlagEmbedding fp32"), None)
            ours_row = next((r for r in rows if r["system"] == "bgem3 fp32"), None)
            for r in rows:
                if flag_row:
                    r["speedup_vs_flag_fp32"] = flag_row["wall_s"] / r["wall_s"]
                if ours_row:
                    r["speedup_vs_bgem3_fp32"] = ours_row["wall_s"] / r["wall_s"]
            report["workloads"][f"bulk/{scen}"] = rows
            if flag_row:
                log("  speed-up vs FlagEmbedding fp32: " + ", ".join(f"{r['system']}: {r['speedup_vs_flag_fp32']:.2f}x" for r in rows))
    # ---- framework chunks: 32-text calls, all three outputs (dense-only systems: dense)
    if "chunks" in workloads:
        texts = corpus[: 32 * args.chunk_calls]
        rows = []
        for name, fn in tools.items():
            dense_only = outputs_of.get(name) == ("dense",)
            fn(texts[:32], True, not dense_only, not dense_only)  # warm
            t0 = time.perf_counter()
            for a in range(0, len(texts), 32):
                fn(texts[a:a + 32], True, not dense_only, not dense_only)
            wall = time.perf_counter() - t0
            rows.append({"system": name, "outputs": "dense" if dense_only else "all three", "wall_s": wall,
                         "ms_per_call": 1000 * wall / args.chunk_calls, "loadavg": open("/proc/loadavg").read().split()[0],
                         "conditions": figure_conditions()})
            log(f"  [chunks 32] {name:<28s} {rows[-1]['ms_per_call']:8.0f} ms/call ({rows[-1]['outputs']})")
        report["workloads"]["chunks"] = rows
    # ---- single query latency (dense + lexical + ColBERT where the system has them)
    if "query" in workloads:
        rows = []
        for name, fn in tools.items():
            dense_only = outputs_of.get(name) == ("dense",)
            for q in queries[:5]:
                fn([q], True, not dense_only, not dense_only)
            lat = []
            for q in queries[: args.query_n]:
                t0 = time.perf_counter()
                fn([q], True, not dense_only, not dense_only)
                lat.append(1000 * (time.perf_counter() - t0))
            rows.append({"system": name, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                         "n": len(lat), "loadavg": open("/proc/loadavg").read().split()[0],
                         "conditions": figure_conditions()})
            log(f"  [query] {name:<28s} p50 {rows[-1]['p50_ms']:6.1f} ms  p99 {rows[-1]['p99_ms']:6.1f} ms")
        report["workloads"]["query"] = rows
    report["load"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    return report


def merge_parts(paths: list, log) -> dict:
    """One report from the JSON parts of a split workload run: each part's conditions, load and
    corpus are kept under ``parts``; workloads / fidelity / skipped are merged. A workload split
    over parts keeps every row with its ``part``: speed ratios hold within one part (each part
    times bgem3 fp32 again as its yardstick)."""
    merged: dict = {"parts": [], "workloads": {}, "fidelity": {}, "skipped": {}}
    for p in paths:
        with open(p) as fh:
            part = json.load(fh)
        merged["parts"].append({"file": os.path.basename(p), "conditions": part.get("conditions"),
                                "load": part.get("load"), "corpus": part.get("corpus"),
                                "cpu_int8": part.get("cpu_int8"), "workloads": sorted(part.get("workloads", {}))})
        for key in ("minilm_int8_fidelity", "int8_quantization", "int8_load_s", "cpu_int8", "corpus", "conditions"):
            if key in part and key not in merged:
                merged[key] = part[key]
        for w, rows in part.get("workloads", {}).items():
            # a workload may be split over parts (each with its own bgem3 fp32 row): ratios hold
            # within a part only, so every row says which part it came from
            for r in rows:
                r["part"] = os.path.basename(p)
            merged["workloads"].setdefault(w, []).extend(rows)
        for name, fid in part.get("fidelity", {}).items():
            merged["fidelity"].setdefault(name, {}).update(fid)
        merged["skipped"].update(part.get("skipped", {}))
    for w, rows in merged["workloads"].items():
        for r in rows:
            extra = ""
            if "share_of_fp32_peak" in r:
                extra = f"{r['wall_s']:7.1f} s  " + (f"{r['speedup_vs_flag_fp32']:.2f}x FlagEmbedding  " if "speedup_vs_flag_fp32" in r else "") \
                        + (f"{r['speedup_vs_bgem3_fp32']:.2f}x bgem3 fp32  " if "speedup_vs_bgem3_fp32" in r else "") \
                        + f"{100 * r['share_of_fp32_peak']:.0f}% fp32 peak  [{r['part']}]"
            elif "ms_per_call" in r:
                extra = f"{r['ms_per_call']:7.0f} ms/call ({r['outputs']})"
            elif "p50_ms" in r:
                extra = f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms"
            log(f"  {w:<12s} {r['system']:<28s} {extra}  load {r.get('loadavg')}")
    return merged


def _ours_out(out) -> dict:
    return {"dense": out.dense, "sparse": out.sparse, "colbert": out.colbert}


#: fast systems scored on the real MiniLM against the exact path: label -> Encoder options
MINILM_SYSTEMS = {
    "bgem3 onnx fp32": {"backend": "onnx"},
    "bgem3 openvino fp32": {"backend": "openvino"},
    "bgem3 openvino bf16": {"backend": "openvino", "dtype": "bf16"},
    "bgem3 onnx int8 (dynamic)": {"backend": "onnx", "model_kwargs": {"file_name": "onnx/model_qint8.onnx"}},
    "bgem3 openvino int8 (NNCF)": {"backend": "openvino", "dtype": "int8"},
    "bgem3 torch bf16": {"dtype": "bf16", "backend": "torch"},
    "bgem3 torch int8": {"dtype": "int8", "backend": "torch"},
}


def minilm_backend_fidelity(log, n_docs: int = 300, systems: Optional[list] = None) -> dict:
    """Each fast system vs the exact torch fp32 path on the REAL all-MiniLM-L6-v2 weights and real text:
    dense cosine (median / min), top-10 agreement of the query x passage ranking (the project's gates:
    median >= 0.999, min >= 0.995, top-10 >= 0.95)."""
    from bgem3 import Encoder
    from bgem3.backends.export import cached_graph
    from bgem3.testing import minilm_path

    docs = real_passages(n_docs)
    queries = real_queries(50)
    fp = Encoder(minilm_path(), device="cpu")
    d_ref, q_ref = fp.encode(docs, show_progress=False).dense, fp.encode(queries, show_progress=False).dense
    out = {}
    for label, kw in MINILM_SYSTEMS.items():
        if systems and label not in systems:
            continue
        try:
            if kw.get("model_kwargs", {}).get("file_name") == "onnx/model_qint8.onnx":
                cached_graph(fp.model_dir, "onnx", quantize="int8")
            enc = Encoder(minilm_path(), **kw)
        except Exception as exc:
            out[label] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        d, q = enc.encode(docs, show_progress=False).dense, enc.encode(queries, show_progress=False).dense
        fid = {"docs": len(docs), "queries": len(queries), "dense": dense_fidelity(d_ref, d),
               "top10_agreement": topk_agreement(q_ref @ d_ref.T, q @ d.T)}
        cos = fid["dense"]
        fid["gates"] = bool(cos["cosine_median"] >= 0.999 and cos["cosine_min"] >= 0.995
                            and fid["top10_agreement"] >= 0.95)
        out[label] = fid
        log(f"real MiniLM {label} vs exact fp32: {json.dumps(fid)}")
    return out


def minilm_fidelity(log, n_docs: int = 300) -> dict:
    """int8 vs fp32 on the REAL all-MiniLM-L6-v2 weights and real text (the gates)."""
    from bgem3 import Encoder
    from bgem3.testing import minilm_path

    docs = real_passages(n_docs)
    queries = real_queries(50)
    fp = Encoder(minilm_path(), device="cpu")
    q8 = Encoder(minilm_path(), device="cpu", dtype="int8", backend="torch")
    d_ref, d8 = fp.encode(docs, show_progress=False).dense, q8.encode(docs, show_progress=False).dense
    q_ref, q_8 = fp.encode(queries, show_progress=False).dense, q8.encode(queries, show_progress=False).dense
    res = {"docs": len(docs), "queries": len(queries), "dense": dense_fidelity(d_ref, d8),
           "top10_agreement": topk_agreement(q_ref @ d_ref.T, q_8 @ d8.T),
           "fp32_layers": q8.quantization["fp32_layers"], "alpha": q8.quantization["alpha"],
           "reduce_range": q8.quantization["reduce_range"]}
    log(f"real MiniLM int8 vs fp32: {json.dumps(res)}")
    # the BGE-M3 outputs on trained weights: MiniLM's transformer + M3 heads, CLS dense
    import tempfile

    from bgem3.testing import make_trained_m3_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = make_trained_m3_checkpoint(tmp)
        fp, q8 = Encoder(path, device="cpu"), Encoder(path, device="cpu", dtype="int8", backend="torch")
        a, b = fp.encode(docs, sparse=True, colbert=True, show_progress=False), q8.encode(docs, sparse=True, colbert=True, show_progress=False)
        qa, qb = fp.encode(queries, show_progress=False).dense, q8.encode(queries, show_progress=False).dense
        m3 = {"docs": len(docs), "dense": dense_fidelity(a.dense, b.dense), "top10_agreement": topk_agreement(qa @ a.dense.T, qb @ b.dense.T),
              "colbert": colbert_fidelity(a.colbert, b.colbert), "lexical": lexical_fidelity(a.sparse, b.sparse),
              "fp32_layers": q8.quantization["fp32_layers"]}
    log(f"trained M3-shaped (MiniLM transformer + M3 heads) int8 vs fp32: {json.dumps(m3)}")
    return {"minilm": res, "trained_m3_shape": m3}
