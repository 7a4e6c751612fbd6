"""The RunPod serverless worker for ComfyUI: one job at a time, outputs pushed to the bucket as they are written.

:class:`Worker` holds what lives as long as the worker: the configuration, the one
:class:`~syncbridge.watch.OutputWatcher` on ComfyUI's output folder, the bucket (the model cache) and
the :class:`~syncbridge.jobs.comfy.ComfyClient`. For each job (:meth:`Worker.handler`, RunPod's
``handler(job)``; :meth:`Worker.stream` for a generator handler):

1. the input is checked (:func:`~syncbridge.jobs.request.parse_input`), and ``s3Config`` read;
2. the models the workflow names are put in place (present, the bucket cache, the workflow's URL;
   verified); one found nowhere fails the job naming the node and the file, before ComfyUI runs;
3. the input images are written into ComfyUI's input folder;
4. a :class:`~syncbridge.jobs.scope.Job` scope opens, the prompt is queued and polled; each output
   is pushed under the job's prefix the moment ComfyUI closes it;
5. once ``/history`` says the prompt is done, every file it reports (every kind) is checked to be in
   the bucket, and the result lists them: ``outputs`` (key, url, filename, subfolder, node, size,
   content_type, checksum) and worker-comfyui's ``images`` (``{filename, type: "s3_url", data}``).

Every failure is ``{"error": "..."}`` in the caller's terms (and ``error_kind``); no traceback, no secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..config import Config, load_config
from ..errors import JobError, SyncBridgeError
from ..fsutil import atomic_write_bytes, private_state_dir
from ..redact import redact, redact_data
from ..watch import OutputWatcher
from .comfy import ComfyClient, HistoryFile, fetch_image
from .request import JobRequest, parse_input
from .scope import JobBucket, JobOutput

__all__ = ["Worker"]

log = logging.getLogger(__name__)

FIRST_READY_WAIT = 120.0  # ComfyUI starts with the container: the first job may wait for it this long
READY_WAIT = 5.0
POLL_SECONDS = 0.02  # /history on loopback: cheap

Progress = Callable[[Mapping[str, Any], Any], Any]


class Worker:
    """A serverless worker's state (see the module's doc).

    Args:
        config: the configuration (``config.jobs``, ``config.watch``, ``config.remote``...).
        progress: ``runpod.serverless.progress_update`` (called with the job and a short text), or None.
        comfy: the ComfyUI client (default: at ``config.jobs.comfyui_url``).

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(self, config: Config, *, progress: Progress | None = None, comfy: ComfyClient | None = None) -> None:
        self.config = config
        self.settings = config.jobs
        self.comfy = comfy or ComfyClient(config.jobs.comfyui_url)
        self._progress = progress
        self.watcher: OutputWatcher | None = None
        self._ready_once = False
        self._lock = threading.Lock()  # one job at a time, whatever the caller does

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **kwargs: Any) -> "Worker":
        """A worker configured from ``environ`` (``load_config``); raises ConfigError naming each bad setting."""
        return cls(load_config(environ), **kwargs)

    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the watcher on ComfyUI's output folder (``COMFYUI_OUTPUT_DIR``, created if missing)."""
        Path(self.config.watch.dir).mkdir(parents=True, exist_ok=True)
        self.watcher = OutputWatcher(self.config, directory=self.config.watch.dir)
        self.watcher.start()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    # -- RunPod's entry points ---------------------------------------------------------------------

    def handler(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """RunPod's ``handler(job)``: the result, or ``{"error": ...}``."""
        result: dict[str, Any] = {}
        for kind, value in self._events(job, stream=False):
            if kind == "result":
                result = value
        return result

    def stream(self, job: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """A generator handler: ``{"output": {...}}`` as each output lands, then the whole result."""
        for kind, value in self._events(job, stream=True):
            yield {"output": value} if kind == "output" else value

    # -- one job -------------------------------------------------------------------------------------

    def _say(self, job: Mapping[str, Any], text: str) -> None:
        log.info("job %s: %s", job.get("id"), text, extra={"event": "job.progress"})
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._progress(dict(job), text)

    def _secrets(self, job: Mapping[str, Any]) -> list[str]:
        s3 = job.get("s3Config")
        extra = [str(s3.get("accessSecret") or "")] if isinstance(s3, Mapping) else []
        return [*self.config.secrets, *extra]

    def _events(self, job: Mapping[str, Any], *, stream: bool) -> Iterator[tuple[str, Any]]:
        if not self._lock.acquire(blocking=False):
            yield "result", {"error": "this worker is already running a job (one at a time)", "error_kind": "busy"}
            return
        try:
            yield from self._run(job, stream=stream)
        except JobError as exc:
            log.warning("job %s failed: %s", job.get("id"), redact(str(exc), self._secrets(job)),
                        extra={"event": "job.failed", "kind": exc.kind})
            out: dict[str, Any] = {"error": redact(str(exc), self._secrets(job)), "error_kind": exc.kind}
            if exc.details is not None and exc.kind in ("not_pushed", "refused", "models", "execution"):
                out["details"] = redact_data(exc.details, self._secrets(job))  # ComfyUI's own text included
            yield "result", out
        except SyncBridgeError as exc:
            text = redact(str(exc), self._secrets(job))
            log.warning("job %s failed: %s", job.get("id"), text, extra={"event": "job.failed"})
            yield "result", {"error": text, "error_kind": "worker"}
        except Exception as exc:  # noqa: BLE001 - a bug: the traceback goes to the log, not to the caller
            log.exception("job %s: unexpected error", job.get("id"), extra={"event": "job.bug"})
            yield "result", {"error": f"internal error in the worker ({type(exc).__name__}); see the worker's log",
                             "error_kind": "worker"}
        finally:
            self._lock.release()

    def _run(self, job: Mapping[str, Any], *, stream: bool) -> Iterator[tuple[str, Any]]:
        if self.watcher is None:
            raise JobError("the worker is not started", kind="worker")
        job_id = str(job.get("id") or "")
        if not job_id:
            raise JobError("the job has no id", kind="input")
        max_bytes = int(self.settings.image_max_mb * 1_000_000)
        request = parse_input(job.get("input"), allow_urls=self.settings.image_urls,
                              allow_http=self.settings.image_private, max_bytes=max_bytes)
        bucket = JobBucket.from_s3_config(job["s3Config"], base=self.config) if job.get("s3Config") else None
        if self.settings.models:
            self._say(job, "models: putting the workflow's models in place")
            self._models(request, job_id)
        self._images(request, max_bytes)
        self.comfy.wait_ready(READY_WAIT if self._ready_once else FIRST_READY_WAIT)
        self._ready_once = True
        with self.watcher.job(job_id, bucket=bucket) as scope:
            prompt_id = self.comfy.queue(request.workflow)
            self._say(job, f"queued: prompt {prompt_id}")
            emitted: set[str] = set()
            result = None
            executing = False
            pushed = 0
            for result in self.comfy.poll(prompt_id, request.workflow, timeout=self.settings.timeout,
                                          interval=POLL_SECONDS):
                if result is not None:
                    break
                if not executing:
                    executing = True
                    self._say(job, "executing")
                count = scope.pushed_count()
                if count != pushed:
                    pushed = count
                    self._say(job, f"outputs pushed: {count}")
                while stream and (landed := scope.next_landed(0)) is not None:
                    if landed.path not in emitted:
                        emitted.add(landed.path)
                        yield "output", self._entry(landed, None)
            assert result is not None
            files = [f for f in result.files if f.type == "output"]
            for file in files:
                if not _inside(file):
                    raise JobError(f"ComfyUI reports the output {file.subfolder + '/' if file.subfolder else ''}"
                                   f"{file.filename} (node #{file.node}) outside the output folder: not pushed",
                                   kind="not_pushed", details=[{"path": file.rel, "error": "outside the output folder"}])
                if file.rel not in scope.expected() and not scope.add(file.rel):
                    raise JobError(f"ComfyUI reports the output {file.rel} (node #{file.node}) but it is not in its "
                                   f"output folder {self.watcher.directory} (COMFYUI_OUTPUT_DIR)", kind="not_pushed",
                                   details=[{"path": file.rel, "error": "not in the output folder"}])
            outputs = scope.wait(self.settings.push_timeout)
        by_rel: dict[str, HistoryFile] = {}
        for file in files:
            by_rel.setdefault(file.rel, file)
        entries = [self._entry(out, by_rel.get(out.path)) for out in outputs]
        for entry in entries if stream else ():
            if entry["path"] not in emitted:
                emitted.add(entry["path"])
                yield "output", entry
        self._say(job, f"done: {len(entries)} output(s) in the bucket")
        final: dict[str, Any] = {
            "outputs": entries,
            "images": [{"filename": e["filename"], "type": "s3_url", "data": e["url"]} for e in entries],
            "prompt_id": prompt_id,
            "prefix": scope.prefix,
        }
        if not entries:  # a success, as worker-comfyui's "success_no_images", but said
            temp = sum(1 for f in result.files if f.type == "temp")
            final["warning"] = ("the prompt wrote no output file to the output folder" +
                                (f" ({temp} preview(s) went to ComfyUI's temp folder, which is not kept: save them "
                                 "with SaveImage or another save node)" if temp else
                                 " (does the workflow have a save node such as SaveImage?)"))
            log.warning("job %s: %s", job.get("id"), final["warning"], extra={"event": "job.no_outputs"})
        yield "result", final

    @staticmethod
    def _entry(out: JobOutput, file: HistoryFile | None) -> dict[str, Any]:
        entry = out.to_dict()
        entry["path"] = out.path
        entry["node"] = file.node if file is not None else None
        entry["node_type"] = file.node_type if file is not None else None
        entry["kind"] = file.kind if file is not None else None
        return entry

    # -- before the prompt ---------------------------------------------------------------------------

    def _models(self, request: JobRequest, job_id: str) -> None:
        from ..models.fromworkflow import document_models
        from ..models.pull import pull_models

        store = self.watcher.store  # type: ignore[union-attr]
        found = document_models(self.config, request.workflow, name=f"job {job_id}", store=store)
        if not found.resolved:
            return
        if found.unresolved:
            missing = [{"file": r.model.path, "nodes": list(r.model.wanted_by)} for r in found.unresolved]
            text = "; ".join(f"{m['file']} (wanted by node {', '.join(m['nodes'])})" for m in missing)
            cache = f" (the bucket cache could not be listed: {found.cache_error})" if found.cache_error else ""
            raise JobError(f"model not found: {text}: not in the models folder, not in the bucket cache, and the "
                           f"workflow gives no URL{cache}; the prompt was not queued", kind="models",
                           details=missing)
        if all(r.status == "present" for r in found.resolved):
            return
        folder = private_state_dir(self.config.state_dir, "jobs")
        manifest = folder / f"models-{uuid.uuid4().hex[:12]}.toml"
        atomic_write_bytes(manifest, found.manifest.encode("utf-8"))
        try:
            report = pull_models(self.config, [manifest], store=store, environ={})
        finally:
            with contextlib.suppress(OSError):
                os.unlink(manifest)
        if not report.ok:
            wanted = {r.model.path: r.model.wanted_by for r in found.resolved}
            failed = [{"file": r.path, "nodes": list(wanted.get(r.path, ())), "error": r.message}
                      for r in report.failed]
            text = "; ".join(f"{f['file']} (node {', '.join(f['nodes'])}): {f['error']}" for f in failed)
            raise JobError(f"model could not be put in place: {text}; the prompt was not queued", kind="models",
                           details=failed)

    def _images(self, request: JobRequest, max_bytes: int) -> None:
        if not request.images:
            return
        folder = Path(self.settings.input_dir or Path(self.config.watch.dir).parent / "input")
        folder.mkdir(parents=True, exist_ok=True)
        ca = str(self.config.remote.ca_bundle) if self.config.remote.ca_bundle else None
        for index, image in enumerate(request.images):
            data = image.data
            if data is None:
                data = fetch_image(image.url or "", max_bytes=max_bytes, allow_private=self.settings.image_private,
                                   field=f"input.images[{index}].image", ca_file=ca)
            atomic_write_bytes(folder / image.name, data, mode=0o644)


def _inside(file: HistoryFile) -> bool:
    """Whether a file ``/history`` reports names a place below the output folder (a custom node may say anything)."""
    parts = file.rel.split("/")
    return not (file.subfolder.startswith(("/", "\\")) or file.filename.startswith(("/", "\\"))
                or any(p in ("", ".", "..") for p in parts) or "\\" in file.rel or "\x00" in file.rel)
