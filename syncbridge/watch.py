"""Real-time output push: every finished file in the output folder goes to the bucket at once.

:class:`OutputWatcher` runs in one process with a few threads:

* the **reader** blocks on inotify (:class:`~syncbridge.inotify_watch.TreeWatcher`)
  and only enqueues: a file is ready on ``IN_CLOSE_WRITE`` or ``IN_MOVED_TO``;
* the **scanner** walks the folder at start-up (catch-up), after an inotify
  overflow, for new subfolders, for subtrees that could not be watched, and
  periodically on network file systems;
* the **dispatcher** hands ready files to a bounded pool of **workers** that
  share one store client (one boto3 client, one connection pool); an optional
  batch delay is a deadline fixed at the first event, never a debounce;
* the **maintainer** publishes ``<state_dir>/watch/status.json`` about once a
  second for ``syncbridge status``.

Every file's state is in the :class:`~syncbridge.journal.Journal`, so after a
crash (``kill -9``) the next start pushes what was pending and skips what is
already in the bucket.

Uploading one file (:meth:`OutputWatcher._push_one`):

1. ``lstat`` before; a file unchanged since its recorded upload is skipped.
2. The key is ``<prefix>/<relpath>`` (segments in rclone's Ctl encoding). A key
   this watcher uploaded before (its journal holds the ETag) is overwritten
   only if the object is still the one we put there; any other existing object
   with different content is kept, and the file goes to a sibling key
   (``name.~<md5 prefix>.ext``, logged and journalled). First uploads use
   ``If-None-Match: *`` where the store enforces it, else HEAD before PUT.
3. ``lstat`` after: if the file changed during the upload, it is uploaded again,
   so the bucket never keeps a torn or stale version as the final one.

Retryable errors (connection refused, timeouts, 5xx, 429) back off
exponentially with jitter and retry without limit (while the store is failing,
one probe at a time); fatal ones (403, NoSuchBucket) are logged with the key,
journalled as failed and retried every few minutes, and the watcher keeps
running. :meth:`OutputWatcher.stop` stops accepting, pushes what is pending
until the drain deadline and records the rest.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import heapq
import json
import logging
import os
import queue
import random
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from .batching import Action, DeadlineBatcher, percentile
from .config import ALWAYS_EXCLUDED, ALWAYS_EXCLUDED_DIRS, Config
from .errors import PreconditionFailedError, SourceChangedError, StoreError, SyncBridgeError, UnsafePathError
from .fleet import Heartbeat
from .fsutil import is_network_fs, make_output_dir, mount_fstype, open_for_writing, private_state_dir
from .inotify_watch import TreeWatcher, read_mounts, scan_tree
from .retry import backoff_delay
from .journal import DONE, FAILED, JOURNAL_NAME, Journal, Row
from .keys import PathFilter, object_key, public_url, render_prefix, sibling_key
from .mediatypes import content_type
from .notify import Notifier, PushedOutput, Webhook
from .store import LocalStore, PutHeaders, S3Store, Store

__all__ = ["OutputWatcher", "WatchStats", "DrainResult", "WatchError", "run_watch", "status_path", "journal_path",
           "read_status", "STATUS_NAME", "ORIGIN_META", "PushedOutput"]

log = logging.getLogger(__name__)

STATUS_NAME = "status.json"
LOCK_NAME = "watch.lock"
ORIGIN_META = "syncbridge-origin"  # object metadata: which pod put it (only used to adopt identical objects)
NETWORK_RESCAN_SECONDS = 60.0
FALLBACK_RESCAN_SECONDS = 5.0
FATAL_RETRY_SECONDS = 300.0
FATAL_REPEAT_SECONDS = 60.0  # the same setting-named failure is logged in full at most this often
SETTLE_SECONDS = 0.3  # wait after a file changed during its upload, unless its close event comes first
MAX_SETTLE_SECONDS = 30.0
KEY_SPACING_SECONDS = 1.0
# While the store is failing, one request probes it at most this often (cheap, and the
# backlog starts moving within this long of the store coming back).
STORE_PROBE_MAX_SECONDS = 2.0
STATUS_INTERVAL = 1.0
STATUS_HEARTBEAT = 5.0
LATENCY_WINDOW = 512
RECENT_OUTPUTS = 20  # the last outputs shown in status --json
LEFT_OUT_KEPT = 1000  # names of files the filters left out, kept for status (the count has no cap)
WRITERS_TTL = 0.1  # seconds a look at /proc for open writers is reused
INMEMORY_MAX = 4 * 1024 * 1024
# The watcher's own retry loop is in charge (with backoff, without limit); botocore
# retries would hide failures and stretch a SIGTERM drain past its deadline.
S3_MAX_ATTEMPTS = 1
S3_CONNECT_TIMEOUT = 2.0
S3_READ_TIMEOUT = 20.0


class WatchError(SyncBridgeError, RuntimeError):
    """The watcher cannot start (folder missing, another watcher running, the bucket refuses us, ...).

    ``setting`` names the variable to fix when one is at fault (``R2_SECRET_KEY``...).
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


def status_path(state_dir: Path) -> Path:
    return Path(state_dir) / "watch" / STATUS_NAME


def journal_path(state_dir: Path) -> Path:
    return Path(state_dir) / "watch" / JOURNAL_NAME


@attrs.frozen
class WatchStats:
    """A snapshot of the watcher, cheap to take from any thread."""

    state: str  # starting, running, draining, stopped
    pending: int  # files waiting or being uploaded (fatal failures not included)
    in_flight: int
    oldest_pending_age: float | None  # seconds
    uploaded: int  # files uploaded since start
    skipped: int  # files found already in the bucket (unchanged, or identical content)
    failed: int  # files currently failing fatally (403, NoSuchBucket...)
    retries: int  # retryable errors since start
    collisions: int  # files sent to a sibling key since start
    bytes_uploaded: int
    last_latency: float | None  # seconds from the event (or scan) to the object in the bucket
    p95_latency: float | None
    started_at: float  # wall clock
    updated_at: float
    pid: int
    directory: str
    prefix: str
    store: str
    watches: int
    unwatched: tuple[str, ...]
    catch_up_done: bool
    last_error: str | None
    left_out: int = 0  # files the user's filters (watch.include / watch.exclude) left out since start
    left_out_examples: tuple[str, ...] = ()  # the latest few of them
    recent: tuple[PushedOutput, ...] = ()  # the last outputs pushed, newest last
    waiting_to_finish: int = 0  # files found by a scan, waiting for their close or to be quiet

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["unwatched"] = list(self.unwatched)
        data["left_out_examples"] = list(self.left_out_examples)
        data["recent"] = [o.to_dict() for o in self.recent]
        return data


