"""Usage: OMP_NUM_THREADS=2 python serve_ab.py SECONDS_PER_CELL

A/B: bgem3 serve --max-batch-tokens 16384 vs 4096 on CPU; servers one at a time, order A B B A."""
import asyncio, json, os, sys, time
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)
MODELS = os.environ.get("BENCH_MODELS", os.path.join(ROOT, ".bench_models"))
from benchmarks.serve import start_bgem3, drive, queries
from benchmarks._workloads import bulk_corpus, real_token_lengths
from transformers import AutoTokenizer
from bgem3.testing import minilm_path
secs = float(sys.argv[1])
models = {"m3small": os.path.join(MODELS, "small"), "minilm": minilm_path()}
if os.environ.get("SERVE_MODELS"):  # e.g. "m3small": a subset
    models = {k: v for k, v in models.items() if k in os.environ["SERVE_MODELS"].split(",")}
out = {"load_start": os.getloadavg()}
for mname, mpath in models.items():
    tok = AutoTokenizer.from_pretrained(mpath)
    ps = real_token_lengths(bulk_corpus(800, seed=3), tok)
    qs = queries(20000)
    scen = {"bulk8x8c": (8, lambda n: [ps[(n * 8 + j) % len(ps)] for j in range(8)]),
            "query32c": (32, lambda n: [qs[n % len(qs)]])}
    for budget in ("16384", "4096", "4096", "16384"):
        p = start_bgem3(mpath, "--max-batch-tokens", budget, "--max-length", "512")
        try:
            for sname, (clients, make) in scen.items():
                asyncio.run(drive(p.url, "bgem3", clients, 2, make))  # warm
                r = asyncio.run(drive(p.url, "bgem3", clients, secs, make))
                r["load"] = os.getloadavg()
                out.setdefault(f"{mname}/{sname}/{budget}", []).append(r)
                print(mname, sname, budget, r, flush=True)
        finally:
            p.stop()
json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.environ.get("SERVE_OUT", "serve_ab.json")),
                    "w"), indent=1)
