import sys, time, numpy as np, torch, os
sys.path.insert(0, "/work/wt-26c/benchmarks")
torch.set_num_threads(int(sys.argv[1]))
model = sys.argv[2] if len(sys.argv) > 2 else "/work/bench_models/small"
import bgem3._cpu_linear as cl
from bgem3 import Encoder
from _workloads import real_queries
qs = real_queries(50)[:40]
encs = {}
encs["packed"] = Encoder(model, device="cpu")
cl.PREPACK = False
encs["unpacked"] = Encoder(model, device="cpu")
cl.PREPACK = None
if "noort" not in sys.argv:
    encs["ort"] = Encoder(model, device="cpu", backend="onnx")
print({k: v.prepacked_bytes if v.backend_name == "torch" else v.backend_name for k, v in encs.items()})
lat = {k: [] for k in encs}
for k, e in encs.items():
    for q in qs[:5]: e.encode([q], dense=True, sparse=True, colbert=True, show_progress=False)
for rep in range(2):
    for q in qs:
        for k, e in encs.items():
            t0 = time.perf_counter(); e.encode([q], dense=True, sparse=True, colbert=True, show_progress=False)
            lat[k].append(1000 * (time.perf_counter() - t0))
print("threads", sys.argv[1], "load", open("/proc/loadavg").read().split()[:3])
for k, v in lat.items():
    print(f"{k:10s} p50 {np.percentile(v, 50):7.2f}  p99 {np.percentile(v, 99):7.2f} ms")
