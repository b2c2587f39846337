#!/usr/bin/env bash
# The GPU tests (tests/tests/gpu.rs), run on a machine with an NVIDIA GPU.
#
#   scripts/gpu-tests.sh                 build with cargo, then run
#   scripts/gpu-tests.sh --bin-dir DIR   run prebuilt binaries DIR/cllm and DIR/gpu-tests
#                                        (a machine without cargo; build them elsewhere with
#                                        `cargo build --release -p cllm` and
#                                        `cargo test --release -p cllm-tests --test gpu --no-run`)
#
# The real-model tests need SmolLM2-135M-Instruct.Q4_1.gguf in the cache
# (~/.cache/cllm/models/smollm2-135m-instruct/, fetched on first use where there is a network);
# their reference figures are in fixtures/reference/smollm2-135m.
# Extra arguments go to the test binary (a test name filter, --test-threads, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=""
if [[ "${1:-}" == "--bin-dir" ]]; then
    bin_dir="$2"
    shift 2
fi
source scripts/cuda-env.sh
export CLLM_GPU_TESTS=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [[ -n "$bin_dir" ]]; then
    export CLLM_BIN="$(cd "$bin_dir" && pwd)/cllm"
    # A prebuilt binary knows the path of the checkout it was built in, not this one.
    export CLLM_REFERENCE_DIR="$PWD/fixtures/reference/smollm2-135m"
    "$bin_dir/gpu-tests" --include-ignored --test-threads 1 "$@"
else
    cargo build --release -p cllm
    cargo test --release -p cllm-tests --test gpu -- --include-ignored --test-threads 1 "$@"
fi
