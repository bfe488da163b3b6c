"""The int8 OpenVINO graph with and without regrouped feed-forward blocks (issue 26), for the record.

``dtype="int8"`` on OpenVINO ships the ``groups`` variant (bgem3.quant.ffn_channel_groups); this script
makes each variant with the same NNCF recipe, scores it on the fidelity gates (real all-MiniLM-L6-v2, 300
real passages, 50 real queries, vs the exact torch path) and times it (small benchmark model, bulk of 200
real-length passages, all three outputs, 2 threads, the variants and the exact path interleaved)::

    flock /tmp/bench.lock python benchmarks/int8_ffn_groups.py
    python benchmarks/int8_ffn_groups.py --variants whole,groups --no-speed

Variants (what stays out of int8 besides nothing else; NNCF ``MIXED``, SmoothQuant, calibrated on the
built-in texts):

* ``whole``: each block's down-projection and attention output projection whole (the recipe before);
* ``groups``: the down-projection's 1/24 outlier columns and the attention output projection; the other
  channels int8 in 4 groups of similar range (what ships);
* ``groups-o-int8``: the same with the attention output projection in int8 too;
* ``one-group``: the outlier columns kept, the other channels int8 as one group.

The graphs are written beside bgem3's fp32 export in its cache (``openvino/openvino_model_qint8_ffn_<variant>.xml``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

#: variant -> (outlier share, groups, attention output projection kept out of int8); None: no regrouping
VARIANTS = {"whole": None, "groups": (1 / 24, 4, True), "groups-o-int8": (1 / 24, 4, False),
            "one-group": (1 / 24, 1, True)}


def make_graph(model_dir: str, variant: str, log=print) -> str:
    """The ``variant`` int8 graph of ``model_dir`` (made once into bgem3's export cache); its path. Made by
    the product's own :func:`~bgem3.quant.openvino_int8.quantize_openvino_graph` (same tokenising, NNCF
    call and calibration texts); only the regrouping and, for ``groups-o-int8``, what stays out differ."""
    import torch
    from transformers import AutoTokenizer

    import bgem3.quant.openvino_int8 as ov_int8
    from bgem3.backends.export import _convert_openvino, _load_fp32, cached_graph, export_dir_for
    from bgem3.quant.ffn_channel_groups import regroup_ffns

    fp32 = cached_graph(model_dir, "openvino")
    dst = os.path.join(export_dir_for(model_dir), "openvino", f"openvino_model_qint8_ffn_{variant}.xml")
    if os.path.isfile(dst):
        return dst
    t0 = time.perf_counter()
    spec = VARIANTS[variant]

    def regrouped(items):
        share, groups, _ = spec
        model = _load_fp32(model_dir, False)
        blocks = regroup_ffns(model, ({k: torch.from_numpy(v) for k, v in i.items()} for i in items),
                              outlier_share=share, groups=groups)
        return _convert_openvino(model, model_dir), blocks

    kept = ov_int8.kept_out_of_int8
    if spec is not None and not spec[2]:  # the attention output projection in int8 too
        ov_int8.kept_out_of_int8 = lambda m: [k for k in kept(m) if "attention" not in k]
    try:
        report = ov_int8.quantize_openvino_graph(fp32, dst, AutoTokenizer.from_pretrained(model_dir),
                                                 texts=ov_int8.calibration_texts(), max_length=512,
                                                 progress=log, regrouped=None if spec is None else regrouped)
    finally:
        ov_int8.kept_out_of_int8 = kept
    log(f"[{variant}] {len(report['kept_out_of_int8'])} MatMuls kept out of int8 -> {dst} "
        f"({time.perf_counter() - t0:.0f} s)")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-fidelity", dest="fidelity", action="store_false")
    ap.add_argument("--no-speed", dest="speed", action="store_false")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the report here")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    import torch

    from benchmarks._workloads import figure_conditions
    from bgem3 import Encoder
    from bgem3.quant.fidelity import dense_fidelity, real_passages, real_queries, topk_agreement
    from bgem3.testing import minilm_path

    torch.set_num_threads(2)
    report = {"conditions": figure_conditions(), "fidelity": {}, "speed": {}}
    if args.fidelity:
        fp = Encoder(minilm_path(), device="cpu")
        for offset in (0, 700):
            docs, queries = real_passages(300, offset=offset), real_queries(50)
            d_ref, q_ref = fp.encode(docs, show_progress=False).dense, fp.encode(queries, show_progress=False).dense
            for v in variants:
                graph = make_graph(minilm_path(), v)
                enc = Encoder(minilm_path(), device="cpu", backend="openvino", dtype="int8",
                              model_kwargs={"file_name": "openvino/" + os.path.basename(graph)})
                d, q = enc.encode(docs, show_progress=False).dense, enc.encode(queries, show_progress=False).dense
                cos = dense_fidelity(d_ref, d)
                top = topk_agreement(q_ref @ d_ref.T, q @ d.T)
                row = {"median": cos["cosine_median"], "min": cos["cosine_min"], "top10": top,
                       "gates": bool(cos["cosine_median"] >= 0.999 and cos["cosine_min"] >= 0.995 and top >= 0.95)}
                report["fidelity"][f"{v}@{offset}"] = row
                print(f"fidelity {v} passages {offset}-{offset + 299}: {json.dumps(row)}", flush=True)
    if args.speed:
        from benchmarks._models import model_path
        from benchmarks._workloads import bulk_corpus, real_token_lengths

        path = model_path("small", None)
        encs = {"exact": Encoder(path, device="cpu", max_length=512)}
        for v in variants:
            encs[v] = Encoder(path, device="cpu", max_length=512, backend="openvino", dtype="int8",
                              model_kwargs={"file_name": "openvino/" + os.path.basename(make_graph(path, v))})
        texts = real_token_lengths(bulk_corpus(200), encs["exact"].tokenizer)
        for e in encs.values():
            e.encode(texts[:40], sparse=True, colbert=True, show_progress=False)
        times = {k: [] for k in encs}
        for r in range(args.rounds):
            for k, e in encs.items():
                t0 = time.perf_counter()
                e.encode(texts, sparse=True, colbert=True, show_progress=False)
                times[k].append(time.perf_counter() - t0)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items())
                  + f"; load {os.getloadavg()[0]:.2f}", flush=True)
        exact = float(np.median(times["exact"]))
        for k, v in times.items():
            report["speed"][k] = {"bulk_s": v, "median_s": float(np.median(v)), "vs_exact": exact / float(np.median(v))}
            print(f"speed {k}: median {np.median(v):.3f} s, {exact / np.median(v):.2f}x exact", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
