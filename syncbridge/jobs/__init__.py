"""Serverless jobs: one job's outputs under its own key prefix, pushed as they are written, and the
RunPod worker for ComfyUI built on it.

* :mod:`~syncbridge.jobs.scope`: :class:`Job`, a job's scope on the worker's one long-lived
  :class:`~syncbridge.watch.OutputWatcher` (``with watcher.job(job_id) as job: ... job.wait()``);
* :mod:`~syncbridge.jobs.request` (pure): a job's input checked (workflow, images), RunPod's
  ``s3Config`` read;
* :mod:`~syncbridge.jobs.comfy`: ComfyUI's HTTP API (``/prompt``, ``/history``, ``/view``,
  ``/object_info``) and the input images fetched or decoded;
* :mod:`~syncbridge.jobs.worker`: the handler: models in place, images in, prompt queued, outputs
  pushed as they land, the result in worker-comfyui's shape and syncbridge's.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "Job": "scope",
    "JobOutput": "scope",
    "JobBucket": "scope",
    "job_prefix": "scope",
    "JobError": "scope",  # defined in syncbridge.errors
    "Worker": "worker",
    "ComfyClient": "comfy",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
