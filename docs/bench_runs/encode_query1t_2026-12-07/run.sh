#!/bin/bash
# It appends JSON lines; the files kept here were converted to JSON arrays (.json) afterwards, so `bgem3 index docs` (make demo) does not read them as .jsonl records.
# session 8 measurement (issue #26): single query, 1 and 2 threads, each system in its own process in turn;
# then bulk (200 real passages, all three outputs) exact now vs exact before, 2 threads. Under /work/helpers/block.
# usage: run.sh BASE_WORKTREE   (a checkout of the code before this change)
D=$(cd "$(dirname "$0")" && pwd); BASE=$1
log() { echo "[$(date -u +%H:%M:%S)] $* | load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a $D/run.log; }
log "start; flags: $(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
log "small, 1 thread, 5 x (exact, ORT fp32, exact before)"; $D/ab.sh $D/query_1thread.json 1 5 $BASE >/dev/null
log "small, 2 threads, 3 x (exact, ORT fp32, exact before)"; $D/ab.sh $D/query_2threads.json 2 3 $BASE >/dev/null
WT=$(cd $D/../../.. && pwd); PY=/work/main/.venv/bin/python; Q=docs/bench_runs/encode_query1t_2026-12-07/qbench.py
for i in 1 2; do
  log "bulk 200, 2 threads, round $i"
  (cd $WT && BULK=200 PYTHONPATH=$WT timeout 120 $PY $Q exact 2 /work/bench_models/small 1 2>/dev/null) >> $D/bulk_2threads.json
  (cd $BASE && BULK=200 PYTHONPATH=$BASE timeout 120 $PY $Q exact 2 /work/bench_models/small 1 2>/dev/null | sed 's/"system": "exact"/"system": "exact-before"/') >> $D/bulk_2threads.json
done
log done
