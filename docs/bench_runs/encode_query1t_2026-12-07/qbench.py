"""One system's single-query latency in its own process (issue #26, session 8): 40 real short queries,
one per call, all three outputs, after 10 warm-up calls; prints one JSON line.

usage: qbench.py exact|onnx THREADS [MODEL_DIR] [ROUNDS]
With BULK=N in the environment: instead, one call over N real passages (bulk_corpus, all three outputs),
timed ROUNDS times after one warm-up call; the JSON then has the wall seconds of each call.
"""
import json, os, sys, time
import numpy as np, torch

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.abspath(os.path.join(here, "..", "..", ".."))
sys.path[:0] = [root, os.path.join(root, "benchmarks")]
system, threads = sys.argv[1], int(sys.argv[2])
model = sys.argv[3] if len(sys.argv) > 3 else "/work/bench_models/small"
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 3
torch.set_num_threads(threads)
from bgem3 import Encoder  # noqa: E402
from _workloads import bulk_corpus, real_queries  # noqa: E402

qs = real_queries(50)[:40]
enc = Encoder(model, device="cpu", backend="torch" if system == "exact" else system)
kw = dict(dense=True, sparse=True, colbert=True, show_progress=False)
if os.environ.get("BULK"):
    docs = bulk_corpus(int(os.environ["BULK"]))
    enc.encode(docs[:16], **kw)
    secs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        enc.encode(docs, **kw)
        secs.append(round(time.perf_counter() - t0, 3))
    print(json.dumps({"system": system, "threads": threads, "model": os.path.basename(model), "bulk_texts": len(docs),
                      "wall_s": secs, "load": open("/proc/loadavg").read().split()[:3], "torch": torch.__version__}),
          flush=True)
    sys.exit(0)
for q in qs[:10]:
    enc.encode([q], **kw)
lat = []
for _ in range(rounds):
    for q in qs:
        t0 = time.perf_counter()
        enc.encode([q], **kw)
        lat.append(1000 * (time.perf_counter() - t0))
flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()[2:]}
               & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"})
print(json.dumps({"system": system, "threads": threads, "model": os.path.basename(model), "calls": len(lat),
                  "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
                  "mean_ms": round(float(np.mean(lat)), 3), "load": open("/proc/loadavg").read().split()[:3],
                  "flags": flags, "torch": torch.__version__, "backend": enc.backend_name,
                  "prepacked_bytes": getattr(enc, "prepacked_bytes", 0)}), flush=True)
