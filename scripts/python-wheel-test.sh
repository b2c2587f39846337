#!/usr/bin/env bash
# Builds the Python package `cllm` (python/: the extension module and the `cllm` command) into
# target/wheels with maturin, installs it in a FRESH virtual environment with NumPy only, and runs
# its tests there (python/tests: packs a synthetic model with the installed `cllm` command, reads
# it back with cllm.open, checks every tensor, verify() and the command's exit codes).
#
#   scripts/python-wheel-test.sh              # build, install, test
#   scripts/python-wheel-test.sh --no-build   # test the newest wheel already in target/wheels
#
# maturin lives in its own environment (target/python/build-env, kept between runs); the test
# environment (target/python/test-env) is made anew each run. The wheel is built with the
# workspace's target directory and release profile, so what `cargo build --release` already
# compiled is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
PYTHON=${PYTHON:-python3}
target=$(cargo metadata --no-deps --format-version 1 | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
envs=$target/python
wheels=$target/wheels

build=1
[ "${1:-}" = "--no-build" ] && build=0

if [ $build = 1 ]; then
  if [ ! -x "$envs/build-env/bin/maturin" ]; then
    "$PYTHON" -m venv "$envs/build-env"
    "$envs/build-env/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.9.4,<2'
  fi
  rm -f "$wheels"/cllm-*.whl
  start=$(date +%s)
  "$envs/build-env/bin/maturin" build --release -m python/Cargo.toml -o "$wheels" \
    --interpreter "$PYTHON"
  echo "python-wheel-test: wheel built in $(( $(date +%s) - start )) s"
fi
wheel=$(ls -t "$wheels"/cllm-*.whl | head -n 1)
echo "python-wheel-test: $wheel ($(du -h "$wheel" | cut -f1))"

# A fresh environment: NumPy and the wheel, nothing else.
"$PYTHON" -m venv --clear "$envs/test-env"
py=$envs/test-env/bin/python
"$py" -m pip install -q --disable-pip-version-check numpy "$wheel"
"$py" -m pip list --disable-pip-version-check --format=freeze

# From outside the repository, so that `import cllm` is the installed package, not python/cllm.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$py" -c 'import cllm, sys; assert cllm.__file__.startswith(sys.prefix), cllm.__file__; print("cllm", cllm.__version__, "from", cllm.__file__)'
"$envs/test-env/bin/cllm" --version
"$py" -m unittest discover -s "$repo/python/tests" -t "$repo/python/tests" -v
