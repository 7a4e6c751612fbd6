"""A job's scope on the worker's one long-lived watcher: its outputs under its own key prefix, pushed as written.

::

    with watcher.job(job_id, bucket=job.get("s3Config")) as scope:
        ...                               # the app writes into the output folder
        outputs = scope.wait(timeout=60)  # every output in the bucket: key, url, size, type, checksum

While the scope is open, every file finished in the watched folder is the job's: it goes to
``<job prefix>/<relpath>``, where the job prefix is ``jobs.key`` (``SYNCBRIDGE_JOB_KEY``, default
``{prefix}/jobs/{job_id}``) rendered for the job, in the watcher's bucket or in the job's own
(RunPod's ``s3Config``), and it is pushed the moment it is finished, by the watcher's upload
workers. Files finished before the scope opened keep the watcher's own prefix (the events the
kernel queued before are taken in first); so do files finished after :meth:`Job.wait` closed it.

One scope at a time per watcher (RunPod gives a worker one job at a time); opening a second one
while the first is open raises :class:`~syncbridge.errors.WatchError`.

The job's bucket secret lives only in the job's store client: it is in no log line, no record, no
error and no journal row (the journal records keys, never a store).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import attrs

from ..config import Config, RemoteConfig, load_config
from ..errors import ConfigError, JobError, UnsafePathError
from ..hashing import sha256_file
from ..keys import public_url, render_prefix
from ..store import S3Store, Store
from ..watch.notify import PushedOutput
from ..watch.scheduler import Outcome
from ..watch.early import tail_supported
from ..watch.upload import S3_CONNECT_TIMEOUT, S3_MAX_ATTEMPTS, S3_READ_TIMEOUT, Route

__all__ = ["Job", "JobOutput", "JobBucket", "job_prefix", "DEFAULT_JOB_KEY"]

log = logging.getLogger(__name__)

DEFAULT_JOB_KEY = "{prefix}/jobs/{job_id}"
_JOB_FIELDS = re.compile(r"\{(prefix|job_id)\}")
S3_CONFIG_FIELDS = {"endpointUrl": "R2_ENDPOINT", "accessId": "R2_ACCESS_KEY", "accessSecret": "R2_SECRET_KEY",
                    "bucketName": "R2_BUCKET"}


def job_prefix(template: str, *, prefix: str, job_id: str, pod_id: str, now: dt.datetime | None = None) -> str:
    """The key prefix of a job's outputs: ``template`` with ``{prefix}`` (the watcher's), ``{job_id}``,
    ``{pod_id}`` and ``{date}`` filled in.

    Raises:
        JobError: (``input``) the job id has nothing usable in a key, or the result is not a safe key prefix.
    """
    safe_id = re.sub(r"[^A-Za-z0-9._=-]+", "-", job_id or "").strip("-.")
    if not safe_id:
        raise JobError(f"the job id {job_id!r} cannot be part of a key", kind="input")
    if "{job_id}" not in template:
        raise JobError(f"SYNCBRIDGE_JOB_KEY must contain {{job_id}} (two jobs would share keys), got {template!r}",
                       kind="input")
    marks = {"prefix": "SBJOBPREFIXMARK", "job_id": "SBJOBIDMARK"}
    try:
        out = render_prefix(_JOB_FIELDS.sub(lambda m: marks[m.group(1)], template), pod_id=pod_id,
                            now=now or dt.datetime.now())
        out = out.replace(marks["prefix"], prefix).replace(marks["job_id"], safe_id)
        out = "/".join(part for part in out.split("/") if part)
        render_prefix(out, pod_id=pod_id, now=dt.datetime.now())  # the segment checks, once filled in
    except UnsafePathError:
        out = None
    if not out:
        raise JobError(f"SYNCBRIDGE_JOB_KEY {template!r} does not render to a key prefix for job {job_id!r}",
                       kind="input")
    return out


@attrs.frozen
class JobBucket:
    """A bucket of the job's own (RunPod's ``s3Config``); the secret is in ``remote`` and never shown."""

    remote: RemoteConfig

    @classmethod
    def from_s3_config(cls, s3_config: Mapping[str, Any], *, base: Config) -> "JobBucket":
        """Read RunPod's ``s3Config`` (``endpointUrl``, ``accessId``, ``accessSecret``, ``bucketName``).

        Raises:
            JobError: (``bucket``) a field missing or invalid, named as the request names it.
        """
        if not isinstance(s3_config, Mapping):
            raise JobError("s3Config must be an object with endpointUrl, accessId, accessSecret and bucketName",
                           kind="bucket")
        missing = [name for name in S3_CONFIG_FIELDS if not isinstance(s3_config.get(name), str)
                   or not s3_config.get(name)]
        if missing:
            raise JobError(f"s3Config is missing {', '.join(missing)} (a string each)", kind="bucket")
        env = {setting: str(s3_config[name]).strip() for name, setting in S3_CONFIG_FIELDS.items()}
        env["R2_ENDPOINT"] = env["R2_ENDPOINT"].rstrip("/")
        env.update(HOME=str(base.state_dir), SYNCBRIDGE_STATE_DIR=str(base.state_dir),
                   SYNCBRIDGE_WORKSPACE=str(base.workspace), SYNCBRIDGE_POD_ID=base.pod_id)
        try:
            config = load_config(env, config_file=None, is_mount=lambda _p: False, hostname=lambda: base.pod_id)
        except ConfigError as exc:
            lines = [str(p) for p in exc.problems]
            text = "; ".join(lines)
            for name, setting in S3_CONFIG_FIELDS.items():  # the request's field, not the worker's setting
                text = re.sub(rf"(?:environment variable )?\b{setting}\b(?: \(or TOML key [^)]*\))?",
                              f"s3Config.{name}", text)
            raise JobError(f"invalid s3Config: {text}", kind="bucket") from None
        return cls(config.remote)

    def open(self, *, connections: int) -> Store:
        """The job's store: like the watcher's own (short timeouts, no retries of botocore's: the watcher retries)."""
        return S3Store(self.remote, max_pool_connections=connections, max_attempts=S3_MAX_ATTEMPTS,
                       connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT)


@attrs.frozen
class JobOutput:
    """One output of a job, in the bucket."""

    path: str  # relative to the watched folder: <subfolder>/<filename>
    key: str
    url: str | None = attrs.field(repr=False)  # public, else presigned: a credential for its lifetime, never logged
    size: int
    content_type: str
    checksum: str  # "md5:<hex>" (the ETag of a single PUT) or "sha256:<hex>" (of the file pushed)

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def subfolder(self) -> str:
        return self.path.rpartition("/")[0]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "url": self.url, "filename": self.filename, "subfolder": self.subfolder,
                "size": self.size, "content_type": self.content_type, "checksum": self.checksum}


