#!/usr/bin/env bash
# Install everything, start a private containerd and run a container through our shim.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
