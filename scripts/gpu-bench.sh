#!/usr/bin/env bash
# The GPU benchmark of BENCHMARKS.md, on a machine with an NVIDIA GPU:
#
#   scripts/gpu-bench.sh [--bin DIR/cllm] [--work DIR] [--out DIR] [--no-hf] SHAPE...
#
# For each SHAPE (tinyllama-1.1b, llama-7b): makes the synthetic bf16 model with `cllm synth`,
# packs it five ways (bf16 lossless, int8 mlp-only, int8 all-linear, per-row int8 all-linear,
# int4 all-linear), runs `cllm bench gpu` on the folder and the containers (decode tokens/s at batch 1, 128 new
# tokens after a 16-token prompt, against the read bandwidth measured in the same run; load time
# and GB/s from a warm page cache; VRAM), then Hugging Face transformers on the same folder
# (bf16, load to GPU and the same generation; `--no-hf` leaves it out), and deletes the shape's
# files.
# Results: OUT/bench-SHAPE.jsonl (cllm) and OUT/hf-SHAPE.jsonl (transformers).
set -euo pipefail
cd "$(dirname "$0")/.."
cllm="target/release/cllm"
work="${TMPDIR:-/tmp}/cllm-gpu-bench"
out="."
hf=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) cllm="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --no-hf) hf=0; shift ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || set -- tinyllama-1.1b llama-7b
source scripts/cuda-env.sh
mkdir -p "$work" "$out"
hf_py="$work/hf_bench.py"
cat > "$hf_py" <<'PY'
# transformers on a synthetic model folder: load to the GPU (warm page cache) and greedy
# generation of 128 tokens after a 16-token prompt, bf16 weights, batch 1.
import glob, json, os, sys, time
import torch
from transformers import AutoModelForCausalLM

path, impl = sys.argv[1], sys.argv[2]
files = glob.glob(os.path.join(path, "*.safetensors"))
nbytes = sum(os.path.getsize(f) for f in files)
for f in files:  # warm the page cache
    with open(f, "rb") as fh:
        while fh.read(64 << 20):
            pass
torch.zeros(1, device="cuda")  # the CUDA context, outside the timed load
torch.cuda.synchronize()
t = time.perf_counter()
try:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda", attn_implementation=impl)
except TypeError:
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16, device_map="cuda", attn_implementation=impl)
torch.cuda.synchronize()
load_s = time.perf_counter() - t
vocab = model.config.vocab_size
ids = torch.tensor([[1 + (i * 7919) % (vocab - 1) for i in range(16)]], device="cuda")
kw = dict(do_sample=False, pad_token_id=0)
def gen(n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
    torch.cuda.synchronize()
    return time.perf_counter() - t
gen(8)
pre = sorted(gen(1) for _ in range(3))[1]
tot = sorted(gen(128) for _ in range(3))[1]
print(json.dumps({
    "model": path, "impl": impl, "gpu": torch.cuda.get_device_name(0),
    "torch": torch.__version__, "transformers": __import__("transformers").__version__,
    "safetensors_bytes": nbytes, "load_seconds": load_s, "load_gb_s": nbytes / load_s / 1e9,
    "vram_allocated_bytes": torch.cuda.memory_allocated(),
    "decode_tokens_per_second": 127 / (tot - pre), "generate_128_seconds": tot,
}), flush=True)
PY
for shape in "$@"; do
    src="$work/$shape"
    rm -rf "$src" "$src".*.cllm
    echo "== $shape: synth" >&2
    "$cllm" synth --shape "$shape" -o "$src"
    echo "== $shape: pack" >&2
    "$cllm" pack "$src" -o "$src.bf16.cllm" --quiet --policy lossless
    "$cllm" pack "$src" -o "$src.int8-mlp.cllm" --quiet --policy mlp-only
    "$cllm" pack "$src" -o "$src.int8-all.cllm" --quiet --policy all-linear
    "$cllm" pack "$src" -o "$src.int8row-all.cllm" --quiet --policy all-linear --quant int8-row
    "$cllm" pack "$src" -o "$src.int4-all.cllm" --quiet --policy all-linear --quant int4
    ls -l "$src"/*.safetensors "$src".*.cllm >&2
    echo "== $shape: cllm bench gpu" >&2
    "$cllm" bench gpu "$src" "$src.bf16.cllm" "$src.int8-mlp.cllm" "$src.int8-all.cllm" "$src.int8row-all.cllm" "$src.int4-all.cllm" --json --profile \
        | tee "$out/bench-$shape.jsonl"
    if [[ $hf == 1 ]]; then
        echo "== $shape: transformers" >&2
        : > "$out/hf-$shape.jsonl"
        for impl in eager sdpa; do
            PYTHONUNBUFFERED=1 python3 "$hf_py" "$src" "$impl" | tee -a "$out/hf-$shape.jsonl" || echo "transformers ($impl) failed" >&2
        done
    fi
    rm -rf "$src" "$src".*.cllm
done
