#!/bin/bash
# The reranker A/Bs of 2026-12-07 (docs/benchmarks.md, "CPU defaults: 4096-token batches and pre-packed weights").
# Run under the exclusive bench lock; BENCH_MODELS: where reranker-small / reranker-full are built (once).
# Four lock sessions: rerank_run1.log (first four runs), rerank_run2.log (next three), rerank_run3.log, rerank_run4.log.
cd "$(dirname "$0")"
export PYTHONPATH="$(cd ../../.. && pwd)" TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python}
grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '; echo; uptime; date -u
$PY rerank_ab.py 2 small 10 50
$PY rerank_ab.py 1 small 10 50
$PY rerank_ab.py 2 small 20 10
$PY rerank_ab.py 2 full 4 10 before,after      # (its JSON was overwritten by a later run: figures in rerank_run1.log)
WORDS=20-60 $PY rerank_ab.py 2 small 30 10     # short snippets
WORDS=20-60 $PY rerank_ab.py 1 small 30 10
$PY rerank_ab.py 2 full 4 10 budget4096,after   # pre-packing alone at the bge-reranker-v2-m3 shape
$PY rerank_ab.py 2 full 6 10 before,budget4096  # the token budget alone at that shape
# rerank_run4.log: after rebasing on main (per-text CPU attention, 65f2c7f)
$PY rerank_ab.py 2 small 10 50 before,budget4096
$PY rerank_ab.py 1 small 10 50 before,budget4096
uptime; date -u
