#!/bin/bash
# session 8: single query, each system in its own process, in turn (exact, ONNX Runtime, [exact before], ...)
# usage: ab.sh OUT.jsonl (JSON lines; stored here as JSON arrays, .json) THREADS PAIRS [BASE_WORKTREE]   (BASE_WORKTREE: the code before, run as system "exact-before")
OUT=$1; T=${2:-1}; PAIRS=${3:-4}; BASE=$4
WT=$(cd "$(dirname "$0")/../../.." && pwd)
PY=/work/main/.venv/bin/python
Q=docs/bench_runs/encode_query1t_2026-12-07/qbench.py
for i in $(seq 1 $PAIRS); do
  (cd $WT && PYTHONPATH=$WT timeout 60 $PY $Q exact $T 2>/dev/null) | tee -a $OUT
  (cd $WT && PYTHONPATH=$WT timeout 60 $PY $Q onnx $T 2>/dev/null) | tee -a $OUT
  if [ -n "$BASE" ]; then
    (cd $BASE && PYTHONPATH=$BASE timeout 60 $PY $Q exact $T 2>/dev/null | sed 's/"system": "exact"/"system": "exact-before"/') | tee -a $OUT
  fi
done
