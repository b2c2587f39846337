#!/usr/bin/env bash
# Rebuilds every committed synthetic reference from scratch: builds cllm, writes each fixture
# with `cllm synth`, and runs make_reference.py on it (transformers, CPU float32).
#
#   scripts/reference/regenerate.sh [--check] [SHAPE...]
#
# SHAPE: the synthetic shapes to redo (default: every fixtures/reference/synth-*/ directory,
# with the shape, dtype, seed and shards recorded in its reference.json; a new shape gets
# bf16, seed 11, one file). --check writes into a scratch directory and diffs against the
# committed files instead (exit 1 on any difference).
#
# PYTHON (default /work/refenv/bin/python, else python3) must have torch and transformers;
# CLLM (default: target/release/cllm, built here) is the cllm binary.
set -euo pipefail

cd "$(dirname "$0")/../.."
root=$PWD
check=0
shapes=()
for a in "$@"; do
    case "$a" in
        --check) check=1 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) echo "unknown option $a" >&2; exit 2 ;;
        *) shapes+=("$a") ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x /work/refenv/bin/python ]]; then PYTHON=/work/refenv/bin/python; else PYTHON=python3; fi
fi
"$PYTHON" -c 'import torch, transformers' || { echo "$PYTHON lacks torch/transformers" >&2; exit 2; }

if [[ -z "${CLLM:-}" ]]; then
    cargo build --release -q -p cllm --bin cllm
    CLLM=$root/target/release/cllm
fi

if [[ ${#shapes[@]} -eq 0 ]]; then
    for d in fixtures/reference/synth-*/; do
        [[ -f "$d/reference.json" ]] && shapes+=("$(basename "$d" | sed 's/^synth-//')")
    done
fi
[[ ${#shapes[@]} -gt 0 ]] || { echo "no shapes" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for shape in "${shapes[@]}"; do
    dest=fixtures/reference/synth-$shape
    # The recorded settings, so the fixture is the one the test rebuilds.
    read -r dtype seed shards < <(
        "$PYTHON" - "$dest/reference.json" <<'EOF'
import json, sys
try:
    s = json.load(open(sys.argv[1]))["synth"]
    print(s["dtype"], s["seed"], s.get("shards", 0))
except FileNotFoundError:
    print("bf16 11 0")
EOF
    )
    folder=$work/model-$shape
    "$CLLM" synth --shape "$shape" --dtype "$dtype" --seed "$seed" --shards "$shards" -o "$folder" >/dev/null
    out=$dest
    [[ $check -eq 1 ]] && out=$work/out-$shape
    "$PYTHON" scripts/reference/make_reference.py "$folder" "$out" \
        --synth-shape "$shape" --synth-dtype "$dtype" --synth-seed "$seed" --synth-shards "$shards"
    if [[ $check -eq 1 ]]; then
        if diff -u "$dest/reference.json" "$out/reference.json" >"$work/diff-$shape"; then
            echo "$shape: reproduced byte for byte"
        else
            echo "$shape: DIFFERS from $dest/reference.json:" >&2
            head -40 "$work/diff-$shape" >&2
            status=1
        fi
    fi
done
exit $status
