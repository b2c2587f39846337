#!/usr/bin/env bash
# Peak resident memory and throughput of pack, verify, unpack and export at any model size
# (BENCHMARKS.md, "Bounded memory"):
#
#   scripts/bounded-memory.sh [--bin PATH/cllm] [--work DIR] [--out FILE] [--from-folder] SHAPE...
#
# For each SHAPE (tinyllama-1.1b, llama-7b, llama-70b) it packs the synthetic bf16 model with
# int4 (groups of 128) on every linear layer into a shard set of 2 GB files, then verifies the
# set, unpacks it and exports it to GGUF, each under `/usr/bin/time -v`. The source is generated
# on the fly (`cllm pack synth:SHAPE`) so that a 70B model (140 GB of bf16) needs no disk for its
# source; `--from-folder` writes the source folder with `cllm synth` first and packs from it
# (memory-mapped), for the shapes whose folder fits the disk, and adds `verify --against` it.
# A step whose output would not fit the free disk is skipped and says so. Everything of a shape is deleted after it.
# One line per step: shape, step, source GB, wall seconds, GB/s (source bytes per second), peak
# RSS MiB (`/usr/bin/time`), and the peaks of its anonymous and file-backed parts sampled every
# 0.2 s.
set -euo pipefail
cd "$(dirname "$0")/.."
cllm="target/release/cllm"
work="${TMPDIR:-/tmp}/cllm-bounded-memory"
out=/dev/stdout
from_folder=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) cllm="$2"; shift 2 ;;
        --work) work="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --from-folder) from_folder=1; shift ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || set -- tinyllama-1.1b llama-7b llama-70b
cllm="$(realpath "$cllm")"
mkdir -p "$work"

free_gb() { df -B1G --output=avail "$work" | tail -1 | tr -d ' '; }

# step NAME SOURCE_BYTES CMD...: runs CMD under /usr/bin/time -v and prints the result line.
step() {
    local name="$1" bytes="$2"; shift 2
    local log="$work/time.log"
    /usr/bin/time -v "$@" >"$work/step.out" 2>"$log" &
    local tpid=$! cpid="" anon=0 file=0 a f
    # Sample the command's anonymous and file-backed resident memory (the peak RSS splits into
    # the two: heap, and pages of mapped files).
    while kill -0 "$tpid" 2>/dev/null; do
        [[ -z $cpid ]] && cpid=$(pgrep -P "$tpid" | head -1 || true)
        if [[ -n $cpid ]]; then
            read -r a f < <(awk '/RssAnon/{a=$2} /RssFile/{f=$2} END{print a+0, f+0}' \
                "/proc/$cpid/status" 2>/dev/null || echo "0 0")
            (( a > anon )) && anon=$a
            (( f > file )) && file=$f
        fi
        sleep 0.2
    done
    if ! wait "$tpid"; then
        echo "$shape $name FAILED:" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    local rss_kb wall
    rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log")
    python3 - "$shape" "$name" "$bytes" "$wall" "$rss_kb" "$anon" "$file" >>"$out" <<'EOF'
import sys
shape, name, nbytes, wall, rss_kb, anon, file = sys.argv[1:]
parts = [float(p) for p in wall.split(":")]
secs = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
gb = int(nbytes) / 1e9
rate = gb / secs if secs > 0 else float("nan")
print(f"{shape}\t{name}\t{gb:.2f} GB\t{secs:.1f} s\t{rate:.3f} GB/s\t{int(rss_kb) / 1024:.0f} MiB"
      f"\t(sampled peaks: anon {int(anon) / 1024:.0f} MiB, file {int(file) / 1024:.0f} MiB)")
EOF
}

for shape in "$@"; do
    dir="$work/$shape"
    rm -rf "$dir"
    mkdir -p "$dir"
    # Source bytes: every tensor in bf16 (from the dry run's plan).
    src_bytes=$("$cllm" pack "synth:$shape" --dry-run --json --policy all-linear --quant int4 \
        --group-size 128 | python3 -c 'import json,sys; print(json.load(sys.stdin)["source_bytes"])')
    src="synth:$shape"
    if [[ $from_folder == 1 ]]; then
        if (( $(free_gb) * 1000000000 < src_bytes * 3 / 2 )); then
            echo "$shape: skipped, its source folder does not fit the free disk" >&2
            continue
        fi
        step synth "$src_bytes" "$cllm" synth --shape "$shape" -o "$dir/src"
        src="$dir/src"
    fi
    step pack "$src_bytes" "$cllm" pack "$src" -o "$dir/m.cllm" --policy all-linear --quant int4 \
        --group-size 128 --max-shard-size 2GB --quiet
    first=$(ls "$dir"/m-00001-of-*.cllm)
    packed=$(du -cb "$dir"/m-*.cllm | tail -1 | cut -f1)
    step verify "$src_bytes" "$cllm" verify "$first"
    if [[ $from_folder == 1 ]]; then
        # Every byte again, then every tensor re-quantized from the folder and compared.
        step verify-against "$src_bytes" "$cllm" verify "$first" --against "$dir/src"
    fi
    if (( $(free_gb) * 1000000000 > src_bytes + 8000000000 )); then
        step unpack "$src_bytes" "$cllm" unpack "$first" -o "$dir/unpacked" --quiet
        rm -rf "$dir/unpacked"
    else
        echo -e "$shape\tunpack\tskipped: $((src_bytes / 1000000000)) GB of output, $(free_gb) GB free" >>"$out"
    fi
    if (( $(free_gb) * 1000000000 > packed * 12 / 10 + 8000000000 )); then
        step export-gguf "$src_bytes" "$cllm" export "$first" --to gguf -o "$dir/m.gguf" --quiet
        rm -f "$dir/m.gguf"
    else
        echo -e "$shape\texport-gguf\tskipped: $((packed / 1000000000)) GB of output, $(free_gb) GB free" >>"$out"
    fi
    rm -rf "$dir"
done
