"""RunPod serverless worker for ComfyUI: every output in the bucket as it is written, a link for each.

RunPod calls ``handler(job)`` with ``job["id"]``, ``job["input"]`` (worker-comfyui's input:
``{"workflow": {...API format...}, "images": [{"name", "image"}]}``) and, when the request brings
one, ``job["s3Config"]``. The logic is in the library (:mod:`syncbridge.jobs.worker`); this file only
wires it to RunPod. Settings come from the environment (docs/configuration.md): the bucket
(``R2_ENDPOINT``, ``R2_ACCESS_KEY``, ``R2_SECRET_KEY``, ``R2_BUCKET``), ``COMFYUI_URL``,
``COMFYUI_OUTPUT_DIR``, ``SYNCBRIDGE_MODELS_DIR``, ``SYNCBRIDGE_JOB_*``.

Run one job locally (runpod's own local mode), with ComfyUI at COMFYUI_URL::

    python examples/runpod-serverless/handler.py --test_input '{"input": {"workflow": {...}}}'
"""

from __future__ import annotations

import atexit
import logging
import os
import sys

import runpod

from syncbridge.errors import SyncBridgeError
from syncbridge.jobs.worker import Worker

_worker: Worker | None = None


def _get_worker() -> Worker:
    """The worker's one Worker (and its one watcher), started on first use."""
    global _worker
    if _worker is None:
        # Progress goes to RunPod only on RunPod (locally there is nowhere to send it).
        progress = runpod.serverless.progress_update if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT") else None
        worker = Worker.from_environ(os.environ, progress=progress)
        worker.start()
        atexit.register(worker.stop)  # drain the watcher when the worker exits
        _worker = worker
    return _worker


def handler(job: dict) -> dict:
    return _get_worker().handler(job)


def stream_handler(job: dict):
    yield from _get_worker().stream(job)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("SYNCBRIDGE_LOG_LEVEL", "info").upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        worker = _get_worker()
    except SyncBridgeError as exc:  # a bad setting or an unusable output folder: said plainly, no traceback
        print(f"worker: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1) or 1)
    if worker.settings.stream:
        runpod.serverless.start({"handler": stream_handler, "return_aggregate_stream": True})
    else:
        runpod.serverless.start({"handler": handler})
