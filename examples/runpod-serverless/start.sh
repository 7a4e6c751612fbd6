#!/usr/bin/env bash
# The serverless worker's processes: ComfyUI on loopback, then RunPod's handler (in front).
set -euo pipefail
cd /ComfyUI
python main.py --listen 127.0.0.1 --port 8188 --disable-auto-launch \
  --output-directory "${COMFYUI_OUTPUT_DIR}" --input-directory "${COMFYUI_INPUT_DIR}" &
exec python -u /worker/handler.py
