#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60) and prints the
# executions of each. Exits non-zero if any target crashes, leaks past libFuzzer's memory limit or
# times out; the input that did it is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs only rustup with a nightly toolchain (installed here if missing) and a C++ compiler
# (libFuzzer is built from source); installs cargo-fuzz if missing. The seed corpus in
# fuzz/corpus/<target>/ is read, never written: inputs found here go to fuzz/target/fuzz-corpus/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

PER_TARGET="${1:-60}"
if ! [[ "$PER_TARGET" =~ ^[0-9]+$ ]] || [ "$PER_TARGET" -lt 1 ]; then
  echo "usage: $0 [SECONDS]" >&2
  exit 2
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing the nightly toolchain" >&2
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo +nightly install cargo-fuzz --locked
fi

# target:features. The GGUF and safetensors targets need the crates behind their features.
TARGETS=(container: roundtrip: gguf:gguf safetensors_folder:hf)

# The safetensors target writes a folder per input: use memory-backed storage where there is some.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

mkdir -p target/fuzz-logs
failed=0
summary=()
for entry in "${TARGETS[@]}"; do
  target="${entry%%:*}"
  features="${entry#*:}"
  feature_args=()
  if [ -n "$features" ]; then
    feature_args=(--features "$features")
  fi
  log="target/fuzz-logs/$target.log"
  work="target/fuzz-corpus/$target"
  mkdir -p "$work" "corpus/$target"
  echo "== $target: building"
  # -a: debug assertions (overflow checks) on; the default sanitizer (address) stays on.
  if ! cargo +nightly fuzz build -a ${feature_args[@]+"${feature_args[@]}"} "$target" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "== $target: BUILD FAILED (log: fuzz/$log)" >&2
    summary+=("$target: build failed")
    failed=1
    continue
  fi
  echo "== $target: fuzzing for ${PER_TARGET}s"
  status=0
  cargo +nightly fuzz run -a ${feature_args[@]+"${feature_args[@]}"} "$target" "$work" "corpus/$target" -- \
    -max_total_time="$PER_TARGET" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 \
    >>"$log" 2>&1 || status=$?
  execs="$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -n 1)"
  rate="$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -n 1)"
  peak="$(awk '/stat::peak_rss_mb/ {print $2}' "$log" | tail -n 1)"
  if [ "$status" -ne 0 ]; then
    grep -v '^#' "$log" | tail -n 60 >&2
    echo "== $target: FAILED (exit $status) after ${execs:-?} executions; input in fuzz/artifacts/$target/, log fuzz/$log" >&2
    summary+=("$target: FAILED after ${execs:-?} executions")
    failed=1
  else
    summary+=("$target: ${execs:-?} executions in ${PER_TARGET}s (${rate:-?}/s, peak RSS ${peak:-?} MB), no crash")
  fi
done

echo
echo "fuzz summary ($(date -u +%Y-%m-%d), ${PER_TARGET}s per target):"
for line in "${summary[@]}"; do
  echo "  $line"
done
exit "$failed"
