#!/usr/bin/env bash
# Paired decode figures for kernel variants, on a machine with an NVIDIA GPU:
#
#   scripts/gpu-ab.sh [--bin DIR/cllm] [--base OLD/cllm] [--rounds N] SHAPE ['LABEL|VAR=VALUE ...']...
#
# Makes the SHAPE's synthetic bf16 model and its int8 all-linear container (once, in
# $TMPDIR/cllm-gpu-ab), then runs `cllm bench gpu` (median of 3) on both, N alternating rounds
# (default 3) of: the --base binary if given, then --bin under each variant's environment. A
# variant sets launch choices (CLLM_GEMV_PIPE=1|2|3, CLLM_ATT_PREFETCH=1|2) or compiles the
# kernels with extra defines (CLLM_NVRTC_DEFINES=-DNAME,-DOTHER=2, cached under their own key;
# every variant's kernels are compiled first, in parallel). Prints decode tokens/s per line:
# bf16, int8.
set -euo pipefail
cd "$(dirname "$0")/.."
cllm="target/release/cllm"
base=""
rounds=3
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) cllm="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || { echo "usage: $0 [--bin B] [--base B0] [--rounds N] SHAPE [VARIANT...]" >&2; exit 2; }
shape="$1"
shift
variants=("$@")
[[ ${#variants[@]} -gt 0 ]] || variants=("default|")
source scripts/cuda-env.sh
work="${TMPDIR:-/tmp}/cllm-gpu-ab"
mkdir -p "$work"
[[ -d "$work/$shape" ]] || "$cllm" synth --shape "$shape" -o "$work/$shape" >/dev/null
[[ -f "$work/$shape-int8.cllm" ]] ||
    "$cllm" pack "$work/$shape" -o "$work/$shape-int8.cllm" --policy all-linear >/dev/null
models=("$work/$shape" "$work/$shape-int8.cllm")
warm=(bench gpu "$work/$shape" --reps 1 --new-tokens 2 --probe-gib 1)
[[ -z "$base" ]] || "$base" "${warm[@]}" >/dev/null 2>&1 &
for v in "${variants[@]}"; do
    read -ra assign <<<"${v#*|}"
    env "${assign[@]}" "$cllm" "${warm[@]}" >/dev/null 2>&1 &
done
wait
decode() {
    "$@" bench gpu "${models[@]}" --reps 3 --probe-gib 2 --json | python3 -c '
import json, sys
print(" ".join("%.1f" % json.loads(l)["decode_tokens_per_second"] for l in sys.stdin))'
}
for _ in $(seq "$rounds"); do
    [[ -z "$base" ]] || echo "base: $(decode "$base")"
    for v in "${variants[@]}"; do
        read -ra assign <<<"${v#*|}"
        echo "${v%%|*}: $(decode env "${assign[@]}" "$cllm")"
    done
done
