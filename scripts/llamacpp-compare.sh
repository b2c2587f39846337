#!/usr/bin/env bash
# cllm's codecs against llama.cpp's quantization types on the same weights and the same text, in
# one run on one machine: mean KL divergence against the bf16 model, top-1 agreement and the
# perplexity ratio, each side scored by its own tool on the same consecutive windows.
#
#   scripts/llamacpp-compare.sh [--llama BUILD_DIR] [--model HF_DIR] [--text FILE] [--ctx N]
#                               [--chunks N] [--threads N] [--codecs "int8 int4 int4m int4s-g32"]
#                               [--types "Q8_0 Q4_0 Q4_K_M"] [--only quality|speed]
#                               [--rounds N] [--new-tokens N] [--base-gguf FILE]
#                               [--quantize-args "..."] [--calibrate [--calib-windows N]]
#
# Two parts (--only runs one):
# - quality: mean KL divergence, top-1 and perplexity ratio of each form (below).
# - speed: CPU decode tokens/s in interleaved pairs, --rounds rounds of `cllm bench decode`
#   against `llama-bench -p 0 -n N` (empty context, N generated tokens; cllm's 16-token prompt is
#   not timed), --threads threads each, the median of each side printed. The pairs hold the same
#   bytes per weight: bf16 against the bf16 GGUF; cllm int8 g64 (embedding / LM head too) against
#   Q8_0, int4 g32 (embedding / LM head in int8 g32, as Q4_0 keeps it in Q8_0) against Q4_0.
#
# - llama.cpp: BUILD_DIR must hold bin/llama-quantize and bin/llama-perplexity (or tools/...).
#   Without --llama the PyPI sdist llama-cpp-python (its vendor/llama.cpp) is downloaded into
#   $CLLM_CACHE/llama.cpp and built for the CPU with cmake (needs network the first time).
# - The model: a Hugging Face folder in bf16 (default: SmolLM2-135M-Instruct as `cllm demo`
#   leaves it in ~/.cache/cllm/models/smollm2-135m-instruct/hf). Its GGUF comes from
#   `cllm pack --policy lossless` then `cllm export --to gguf` (bf16 tensors bit for bit), and
#   llama-quantize makes each --types entry from it.
# - The text: default, the frozen container specification cllm's divergence report uses
#   (runtime/src/divergence/eval_text.md). llama-perplexity cuts it into chunks of --ctx tokens
#   and scores each chunk's second half; `cllm diff --run --eval-text` cuts and scores it the same
#   way; --chunks N scores the first N windows on both sides (default: all). (llama.cpp puts BOS
#   at each chunk's start where the vocabulary asks for one; cllm at the text's start only.
#   SmolLM2's vocabulary adds none.)
# - cllm's side: each --codecs entry (NAME, or NAME-gG for groups of G columns; default 64) packed
#   from the folder with every projection quantized (`--policy all-linear --quant NAME
#   --group-size G`), then `cllm diff HF m.cllm --run`.
#
# - --base-gguf FILE: llama.cpp's base model is FILE instead of the folder's `cllm export` (for a
#   family the export does not write yet, e.g. Gemma 3, whose folder `cllm import-gguf` made from
#   FILE); its types are then re-quantized from it (pass --quantize-args "--allow-requantize ...";
#   the speed part needs the export). --quantize-args go to every llama-quantize.
# - --calibrate: calibrated rows too. llama.cpp: `llama-imatrix` over the calibration text (cllm's
#   built-in runtime/src/calibrate_text.md, windows of 512 tokens, the first --calib-windows of
#   them), each type quantized with `--imatrix`. cllm: each codec packed with `--calibrate` over
#   the same windows.
#
# Prints one table row per form, and the JSON of every cllm run and the log of every llama.cpp run
# under $OUT (default target/llamacpp-compare).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
llama=""
model="${HOME}/.cache/cllm/models/smollm2-135m-instruct/hf"
text="$root/runtime/src/divergence/eval_text.md"
ctx=128
chunks=""
threads=$(nproc)
codecs="int8 int4 int4m"
types="Q8_0 Q4_0 Q4_K_M"
only=""
rounds=5
new_tokens=128
out="${OUT:-$root/target/llamacpp-compare}"
base_gguf=""
quantize_args=""
calibrate=""
calib_windows=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --llama) llama="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --text) text="$2"; shift 2 ;;
        --ctx) ctx="$2"; shift 2 ;;
        --chunks) chunks="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --codecs) codecs="$2"; shift 2 ;;
        --types) types="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --new-tokens) new_tokens="$2"; shift 2 ;;
        --base-gguf) base_gguf="$2"; shift 2 ;;
        --quantize-args) quantize_args="$2"; shift 2 ;;
        --calibrate) calibrate=1; shift ;;
        --calib-windows) calib_windows="$2"; shift 2 ;;
        *) echo "llamacpp-compare: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -d $model ]] || { echo "llamacpp-compare: no model folder $model (run \`cllm demo\` once to fetch SmolLM2, or pass --model)" >&2; exit 2; }
[[ -f $text ]] || { echo "llamacpp-compare: no text file $text" >&2; exit 2; }
mkdir -p "$out"
llama_chunks=() cllm_chunks=()
if [[ -n $chunks ]]; then
    llama_chunks=(--chunks "$chunks")
    cllm_chunks=(--eval-windows "$chunks")
fi
cllm="$root/target/release/cllm"
[[ -x $cllm ]] || cargo build --release -p cllm

tool() { # tool NAME: the llama.cpp binary NAME in the build
    local t
    for t in "$llama/bin/$1" "$llama/tools/$1" "$llama/$1"; do
        [[ -x $t ]] && { echo "$t"; return; }
    done
    echo "llamacpp-compare: $1 not found in $llama" >&2
    exit 2
}
if [[ -z $llama ]]; then
    cache="${CLLM_CACHE:-$HOME/.cache/cllm}/llama.cpp"
    src=$(ls -d "$cache"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | head -1 || true)
    if [[ -z $src ]]; then
        mkdir -p "$cache"
        # Only this package from source: `--no-binary :all:` would also build its build
        # dependencies (CMake itself) from source to read its metadata.
        python3 -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==0.3.36" \
            -d "$cache"
        tar -xzf "$cache"/llama_cpp_python-*.tar.gz -C "$cache"
        src=$(ls -d "$cache"/llama_cpp_python-*/vendor/llama.cpp | head -1)
    fi
    llama="$src/build-cllm"
    if [[ ! -x $llama/bin/llama-perplexity ]]; then
        command -v cmake >/dev/null ||
            { echo "cmake not found: install it (e.g. python3 -m pip install cmake)" >&2; exit 2; }
        cmake -S "$src" -B "$llama" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
        cmake --build "$llama" -j "$threads" --target llama-perplexity llama-quantize llama-bench llama-imatrix >/dev/null
    fi
fi
quantize=$(tool llama-quantize)
perplexity=$(tool llama-perplexity)

# The bf16 model as GGUF, or the given base.
base="$out/bf16.gguf"
if [[ -n $base_gguf ]]; then
    base="$base_gguf"
    [[ $only == quality ]] || { echo "llamacpp-compare: --base-gguf needs --only quality" >&2; exit 2; }
else
    "$cllm" pack "$model" -o "$out/bf16.cllm" --policy lossless --quiet
    "$cllm" export "$out/bf16.cllm" --to gguf -o "$out/bf16.gguf" --quiet
fi
calib_text="$root/runtime/src/calibrate_text.md"
calib_llama=() calib_cllm=()
if [[ -n $calib_windows ]]; then
    calib_llama=(--chunks "$calib_windows")
    calib_cllm=(--calib-windows "$calib_windows")
fi

if [[ $only != quality ]]; then
    bench=$(tool llama-bench)
    # int8 g64 has Q8_0's bytes per weight (1.0625), its embedding / LM head in the same form;
    # int4 g32 keeps the embedding in int8 g32 as Q4_0 keeps it in Q8_0.
    "$cllm" pack "$model" -o "$out/speed-int8.cllm" --policy all-linear --quant int8 --group-size 64 \
        --rule 're:.*embed_tokens\.weight=int8-g64' --quiet
    "$cllm" pack "$model" -o "$out/speed-int4.cllm" --policy all-linear --quant int4 --group-size 32 \
        --rule 're:.*embed_tokens\.weight=int8-g32' --quiet
    for t in Q8_0 Q4_0; do
        [[ -f $out/$t.gguf ]] || "$quantize" "$out/bf16.gguf" "$out/$t.gguf" "$t" >"$out/quantize-$t.log" 2>&1
    done
    printf '%-18s %10s   %-8s %10s %8s\n' "cllm" "tok/s" "llama.cpp" "tok/s" "ratio"
    for pair in "bf16.cllm bf16" "speed-int8.cllm Q8_0" "speed-int4.cllm Q4_0"; do
        set -- $pair
        : >"$out/speed-$2.cllm.txt"; : >"$out/speed-$2.llama.txt"
        for _ in $(seq "$rounds"); do
            "$cllm" bench decode "$out/$1" --threads "$threads" --new-tokens "$new_tokens" --json |
                python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_second"])' \
                >>"$out/speed-$2.cllm.txt"
            "$bench" -m "$out/$2.gguf" -t "$threads" -p 0 -n "$new_tokens" -r 1 -o json 2>/dev/null |
                python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])' \
                >>"$out/speed-$2.llama.txt"
        done
        python3 - "$1" "$2" "$out/speed-$2.cllm.txt" "$out/speed-$2.llama.txt" <<'EOF'
import statistics, sys
name, peer, a, b = sys.argv[1:]
x = statistics.median(float(v) for v in open(a))
y = statistics.median(float(v) for v in open(b))
print(f"{name:<18} {x:>10.1f}   {peer:<8} {y:>10.1f} {x / y:>8.2f}")
EOF
    done
fi
[[ $only == speed ]] && exit 0

# llama.cpp's base logits on the text.
"$perplexity" -m "$base" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" "${llama_chunks[@]}" \
    --kl-divergence-base "$out/base.kld" >"$out/llama-bf16.log" 2>&1
llama_forms=()
for t in $types; do llama_forms+=("$t"); done
if [[ -n $calibrate ]]; then
    "$(tool llama-imatrix)" -m "$base" -f "$calib_text" -c 512 "${calib_llama[@]}" -t "$threads" \
        -o "$out/imatrix.gguf" >"$out/imatrix.log" 2>&1
    for t in $types; do llama_forms+=("$t+imatrix"); done
fi

row() { printf '%-22s %-10s %10s %10s %10s %10s\n' "$@"; }
row "form" "MiB" "mean KLD" "top-1 %" "PPL ratio" "positions"
for f in "${llama_forms[@]}"; do
    t="${f%+imatrix}"
    imatrix=()
    [[ $f == *+imatrix ]] && imatrix=(--imatrix "$out/imatrix.gguf")
    # shellcheck disable=SC2086 # --quantize-args is a list of flags
    "$quantize" $quantize_args "${imatrix[@]}" "$base" "$out/$f.gguf" "$t" >"$out/quantize-$f.log" 2>&1
    "$perplexity" -m "$out/$f.gguf" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" "${llama_chunks[@]}" \
        --kl-divergence-base "$out/base.kld" --kl-divergence >"$out/llama-$f.log" 2>&1
    python3 - "$out/llama-$f.log" "$out/$f.gguf" "llama.cpp $f" <<'EOF'
import os, re, sys
log, gguf, name = sys.argv[1:]
t = open(log, errors="replace").read()
kld = re.search(r"Mean\s+KLD:\s+([-\d.]+)", t)
top = re.search(r"Same top p:\s+([-\d.]+)", t)
ppl = re.search(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([-\d.]+)", t)
if not (kld and top and ppl):
    sys.exit(f"llamacpp-compare: no KL divergence statistics in {log}")
# Positions: each chunk scores its second half (n_ctx - 1 - n_ctx / 2 tokens).
chunks = re.search(r"over (\d+) chunks, n_ctx=(\d+)", t)
pos = int(chunks[1]) * (int(chunks[2]) - 1 - int(chunks[2]) // 2) if chunks else "?"
print(f"{name:<22} {os.path.getsize(gguf) / 2**20:<10.1f} {float(kld[1]):>10.5f} "
      f"{float(top[1]):>10.2f} {float(ppl[1]):>10.4f} {pos:>10}")
EOF
done
cllm_forms=()
for c in $codecs; do cllm_forms+=("$c"); done
if [[ -n $calibrate ]]; then
    for c in $codecs; do cllm_forms+=("$c+cal"); done
fi
for f in "${cllm_forms[@]}"; do
    c="${f%+cal}"
    # NAME or NAME-gG: --quant NAME --group-size G (default 64).
    quant="${c%-g*}"
    group=64
    [[ "$c" == *-g* ]] && group="${c##*-g}"
    cal=()
    label="cllm $quant g$group"
    if [[ $f == *+cal ]]; then
        cal=(--calibrate --calib-window-tokens 512 "${calib_cllm[@]}")
        label="$label cal"
    fi
    "$cllm" pack "$model" -o "$out/$f.cllm" --policy all-linear --quant "$quant" --group-size "$group" \
        "${cal[@]}" --quiet
    "$cllm" diff "$model" "$out/$f.cllm" --run --no-builtin-prompts --eval-text "$text" \
        --window-tokens "$ctx" "${cllm_chunks[@]}" --threads "$threads" --json >"$out/cllm-$f.json" 2>/dev/null || true
    python3 - "$out/cllm-$f.json" "$out/$f.cllm" "$label" <<'EOF'
import json, os, sys
js, cllm, name = sys.argv[1:]
v = json.load(open(js))
d = v["run"]["divergence"]
print(f"{name:<22} {os.path.getsize(cllm) / 2**20:<10.1f} {v['mean_kld']:>10.5f} "
      f"{100 * v['top1_agreement']:>10.2f} {d['ppl_ratio']:>10.4f} {d['positions']:>10}")
EOF
done
