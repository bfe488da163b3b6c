"""Usage: python rerank_ab.py THREADS small|full QUERIES CANDIDATES [systems,...]

Reranker CPU A/B with the shipped code: before (no pre-pack, 16384) / budget 4096 only / pre-pack only / after
(defaults: pre-pack + 4096). Interleaved blocks of 2 queries, order rotated; one process; scores compared.

The pre-packed systems ("prepack", "after") ran on an unmerged experiment whose Reranker packed its
layers when bgem3._cpu_linear.PREPACK allowed; that was not adopted (no gain), so on later code they equal
"before" / "budget4096" (prepacked MB 0)."""
import json, os, sys, time
import numpy as np, torch
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
sys.path.insert(0, ROOT)
MODELS = os.environ.get("BENCH_MODELS", os.path.join(ROOT, ".bench_models"))
OUT = os.environ.get("OUT", os.path.dirname(os.path.abspath(__file__)))
from benchmarks.rerank import model_path, workload, load, cpu_conditions
import bgem3._cpu_linear as cl
from bgem3 import Reranker
threads, size, nq, ncand = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
only = sys.argv[5].split(",") if len(sys.argv) > 5 else None
torch.set_num_threads(threads)
path = model_path(size, MODELS)
cfgs = {"before": (False, 16384), "budget4096": (False, None), "prepack": (None, 16384), "after": (None, None)}
if only: cfgs = {k: v for k, v in cfgs.items() if k in only}
rrs = {}
for name, (pp, budget) in cfgs.items():
    cl.PREPACK = pp
    kw = {} if budget is None else {"max_tokens_per_batch": budget}
    rrs[name] = Reranker(path, device="cpu", dtype="fp32", max_length=512, **kw)
    print(name, "prepacked MB", round(getattr(rrs[name], "prepacked_bytes", 0) / 2**20, 1), "budget", rrs[name].max_tokens_per_batch)
cl.PREPACK = None
words = os.environ.get("WORDS")  # e.g. "20-60": short snippets instead of the 80-400-word passages
if words:
    import random
    from benchmarks._workloads import bulk_corpus, real_token_lengths
    from bgem3.quant.fidelity import real_queries
    lo, hi = (int(x) for x in words.split("-"))
    pool = real_token_lengths(bulk_corpus(600, seed=0, min_words=lo, max_words=hi), rrs[next(iter(rrs))].tokenizer)
    queries, rng = real_queries(nq), random.Random(0)
    cands = [rng.sample(pool, ncand) for _ in queries]
else:
    queries, cands = workload(nq, ncand, 600, rrs[next(iter(rrs))].tokenizer)
base = next(iter(rrs))  # the baseline: the first system named
lens = [len(x) for q, cs in zip(queries, cands) for x in rrs[base].tokenize_pairs([(q, c) for c in cs])[0]]
cond = {**cpu_conditions(), "passage_words": words or "80-400", "threads": torch.get_num_threads(), "torch": torch.__version__, "model": f"reranker-{size}",
        "queries": nq, "candidates": ncand, "pair_tokens_min_median_max": [min(lens), float(np.median(lens)), max(lens)],
        "load_before": load()}
print(cond, flush=True)
names = list(rrs)
ref = None
fid = {}
for n in names:  # warm-up + fidelity against 'before'
    s = [rrs[n].compute_score([(q, c) for c in cs], show_progress=False) for q, cs in zip(queries[:2], cands[:2])]
    ref = ref or s
    fid[n] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(ref, s))
el = {n: 0.0 for n in names}; blocks = []
for b, a in enumerate(range(0, nq, 2)):
    order = names[b % len(names):] + names[:b % len(names)]
    row = {}
    for n in order:
        t0 = time.perf_counter()
        for q, cs in zip(queries[a:a + 2], cands[a:a + 2]):
            rrs[n].compute_score([(q, c) for c in cs], show_progress=False)
        row[n] = time.perf_counter() - t0; el[n] += row[n]
    blocks.append(row)
cond["load_after"] = load()
res = {}
for n in names:
    r = [row[base] / row[n] for row in blocks]
    res[n] = {"ms_per_query": round(1000 * el[n] / nq, 1), "pairs_per_s": round(nq * ncand / el[n], 2),
              f"x_vs_{base}": round(el[base] / el[n], 3),
              "blocks_min_median_max": [round(min(r), 2), round(float(np.median(r)), 2), round(max(r), 2)],
              f"max_abs_diff_vs_{base}": fid[n]}
    print(n, res[n])
print("load after", cond["load_after"])
json.dump({"conditions": cond, "results": res, "blocks": blocks},
          open(os.path.join(OUT, f"rerank_{size}_q{nq}x{ncand}_t{threads}{'_w' + words if words else ''}{'_' + '-vs-'.join(only) if only else ''}.json"), "w"), indent=1)