@attrs.frozen
class DrainResult:
    """What :meth:`OutputWatcher.stop` achieved."""

    pushed: int  # files uploaded during the drain
    pending: int  # files left for the next start (recorded in the journal)
    failed: int  # files failing fatally (recorded in the journal)
    seconds: float
    uploaded_total: int = 0  # files uploaded since start
    unscanned: bool = False  # a folder scan did not finish: files in it may not be known yet
    left_out: int = 0  # files the user's filters left out since start (not a failure: they asked)
    undelivered: int = 0  # outputs the webhook did not take before the stop (they are in the bucket)

    @property
    def ok(self) -> bool:
        return self.pending == 0 and self.failed == 0 and not self.unscanned

    def line(self) -> str:
        head = "watch stopped: everything pushed" if self.ok else "watch stopped: NOT everything pushed"
        text = (f"{head} ({self.pushed} pushed while draining in {self.seconds:.1f}s, {self.uploaded_total} since "
                f"start; {self.pending} pending and {self.failed} failed recorded in the journal for the next start)")
        if self.unscanned:
            text += "; a folder scan did not finish in time: the next start's catch-up scan pushes what it missed"
        if self.left_out:
            text += (f"; {self.left_out} files left out by watch.include / watch.exclude "
                     f"(SYNCBRIDGE_WATCH_INCLUDE / SYNCBRIDGE_WATCH_EXCLUDE)")
        if self.undelivered:
            text += f"; {self.undelivered} outputs not delivered to the webhook"
        return text


@attrs.define(eq=False)
class _Item:
    rel: str
    seen_wall: float  # when it first became pending (oldest pending age)
    event_mono: float  # latest event that made it ready (latency)
    trust_owner: bool  # may overwrite the object its journal row says we put there
    attempts: int = 0
    not_before: float = 0.0
    dirty: bool = False  # changed again while being uploaded
    fatal: bool = False
    changes: int = 0  # uploads in a row during which the file changed (it is still being written)
    last_put: float = 0.0  # when its last upload ended (R2 takes about one write per second per key)
    why: str = ""  # why it is waiting: retry, settle, quiet or spacing
    closed: bool = False  # a close (or rename into place) said it is finished; a scan alone does not
    quiet_sig: tuple[int, int, int, int] | None = None  # the stat last seen while waiting to be quiet
    quiet_since: float = 0.0  # since when (monotonic) it has looked like that


class _Outcome:
    PUSHED, SKIPPED, CHANGED, GONE, RETRY, FATAL, UNFINISHED = range(7)


