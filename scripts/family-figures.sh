#!/usr/bin/env bash
# The README's per-family figures: each family's synthetic fixture (and the real checkpoints in
# the cache, where present) packed with int8 `all-linear` and run against its source by
# `cllm verify --run` on the reference prompts (scripts/reference/prompts.json) plus the
# built-in set. Prints one JSON line per model: mean KLD, top-1 agreement, greedy divergence.
#
#   scripts/family-figures.sh [--device cpu|cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu
if [[ "${1:-}" == "--device" ]]; then device="$2"; fi
cllm=${CLLM:-target/release/cllm}
[[ -x "$cllm" ]] || cargo build --release -q -p cllm --bin cllm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -c 'import json,sys; [print(p["text"].replace("\n", " ")) for p in json.load(open(sys.argv[1]))["prompts"]]' \
    scripts/reference/prompts.json > "$work/prompts.txt"

figures() {  # name folder
    "$cllm" pack "$2" -o "$work/$1.cllm" --policy all-linear --quiet
    "$cllm" verify "$work/$1.cllm" --against "$2" --run --json --device "$device" \
        --prompts "$work/prompts.txt" > "$work/$1.json" || true
    python3 - "$1" "$work/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[2]))["run"]["divergence"]
print(json.dumps({"model": sys.argv[1], "mean_kld": r["mean_kld"], "top1": r["top1_agreement"],
                  "kv_identical": r["kv_cache"]["test"]["identical"]}))
PY
    rm -f "$work/$1.cllm"
}

for shape in tiny tiny-qwen2 tiny-mistral tiny-qwen3 tiny-gemma3 tiny-phi3; do
    "$cllm" synth --shape "$shape" -o "$work/$shape" --seed 11 > /dev/null
    figures "$shape" "$work/$shape"
done
cache=${CLLM_CACHE_DIR:-$HOME/.cache/cllm}/models
for real in smollm2-135m-instruct/hf gemma3-270m/hf; do
    [[ -f "$cache/$real/config.json" ]] && figures "${real%%/*}" "$cache/$real"
done
