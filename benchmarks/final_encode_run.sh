#!/usr/bin/env bash
# The whole issue-26 encode speed run in one command (~20-25 min on a quiet 2-core machine):
#
#   benchmarks/final_encode_run.sh [OUT_DIR]          # default docs/bench_runs/encode_final_<date>
#
# 0. untimed: builds the benchmark models (.bench_models/, the full one ~2.3 GB once) and their
#    ONNX / OpenVINO exports (bgem3's export cache), so no run times an export;
# 1. small model, 2 threads: the one-minute GEMM microbenchmark (fp32 MKL + oneDNN, bf16, int8), then
#    bulk (BULK_N real passages in one call, all three outputs, every system bracketed by the exact
#    path) and single-query p50/p99 (all three outputs) for every system, FlagEmbedding included with
#    its executed FLOPs; the fast paths scored on the real MiniLM (--backend-fidelity);
#    (bgem3-openvino-int8-1req: the int8 graph's bulk as one request of 16384-token batches, the A/B of the
#    OpenVINO streams);
# 2. small model, 1 thread: exact vs ONNX Runtime fp32 (and the exact path's MKL linears: before/after);
# 3. full BGE-M3 shape (24 layers, hidden 1024), 2 threads, FULL_N passages, the main systems.
#
# Every JSON row carries threads, load average and CPU flags; run.log has every line printed.
# Knobs (environment): PYTHON, BULK_N (200), QUERY_N (40), FULL_N (50), GEMM_S (60), FULL (1: run step 3),
# FIDELITY (1: --backend-fidelity), MODELS_DIR, SYSTEMS_2T / SYSTEMS_1T / SYSTEMS_FULL (comma lists).
# Take it under the exclusive benchmark lock on a shared machine (e.g. `flock /tmp/bench.lock ...`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/bench_runs/encode_final_$(date -u +%Y-%m-%d)}
PY=${PYTHON:-python}
BULK_N=${BULK_N:-200}
QUERY_N=${QUERY_N:-40}
FULL_N=${FULL_N:-50}
GEMM_S=${GEMM_S:-60}
FULL=${FULL:-1}
FIDELITY=${FIDELITY:-1}
MODELS_DIR=${MODELS_DIR:-}
SYSTEMS_2T=${SYSTEMS_2T:-bgem3-fp32,bgem3-fp32-unpacked,bgem3-onnx,bgem3-openvino,bgem3-openvino-bf16,bgem3-openvino-int8,bgem3-bf16,bgem3-int8,bgem3-onnx-int8,flag}
SYSTEMS_1T=${SYSTEMS_1T:-bgem3-fp32,bgem3-fp32-unpacked,bgem3-onnx,bgem3-openvino-int8,bgem3-onnx-int8}
SYSTEMS_FULL=${SYSTEMS_FULL:-bgem3-fp32,bgem3-onnx,bgem3-openvino-bf16,bgem3-openvino-int8,bgem3-int8}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }
run() { log "$*"; "$@" 2>&1 | tee -a "$OUT/run.log"; }
md=()
[ -n "$MODELS_DIR" ] && md=(--models-dir "$MODELS_DIR")

log "conditions: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), flags: $(grep -m1 -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16\|amx_bf16\|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
models=small
[ "$FULL" = 1 ] && models="small full"
run "$PY" - "$MODELS_DIR" $models <<'EOF'
import sys, time
from benchmarks._models import model_path
from bgem3.backends.export import cached_graph
from bgem3.testing import minilm_path
for name in sys.argv[2:]:
    t0 = time.perf_counter()
    path = model_path(name, sys.argv[1] or None)
    for backend, q in (("onnx", None), ("openvino", None), ("onnx", "int8"), ("openvino", "int8")):
        if name == "full" and backend == "onnx" and q:
            continue
        cached_graph(path, backend, quantize=q)
    print(f"[prepare] {name}: {path} and its graphs ready in {time.perf_counter() - t0:.0f} s", flush=True)
for backend, q in (("onnx", None), ("openvino", None), ("onnx", "int8"), ("openvino", "int8")):  # the real MiniLM (--backend-fidelity)
    cached_graph(minilm_path(), backend, quantize=q)
EOF

fid=()
[ "$FIDELITY" = 1 ] && fid=(--backend-fidelity)
run "$PY" benchmarks/encode.py --model small "${md[@]}" --threads 2 --workloads bulk,query --bulk-n "$BULK_N" \
    --bulk-scenarios all --query-n "$QUERY_N" --gemm-seconds "$GEMM_S" --systems "$SYSTEMS_2T" "${fid[@]}" \
    --json "$OUT/small_2threads.json"
run "$PY" benchmarks/encode.py --model small "${md[@]}" --threads 1 --workloads bulk,query --bulk-n "$BULK_N" \
    --bulk-scenarios all --query-n "$QUERY_N" --gemm-seconds "$(( GEMM_S / 3 ))" --systems "$SYSTEMS_1T" \
    --json "$OUT/small_1thread.json"
if [ "$FULL" = 1 ]; then
    run "$PY" benchmarks/encode.py --model full "${md[@]}" --threads 2 --workloads bulk,query --bulk-n "$FULL_N" \
        --bulk-scenarios all --query-n 20 --gemm-seconds "$(( GEMM_S / 3 ))" --systems "$SYSTEMS_FULL" \
        --json "$OUT/full_2threads.json"
fi
log "done: $OUT (small_2threads.json, small_1thread.json$([ "$FULL" = 1 ] && echo ', full_2threads.json'), run.log)"
