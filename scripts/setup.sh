#!/usr/bin/env bash
# Install everything this project needs on a Debian bookworm machine (idempotent):
# Debian packages (containerd, runc, wasm toolchain, ...), a virtualenv in .venv, and the
# three packages (editable) with the development tools.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  containerd runc containernetworking-plugins iproute2 busybox-static
  clang lld wasi-libc libclang-rt-dev-wasm32 wabt libseccomp2 gcc libc6-dev hyperfine
  shellcheck
)
# The wasi:http test components are built with componentize-js, which needs Node.js and
# npm. Machines of this project's kind ship Node 20 outside Debian's packages; elsewhere
# Debian's (bookworm: Node 18, for which the build fetches Node 20 as an npm package).
if ! command -v npm >/dev/null; then
  APT_PACKAGES+=(nodejs npm)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A real interpreter path (not pyenv's bash shim): the shim script's shebang points at it.
PYTHON=${PYTHON:-$(python3 -c 'import sys; print(sys.executable)')}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python 3.11+ is required, $PYTHON is $("$PYTHON" --version)" >&2
  exit 1
}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed
inputs=(requirements-dev.txt packages/*/pyproject.toml)
if [[ ! -f $stamp ]] || [[ -n $(find "${inputs[@]}" -newer "$stamp" 2>/dev/null) ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps --config-settings editable_mode=compat \
    -e packages/containerd-shimkit -e packages/containerd-shim-wasm -e packages/containerd-shim-wasmtime \
    2>&1 | grep -v "^WARNING: Location" || true
  touch "$stamp"
fi
