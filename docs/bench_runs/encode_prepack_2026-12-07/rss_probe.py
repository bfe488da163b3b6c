import sys, json, time, resource, torch
torch.set_num_threads(2)
import bgem3._cpu_linear as cl
cl.PREPACK = {"on": None, "off": False}[sys.argv[1]]
from bgem3 import Encoder
def rss():
    d = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":"); d[k] = int(v.split()[0]) / 1024
    return d
r0 = rss()
e = Encoder(sys.argv[2], device="cpu")
r1 = rss()
for _ in range(3): e.encode(["what is the capital of france"], dense=True, sparse=True, colbert=True, show_progress=False)
lat = []
for q in ["how do I install bgem3 on windows", "hybrid retrieval dense sparse colbert fusion", "what is the capital of france"] * 4:
    t0 = time.perf_counter(); e.encode([q], dense=True, sparse=True, colbert=True, show_progress=False); lat.append(1000*(time.perf_counter()-t0))
r2 = rss()
import numpy as np
print(json.dumps({"prepack": sys.argv[1], "prepacked_mb": e.prepacked_bytes / 2**20, "rss_before_load_mb": r0["VmRSS"],
                  "rss_after_load_mb": r1["VmRSS"], "rss_after_queries_mb": r2["VmRSS"], "peak_rss_mb": r2["VmHWM"],
                  "query_p50_ms": float(np.median(lat)), "load": open("/proc/loadavg").read().split()[:3]}))
