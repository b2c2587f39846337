#!/usr/bin/env bash
# The fourteenth session's experiments (BENCHMARKS.md), on a machine with an NVIDIA Hopper GPU and
# nvcc: a persistent decode step streaming its weights through shared memory (stream-step.cu) and
# the latency of a dependent load while HBM streams (l2-latency.cu). Not part of the product or
# its tests.
#
#   scripts/experiments/run.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
out="${1:-/tmp/cllm-experiments}"
mkdir -p "$out"
for nc in 6 8; do
    nvcc -O3 -arch=sm_90a -std=c++17 -DNC=$nc -o "$out/stream-step-$nc" stream-step.cu
done
nvcc -O3 -arch=sm_90a -o "$out/l2-latency" l2-latency.cu
"$out/l2-latency"
# TinyLlama: the counter barrier with all and with 2 slots in flight per SM, without the barrier's
# wait, without the products, with neither (the ring's streaming alone), and the tagged
# activations instead of the counter.
for v in "0 99" "0 2" "1 99" "2 99" "3 99" "4 99" "4 2"; do
    timeout 60 "$out/stream-step-8" tiny 16 100 $v || echo "stream-step tiny $v: exit $?"
done
# Llama-7B (24 KB slots, 7 of them, so 6 consumer warps): the same variants but the limits.
for v in "0 99" "1 99" "2 99" "3 99" "4 99"; do
    timeout 60 "$out/stream-step-6" 7b 24 30 $v || echo "stream-step 7b $v: exit $?"
done
