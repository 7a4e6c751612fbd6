#!/usr/bin/env bash
# Try syncbridge on a fresh machine with no credentials: make a venv, install
# syncbridge, run `syncbridge demo` (a loopback S3 server, a seeded model cache,
# a stand-in app whose outputs are pushed as they are written).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SYNCBRIDGE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e .
exec "$venv/bin/syncbridge" demo "$@"
