#!/usr/bin/env bash
# Hardware counters of single GEMV launches, on a machine with an NVIDIA GPU and Nsight Compute:
#
#   scripts/gpu-ncu.sh [--bin DIR/cllm] [--out DIR] [--skip N] [--count N] SHAPE FORM...
#
# FORM: bf16 (the synthetic folder), int8 (int8g all-linear), int8-row, int4 (all-linear).
# Makes the SHAPE's synthetic model and the forms' containers (once, in $TMPDIR/cllm-gpu-ncu),
# then profiles one-token GEMV launches (the float and int4 kernels `gemv_s1*` / `gemv_t1*`, the
# tensor-core int8 ones `gemv_m1` / `gemv_g1`) of a one-token prompt with `ncu` (`--clock-control
# none`: the clocks as found): after skipping N (default 2: layer 0's q/k/v and o_proj),
# COUNT launches (default 1: layer 0's gate/up). Each launch is replayed alone with the caches
# flushed, so without the programmatic-launch overlap of the decode graph. Writes the full
# report to OUT/ncu-SHAPE-FORM.txt (default .) and prints its headline figures: DRAM
# throughput, issue, the stall reasons per issued instruction, the instructions executed; the
# report also holds the launch's occupancy.
# A variant's environment passes through (CLLM_GEMV_KIND, CLLM_GEMV_PIPE, CLLM_NVRTC_DEFINES).
set -euo pipefail
cd "$(dirname "$0")/.."
cllm="target/release/cllm"
out="."
skip=2
count=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) cllm="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --skip) skip="$2"; shift 2 ;;
        --count) count="$2"; shift 2 ;;
        *) break ;;
    esac
done
[[ $# -gt 1 ]] || { echo "usage: $0 [--bin B] [--out DIR] [--skip N] [--count N] SHAPE FORM..." >&2; exit 2; }
shape="$1"
shift
source scripts/cuda-env.sh
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
[[ -n "$ncu" ]] || { echo "ncu (Nsight Compute) not found" >&2; exit 1; }
work="${TMPDIR:-/tmp}/cllm-gpu-ncu"
mkdir -p "$work" "$out"
[[ -d "$work/$shape" ]] || "$cllm" synth --shape "$shape" -o "$work/$shape" >/dev/null
for form in "$@"; do
    model="$work/$shape-$form.cllm"
    case "$form" in
        bf16) model="$work/$shape" ;;
        int8) pack=(--policy all-linear) ;;
        int8-row) pack=(--policy all-linear --quant int8-row) ;;
        int4) pack=(--policy all-linear --quant int4) ;;
        *) echo "unknown form $form (bf16, int8, int8-row, int4)" >&2; exit 2 ;;
    esac
    [[ -e "$model" ]] || "$cllm" pack "$work/$shape" -o "$model" --quiet "${pack[@]}"
    report="$out/ncu-$shape-$form.txt"
    "$ncu" --clock-control none -k "regex:gemv_[stmg]1" -s "$skip" -c "$count" \
        --section SpeedOfLight --section SchedulerStats --section WarpStateStats \
        --section InstructionStats --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --print-details all \
        --log-file "$report" \
        "$cllm" bench gpu "$model" --reps 1 --prompt-tokens 1 --new-tokens 1 --probe-gib 1 >/dev/null
    echo "== $shape $form ($report)"
    grep -E "^  gemv_[stmg]1|DRAM Throughput|Duration|No Eligible|Issued Warp Per Scheduler|Cycles Per Issued|Stall (No Instruction|Long Scoreboard|Wait|Short Scoreboard)|Local Memory Spilling Requests  |^    Executed Instructions " "$report"
done
