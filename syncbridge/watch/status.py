"""What the watcher tells about itself: a stats snapshot, the drain's result, ``status.json``, its lock.

:class:`WatchStats` is a frozen snapshot (``OutputWatcher.stats()``); the watcher publishes it
about once a second to ``<state_dir>/watch/status.json`` (:class:`StatusFile`: temp file and
rename, so a reader never sees half of one), and ``syncbridge status`` reads it back with
:func:`read_status`, which also tells whether the watcher that wrote it still runs.
:class:`DrainResult` is what :meth:`~syncbridge.watch.watcher.OutputWatcher.stop` achieved.
:func:`take_state_lock` makes sure one watcher runs per state directory (the lock file holds
its pid, so the second one can say which process holds it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import attrs

from .journal import JOURNAL_NAME
from .notify import PushedOutput

__all__ = ["WatchStats", "DrainResult", "StatusFile", "status_path", "journal_path", "read_status", "percentile",
           "take_state_lock", "StateLockedError", "STATUS_NAME", "STATUS_HEARTBEAT"]

log = logging.getLogger(__name__)

STATUS_NAME = "status.json"
STATUS_HEARTBEAT = 5.0  # an unchanged status is written again this often (its age tells a dead watcher)


def status_path(state_dir: Path) -> Path:
    return Path(state_dir) / "watch" / STATUS_NAME


def journal_path(state_dir: Path) -> Path:
    return Path(state_dir) / "watch" / JOURNAL_NAME


def percentile(values: Sequence[float] | Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1, nearest rank) of ``values``; ``None`` when empty."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q * len(data)))
    return data[min(rank, len(data)) - 1]


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
    p50_latency: float | None = None
    latency_counts: tuple[int, ...] = ()  # pushes per latency bucket since start (scheduler.LATENCY_BUCKETS, +Inf)
    latency_sum: float = 0.0  # seconds, over every push since start
    failures_total: int = 0  # files that failed fatally since start (``failed`` is those failing now)

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["unwatched"] = list(self.unwatched)
        data["left_out_examples"] = list(self.left_out_examples)
        data["recent"] = [o.to_dict() for o in self.recent]
        data["latency_counts"] = list(self.latency_counts)
        return data

    def fingerprint(self) -> tuple[Any, ...]:
        """What makes a status worth writing again before its heartbeat is due."""
        return (self.state, self.pending, self.uploaded, self.failed, self.retries, self.skipped, self.last_latency,
                self.unwatched, self.left_out, self.waiting_to_finish)


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


class StatusFile:
    """Publishes :class:`WatchStats` to ``<state_dir>/watch/status.json``: an unchanged status only
    every :data:`STATUS_HEARTBEAT` seconds, atomically (temp + rename, no fsync: it is advisory)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = status_path(state_dir)
        self._journal = str(journal_path(state_dir))
        self._last: tuple[Any, ...] | None = None
        self._last_time = 0.0

    def write(self, stats: WatchStats, *, final: bool = False) -> None:
        fingerprint = stats.fingerprint()
        now = time.monotonic()
        if not final and fingerprint == self._last and now - self._last_time < STATUS_HEARTBEAT:
            return
        self._last, self._last_time = fingerprint, now
        data = stats.to_dict()
        data["journal"] = self._journal
        data["running"] = not final
        try:
            fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w") as fh:
                    json.dump(data, fh, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.debug("cannot write %s: %s", self.path, exc)


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


class StateLockedError(BlockingIOError):
    """Another process holds the lock (``pid``: the one its lock file names, when it could be read)."""

    def __init__(self, path: Path, pid: int | None) -> None:
        super().__init__(errno.EWOULDBLOCK, "locked by another process", str(path))
        self.pid = pid


def take_state_lock(path: Path) -> int:
    """Lock ``path`` for this process (``flock``, released when the returned descriptor closes or the
    process dies, even by ``kill -9``) and write our pid in it.

    Raises:
        StateLockedError: another process holds it.
        OSError: it cannot be opened or locked.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        pid = None
        with contextlib.suppress(OSError, ValueError):
            pid = int(os.pread(fd, 32, 0).decode().strip())
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateLockedError(path, pid) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
