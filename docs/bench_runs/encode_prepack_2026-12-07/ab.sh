#!/bin/bash
# session 8 A/B: exact packed vs exact not pre-packed vs ONNX Runtime fp32
cd /work/wt-26c
export PYTHONPATH=/work/wt-26c
PY=/work/main/.venv/bin/python
OUT=docs/bench_runs/encode_prepack_2026-12-07
log() { echo "[$(date -u +%H:%M:%S)] $* | load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a $OUT/run.log; }
log "start; flags: $(grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_tile\|amx_bf16\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
SYS=bgem3-fp32,bgem3-fp32-unpacked,bgem3-onnx
for T in 2 1; do
  log "small, $T threads"
  timeout 150 $PY benchmarks/encode.py --model small --models-dir /work/bench_models --threads $T --workloads bulk,query \
     --bulk-n 200 --bulk-scenarios all --query-n 40 --systems $SYS --json $OUT/small_${T}thread.json 2>&1 | grep -v Loading | tee -a $OUT/run.log
done
log "full shape, 2 threads, query only"
timeout 120 $PY benchmarks/encode.py --model full --models-dir /work/bench_models --threads 2 --workloads query \
   --bulk-n 8 --query-n 20 --systems $SYS --json $OUT/full_2threads_query.json 2>&1 | grep -v Loading | tee -a $OUT/run.log
for M in off on; do
  log "full shape RSS, prepack $M"
  timeout 60 $PY docs/bench_runs/encode_prepack_2026-12-07/rss_probe.py $M /work/bench_models/full 2>&1 | grep -v Loading | tail -1 | tee -a $OUT/full_rss_prepack_$M.json | tee -a $OUT/run.log
done
log done
timeout 120 /work/main/.venv/bin/python benchmarks/encode.py --model small --models-dir /work/bench_models --threads 1 --workloads query \
   --bulk-n 8 --query-n 40 --systems bgem3-fp32,bgem3-fp32-unpacked,bgem3-onnx --json $OUT/small_1thread_query_repeat.json 2>&1 | grep -v Loading | tee -a $OUT/run.log
echo "[$(date -u +%H:%M:%S)] interleaved 1 and 2 threads (40 queries x 2 rounds, systems in turn per query) | load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a $OUT/run.log
for T in 1 2; do timeout 90 /work/main/.venv/bin/python $OUT/interleaved_query.py $T 2>&1 | grep -v Loading | tee -a $OUT/run.log; done
