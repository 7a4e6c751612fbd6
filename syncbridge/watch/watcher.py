"""The output watcher's lifecycle and threads: :class:`OutputWatcher` wires the parts together.

It owns one lock (a condition) that guards the :class:`~syncbridge.watch.scheduler.Schedule`
and the :class:`~syncbridge.watch.intake.Intake`'s counters; the reader and scanner (intake),
the dispatcher, the upload workers (:class:`~syncbridge.watch.upload.Uploader`) and the
maintainer (status, rescans) each hold it only for a moment. The package docstring
(:mod:`syncbridge.watch`) tells the whole story.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..errors import WatchError, StoreError, UnsafePathError
from ..fleet import Heartbeat
from ..system import trim_heap
from ..fsutil import make_output_dir, private_state_dir
from ..keys import object_key, render_prefix
from ..mediatypes import content_type
from ..store import PutHeaders, Store
from .intake import Intake
from .journal import JOURNAL_NAME, Journal
from .notify import Notifier, PushedOutput, Webhook
from .scheduler import FATAL_RETRY_SECONDS, Item, Outcome, Schedule
from .status import DrainResult, StateLockedError, StatusFile, WatchStats, percentile, take_state_lock
from .early import Tail
from .upload import ORIGIN_META, FinishCheck, Route, Uploader, check_store, connect_store, file_sig

__all__ = ["OutputWatcher", "WatchError", "run_watch"]

log = logging.getLogger(__name__)

MAX_TAILS = 4  # growing files followed at once (watch.early)
LOCK_NAME = "watch.lock"
STATUS_INTERVAL = 1.0


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
        on_pushed: called with a :class:`~syncbridge.watch.notify.PushedOutput` for each output once
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
        self._listeners: list[Callable[[PushedOutput], Any]] = [on_pushed] if on_pushed is not None else []
        self._notifier: Notifier | None = None
        self._rand = random.Random()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # What waits and what is due: only touched under self._lock.
        self._schedule = Schedule(concurrency=config.watch.concurrency, batch_delay=config.watch.batch_delay,
                                  rand=self._rand.random, fatal_retry_seconds=FATAL_RETRY_SECONDS)
        self._state = "new"
        self._drain_deadline: float | None = None
        self._stop_event = threading.Event()
        self._intake = Intake(self.directory, config.watch, cond=self._cond, stop=self._stop_event,
                              mark_ready=self._mark_ready, mark_gone=self._mark_gone)
        self._intake.on_catch_up = trim_heap  # what building the S3 client and the scan allocated and freed
        self._intake.on_created = self._on_created
        self._work: queue.SimpleQueue[Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._journal: Journal | None = None
        self._uploader: Uploader | None = None
        self._status = StatusFile(config.state_dir)
        self._lock_fd: int | None = None
        self._started_at = 0.0
        self._prefix = ""
        self.origin = config.pod_id
        self._heartbeat: Heartbeat | None = None
        self._warm_wanted = threading.Event()
        self._intake.on_create = self._warm_wanted.set
        self._route: Route | None = None  # where files seen from now on go (a job's scope), under self._lock

    @property
    def fatal_retry_seconds(self) -> float:
        """How long a fatally failing file waits before a retry (set it before :meth:`start`)."""
        return self._schedule.fatal_retry_seconds

    @fatal_retry_seconds.setter
    def fatal_retry_seconds(self, seconds: float) -> None:
        self._schedule.fatal_retry_seconds = seconds

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
        self.directory = self._intake.directory = Path(os.path.realpath(self.directory))
        watch_dir = private_state_dir(self.config.state_dir, "watch")
        try:
            self._lock_fd = take_state_lock(watch_dir / LOCK_NAME)
        except StateLockedError as exc:
            raise WatchError(f"another watcher{f' (pid {exc.pid})' if exc.pid else ''} is already running with state "
                             f"directory {self.config.state_dir}; run one watcher per state directory") from None
        except OSError as exc:
            raise WatchError(f"cannot lock {watch_dir / LOCK_NAME}: {exc.strerror or exc}") from exc
        try:
            self._prefix = render_prefix(self.template, pod_id=self.config.pod_id, now=dt.datetime.now(),
                                         hostname=os.uname().nodename)
        except UnsafePathError as exc:
            raise WatchError(f"invalid key prefix {self.template!r}: {exc}") from exc
        self._journal = Journal(watch_dir / JOURNAL_NAME, root=str(self.directory), template=self.template)
        if self._store is None:
            self._store = connect_store(self.config, connections=self.settings.concurrency + 2)
        if self._check_bucket:
            try:
                check_store(self._store, self._prefix)
            except StoreError as exc:
                raise WatchError(f"cannot push to {self._store.description}: {exc}", setting=exc.setting) from exc
        rescan = self._intake.plan_rescans(self.settings.rescan_seconds)
        webhook = None
        if self.settings.webhook_url:
            webhook = Webhook(self.settings.webhook_url, pod_id=self.config.pod_id)
        if webhook is not None or self._listeners:
            self._notifier = Notifier(self._listeners, webhook)
        self._uploader = Uploader(store=self._store, journal=self._journal, directory=self.directory,
                                  settings=self.settings, origin=self.origin, prefix=self._current_prefix,
                                  finished=FinishCheck(self.directory, quiet_seconds=self.settings.quiet_seconds,
                                                       local_fs=not self._intake.network_fs),
                                  presign=self._notifier is not None, on_collision=self._count_collision,
                                  fatal_retry_seconds=self.fatal_retry_seconds, rand=self._rand)
        self._started_at = time.time()
        tree = self._intake.open(self._journal)  # watches first, then the catch-up scan: nothing falls in between
        self._schedule.accepting = True
        self._state = "running"
        self._intake.requeue_journalled()  # the oldest: before the catch-up scan's files
        workers = self._schedule.concurrency
        targets = [("reader", self._intake.reader_loop), ("scanner", self._intake.scanner_loop),
                   ("dispatcher", self._dispatch_loop), ("maintainer", self._maintain_loop)]
        targets += [(f"upload-{i}", self._worker_loop) for i in range(workers)]
        targets += [("warmer", self._warm_loop)]
        for name, target in targets:
            # Daemon threads: an upload stuck past the drain deadline must not keep the process alive.
            thread = threading.Thread(target=target, name=f"syncbridge-watch-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("watching %s -> %s/%s (%d folders watched, %d uploads at once%s)", self.directory,
                 self._store.description, self._prefix, tree.watch_count, workers,
                 f", rescan every {rescan:.0f}s" if rescan else "",
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

    @property
    def store(self) -> Store | None:
        """The store outputs go to (None before :meth:`start`)."""
        return self._store

    @property
    def prefix(self) -> str:
        """The rendered key prefix of this watcher's own outputs (set by :meth:`start`)."""
        return self._current_prefix() if self._state != "new" else ""

    def job(self, job_id: str, **kwargs: Any) -> Any:
        """A job's scope on this watcher: see :class:`syncbridge.jobs.Job` (``kwargs`` go to it)."""
        from ..jobs.scope import Job

        return Job(self, job_id, **kwargs)

    def catch_up(self, timeout: float) -> bool:
        """Take in every event the kernel queued before this call and finish the folder scans queued so
        far (their files are marked). True when done within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        intake = self._intake
        with self._cond:
            intake.sync_requested += 1
            ticket = intake.sync_requested
        if intake.tree is not None and self._schedule.accepting:
            intake.tree.wake()
        with self._cond:
            while self._schedule.accepting and not (intake.sync_done >= ticket and intake.idle):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.5))
        return True

    def open_route(self, route: Route, *, timeout: float = 5.0) -> None:
        """Send the files written from now on to ``route`` (one at a time) until :meth:`close_route`.

        Events already queued are taken in first, so a file finished before this call keeps the
        watcher's own prefix. ``route.tracker`` gets ``expect(rel)`` for each file the route takes
        and ``finished(rel, outcome, detail)`` for each upload attempt, under the watcher's lock.

        Raises:
            WatchError: the watcher is not running, or another route is open.
        """
        if self._state != "running":
            raise WatchError("the watcher is not running: start it before a job")
        self.catch_up(timeout)
        with self._cond:
            if self._route is not None:
                raise WatchError("another job is open on this watcher: one job at a time")
            self._route = route

    def close_route(self, route: Route, *, timeout: float = 5.0) -> bool:
        """Stop sending new files to ``route``: the events queued so far are taken in first (a file
        finished before this call is the route's). True when they were within ``timeout``."""
        done = self.catch_up(timeout) if self._route is route else True
        with self._cond:
            if self._route is route:
                self._route = None
            # Those still waiting or in flight are the route's until their uploads end (see _finish).
            self._disown(route, [rel for rel in route.rels if self._schedule.find(rel) is None])
        return done

    def _disown(self, route: Route, rels: list[str]) -> None:
        """The scope is closed: its objects are the job's, not for a later version of the file to replace
        (that goes under the watcher's own prefix, as a new output). Under the lock: before a new event of
        the file can start an upload that reads its journal row."""
        if self._journal is None or not rels:
            return
        try:
            self._journal.disown(rels, prefix=route.prefix)
        except Exception as exc:  # noqa: BLE001 - the journal is an optimisation: the store is the truth
            log.warning("cannot update the journal %s after a job: %s", self._journal.path, exc,
                        extra={"event": "watch.journal_error"})

    def drop_tails(self, route: Route) -> None:
        """Abort what ``route`` sent early of files whose upload never claimed it (deleted, left behind)."""
        with self._cond:
            tails = list(route.tails.values())
            route.tails.clear()
        for tail in tails:
            tail.abort()

    def add_to_route(self, route: Route, rel: str) -> bool:
        """Push ``rel`` (relative to the watched folder) to ``route`` now, whenever it was written. False
        when it is not a file to push (missing, or left out by the filters)."""
        if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.split("/")):
            return False  # not a path below the watched folder
        path = self.directory / rel
        if not path.is_file() or path.is_symlink() or not self._intake.selected(rel):
            return False
        with self._cond:
            if not self._schedule.mark_ready(rel, trust_owner=True, now=time.monotonic(), wall=time.time(),
                                             closed=False) and self._schedule.find(rel) is None:
                return False
            self._take(rel, route)
            self._cond.notify_all()
        return True

    def wait_route(self, rels: Callable[[], Any], timeout: float) -> tuple[set[str], set[str]]:
        """Wait until none of the files ``rels()`` names is waiting or in flight, or ``timeout`` seconds pass.

        A file failing fatally (403, NoSuchBucket: retried only minutes later) counts as settled.
        Returns the files still pending and those failing fatally.
        """
        deadline = time.monotonic() + timeout
        schedule = self._schedule
        with self._cond:
            while True:
                pending, failed = set(), set()
                for rel in rels():
                    item = schedule.find(rel)
                    if item is None:
                        continue
                    (failed if rel in schedule.failed else pending).add(rel)
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0 or self._state == "stopped":
                    return pending, failed
                self._cond.wait(timeout=min(remaining, 0.5))

    def _on_created(self, rel: str) -> None:
        """A new file while a route that sends growing files early is open: follow it (see watch.early)."""
        route = self._route
        if route is None or not route.early or len(route.tails) >= MAX_TAILS:
            return
        try:
            key = object_key(route.prefix, rel)
        except UnsafePathError:
            return
        with self._cond:
            old = route.tails.pop(rel, None)
        if old is not None:
            old.abort()  # the name was created again: a new file
        tail = Tail(route.store, key, self.directory / rel, metadata={ORIGIN_META: self.origin},
                    headers=PutHeaders(content_type(rel), self.settings.cache_control))
        with self._cond:
            route.tails[rel] = tail

    def _take(self, rel: str, route: Route) -> None:
        """``rel`` belongs to ``route`` (under the lock)."""
        item = self._schedule.find(rel)
        if item is not None:
            item.route = route
            route.rels.add(rel)
            route.tracker.expect(rel)

    def _current_prefix(self) -> str:
        """The prefix for a new key: ``{date}`` follows the clock, so a watcher running past
        midnight files the next day's outputs under the next day (a rewrite keeps its key)."""
        if "{date" in self.template:
            self._prefix = render_prefix(self.template, pod_id=self.config.pod_id, now=dt.datetime.now(),
                                         hostname=os.uname().nodename)
        return self._prefix

    def _release(self) -> None:
        if self._intake.tree is not None:
            self._intake.tree.close()
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
            return DrainResult(0, 0, len(self._schedule.failed), 0.0, self._schedule.counters["uploaded"],
                               left_out=self._intake.left_out_count)
        drain = self.settings.drain_seconds if drain_seconds is None else max(0.0, drain_seconds)
        t0 = time.monotonic()
        route = self._route
        if route is not None:  # a job still open: its growing files are uploaded whole by the drain
            self.close_route(route, timeout=0)
            self.drop_tails(route)
        schedule = self._schedule
        uploaded_before = schedule.counters["uploaded"]
        # 1. Stop accepting: the reader takes in what the kernel already queued (those
        #    files were finished before the stop), then exits; the scanner stops.
        with self._cond:
            self._state = "draining"
        self._stop_event.set()
        self._warm_wanted.set()
        if self._intake.tree is not None:
            self._intake.tree.wake()
        # The reader first: the new folders among its last events queue scans, and files made
        # in them before their watch existed have no event of their own. Then the scanner
        # finishes every scan queued so far (its sentinel goes in after the reader is done).
        unscanned = False
        for suffix in ("-reader", "-scanner", "-maintainer"):
            if suffix == "-scanner":
                self._intake.end_scans()
            for thread in self._threads:
                if thread.name.endswith(suffix):
                    budget = max(0.2, min(1.0, drain / 4)) if suffix != "-scanner" else \
                        max(0.2, min(drain / 2, t0 + drain - time.monotonic()))
                    thread.join(timeout=budget)
                    if suffix == "-scanner" and thread.is_alive():
                        unscanned = True
                        self._intake.scan_abort.set()
                        log.warning("a folder scan did not finish before the drain deadline",
                                    extra={"event": "watch.scan_unfinished"})
        if not self._intake.catch_up_done:
            unscanned = True  # stopped before the start-up scan went through the whole folder
        with self._cond:
            schedule.accepting = False
        # 2. Drain: everything waiting becomes due now; the dispatcher runs until empty or the deadline.
        with self._cond:
            self._drain_deadline = t0 + drain
            schedule.begin_drain()
            self._cond.notify_all()
            while schedule.drain_busy and time.monotonic() < self._drain_deadline:
                self._cond.wait(timeout=max(0.005, self._drain_deadline - time.monotonic()))
            left = schedule.left()
            failed = len(schedule.failed)
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
        uploaded = schedule.counters["uploaded"]
        result = DrainResult(uploaded - uploaded_before, len(left), failed, time.monotonic() - t0, uploaded, unscanned,
                             self._intake.left_out_count, undelivered)
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
        schedule = self._schedule
        with self._lock:
            pending_items = schedule.pending()
            pending = len(pending_items)
            oldest = min((i.seen_wall for i in pending_items), default=None)
            latencies = list(schedule.latencies)
            counters = dict(schedule.counters)
            in_flight = len(schedule.inflight)
            failed = len(schedule.failed)
            state = self._state
            last_latency = schedule.last_latency
            last_error = schedule.last_error
            left_out = self._intake.left_out_count
            left_out_examples = self._intake.left_out_examples()
            recent = tuple(schedule.recent)
            unfinished = schedule.waiting_to_finish
            latency_counts = tuple(schedule.latency_counts)
            latency_sum = schedule.latency_sum
        tree = self._intake.tree
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
            catch_up_done=self._intake.catch_up_done, last_error=last_error, left_out=left_out,
            left_out_examples=left_out_examples, recent=recent, waiting_to_finish=unfinished,
            p50_latency=percentile(latencies, 0.5), latency_counts=latency_counts, latency_sum=latency_sum,
            failures_total=counters.get("failures", 0))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every file known so far is pushed (True) or ``timeout`` seconds pass (False).

        A file failing fatally (403, NoSuchBucket) is not pushed: while one is
        waiting for its retry, this waits for the whole ``timeout``.

        "Known" includes events the kernel has queued before this call: the
        reader is woken to take them in first.
        """
        deadline = time.monotonic() + timeout
        intake, schedule = self._intake, self._schedule
        with self._cond:
            intake.sync_requested += 1
            ticket = intake.sync_requested
        if intake.tree is not None and schedule.accepting:
            intake.tree.wake()
        with self._cond:
            while True:
                caught_up = intake.sync_done >= ticket or not schedule.accepting
                idle = caught_up and intake.idle and schedule.idle
                if idle and not schedule.failed:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(timeout=min(remaining, 0.5))

    def rescan(self) -> None:
        """Scan the whole folder again (as after an inotify overflow)."""
        self._intake.queue_scan("", full=True)

    # -- intake ---------------------------------------------------------------------------------

    def _mark_ready(self, rel: str, *, trust_owner: bool, now: float, seen_wall: float | None = None,
                    closed: bool = False) -> None:
        """A file to push (from an event, a scan or the journal). Cheap: only enqueues (see
        :meth:`Schedule.mark_ready <syncbridge.watch.scheduler.Schedule.mark_ready>`)."""
        with self._cond:
            news = self._schedule.mark_ready(rel, trust_owner=trust_owner, now=now, wall=time.time(),
                                             seen_wall=seen_wall, closed=closed)
            if self._route is not None:
                self._take(rel, self._route)
            if news:
                self._cond.notify_all()

    def _mark_gone(self, rel: str) -> None:
        """A file was deleted or moved away: nothing to push, and a new file of that name is a new output."""
        with self._cond:
            if self._schedule.mark_gone(rel):
                self._cond.notify_all()

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        journal = self._journal
        assert journal is not None
        while True:
            with self._cond:
                now = time.monotonic()
                uploads, to_journal, to_forget = self._schedule.take_due(now=now)
                if self._state == "stopped":
                    return
                if not (uploads or to_journal or to_forget):
                    wake = self._schedule.next_wake()
                    self._cond.wait(timeout=max(0.001, wake - now) if wake is not None else None)
                    continue
            # Journal before uploading: a row written after the upload's "done" would undo it.
            if to_forget or to_journal:
                try:
                    journal.forget(to_forget)
                    journal.mark_pending(to_journal)
                except Exception:  # noqa: BLE001 - a full disk must not stop the uploads
                    log.exception("cannot write the journal %s", journal.path, extra={"event": "watch.journal_error"})
            for item in uploads:
                self._work.put(item)

    def _flush_journal(self) -> None:
        journal = self._journal
        with self._cond:
            to_journal, to_forget = self._schedule.take_journal()
        if journal is not None:
            journal.forget(to_forget)
            journal.mark_pending(to_journal)

    def _worker_loop(self) -> None:
        uploader = self._uploader
        assert uploader is not None
        while True:
            item = self._work.get()
            if item is None:
                return
            route = item.route  # a new event may move it to another route while this upload runs
            try:
                outcome, detail = uploader.push(item, route)
            except Exception as exc:  # noqa: BLE001 - a bug must not kill a worker: retry, loudly
                log.exception("unexpected error pushing %s", item.rel, extra={"event": "watch.bug", "path": item.rel})
                outcome, detail = Outcome.RETRY, f"{type(exc).__name__}: {exc}"
            if outcome is Outcome.UNFINISHED and route is not None and route.early and item.rel not in route.tails \
                    and getattr(detail, "writing", False):
                self._on_created(item.rel)  # found by a scan while being written (a new folder's file): follow it
            self._finish(item, outcome, detail, route)

    def _finish(self, item: Item, outcome: Outcome, detail: Any, route: Route | None = None) -> None:
        if outcome in (Outcome.PUSHED, Outcome.SKIPPED) and item.dirty and item.pushed_sig is not None:
            # News came during the upload (its close, a scan): if the file is still as it was sent, the bucket
            # has its newest content; no second upload a second later (see Schedule._next_for).
            looked = time.monotonic()
            with contextlib.suppress(OSError):
                if file_sig(os.lstat(self.directory / item.rel)) == item.pushed_sig:
                    item.verified_mono = looked
        now = time.monotonic()
        with self._cond:
            notes = self._schedule.finish(item, outcome, detail, now=now, stopped=self._state == "stopped")
            if route is not None and self._route is not route and self._schedule.find(item.rel) is None:
                self._disown(route, [item.rel])  # its last upload for a scope already closed
            if route is not None:
                try:
                    route.tracker.finished(item.rel, outcome, detail)
                except Exception:  # noqa: BLE001 - a tracker's bug must not stop the uploads
                    log.exception("a job's tracker failed for %s", item.rel, extra={"event": "watch.bug"})
            if outcome is Outcome.PUSHED and self._notifier is not None and (route is None or route.store is
                                                                             self._store):
                self._notifier(detail)
            self._cond.notify_all()
        for note in notes:  # logged after the lock is released
            log.log(note.level, note.message, *note.args, extra=note.extra)

    def _count_collision(self) -> None:
        with self._cond:
            self._schedule.counters["collisions"] += 1

    # -- maintenance --------------------------------------------------------------------------------

    def _maintain_loop(self) -> None:
        uploaded_at_trim = 0
        while not self._stop_event.wait(STATUS_INTERVAL):
            try:
                with self._lock:
                    idle = self._schedule.idle
                    uploaded = self._schedule.counters["uploaded"]
                if idle and uploaded != uploaded_at_trim:
                    uploaded_at_trim = uploaded
                    trim_heap()
                self._intake.tend(time.monotonic())
                self._write_status()
            except Exception:  # noqa: BLE001
                log.exception("watch maintenance failed", extra={"event": "watch.maintenance_failed"})

    def _warm_loop(self) -> None:
        """Keep round trips off an output's path: probe the store for conditional writes now rather
        than at the first upload, then keep a connection ready: re-opened when the store has had no
        request for ``watch.keep_warm_seconds`` (before an edge closes it for idling), and made
        ready when a file is created (its upload at close then skips the TCP and TLS handshakes)."""
        uploader, store = self._uploader, self._store
        assert uploader is not None and store is not None
        keep = self.settings.keep_warm_seconds
        try:
            uploader.probe()
            if not keep:
                return
            # A look soon after the start reads the TLS session tickets the first connection got, while
            # no upload can want that connection at the same moment.
            wait = min(1.0, keep / 4)
            while not self._stop_event.is_set():
                self._warm_wanted.wait(timeout=max(0.05, wait))
                wait = keep / 4
                self._warm_wanted.clear()
                if self._stop_event.is_set():
                    return
                with self._lock:
                    busy = bool(self._schedule.inflight)
                if not busy:  # uploads running: their connections are warm, and a burst needs no more
                    store.warm(idle_after=keep)
        except Exception:  # noqa: BLE001 - only a speed-up: uploads connect by themselves
            log.debug("the connection warmer stopped", exc_info=True, extra={"event": "watch.warmer_failed"})

    def _write_status(self, *, final: bool = False) -> None:
        self._status.write(self.stats(), final=final)


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