class Job:
    """One job's scope on a running :class:`~syncbridge.watch.OutputWatcher` (``watcher.job(job_id)``).

    Args:
        watcher: the worker's watcher, started.
        job_id: the job's id (``job["id"]``): part of every key.
        bucket: the job's own bucket: RunPod's ``s3Config`` mapping or a :class:`JobBucket`
            (default: the watcher's).
        key_template: the job prefix (default ``config.jobs.key``, ``SYNCBRIDGE_JOB_KEY``).
        link_seconds: lifetime of a presigned link (default ``config.jobs.link_seconds``); a public URL
            (``SYNCBRIDGE_PUBLIC_URL``) is given instead for the watcher's bucket when set.

    Use as a context manager, or call :meth:`open` and :meth:`close`.
    """

    def __init__(self, watcher: Any, job_id: str, *, bucket: Mapping[str, Any] | JobBucket | None = None,
                 key_template: str | None = None, link_seconds: int | None = None) -> None:
        config: Config = watcher.config
        self.watcher = watcher
        self.job_id = job_id
        jobs = config.jobs
        self._link_seconds = int(link_seconds if link_seconds is not None else jobs.link_seconds)
        self._template = key_template if key_template is not None else jobs.key
        if bucket is not None and not isinstance(bucket, JobBucket):
            bucket = JobBucket.from_s3_config(bucket, base=config)
        self.bucket: JobBucket | None = bucket
        self.prefix = job_prefix(self._template, prefix=watcher.prefix, job_id=job_id, pod_id=config.pod_id)
        self._store: Store | None = None
        self._route: Route | None = None
        self._rels: OrderedDict[str, None] = OrderedDict()  # under the watcher's lock
        self._pushed: dict[str, PushedOutput] = {}
        self._errors: dict[str, str] = {}
        self._landed: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._hashes: dict[tuple[str, str], concurrent.futures.Future[str | None]] = {}
        self._hasher: concurrent.futures.ThreadPoolExecutor | None = None
        self._hash_lock = threading.Lock()
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> "Job":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def store(self) -> Store:
        """Where this job's outputs go (the job's own bucket, or the watcher's)."""
        assert self._store is not None, "open the job first"
        return self._store

    def open(self) -> None:
        """From now on, files finished in the watched folder are this job's.

        Raises:
            WatchError: the watcher is not running, or another job is open on it.
        """
        own = self.bucket is not None
        if own:
            self._store = self.bucket.open(connections=self.watcher.config.watch.concurrency + 2)
        else:
            self._store = self.watcher.store
        # A bucket of the job's own is never probed for conditional writes (that writes a probe object
        # into the caller's bucket): a HEAD before each first upload instead.
        self._route = Route(self._store, self.prefix, tracker=self, conditional=False if own else None,
                            early=tail_supported(self._store))
        try:
            self.watcher.open_route(self._route)
        except BaseException:
            if own:
                self._store.close()
            raise
        self._open = True
        log.info("job %s: outputs go to %s/%s", self.job_id, self._store.description, self.prefix,
                 extra={"event": "job.opened", "job_id": self.job_id})

    def close(self) -> None:
        """End the scope (files finished from now on keep the watcher's prefix); safe to call twice."""
        if self._route is not None and self._open:
            self.watcher.close_route(self._route)
            self._open = False
        if self._route is not None:
            self.watcher.drop_tails(self._route)
        if self._hasher is not None:
            self._hasher.shutdown(wait=False, cancel_futures=True)
            self._hasher = None
        # The job's own store stays open while an output of it still waits for a retry (the client is
        # closed with the last reference); one with nothing left is closed now.
        if self.bucket is not None and self._store is not None and self._route is not None:
            pending, _ = self.watcher.wait_route(self._rel_list, 0)
            if not pending:
                self._store.close()

    # -- the tracker (called by the watcher under its lock: notes only) ---------------------------

    def expect(self, rel: str) -> None:
        self._rels[rel] = None

    def finished(self, rel: str, outcome: Outcome, detail: Any) -> None:
        if outcome is Outcome.PUSHED:
            self._pushed[rel] = detail
            self._errors.pop(rel, None)
            self._landed.put(rel)
            if detail.md5 is None and detail.sha256 is None:
                self._hash_later(rel, detail)
        elif outcome in (Outcome.RETRY, Outcome.FATAL):
            self._errors[rel] = str(detail)
        elif outcome is Outcome.GONE:
            self._pushed.pop(rel, None)  # deleted before it was pushed again: not an output any more

    def _rel_list(self) -> list[str]:
        return list(self._rels)

    # -- results ----------------------------------------------------------------------------------

    def add(self, rel: str) -> bool:
        """Make ``rel`` (relative to the watched folder) an output of this job whenever it was written
        (an output the app reports that the scope did not see written). False if it is not a file to push."""
        assert self._route is not None, "open the job first"
        return self.watcher.add_to_route(self._route, rel)

    def pushed_count(self) -> int:
        """How many of the job's files are in the bucket so far."""
        with self.watcher._lock:
            return len(self._pushed)

    def expected(self) -> list[str]:
        """The files of this job so far (relative paths), in the order they were first seen."""
        with self.watcher._lock:
            return list(self._rels)

    def next_landed(self, timeout: float) -> JobOutput | None:
        """The next output pushed (in the order they land), or None after ``timeout`` seconds."""
        try:
            rel = self._landed.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        with self.watcher._lock:
            pushed = self._pushed.get(rel)
        return self._output(rel, pushed, wait_hash=True) if pushed is not None else None

    def wait(self, timeout: float) -> list[JobOutput]:
        """Close the scope, wait until each of the job's files is in the bucket, and return them in the order
        they were first seen.

        Raises:
            JobError: (``not_pushed``) some are not in the bucket within ``timeout`` seconds or fail for good;
                ``details`` lists each (``path``, ``error``), the message names them.
        """
        deadline = time.monotonic() + timeout
        if self._route is not None and self._open:
            self.watcher.close_route(self._route, timeout=max(0.1, min(5.0, timeout)))
            self._open = False
        pending, failed = self.watcher.wait_route(self._rel_list, max(0.0, deadline - time.monotonic()))
        if self._route is not None and not pending:
            self.watcher.drop_tails(self._route)
        with self.watcher._lock:
            rels = list(self._rels)
            pushed = dict(self._pushed)
            errors = dict(self._errors)
        missing = [rel for rel in rels if rel in pending or rel in failed or (rel not in pushed and
                                                                             (self.watcher.directory / rel).exists())]
        if missing:
            if self.bucket is not None:  # the settings to fix are the request's, not the worker's
                for rel, text in errors.items():
                    for name, setting in S3_CONFIG_FIELDS.items():
                        text = text.replace(setting, f"s3Config.{name}")
                    errors[rel] = text
            details = [{"path": rel, "error": errors.get(rel) or ("not pushed within the time allowed" if rel in
                                                                  pending else "not pushed")} for rel in missing]
            shown = ", ".join(f"{d['path']} ({d['error']})" for d in details[:5])
            more = f" and {len(details) - 5} more" if len(details) > 5 else ""
            raise JobError(f"{len(missing)} output(s) of job {self.job_id} not pushed to "
                           f"{self.store.description}: {shown}{more}", kind="not_pushed", details=details)
        return [self._output(rel, pushed[rel], wait_hash=True, deadline=deadline) for rel in rels if rel in pushed]

    def _hash_later(self, rel: str, pushed: PushedOutput) -> None:
        """sha256 of a file pushed as a multipart object (its ETag is no MD5), off the watcher's threads."""
        with self._hash_lock:
            if self._hasher is None:
                self._hasher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="syncbridge-job-hash")
            path = Path(self.watcher.directory) / rel
            self._hashes[(rel, pushed.key)] = self._hasher.submit(_sha256_if_unchanged, path, pushed.size)

    def _output(self, rel: str, pushed: PushedOutput, *, wait_hash: bool, deadline: float | None = None) -> JobOutput:
        if pushed.md5:
            checksum = f"md5:{pushed.md5}"
        elif pushed.sha256:
            checksum = f"sha256:{pushed.sha256}"
        else:
            with self._hash_lock:
                future = self._hashes.get((rel, pushed.key))
            digest = None
            if future is not None and wait_hash:
                with contextlib.suppress(Exception):
                    digest = future.result(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
            if digest is None:
                digest = _sha256_if_unchanged(Path(self.watcher.directory) / rel, pushed.size)
            checksum = f"sha256:{digest}" if digest else ""
        return JobOutput(rel, pushed.key, self._url(pushed.key), pushed.size, pushed.content_type, checksum)

    def _url(self, key: str) -> str | None:
        settings = self.watcher.config.watch
        if self.bucket is None and settings.public_url:
            return public_url(settings.public_url, key)
        return self.store.presign_get(key, expires=self._link_seconds)


def _sha256_if_unchanged(path: Path, size: int) -> str | None:
    try:
        if os.stat(path).st_size != size:
            return None
        got, digest = sha256_file(path)
    except OSError:
        return None
    return digest if got == size else None

