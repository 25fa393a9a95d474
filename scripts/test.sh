#!/usr/bin/env bash
# The whole test suite: setup, then lint, types, generated-code freshness and every test.
# Tests that need root or containerd run when this runs as root (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
start=$SECONDS
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy packages/containerd-shimkit/src packages/containerd-shim-wasm/src packages/containerd-shim-wasmtime/src tests/support
echo "== generated protobuf modules are current"
python scripts/gen_protos.py --check
echo "== pytest"
python -m pytest -q -p no:cacheprovider "$@"
echo "test.sh: done in $((SECONDS - start)) s"
