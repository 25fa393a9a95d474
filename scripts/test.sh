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
mypy packages/containerd-shimkit/src packages/containerd-shim-wasm/src packages/containerd-shim-wasmtime/src tests/support tests/fixtures benchmarks
echo "== generated protobuf modules are current"
python scripts/gen_protos.py --check
if [[ $(id -u) -eq 0 ]]; then
  # Fetch the other containerd versions first: some tests use their binaries (e.g. the
  # installer's config handling) without fetching anything themselves.
  echo "== fetching containerd ${CONTAINERD_MATRIX:-1.7 sid} into .cache/"
  python scripts/fetch_containerd.py ${CONTAINERD_MATRIX:-1.7 sid} >/dev/null
fi
echo "== pytest (containerd 1.6, Debian bookworm)"
python -m pytest -q -p no:cacheprovider "$@"
# The tests that drive a real containerd again, against containerd 1.7 (Debian trixie) and
# 2.x (Debian sid); the binaries are fetched as .deb files into .cache/ (never installed).
if [[ $(id -u) -eq 0 ]]; then
  for series in ${CONTAINERD_MATRIX:-1.7 sid}; do
    echo "== pytest -m containerd (containerd $series)"
    CONTAINERD_VERSION=$series python -m pytest -q -p no:cacheprovider -m containerd "$@"
  done
fi
echo "test.sh: done in $((SECONDS - start)) s"
