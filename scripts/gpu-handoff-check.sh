#!/usr/bin/env bash
# The hand-off checks that need the GPU machine (PyTorch, CUDA):
#   1. a 7B-shaped shard set (--max-shard-size 2GB) packs, verifies and runs on --device cuda with
#      the same tokens and log-probabilities as the single-file pack and as a pattern;
#   2. scripts/compressed_tensors_check.sh (compressed-tensors' own decompression, bit for bit);
#   3. scripts/python_state_dict_check.py --device cuda through the wheel (transformers' logits).
#
#   scripts/gpu-handoff-check.sh [CLLM_BINARY]       # results under $OUT (default ./gpu-handoff)
#
# Needs the built wheel in target/wheels (scripts/python-wheel-test.sh) and, without network,
# target/pywheels (see scripts/compressed_tensors_check.sh).
set -uo pipefail
B=$(realpath "${1:-target/release/cllm}")
OUT=${OUT:-$PWD/gpu-handoff}
mkdir -p "$OUT"
chmod +x "$B"
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
W=/tmp/i24; mkdir -p $W
( set -e
  /usr/bin/time -v $B pack synth:llama-7b -o $W/set/m.cllm --policy mlp-only --max-shard-size 2GB --quiet --json > $OUT/pack7b-set.json 2> $OUT/pack7b-set.time
  $B pack synth:llama-7b -o $W/single.cllm --policy mlp-only --quiet --json > $OUT/pack7b-single.json
  ls -la $W/set > $OUT/set-ls.txt
  first=$(ls $W/set/m-00001-of-*.cllm)
  $B verify "$first" > $OUT/verify7b.txt 2>&1
  $B run "$first" --device cuda -p "The capital of France is" -n 32 --json --logprobs 3 > $OUT/run7b-set.json
  $B run $W/single.cllm --device cuda -p "The capital of France is" -n 32 --json --logprobs 3 > $OUT/run7b-single.json
  $B run "$W/set/m-*.cllm" --device cuda -p "The capital of France is" -n 32 --json > $OUT/run7b-pattern.json
  python3 - $OUT <<'PY'
import json, sys
o = sys.argv[1]
a, b = json.load(open(f"{o}/run7b-set.json")), json.load(open(f"{o}/run7b-single.json"))
c = json.load(open(f"{o}/run7b-pattern.json"))
print("tokens equal:", a["generated_ids"] == b["generated_ids"] == c["generated_ids"], "logprobs equal:", a["logprobs"] == b["logprobs"])
PY
) > $OUT/step1.txt 2>&1; echo "step1 rc=$?" >> $OUT/step1.txt
rm -rf $W
scripts/compressed_tensors_check.sh $B /tmp/ctcheck > $OUT/ct.txt 2>&1; echo "ct rc=$?" >> $OUT/ct.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site target/wheels/cllm-*.whl > $OUT/sd.txt 2>&1
export PATH=$(dirname "$B"):$PATH
PYTHONPATH=/tmp/site python3 scripts/python_state_dict_check.py --device cuda >> $OUT/sd.txt 2>&1; echo "sd rc=$?" >> $OUT/sd.txt
PYTHONPATH=/tmp/site python3 scripts/python_state_dict_check.py --device cuda --dtype bfloat16 >> $OUT/sd.txt 2>&1; echo "sd bf16 rc=$?" >> $OUT/sd.txt
tail -n 3 $OUT/step1.txt $OUT/ct.txt $OUT/sd.txt