def _sig(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def _matches(row: Row | None, st: os.stat_result) -> bool:
    return (row is not None and row.state == DONE and row.key is not None and row.size == st.st_size
            and row.mtime_ns == st.st_mtime_ns and row.ino == st.st_ino)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _conditional_for(store: Store, mode: str) -> bool | None:
    if mode == "on":
        return True
    if mode == "off":
        return False
    return None  # auto: probe on first use


class OutputWatcher:
    """Push every finished file below a folder to ``<bucket>/<prefix>/<relpath>`` as it appears.

    Args:
        config: the configuration (``config.watch`` has the settings).
        directory: the folder to watch (default ``config.watch.dir``, created only when it lies in
            the existing workspace, ``general.workspace``); an explicit folder must exist.
        prefix: the key prefix template (default ``config.watch.prefix``; ``{pod_id}``
            and ``{date}`` are filled in).
        store: the store to push to (default: opened from ``config.remote``, with one
            connection pool sized for ``config.watch.concurrency``).
        check_bucket: list the bucket once at :meth:`start` and raise :class:`WatchError` when it
            refuses us (``syncbridge start`` has checked it already and passes False).
        on_pushed: called with a :class:`~syncbridge.notify.PushedOutput` for each output once
            it is in the bucket (key, size, md5, content type, latency, url), on a thread of its
            own: a slow callback never slows an upload. More with :meth:`add_listener`.

    What is pushed: every finished regular file below the folder, except what can never be
    an output (:data:`~syncbridge.config.ALWAYS_EXCLUDED`: ``temp/``, hidden names, partial
    downloads) and what ``watch.include`` / ``watch.exclude`` leave out (counted in
    :meth:`stats`). A file is finished when its close (or rename into place) is seen; a file
    found by a scan instead is pushed once no process has it open for writing or it has been
    quiet for ``watch.quiet_seconds``, and an upload whose file changes while it is read is
    abandoned, so a prefix of a file is never published.

    Use as a context manager (``__exit__`` drains with ``config.watch.drain_seconds``),
    or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, config: Config, *, directory: str | os.PathLike[str] | None = None, prefix: str | None = None,
                 store: Store | None = None, on_pushed: Callable[[PushedOutput], Any] | None = None,
                 check_bucket: bool = True) -> None:
        self.config = config
        self.settings = config.watch
        self._explicit_dir = directory is not None
        self._check_bucket = check_bucket
        self.directory = Path(os.path.abspath(directory if directory is not None else config.watch.dir))
        self.template = (prefix if prefix is not None else config.watch.prefix).strip("/")
        self._store = store
        self._own_store = store is None
        self._never = PathFilter((), ALWAYS_EXCLUDED)  # never an output: not counted as left out
        self._users = PathFilter(config.watch.include, config.watch.exclude)
        self._dirs = PathFilter((), (*config.watch.exclude, *ALWAYS_EXCLUDED_DIRS))
        self._left_out: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._left_out_count = 0
        self._left_out_seen: set[int] = set()
        self._recent: collections.deque[PushedOutput] = collections.deque(maxlen=RECENT_OUTPUTS)
        self._listeners: list[Callable[[PushedOutput], Any]] = [on_pushed] if on_pushed is not None else []
        self._notifier: Notifier | None = None
        self._writers: tuple[float, float, set[str] | None] = (-1e9, 0.0, None)
        self._writers_lock = threading.Lock()
        self._local_fs = True  # whether /proc can tell who writes a file (not on a network file system)
        self._rand = random.Random()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._ready: collections.OrderedDict[str, _Item] = collections.OrderedDict()
        self._waiting: dict[str, _Item] = {}
        self._waiting_heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._batch: DeadlineBatcher[str] = DeadlineBatcher(delay=config.watch.batch_delay)
        self._batched: dict[str, _Item] = {}
        self._inflight: dict[str, _Item] = {}
        self._failed: dict[str, _Item] = {}
        self._recent_puts: dict[str, float] = {}  # key spacing: when each file's last upload ended
        self._to_journal: list[tuple[str, float]] = []
        self._to_forget: list[str] = []
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._counters = collections.Counter()
        self._last_latency: float | None = None
        self._last_error: str | None = None
        self._store_failures = 0
        self._gate_until = 0.0
        self._last_outage_log = 0.0
        self._state = "new"
        self._accepting = False
        self._draining = False
        self._drain_deadline: float | None = None
        self._stop_event = threading.Event()
        self._scan_abort = threading.Event()  # set when a drain gives up on folder scans
        self._scan_queue: queue.SimpleQueue[tuple[str, bool] | None] = queue.SimpleQueue()
        self._scans_pending = 0
        self._catch_up_done = False
        self._sync_requested = 0
        self._sync_done = 0
        self._work: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._conditional: bool | None = None
        self._conditional_lock = threading.Lock()
        self._tree: TreeWatcher | None = None
        self._journal: Journal | None = None
        self._lock_fd: int | None = None
        self._started_at = 0.0
        self._rescan_every = 0.0
        self._prefix = ""
        self.origin = config.pod_id
        self.fatal_retry_seconds = FATAL_RETRY_SECONDS  # how long a fatally failing file waits before a retry
        self._heartbeat: Heartbeat | None = None
        self._fatal_seen: dict[str, tuple[float, int]] = {}  # failure kind -> (last logged, files since)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "OutputWatcher":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Open the journal and store, watch the folder, start the catch-up scan and the threads.

        Raises:
            WatchError: the folder is missing (when given explicitly) or not a folder, or another
                watcher already runs with this state directory.
        """
        if self._state != "new":
            raise WatchError("this OutputWatcher was already started")
        self._state = "starting"
        try:
            self._start()
        except BaseException:
            self._release()
            self._state = "stopped"
            raise
        # Fleet heartbeat (<fleet.prefix>/pods/<pod_id>.json) for `syncbridge fleet status`.
        # It shares the watcher's store (one boto3 client: a second costs ~15 MB of RSS);
        # the client is thread-safe and its short timeouts keep a beat from holding up a drain.
        if self.config.fleet.heartbeat_seconds > 0:
            self._heartbeat = Heartbeat(self._store, pod_id=self.config.pod_id, prefix=self.config.fleet.prefix,
                                        interval=self.config.fleet.heartbeat_seconds,
                                        stats=self._heartbeat_stats, role="watch")
            self._heartbeat.start()

    def _start(self) -> None:
        if not self.directory.exists() and not self._explicit_dir and \
                make_output_dir(self.directory, Path(self.config.workspace)):
            log.info("created the output folder %s", self.directory, extra={"event": "watch.created_dir"})
        if not self.directory.exists():
            # Not made outside the pod's workspace: a library that creates /workspace/ComfyUI/output on a
            # laptop because a variable was unset hides the mistake.
            named = "" if self._explicit_dir else " (COMFYUI_OUTPUT_DIR)"
            raise WatchError(f"cannot watch {self.directory}{named}: no such folder", setting=None if
                             self._explicit_dir else "COMFYUI_OUTPUT_DIR")
        if not self.directory.is_dir():
            raise WatchError(f"cannot watch {self.directory}: not a folder")
        self.directory = Path(os.path.realpath(self.directory))
        watch_dir = private_state_dir(self.config.state_dir, "watch")
        self._take_lock(watch_dir / LOCK_NAME)
        try:
            self._prefix = render_prefix(self.template, pod_id=self.config.pod_id, now=dt.datetime.now(),
                                         hostname=os.uname().nodename)
        except UnsafePathError as exc:
            raise WatchError(f"invalid key prefix {self.template!r}: {exc}") from exc
        self._journal = Journal(watch_dir / JOURNAL_NAME, root=str(self.directory), template=self.template)
        if self._store is None:
            self._store = self._open_store()
        if self._check_bucket:
            self._check_store(self._store, self._prefix)
        self._conditional = _conditional_for(self._store, self.settings.conditional)
        rescan = self.settings.rescan_seconds
        if rescan is None:
            fstype = mount_fstype(str(self.directory), read_mounts()) or ""
            rescan = NETWORK_RESCAN_SECONDS if is_network_fs(fstype) else 0.0
            if rescan:
                log.info("%s is on a network file system (%s): rescanning every %.0fs for other machines' writes",
                         self.directory, fstype, rescan, extra={"event": "watch.network_fs"})
        self._rescan_every = rescan
        self._local_fs = not is_network_fs(mount_fstype(str(self.directory), read_mounts()) or "")
        webhook = None
        if self.settings.webhook_url:
            webhook = Webhook(self.settings.webhook_url, pod_id=self.config.pod_id)
        if webhook is not None or self._listeners:
            self._notifier = Notifier(self._listeners, webhook)
        self._started_at = time.time()
        self._tree = TreeWatcher(self.directory, dir_selected=self._dir_selected)
        self._tree.watch_tree("")  # watches first, then the catch-up scan: nothing falls in between
        self._accepting = True
        self._state = "running"
        # Files the journal says are pending (or failed) first: they are the oldest.
        rows = self._journal.rows(states=("pending", FAILED))
        for rel, row in rows.items():
            try:
                st = os.lstat(self.directory / rel)
            except OSError:
                continue  # gone: the catch-up scan's compaction drops the row
            self._mark_ready(rel, trust_owner=row.ino == st.st_ino, now=time.monotonic(), seen_wall=row.first_seen)
        self._scan_queue.put(("", True))
        self._scans_pending = 1
        workers = max(1, self.settings.concurrency)
        targets = [("reader", self._reader_loop), ("scanner", self._scanner_loop),
                   ("dispatcher", self._dispatch_loop), ("maintainer", self._maintain_loop)]
        targets += [(f"upload-{i}", self._worker_loop) for i in range(workers)]
        for name, target in targets:
            # Daemon threads: an upload stuck past the drain deadline must not keep the process alive.
            thread = threading.Thread(target=target, name=f"syncbridge-watch-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("watching %s -> %s/%s (%d folders watched, %d uploads at once%s)", self.directory,
                 self._store.description, self._prefix, self._tree.watch_count, workers,
                 f", rescan every {self._rescan_every:.0f}s" if self._rescan_every else "",
                 extra={"event": "watch.started"})
        self._write_status()

    def _heartbeat_stats(self) -> dict[str, Any]:
        data = self.stats().to_dict()
        data.pop("recent", None)  # the fleet view wants counters, not the last outputs
        return data

    def add_listener(self, listener: Callable[[PushedOutput], Any]) -> None:
        """Call ``listener`` with each output pushed from now on (before :meth:`start` only)."""
        if self._state != "new":
            raise WatchError("add listeners before the watcher starts")
        self._listeners.append(listener)

    @staticmethod
    def _check_store(store: Store, prefix: str) -> None:
        """One listing under the prefix: a bucket that refuses us (a wrong key or secret, a missing bucket)
        stops the start at once, naming the setting, instead of failing every output for hours. A token
        that may write but not list (AccessDenied) and a bucket that does not answer yet are only said:
        the uploads tell, and outputs wait in the journal."""
        try:
            store.check_bucket(prefix=f"{prefix}/" if prefix else "")
        except StoreError as exc:
            if exc.code == "AccessDenied":
                log.warning("the token may not list %s (%s); watching anyway, each upload will tell", prefix or "/",
                            exc, extra={"event": "watch.list_denied"})
            elif not exc.retryable:
                raise WatchError(f"cannot push to {store.description}: {exc}", setting=exc.setting) from exc
            log.warning("the bucket does not answer yet (%s); watching anyway: outputs wait in the journal and are "
                        "pushed when it does", exc, extra={"event": "watch.store_unreachable"})

    def _current_prefix(self) -> str:
        """The prefix for a new key: ``{date}`` follows the clock, so a watcher running past
        midnight files the next day's outputs under the next day (a rewrite keeps its key)."""
        if "{date" in self.template:
            self._prefix = render_prefix(self.template, pod_id=self.config.pod_id, now=dt.datetime.now(),
                                         hostname=os.uname().nodename)
        return self._prefix

    def _open_store(self) -> Store:
        remote = self.config.remote
        if remote.is_local:
            return LocalStore(remote.local_bucket_dir, lock_dir=self.config.state_dir / "locks")
        store = S3Store(remote, max_pool_connections=self.settings.concurrency + 2, max_attempts=S3_MAX_ATTEMPTS,
                        connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT)
        # botocore memoizes every JSON file it read to build the client (endpoints, partitions,
        # defaults: about 2 MB); the client keeps what it needs, so a long-lived daemon lets go
        # of the memo (a later lookup would just read the file again).
        cache = getattr(getattr(store.client, "_loader", None), "_cache", None)
        if isinstance(cache, dict):
            cache.clear()
        return store

    def _take_lock(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = ""
            with contextlib.suppress(OSError, ValueError):
                other = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WatchError(f"another watcher{other} is already running with state directory "
                                 f"{self.config.state_dir}; run one watcher per state directory") from None
            raise WatchError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release(self) -> None:
        if self._tree is not None:
            self._tree.close()
        if self._journal is not None:
            self._journal.close()
        if self._own_store and self._store is not None:
            self._store.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def stop(self, *, drain_seconds: float | None = None) -> DrainResult:
        """Stop accepting new files, push what is pending for up to ``drain_seconds``, record the rest.

        Files whose events were already queued when ``stop`` was called are
        still taken in. Returns how it went; safe to call more than once.
        """
        if self._state in ("new", "stopped"):
            return DrainResult(0, 0, len(self._failed), 0.0, self._counters["uploaded"], left_out=self._left_out_count)
        drain = self.settings.drain_seconds if drain_seconds is None else max(0.0, drain_seconds)
        t0 = time.monotonic()
        uploaded_before = self._counters["uploaded"]
        # 1. Stop accepting: the reader takes in what the kernel already queued (those
        #    files were finished before the stop), then exits; the scanner stops.
        with self._cond:
            self._state = "draining"
        self._stop_event.set()
        if self._tree is not None:
            self._tree.wake()
        # The reader first: the new folders among its last events queue scans, and files made
        # in them before their watch existed have no event of their own. Then the scanner
        # finishes every scan queued so far (its sentinel goes in after the reader is done).
        unscanned = False
        for suffix in ("-reader", "-scanner", "-maintainer"):
            if suffix == "-scanner":
                self._scan_queue.put(None)
            for thread in self._threads:
                if thread.name.endswith(suffix):
                    budget = max(0.2, min(1.0, drain / 4)) if suffix != "-scanner" else \
                        max(0.2, min(drain / 2, t0 + drain - time.monotonic()))
                    thread.join(timeout=budget)
                    if suffix == "-scanner" and thread.is_alive():
                        unscanned = True
                        self._scan_abort.set()
                        log.warning("a folder scan did not finish before the drain deadline",
                                    extra={"event": "watch.scan_unfinished"})
        if not self._catch_up_done:
            unscanned = True  # stopped before the start-up scan went through the whole folder
        with self._cond:
            self._accepting = False
        # 2. Drain: everything waiting becomes due now; the dispatcher runs until empty or the deadline.
        with self._cond:
            self._draining = True
            self._drain_deadline = t0 + drain
            for rel in list(self._batched):
                self._ready[rel] = self._batched.pop(rel)
            self._batch.take(now=0, force=True)
            for rel, item in list(self._waiting.items()):
                self._ready[rel] = item
            self._waiting.clear()
            self._waiting_heap.clear()
            self._gate_until = 0.0
            self._cond.notify_all()
            # A file still being written (found by a scan, not closed) is not waited for: it stays
            # pending in the journal rather than going out as a prefix of itself.
            while (self._ready or self._inflight or any(i.why != "quiet" for i in self._waiting.values())) \
                    and time.monotonic() < self._drain_deadline:
                self._cond.wait(timeout=max(0.005, self._drain_deadline - time.monotonic()))
            left = {**self._ready, **self._waiting, **self._inflight}
            failed = len(self._failed)
            self._state = "stopped"
            self._cond.notify_all()
        for _ in self._threads:
            self._work.put(None)
        # 3. Record the rest (most rows exist already; this catches the newest).
        journal = self._journal
        if journal is not None and not journal.closed:
            with contextlib.suppress(Exception):
                journal.mark_pending([(rel, item.seen_wall) for rel, item in left.items()])
                self._flush_journal()
        undelivered = 0
        if self._notifier is not None:
            # What is left of the drain budget, at least a moment: the outputs are in the bucket either way.
            undelivered = self._notifier.close(max(0.2, t0 + drain - time.monotonic()))
        result = DrainResult(self._counters["uploaded"] - uploaded_before, len(left), failed,
                             time.monotonic() - t0, self._counters["uploaded"], unscanned, self._left_out_count,
                             undelivered)
        self._write_status(final=True)
        if self._heartbeat is not None:
            # Before the store closes, and within what is left of the drain budget (a spot pod's 5 s).
            self._heartbeat.stop(timeout=max(0.1, min(0.5, t0 + drain - time.monotonic())))
        self._release()
        for rel in list(left)[:20]:
            log.warning("not pushed before the drain deadline (journalled for the next start): %s", rel,
                        extra={"event": "watch.left_pending", "path": rel})
        return result

    # -- queries -------------------------------------------------------------------------------

    def stats(self) -> WatchStats:
        """A consistent snapshot; cheap and safe to call from any thread."""
        with self._lock:
            pending_items = [*self._ready.values(), *self._waiting.values(), *self._batched.values(),
                             *self._inflight.values()]
            pending = len(pending_items)
            oldest = min((i.seen_wall for i in pending_items), default=None)
            latencies = list(self._latencies)
            counters = dict(self._counters)
            in_flight = len(self._inflight)
            failed = len(self._failed)
            state = self._state
            last_latency = self._last_latency
            last_error = self._last_error
            left_out = self._left_out_count
            left_out_examples = tuple(list(self._left_out)[-5:])
            recent = tuple(self._recent)
            unfinished = sum(1 for i in self._waiting.values() if i.why == "quiet")
        tree = self._tree
        now = time.time()
        return WatchStats(
            state=state, pending=pending, in_flight=in_flight,
            oldest_pending_age=None if oldest is None else max(0.0, now - oldest),
            uploaded=counters.get("uploaded", 0), skipped=counters.get("skipped", 0), failed=failed,
            retries=counters.get("retries", 0), collisions=counters.get("collisions", 0),
            bytes_uploaded=counters.get("bytes", 0), last_latency=last_latency,
            p95_latency=percentile(latencies, 0.95), started_at=self._started_at, updated_at=now, pid=os.getpid(),
            directory=str(self.directory), prefix=self._prefix,
            store=self._store.description if self._store is not None else "",
            watches=tree.watch_count if tree is not None else 0,
            unwatched=tree.unwatched_snapshot() if tree is not None else (),
            catch_up_done=self._catch_up_done, last_error=last_error, left_out=left_out,
            left_out_examples=left_out_examples, recent=recent, waiting_to_finish=unfinished)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every file known so far is pushed (True) or ``timeout`` seconds pass (False).

        A file failing fatally (403, NoSuchBucket) is not pushed: while one is
        waiting for its retry, this waits for the whole ``timeout``.

        "Known" includes events the kernel has queued before this call: the
        reader is woken to take them in first.
        """
        deadline = time.monotonic() + timeout
        tree = self._tree
        with self._cond:
            self._sync_requested += 1
            ticket = self._sync_requested
        if tree is not None and self._accepting:
            tree.wake()
        with self._cond:
            while True:
                caught_up = self._sync_done >= ticket or not self._accepting
                idle = (caught_up and self._catch_up_done and self._scans_pending == 0 and not self._ready
                        and not self._waiting and not self._batched and not self._inflight)
                if idle and not self._failed:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.5))

    def rescan(self) -> None:
        """Scan the whole folder again (as after an inotify overflow)."""
        with self._cond:
            self._scans_pending += 1
        self._scan_queue.put(("", True))

    # -- intake ---------------------------------------------------------------------------------

    def _dir_selected(self, rel: str) -> bool:
        return not self._dirs.dir_excluded(rel)

    def _selected(self, rel: str) -> bool:
        """Whether a file is one to push; a file the user's filters leave out is counted, never silent."""
        if self._never.excluded(rel):
            return False
        if self._users(rel):
            return True
        with self._lock:
            digest = hash(rel)  # every file counted once, however often rescans find it (names: the last few)
            known = digest in self._left_out_seen
            if not known:
                self._left_out_seen.add(digest)
                self._left_out_count += 1
                self._left_out[rel] = None
                if len(self._left_out) > LEFT_OUT_KEPT:
                    self._left_out.popitem(last=False)
            first = self._left_out_count == 1 and not known
        if not known:
            (log.info if first else log.debug)(
                "not pushing %s: left out by watch.include / watch.exclude (SYNCBRIDGE_WATCH_INCLUDE / "
                "SYNCBRIDGE_WATCH_EXCLUDE)%s", rel, "; further files left out are counted in status" if first else "",
                extra={"event": "watch.left_out", "path": rel})
        return False

    def _mark_ready(self, rel: str, *, trust_owner: bool, now: float, seen_wall: float | None = None,
                    closed: bool = False) -> None:
        """A file to push (from an event, a scan or the journal). Cheap: only enqueues.

        ``closed``: its close (or rename into place) was seen, so it is finished; a file a
        scan found may still be being written, and :meth:`_push_one` waits for it."""
        with self._cond:
            if not self._accepting:
                return
            item = self._inflight.get(rel)
            if item is not None:
                item.dirty = True  # changed while being uploaded: push again when this upload ends
                item.event_mono = now
                item.closed = item.closed or closed
                return
            item = self._ready.get(rel) or self._batched.get(rel)
            if item is not None:
                item.event_mono = now
                item.closed = item.closed or closed
                return
            item = self._waiting.get(rel)
            if item is not None and item.why not in ("settle", "quiet"):
                item.event_mono = now  # in a retry backoff, or spacing writes to one key: keep waiting
                item.closed = item.closed or closed
                return
            if item is not None and item.why == "quiet" and not closed:
                return  # a scan found it again: it still waits to be quiet
            item = self._waiting.pop(rel, None) or self._failed.pop(rel, None)
            if item is not None:  # a new event cuts a settle or quiet wait, or a fatal error's wait, short
                item.event_mono, item.not_before, item.fatal = now, 0.0, False
                item.closed = closed  # a scan finding it again says nothing of a close seen long ago
                self._ready[rel] = item
                self._cond.notify_all()
                return
            item = _Item(rel, seen_wall or time.time(), now, trust_owner, closed=closed)
            self._to_journal.append((rel, item.seen_wall))
            last_put = self._recent_puts.get(rel)
            if last_put is not None and last_put + KEY_SPACING_SECONDS > now:
                item.last_put = last_put  # pushed moments ago: space the writes to its key
                self._wait(item, last_put + KEY_SPACING_SECONDS, why="spacing")
                self._cond.notify_all()
            elif self._batch.delay > 0:
                self._batched[rel] = item
                self._batch.add(rel, now=now)
            else:
                self._ready[rel] = item
            self._cond.notify_all()

    def _mark_gone(self, rel: str) -> None:
        """A file was deleted or moved away: nothing to push, and a new file of that name is a new output."""
        with self._cond:
            item = self._inflight.get(rel)
            if item is not None:
                item.dirty, item.trust_owner = True, False
                return
            for table in (self._ready, self._batched, self._waiting, self._failed):
                table.pop(rel, None)
            self._to_forget.append(rel)
            self._cond.notify_all()

    def _reader_loop(self) -> None:
        tree = self._tree
        assert tree is not None
        try:
            while True:
                stopping = self._stop_event.is_set()
                if not stopping:
                    tree.wait(None)
                # Sync requests made before this point are covered by the drain below
                # (their events were queued in the kernel before they asked).
                with self._cond:
                    covered = self._sync_requested
                changes = tree.drain()
                now = time.monotonic()
                for change in changes:
                    self._on_change(change, now)
                with self._cond:
                    self._sync_done = covered
                    self._cond.notify_all()
                if stopping:
                    return
        except Exception:  # noqa: BLE001 - a reader crash must be loud, and stop() still drains
            log.exception("the inotify reader failed; falling back to rescans", extra={"event": "watch.reader_failed"})
            self._rescan_every = self._rescan_every or FALLBACK_RESCAN_SECONDS

    def _on_change(self, change, now: float) -> None:
        action, rel = change.action, change.rel
        if action is Action.READY:
            if self._selected(rel):
                self._mark_ready(rel, trust_owner=True, now=now, closed=True)
        elif action is Action.CREATED:
            # A new hard link to a finished file (os.link(tmp, final)) has no close event.
            if not self._never.excluded(rel):
                with contextlib.suppress(OSError):
                    st = os.lstat(self.directory / rel)
                    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and self._selected(rel):
                        self._mark_ready(rel, trust_owner=True, now=now, closed=True)
        elif action is Action.GONE:
            if not self._never.excluded(rel) and self._users(rel):
                self._mark_gone(rel)
        elif action is Action.NEW_DIR:
            self._queue_scan(rel, full=False)
        elif action is Action.RESCAN:
            self._queue_scan("", full=True)
        elif action is Action.SELF_GONE:
            log.error("the watched folder %s went away; watching again when it is back", self.directory,
                      extra={"event": "watch.root_gone"})

    def _queue_scan(self, rel: str, *, full: bool) -> None:
        with self._cond:
            self._scans_pending += 1
        self._scan_queue.put((rel, full))

    def _scanner_loop(self) -> None:
        while True:
            request = self._scan_queue.get()
            if request is None:
                with self._cond:
                    self._scans_pending = 0
                    self._cond.notify_all()
                return
            rel_dir, full = request
            try:
                # Stopping: a new folder's scan still runs (its early files have no event), a full
                # rescan does not (a safety net; the next start's catch-up scan does one).
                if not (full and self._stop_event.is_set()):
                    self._scan(rel_dir, full=full)
            except Exception:  # noqa: BLE001
                log.exception("scanning %s failed", self.directory / rel_dir, extra={"event": "watch.scan_failed"})
            finally:
                first_catch_up = full and rel_dir == "" and not self._catch_up_done
                with self._cond:
                    self._scans_pending -= 1
                    if full and rel_dir == "" and not self._stop_event.is_set():
                        self._catch_up_done = True  # not when a stop cut it short or skipped it
                    self._cond.notify_all()
                if first_catch_up:
                    _trim_heap()  # what building the S3 client and the scan allocated and freed

    def _scan(self, rel_dir: str, *, full: bool) -> None:
        journal = self._journal
        assert journal is not None
        started = time.time()
        rows = journal.rows() if full else None
        seen: set[str] = set()
        count = 0
        for rel, st in scan_tree(self.directory, rel_dir, dir_selected=self._dir_selected,
                                 file_selected=self._selected, stop=self._stop_event if full else self._scan_abort):
            seen.add(rel)
            row = rows.get(rel) if rows is not None else journal.get(rel)
            if _matches(row, st):
                continue
            count += 1
            self._mark_ready(rel, trust_owner=row is not None and row.ino == st.st_ino, now=time.monotonic())
        if full and rel_dir == "" and not self._stop_event.is_set():
            removed = journal.compact(seen=seen, before=started)
            log.debug("scan of %s: %d files to push, %d stale journal rows removed", self.directory, count, removed,
                      extra={"event": "watch.scanned"})

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        journal = self._journal
        assert journal is not None
        while True:
            with self._cond:
                now = time.monotonic()
                due = self._batch.take(now=now)
                for rel in due:
                    item = self._batched.pop(rel, None)
                    if item is not None:
                        self._ready[rel] = item
                while self._waiting_heap and self._waiting_heap[0][0] <= now:
                    _, _, rel = heapq.heappop(self._waiting_heap)
                    for table in (self._waiting, self._failed):  # backoff over, or a fatal error's retry
                        item = table.get(rel)
                        if item is not None and item.not_before <= now:
                            del table[rel]
                            item.fatal = False
                            self._ready[rel] = item
                to_journal, self._to_journal = self._to_journal, []
                to_forget, self._to_forget = self._to_forget, []
                dispatch: list[_Item] = []
                if not to_journal and not to_forget:
                    limit = max(1, self.settings.concurrency)
                    if self._store_failures:  # the store is failing: one probe at a time
                        limit = 1 if now >= self._gate_until else 0
                    while self._ready and len(self._inflight) < limit:
                        rel, item = self._ready.popitem(last=False)
                        self._inflight[rel] = item
                        dispatch.append(item)
                if self._state == "stopped":
                    return
                if not (dispatch or to_journal or to_forget):
                    wake = [t for t in (self._batch.deadline,
                                        self._waiting_heap[0][0] if self._waiting_heap else None,
                                        self._gate_until if self._store_failures and self._ready else None)
                            if t is not None]
                    self._cond.wait(timeout=max(0.001, min(wake) - now) if wake else None)
                    continue
            # Journal before uploading: a row written after the upload's "done" would undo it.
            if to_forget or to_journal:
                try:
                    journal.forget(to_forget)
                    journal.mark_pending(to_journal)
                except Exception:  # noqa: BLE001 - a full disk must not stop the uploads
                    log.exception("cannot write the journal %s", journal.path, extra={"event": "watch.journal_error"})
            for item in dispatch:
                self._work.put(item)

    def _flush_journal(self) -> None:
        journal = self._journal
        with self._cond:
            to_journal, self._to_journal = self._to_journal, []
            to_forget, self._to_forget = self._to_forget, []
        if journal is not None:
            journal.forget(to_forget)
            journal.mark_pending(to_journal)

    def _worker_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                outcome, detail = self._push_one(item)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill a worker: retry, loudly
                log.exception("unexpected error pushing %s", item.rel, extra={"event": "watch.bug", "path": item.rel})
                outcome, detail = _Outcome.RETRY, f"{type(exc).__name__}: {exc}"
            self._finish(item, outcome, detail)

    def _finish(self, item: _Item, outcome: int, detail: Any) -> None:
        now = time.monotonic()
        notes: list[tuple[int, str, tuple, dict]] = []  # logged after the lock is released
        with self._cond:
            self._inflight.pop(item.rel, None)
            if outcome in (_Outcome.PUSHED, _Outcome.SKIPPED, _Outcome.CHANGED, _Outcome.GONE):
                if self._store_failures:
                    notes.append((logging.INFO, "the store answers again; resuming uploads", (),
                                  {"event": "watch.store_back"}))
                    # Their failures were the store's: retry them now, not at the end of each backoff.
                    for rel, waiting in list(self._waiting.items()):
                        if waiting.why == "retry":
                            del self._waiting[rel]
                            waiting.not_before = 0.0
                            self._ready[rel] = waiting
                self._store_failures = 0
                self._gate_until = 0.0
            if outcome in (_Outcome.PUSHED, _Outcome.SKIPPED):
                item.changes = 0
                item.attempts = 0
            if outcome in (_Outcome.PUSHED, _Outcome.CHANGED):
                item.last_put = now
                self._recent_puts[item.rel] = now
                if len(self._recent_puts) > 4096:
                    self._recent_puts = {r: t for r, t in self._recent_puts.items() if t + KEY_SPACING_SECONDS > now}
            if outcome == _Outcome.PUSHED:
                output: PushedOutput = detail
                self._counters["uploaded"] += 1
                self._counters["bytes"] += output.size
                self._latencies.append(output.latency)
                self._last_latency = output.latency
                self._recent.append(output)
                if self._notifier is not None:
                    self._notifier(output)
            elif outcome == _Outcome.SKIPPED:
                self._counters["skipped"] += 1
            elif outcome == _Outcome.RETRY:
                self._counters["retries"] += 1
                self._last_error = str(detail)
                item.attempts += 1
                self._store_failures += 1
                gate = backoff_delay(self._store_failures, cap=STORE_PROBE_MAX_SECONDS, rand=self._rand.random)
                self._gate_until = now + (min(gate, 0.2) if self._draining else gate)
                if now - self._last_outage_log >= 10:
                    self._last_outage_log = now
                    notes.append((logging.WARNING, "upload failed, retrying with backoff (%d files waiting): %s",
                                  (len(self._ready) + len(self._waiting) + 1, detail),
                                  {"event": "watch.retry", "path": item.rel}))
            elif outcome == _Outcome.FATAL:
                self._last_error = str(detail)
                item.attempts += 1
                item.fatal = True
            if outcome == _Outcome.GONE and not item.dirty:
                pass  # nothing left to push
            elif item.dirty and self._state != "stopped":
                # Changed again during the upload: push the newest content, but at most about once a
                # second to one key (R2 answers 429 beyond that; a job rewriting a file 10 times a
                # second gets its last version pushed within a second, not 10 PUTs).
                item.dirty, item.fatal = False, False
                spacing = 0.0 if self._draining or not item.last_put else item.last_put + KEY_SPACING_SECONDS - now
                if spacing > 0:
                    self._wait(item, now + spacing, why="spacing")
                else:
                    item.not_before = 0.0
                    self._ready[item.rel] = item
            elif outcome == _Outcome.UNFINISHED:
                # Found by a scan while a job writes it: its close event (or quiet) says when it is done.
                self._wait(item, now + detail, why="quiet")
            elif outcome == _Outcome.CHANGED:
                item.closed = False  # written again since its close: finished at its next close, or quiet
                # Still being written (found by a scan while a job writes it): wait longer each
                # time, so a growing video is not re-sent in a loop; its close event cuts the wait.
                item.changes += 1
                settle = min(MAX_SETTLE_SECONDS, SETTLE_SECONDS * 2 ** (item.changes - 1))
                self._wait(item, now + (0.05 if self._draining else settle), why="settle")
            elif outcome == _Outcome.RETRY:
                delay = backoff_delay(item.attempts, rand=self._rand.random)
                self._wait(item, now + (min(delay, 0.2) if self._draining else delay), why="retry")
            elif outcome == _Outcome.FATAL:
                self._failed[item.rel] = item
                item.not_before = now + self.fatal_retry_seconds
                self._push_heap(item)
            self._cond.notify_all()
        for level, message, args, extra in notes:
            log.log(level, message, *args, extra=extra)

    def _wait(self, item: _Item, until: float, *, why: str) -> None:
        item.not_before = until
        item.why = why
        self._waiting[item.rel] = item
        self._push_heap(item)

    def _push_heap(self, item: _Item) -> None:
        self._seq += 1
        heapq.heappush(self._waiting_heap, (item.not_before, self._seq, item.rel))

    # -- one upload -----------------------------------------------------------------------------

    def _conditional_writes(self) -> bool:
        if self._conditional is None:
            with self._conditional_lock:
                if self._conditional is None:
                    assert self._store is not None
                    try:
                        self._conditional = self._store.conditional_writes()
                    except StoreError as exc:
                        if exc.retryable:
                            raise  # the store is unreachable: this upload retries, and so does the probe
                        # e.g. a token scoped to the output prefix cannot write the probe object
                        log.warning("cannot probe the store for conditional writes (%s); checking with HEAD "
                                    "before each first upload instead", exc, extra={"event": "watch.no_probe"})
                        self._conditional = False
                    log.debug("store enforces If-None-Match: %s", self._conditional,
                              extra={"event": "watch.conditional"})
        return self._conditional

    def _push_one(self, item: _Item) -> tuple[int, Any]:
        """Upload one file. Returns (outcome, detail); never raises for store or file errors."""
        journal, store = self._journal, self._store
        assert journal is not None and store is not None
        path = self.directory / item.rel
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return self._gone(item)
        except OSError as exc:
            return self._fatal(item, None, f"cannot read {path}: {exc.strerror or exc}")
        if not stat.S_ISREG(before.st_mode):
            return self._gone(item)  # replaced by a symlink or a folder: never followed
        row = journal.get(item.rel)
        if _matches(row, before):
            return _Outcome.SKIPPED, None
        if not item.closed:
            wait = self._unfinished_for(item, path, before)
            if wait > 0:
                return _Outcome.UNFINISHED, wait
        owned = bool(item.trust_owner and row is not None and row.etag and row.key)
        try:
            key = row.key if owned else object_key(self._current_prefix(), item.rel)  # type: ignore[union-attr]
        except UnsafePathError as exc:
            return self._fatal(item, None, f"{item.rel!r} cannot be an object key: {exc}")
        try:
            data = None
            if before.st_size <= INMEMORY_MAX:
                # Small files (most outputs) are read whole first: the bytes sent are one
                # consistent read, and a writer truncating the file cannot stall the PUT.
                with open(path, "rb") as fh:
                    data = fh.read(INMEMORY_MAX + 1)
                    mid = os.fstat(fh.fileno())
                if len(data) > INMEMORY_MAX:
                    data = None
                elif len(data) != before.st_size or _sig(mid) != _sig(before):
                    return _Outcome.CHANGED, None  # changed while read: these bytes are not one version of it
            key, info, uploaded = self._upload(path, key, owned_etag=row.etag if owned else None,  # type: ignore
                                               data=data, before=before)
        except SourceChangedError:
            return _Outcome.CHANGED, None  # the upload was abandoned: the object is as it was
        except FileNotFoundError:
            return self._gone(item)
        except StoreError as exc:
            if exc.retryable:
                with contextlib.suppress(Exception):
                    journal.note_error(item.rel, key=key, error=str(exc), attempts=item.attempts + 1, fatal=False)
                return _Outcome.RETRY, str(exc)
            return self._fatal(item, key, str(exc), same=exc.setting and f"{exc.code}:{exc.setting}")
        except OSError as exc:
            return self._fatal(item, key, f"cannot read {path}: {exc.strerror or exc}")
        try:
            after = os.lstat(path)
        except FileNotFoundError:
            after = None
        # The ETag marks the object as ours (a later rewrite may replace it); an identical
        # object found in place is ours only if our pod's metadata says it put it there.
        ours = uploaded or info.metadata.get(ORIGIN_META) == self.origin
        if ours:
            # We put that object there: a rewrite of this file (even one that arrived while this
            # upload ran, for an item a scan created untrusted) replaces it rather than going to a
            # sibling key.
            item.trust_owner = True
        try:
            journal.mark_done(item.rel, key=key, size=before.st_size, mtime_ns=before.st_mtime_ns,
                              ino=before.st_ino, etag=info.etag if ours else None)
        except RuntimeError:
            pass  # the journal closed: stop() gave up waiting for this upload
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the object is in the bucket all the same
            log.warning("pushed %s but cannot record it in the journal %s: %s (a restart will find it in the "
                        "bucket by content)", item.rel, journal.path, exc, extra={"event": "watch.journal_error"})
        if after is None:
            return self._gone(item)
        if _sig(after) != _sig(before):
            log.debug("%s changed during its upload; uploading it again", item.rel,
                      extra={"event": "watch.changed_during_upload"})
            item.trust_owner = True  # we just put that object there
            return _Outcome.CHANGED, None
        if not uploaded:
            return _Outcome.SKIPPED, None
        latency = time.monotonic() - item.event_mono
        output = self._output_record(item.rel, key, before.st_size, info, latency)
        log.debug("pushed %s -> %s (%d bytes, %s, %.3fs)%s", item.rel, key, before.st_size, output.content_type,
                  latency, f" {output.url}" if output.url else "", extra={"event": "watch.pushed"})
        return _Outcome.PUSHED, output

    def _output_record(self, rel: str, key: str, size: int, info, latency: float) -> PushedOutput:
        etag = info.etag or ""
        md5 = etag if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) else None
        url = public_url(self.settings.public_url, key) if self.settings.public_url else None
        presigned = None
        if url is None and self.settings.presign_seconds and self._notifier is not None:
            with contextlib.suppress(StoreError):
                presigned = self._store.presign_get(key, expires=self.settings.presign_seconds)  # type: ignore
        return PushedOutput(rel, key, size, md5, info.content_type or content_type(rel), latency, time.time(), url,
                            presigned)

    def _unfinished_for(self, item: _Item, path: Path, st: os.stat_result) -> float:
        """How long a file a scan found must still wait before it counts as finished (0: now).

        No process having it open for writing says so at once (this machine's /proc; a look is
        reused for :data:`WRITERS_TTL`, and only when it was taken after the file's last change);
        where that cannot be told, its size and mtime unchanged for ``watch.quiet_seconds`` do,
        as this machine's own clock measures it (a network file system's mtimes come from another
        clock). Its close event cuts any wait short."""
        quiet = self.settings.quiet_seconds
        age = time.time() - st.st_mtime
        if quiet <= age < 86400 * 365:
            return 0.0  # changed long enough ago (and not in the future: another machine's clock)
        if self._local_fs:
            now = time.monotonic()
            wall = time.time()
            with self._writers_lock:
                taken, taken_wall, writers = self._writers
                if now - taken > WRITERS_TTL:
                    writers = open_for_writing(str(self.directory))
                    taken, taken_wall = now, wall
                    self._writers = (now, wall, writers)
            if writers is not None:
                if taken_wall <= st.st_mtime + 0.02:
                    # This look is older than the file's last change and may miss its writer: ask the
                    # next one (at most WRITERS_TTL away; one look serves a whole burst of files).
                    return max(0.01, taken + WRITERS_TTL - now)
                return quiet if str(path) in writers else 0.0
        now = time.monotonic()
        sig = _sig(st)
        if item.quiet_sig != sig:
            item.quiet_sig, item.quiet_since = sig, now  # changed (or first seen): the quiet starts now
        left = item.quiet_since + quiet - now
        return max(0.0, left) if left > 0.001 else 0.0

    def _upload(self, path: Path, key: str, *, owned_etag: str | None, data: bytes | None,
                before: os.stat_result):
        """Put ``path`` at ``key`` without overwriting anyone else's object.

        Returns:
            (key actually used, ObjectInfo, whether bytes were sent).
        """
        store = self._store
        assert store is not None
        canonical = key
        local_md5: str | None = None
        meta = {ORIGIN_META: self.origin}
        # The same Content-Type rclone gives the file (push, bisync): a browser shows it, a <video> plays it.
        headers = PutHeaders(content_type(path.name), self.settings.cache_control)

        def unchanged() -> bool:
            try:
                return _sig(os.lstat(path)) == _sig(before)
            except OSError:
                return False

        def put(target: str, **kwargs: Any):
            if data is not None:
                return store.put_bytes(target, data, metadata=meta, headers=headers, **kwargs)
            return store.put_file(path, target, metadata=meta, headers=headers, unchanged=unchanged, **kwargs)
        for attempt in range(4):
            if owned_etag is not None:
                remote = store.head(key)
                if remote is None or remote.etag == owned_etag:
                    return key, put(key), True
            elif self._conditional_writes():
                try:
                    return key, put(key, if_none_match=True), True
                except PreconditionFailedError:
                    remote = store.head(key)
                    if remote is None:
                        continue  # deleted in between: try again
            else:
                remote = store.head(key)
                if remote is None:
                    return key, put(key), True
            # An object is there and it is not (or no longer) ours.
            if local_md5 is None:
                local_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest() if data is not None else _md5(path)
            if remote.etag == local_md5:
                # Same bytes already there (our upload before a crash, or an identical output): nothing to send.
                return key, remote, False
            token = local_md5[:8] if attempt < 2 else f"{self._rand.getrandbits(32):08x}"
            new_key = sibling_key(canonical, token)
            with self._cond:
                self._counters["collisions"] += 1
            log.warning("%s already exists with different content that this watcher did not put there; keeping it "
                        "and uploading %s to %s instead", key, path.name, new_key,
                        extra={"event": "watch.collision", "key": key, "sibling": new_key})
            key, owned_etag = new_key, None
        raise StoreError(f"could not find a free key next to {canonical!r}", key=canonical, code="KeyCollision",
                         retryable=True)

    def _gone(self, item: _Item) -> tuple[int, Any]:
        with contextlib.suppress(Exception):
            assert self._journal is not None
            self._journal.forget([item.rel])
        return _Outcome.GONE, None

    def _fatal(self, item: _Item, key: str | None, message: str, *, same: str | None = None) -> tuple[int, Any]:
        """A failure no retry fixes: journalled, retried later. One that names a setting (a wrong secret
        fails every file alike) is logged in full once a minute, with how many more files it hit."""
        now = time.monotonic()
        loud, hidden = True, 0
        if same:
            with self._lock:
                last, hidden = self._fatal_seen.get(same, (-1e9, 0))
                loud = now - last >= FATAL_REPEAT_SECONDS
                self._fatal_seen[same] = (now, 0) if loud else (last, hidden + 1)
        if loud:
            more = f"; {hidden} more files failed the same way since" if hidden else ""
            log.error("cannot push %s%s: %s (kept in the journal; retried in %.0f min, on the next event or "
                      "restart%s)", item.rel, f" to {key}" if key else "", message, self.fatal_retry_seconds / 60,
                      more, extra={"event": "watch.fatal", "path": item.rel, "key": key or ""})
        else:
            log.debug("cannot push %s: %s", item.rel, message, extra={"event": "watch.fatal", "path": item.rel})
        with contextlib.suppress(Exception):
            assert self._journal is not None
            self._journal.note_error(item.rel, key=key, error=message, attempts=item.attempts + 1, fatal=True)
        return _Outcome.FATAL, message

    # -- maintenance --------------------------------------------------------------------------------

    def _maintain_loop(self) -> None:
        last_rescan = last_fallback = time.monotonic()
        uploaded_at_trim = 0
        while not self._stop_event.wait(STATUS_INTERVAL):
            now = time.monotonic()
            tree = self._tree
            try:
                with self._lock:
                    idle = not (self._ready or self._inflight or self._waiting or self._batched)
                    uploaded = self._counters["uploaded"]
                if idle and uploaded != uploaded_at_trim:
                    uploaded_at_trim = uploaded
                    _trim_heap()
                if tree is not None and tree.root_lost and self.directory.is_dir():
                    log.info("%s is back; watching it again", self.directory, extra={"event": "watch.root_back"})
                    tree.watch_tree("")
                    self._queue_scan("", full=True)
                unwatched = tree.unwatched_snapshot() if tree is not None else ()
                if tree is not None and unwatched and now - last_fallback >= FALLBACK_RESCAN_SECONDS:
                    last_fallback = now
                    for rel in unwatched:
                        if tree.watch_tree(rel):  # the limit was raised meanwhile
                            log.info("watching %s again", self.directory / rel, extra={"event": "watch.rewatched"})
                        self._queue_scan(rel, full=False)
                if self._rescan_every and now - last_rescan >= self._rescan_every:
                    last_rescan = now
                    self._queue_scan("", full=True)
                self._write_status()
            except Exception:  # noqa: BLE001
                log.exception("watch maintenance failed", extra={"event": "watch.maintenance_failed"})

    _last_status: tuple[Any, ...] | None = None
    _last_status_time = 0.0

    def _write_status(self, *, final: bool = False) -> None:
        """Publish the stats atomically (temp + rename, no fsync: it is advisory, written each second)."""
        stats = self.stats()
        data = stats.to_dict()
        data["journal"] = str(journal_path(self.config.state_dir))
        data["running"] = not final
        fingerprint = (stats.state, stats.pending, stats.uploaded, stats.failed, stats.retries, stats.skipped,
                       stats.last_latency, stats.unwatched, stats.left_out, stats.waiting_to_finish)
        now = time.monotonic()
        if not final and fingerprint == self._last_status and now - self._last_status_time < STATUS_HEARTBEAT:
            return
        self._last_status, self._last_status_time = fingerprint, now
        target = status_path(self.config.state_dir)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("cannot write %s: %s", target, exc)


def _trim_heap() -> None:
    """Give the heap freed after a burst back to the OS (glibc's malloc_trim; a no-op elsewhere).

    A long-lived watcher otherwise keeps its peak footprint forever.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status a watcher published under ``state_dir`` (``running`` says whether it still runs)."""
    path = status_path(state_dir)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    alive = False
    pid = data.get("pid")
    if data.get("running") and isinstance(pid, int):
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        # A status not refreshed for a while belongs to a watcher that died (or a reused pid).
        if alive and time.time() - float(data.get("updated_at") or 0) > 4 * STATUS_HEARTBEAT:
            alive = False
    data["running"] = alive
    return data


def run_watch(config: Config, *, directory: str | os.PathLike[str] | None = None,
              stop_event: threading.Event, prefix: str | None = None) -> int:
    """Watch until ``stop_event`` is set, then drain for ``config.watch.drain_seconds``.

    Returns:
        0 when everything was pushed, 1 when files were left pending or failing
        (they are in the journal; the next start pushes them).
    """
    watcher = OutputWatcher(config, directory=directory, prefix=prefix)
    watcher.start()
    try:
        while not stop_event.wait(3600):
            pass
    finally:
        result = watcher.stop(drain_seconds=config.watch.drain_seconds)
        (log.info if result.ok else log.error)(result.line(), extra={"event": "watch.stopped"})
    return 0 if result.ok else 1
