#!/usr/bin/env bash
# The whole proof of `cllm export --to compressed-tensors`, on synthetic models: synth -> pack ->
# export -> `cllm verify --against` the export -> `cllm unpack` (cllm's own dequantization) ->
# scripts/compressed_tensors_check.py (the compressed-tensors package's own decompression of the
# export, compared bit for bit). Also checks that an int4 tensor that cannot be carried exactly
# is refused by name.
#
#   scripts/compressed_tensors_check.sh [CLLM_BINARY] [WORK_DIR]
#
# CLLM_BINARY defaults to target/release/cllm; WORK_DIR to a temporary folder. $PYTHON (default
# python3) must import torch, safetensors, transformers and compressed_tensors. Without
# network: if compressed_tensors does not import, the wheels in target/pywheels/ are installed
# (--no-deps, into WORK_DIR/pylib on PYTHONPATH), made where there is network with
#   pip download --no-deps compressed-tensors==0.17.0 loguru -d target/pywheels
#   pip download pydantic --only-binary=:all: --python-version 3.X \
#       --platform manylinux2014_x86_64 -d target/pywheels     # if the machine lacks pydantic
# (0.17.0 is the version vLLM pins; the script also passes with 0.20.1.)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
cllm="${1:-$here/target/release/cllm}"
work="${2:-$(mktemp -d)}"
py="${PYTHON:-python3}"
check="$here/scripts/compressed_tensors_check.py"
mkdir -p "$work"
cllm="$(cd "$(dirname "$cllm")" && pwd)/$(basename "$cllm")"

if ! "$py" -c 'import compressed_tensors' 2>/dev/null; then
    wheels="$here/target/pywheels"
    if [ ! -d "$wheels" ]; then
        echo "compressed_tensors does not import with $py and target/pywheels/ is absent" >&2
        exit 2
    fi
    # Only the carried wheels, next to the interpreter's own torch and transformers.
    echo "== installing compressed-tensors from target/pywheels into $work/pylib"
    "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" --target "$work/pylib" \
        compressed-tensors loguru
    export PYTHONPATH="$work/pylib${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$py" -c 'import pydantic' 2>/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --find-links "$wheels" --target "$work/pylib" \
            pydantic pydantic-core annotated-types typing-inspection typing-extensions
    fi
fi
"$py" -c 'import torch, compressed_tensors, transformers, safetensors; print("python:", torch.__version__, "torch,", compressed_tensors.__version__, "compressed-tensors,", transformers.__version__, "transformers")'

fail=0
# One case: NAME, synth args, pack args.
case_() {
    local name="$1" synth_args="$2" pack_args="$3" d="$work/$1"
    echo
    echo "== $name: synth $synth_args; pack $pack_args"
    rm -rf "$d" && mkdir -p "$d"
    "$cllm" synth $synth_args -o "$d/src" >/dev/null
    if [ -n "${CRAFT:-}" ]; then "$py" -c "$CRAFT" "$d/src"; fi
    eval "\"$cllm\" pack \"$d/src\" -o \"$d/m.cllm\" -q $pack_args"
    "$cllm" export "$d/m.cllm" --to compressed-tensors -o "$d/export"
    "$cllm" verify "$d/m.cllm" --against "$d/export" | grep -E "^against|^OK|^FAIL" || fail=1
    "$cllm" unpack "$d/m.cllm" -o "$d/reference" -q >/dev/null
    "$py" "$check" "$d/export" "$d/reference" || fail=1
}

# Weights for the int4 cases that compressed-tensors can carry: in every group of 32, codes
# 0..15 (0 and 15 present) minus a whole zero point k, times 2^-6, so that cllm's int4 minimum
# is -k * scale exactly; one group all zero (scale 0). down_proj gets random k (asymmetric:
# weight_zero_point), o_proj k = 8 everywhere (symmetric).
CRAFT_INT4='
import sys, torch
from safetensors.torch import load_file, save_file
p = sys.argv[1] + "/model.safetensors"
t = load_file(p)
g = torch.Generator().manual_seed(7)
for name in list(t):
    sym = ".self_attn.o_proj." in name
    if not (".mlp.down_proj." in name or sym):
        continue
    rows, cols = t[name].shape
    q = torch.randint(0, 16, (rows, cols // 32, 32), generator=g)
    q[:, :, 0], q[:, :, 1] = 0, 15
    k = torch.full((rows, cols // 32, 1), 8) if sym else torch.randint(0, 16, (rows, cols // 32, 1), generator=g)
    w = ((q - k).float() * 2.0**-6).reshape(rows, cols)
    if not sym:
        w[0, :32] = 0
    t[name] = w.to(t[name].dtype)
save_file(t, p, metadata={"format": "pt"})
'

CRAFT= case_ bf16-int8g "--shape tiny --seed 1" "--policy mlp-only --quant int8 --group-size 64"
CRAFT= case_ f32-int8-row "--shape tiny --seed 2 --dtype f32" "--policy all-linear --quant int8-row"
CRAFT= case_ f16-int8g32-qwen3 "--shape tiny-qwen3 --seed 3 --dtype f16" "--policy all-linear --quant int8 --group-size 32"
CRAFT="$CRAFT_INT4" case_ bf16-int4-exact "--shape tiny --seed 4" \
    "--rule 're:.*(down_proj|o_proj)\.weight=int4-g32'"
CRAFT="$CRAFT_INT4" case_ f32-int4-exact "--shape tiny --seed 5 --dtype f32" \
    "--policy mlp-only --quant int8 --rule 're:.*(down_proj|o_proj)\.weight=int4-g32'"

echo
echo "== refusal: int4 of ordinary (normal) weights"
d="$work/refused" && rm -rf "$d" && mkdir -p "$d"
"$cllm" synth --shape tiny --seed 6 -o "$d/src" >/dev/null
"$cllm" pack "$d/src" -o "$d/m.cllm" -q --policy mlp-only --quant int4
if "$cllm" export "$d/m.cllm" --to compressed-tensors -o "$d/export" 2>"$d/err"; then
    echo "FAIL: the export of an int4 model with arbitrary minimums succeeded" && fail=1
else
    cat "$d/err"
    grep -q "tensor model.layers" "$d/err" && [ ! -e "$d/export" ] \
        && echo "OK: refused by name, nothing written" || { echo "FAIL: refusal message"; fail=1; }
fi

echo
if [ "$fail" = 0 ]; then echo "ALL OK"; else echo "FAILED"; fi
exit "$fail"
