#!/usr/bin/env bash
# The ComfyUI template's start script, with syncbridge doing the bucket work.
#
# Order: SSH (when RunPod gives a PUBLIC_KEY), JupyterLab (when JUPYTER_PASSWORD is set),
# then syncbridge-start, which pulls the models (SYNCBRIDGE_MODELS), pulls or bisyncs the
# folders (SYNCBRIDGE_FOLDERS), starts the output watcher (ENABLE_R2_SYNC=true) and runs
# ComfyUI as its child: on the pod's SIGTERM, ComfyUI is stopped, pending outputs are pushed
# and the folders pushed back within the spot pod's 5 s.
#
# Every path and command comes from the environment, so the same script runs under a
# temporary root in the test suite (tests/start/test_start.py).
set -euo pipefail

COMFYUI_DIR="${COMFYUI_DIR:-/ComfyUI}"
WORKSPACE="${SYNCBRIDGE_WORKSPACE:-/workspace}"
PYTHON="${PYTHON:-python3}"
COMFYUI_PORT="${COMFYUI_PORT:-8188}"
export COMFYUI_OUTPUT_DIR="${COMFYUI_OUTPUT_DIR:-$WORKSPACE/ComfyUI/output}"
COMFYUI_INPUT_DIR="${COMFYUI_INPUT_DIR:-$WORKSPACE/ComfyUI/input}"
COMFYUI_USER_DIR="${COMFYUI_USER_DIR:-$WORKSPACE/ComfyUI/user}"
# Extra ComfyUI flags, e.g. COMFYUI_ARGS="--lowvram --preview-method auto".
read -r -a extra_args <<< "${COMFYUI_ARGS:-}"

log() { printf '[start] %s\n' "$*"; }

if [ -n "${PUBLIC_KEY:-}" ] && command -v sshd >/dev/null 2>&1; then
    log "SSH: authorising PUBLIC_KEY and starting sshd"
    mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh"
    printf '%s\n' "$PUBLIC_KEY" >> "$HOME/.ssh/authorized_keys"
    chmod 600 "$HOME/.ssh/authorized_keys"
    ssh-keygen -A >/dev/null
    mkdir -p /run/sshd
    /usr/sbin/sshd
fi

if [ -n "${JUPYTER_PASSWORD:-}" ] && command -v jupyter >/dev/null 2>&1; then
    log "JupyterLab on port 8888"
    # The token goes through the environment, not argv (argv is readable in /proc).
    JUPYTER_TOKEN="$JUPYTER_PASSWORD" nohup jupyter lab --ip 0.0.0.0 --port 8888 --no-browser \
        --allow-root --ServerApp.root_dir="$WORKSPACE" > /tmp/jupyter.log 2>&1 &
fi

mkdir -p "$COMFYUI_OUTPUT_DIR" "$COMFYUI_INPUT_DIR" "$COMFYUI_USER_DIR"
cd "$COMFYUI_DIR"
log "starting ComfyUI on port $COMFYUI_PORT through syncbridge-start"
exec syncbridge-start -- "$PYTHON" main.py --listen 0.0.0.0 --port "$COMFYUI_PORT" \
    --output-directory "$COMFYUI_OUTPUT_DIR" --input-directory "$COMFYUI_INPUT_DIR" \
    --user-directory "$COMFYUI_USER_DIR" "${extra_args[@]}"

# Wiring the steps yourself instead (same variables; the watcher then does not see the pod's
# SIGTERM, which is why syncbridge-start is preferred):
#   syncbridge-pull-models || log "a model failed"
#   syncbridge-watch &
#   exec "$PYTHON" main.py --listen 0.0.0.0 --port "$COMFYUI_PORT"
