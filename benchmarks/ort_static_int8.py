"""ONNX Runtime static QDQ int8 (issue 26): made, scored on the fidelity gates and timed, for the record.

bgem3 does not ship this graph (docs/benchmarks_encode.md, "Fast path on bulk"): on the real MiniLM it
fails the gates with or without the sensitive projections kept fp32, and it is slower than ONNX
Runtime's dynamic int8 graph. This script reproduces those figures::

    python benchmarks/ort_static_int8.py                       # fidelity on the real MiniLM + speed on the small model
    python benchmarks/ort_static_int8.py --variants keep --no-speed

Variants (all ``quantize_static``, QDQ, per-channel int8 weights, ``MatMulConstBOnly``: the linear
layers only, attention products stay fp32; calibrated on bgem3's NNCF calibration texts, each alone,
none of them in the gate set):

* ``all``: every linear layer int8, asymmetric uint8 activations, MinMax ranges;
* ``keep``: each block's FFN down-projection and attention output projection kept fp32 (what the
  shipped OpenVINO int8 graph keeps out of int8);
* ``keep-sym``: the same with symmetric int8 activations;
* ``keep-pct``: the same with 99.999th-percentile ranges (calibrated on 256-token windows: ORT's
  histogram calibrators need one shape).

The graphs are written beside bgem3's fp32 export in its cache (``onnx/model_qint8_static_<variant>.onnx``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

VARIANTS = ("all", "keep", "keep-sym", "keep-pct")


def make_static_graph(model_dir: str, variant: str, log=print) -> str:
    """``model_dir``'s static QDQ int8 ONNX graph for ``variant`` (made once into bgem3's export cache)."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from transformers import AutoTokenizer

    from bgem3.backends.export import cached_graph
    from bgem3.quant.openvino_int8 import calibration_texts

    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {VARIANTS}")
    fp32 = cached_graph(model_dir, "onnx")
    folder = os.path.dirname(fp32)
    dst = os.path.join(folder, f"model_qint8_static_{variant}.onnx")
    if os.path.isfile(dst):
        return dst
    tok = AutoTokenizer.from_pretrained(model_dir)
    texts = calibration_texts()

    def each_alone():
        for t in texts:
            enc = tok(t, truncation=True, max_length=512, return_tensors="np")
            yield {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

    def windows(width=256):
        stream = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]]
        for s in range(0, len(stream) - (width - 2) + 1, width - 2):
            ids = np.array([[tok.cls_token_id] + stream[s:s + width - 2] + [tok.sep_token_id]], dtype=np.int64)
            yield {"input_ids": ids, "attention_mask": np.ones_like(ids)}

    class Reader(CalibrationDataReader):
        def __init__(self, items):
            self.items = iter(items)

        def get_next(self):
            return next(self.items, None)

    pre = os.path.join(folder, "model_qint8_static_pre.onnx")
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)  # ONNX Runtime's tools leave temporary files in the working directory
        try:
            if not os.path.isfile(pre):
                quant_pre_process(fp32, pre, skip_symbolic_shape=True)
            graph = onnx.load(pre)
            weights = {i.name for i in graph.graph.initializer}
            linears = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
            kept = [n for n in linears if n.endswith("/output/dense/MatMul")]  # FFN down + attention output projections
            nodes = linears if variant == "all" else [n for n in linears if n not in kept]
            pct, sym = variant.endswith("pct"), variant.endswith("sym")
            extra = {"MatMulConstBOnly": True, "ActivationSymmetric": sym, "WeightSymmetric": True}
            if pct:
                extra["CalibPercentile"] = 99.999
            t0 = time.perf_counter()
            quantize_static(pre, dst, Reader(windows() if pct else each_alone()), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8 if sym else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                            calibrate_method=CalibrationMethod.Percentile if pct else CalibrationMethod.MinMax,
                            extra_options=extra)
        finally:
            os.chdir(cwd)
    log(f"[{variant}] {len(nodes)} of {len(linears)} linear layers int8 -> {dst} ({time.perf_counter() - t0:.0f} s)")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="all,keep,keep-sym,keep-pct", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--no-speed", dest="speed", action="store_false", help="skip the timing on the small model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    import torch

    torch.set_num_threads(args.threads)
    from bgem3 import Encoder
    from bgem3.quant.fidelity import dense_fidelity, real_passages, real_queries, topk_agreement
    from bgem3.testing import minilm_path

    report: dict = {"threads": args.threads, "fidelity": {}, "speed": {}}
    docs, queries = real_passages(300), real_queries(50)
    ref = Encoder(minilm_path())
    d_ref, q_ref = ref.encode(docs, show_progress=False).dense, ref.encode(queries, show_progress=False).dense
    for v in variants:
        graph = make_static_graph(ref.model_dir, v)
        enc = Encoder(minilm_path(), backend="onnx", model_kwargs={"file_name": os.path.basename(graph)})
        d, q = enc.encode(docs, show_progress=False).dense, enc.encode(queries, show_progress=False).dense
        cos, top = dense_fidelity(d_ref, d), topk_agreement(q_ref @ d_ref.T, q @ d.T)
        fid = {"cosine_median": cos["cosine_median"], "cosine_min": cos["cosine_min"], "top10_agreement": top,
               "gates": bool(cos["cosine_median"] >= 0.999 and cos["cosine_min"] >= 0.995 and top >= 0.95)}
        report["fidelity"][v] = fid
        print(f"real MiniLM, ORT static {v}: {json.dumps(fid)}", flush=True)
    if args.speed:  # bulk, all three outputs, small model: static vs dynamic int8 vs fp32 (best of two calls each)
        from benchmarks._models import model_path
        from benchmarks._workloads import bulk_corpus, real_token_lengths
        from bgem3.backends.export import cached_graph

        path = model_path("small")
        cached_graph(path, "onnx", quantize="int8")
        systems = {"onnx fp32": {}, "onnx int8 dynamic": {"file_name": "onnx/model_qint8.onnx"}}
        for v in variants:
            systems[f"onnx int8 static {v}"] = {"file_name": os.path.basename(make_static_graph(path, v))}
        encs = {k: Encoder(path, backend="onnx", max_length=512, model_kwargs=kw or None) for k, kw in systems.items()}
        corpus = real_token_lengths(bulk_corpus(200), encs["onnx fp32"].tokenizer)
        for name, enc in encs.items():
            enc.encode(corpus[:16], sparse=True, colbert=True, show_progress=False)
            best = []
            for _ in range(2):
                t0 = time.perf_counter()
                enc.encode(corpus, sparse=True, colbert=True, show_progress=False)
                best.append(time.perf_counter() - t0)
            report["speed"][name] = {"bulk_s": min(best), "load": open("/proc/loadavg").read().split()[:3]}
            print(f"small model, 200 passages, {args.threads} threads, {name}: {min(best):.2f} s", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
