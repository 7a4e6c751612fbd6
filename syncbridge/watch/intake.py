"""From the folder to the schedule: which files count, the inotify reader and the scanner.

:class:`Intake` runs two of the watcher's threads, and both only enqueue (through the watcher's
``mark_ready`` / ``mark_gone``, which take its lock for a moment):

* the **reader** blocks on inotify (:class:`~syncbridge.watch.inotify.TreeWatcher`): a file is
  ready on ``IN_CLOSE_WRITE`` or ``IN_MOVED_TO``, or when a new hard link to it appears;
* the **scanner** walks the folder at start-up (catch-up), after an inotify overflow, for new
  subfolders (files made before their watch existed), for subtrees that could not be watched,
  and periodically on network file systems (:meth:`Intake.tend`, from the maintainer).

What counts: every regular file, except what can never be an output
(:data:`~syncbridge.config.ALWAYS_EXCLUDED`) and what ``watch.include`` / ``watch.exclude``
leave out, which is counted (and said once), never silent.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import ALWAYS_EXCLUDED, ALWAYS_EXCLUDED_DIRS, WatchConfig
from ..fsutil import is_network_fs, mount_fstype
from ..keys import PathFilter
from .events import Action, Change
from .inotify import TreeWatcher, read_mounts, scan_tree
from .journal import FAILED, PENDING, Journal
from .upload import uploaded_already

__all__ = ["Intake", "FALLBACK_RESCAN_SECONDS"]

log = logging.getLogger(__name__)

FALLBACK_RESCAN_SECONDS = 5.0  # unwatched subtrees (and a failed reader) are rescanned this often
NETWORK_RESCAN_SECONDS = 60.0  # a network file system's folder is rescanned this often (other machines write)
LEFT_OUT_KEPT = 1000  # names of files the filters left out, kept for status (the count has no cap)


class Intake:
    """The reader and scanner of one watched folder.

    Args:
        cond: the watcher's condition (its one lock): guards the scan and sync counters here and
            the left-out counts, and is notified when they change.
        stop: set when the watcher stops (the reader takes in what is queued, then exits).
        mark_ready: ``(rel, *, trust_owner, now, closed=...)``: a file to push.
        mark_gone: ``(rel)``: a file was deleted or moved away.
    """

    def __init__(self, directory: Path, settings: WatchConfig, *, cond: threading.Condition, stop: threading.Event,
                 mark_ready: Callable[..., None], mark_gone: Callable[[str], None]) -> None:
        self.directory = directory
        self._cond = cond
        self._stop = stop
        self._mark_ready = mark_ready
        self._mark_gone = mark_gone
        self._never = PathFilter((), ALWAYS_EXCLUDED)  # never an output: not counted as left out
        self._users = PathFilter(settings.include, settings.exclude)
        self._dirs = PathFilter((), (*settings.exclude, *ALWAYS_EXCLUDED_DIRS))
        self._left_out: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.left_out_count = 0
        self._left_out_seen: set[int] = set()
        self.scan_abort = threading.Event()  # set when a drain gives up on folder scans
        self._scan_queue: queue.SimpleQueue[tuple[str, bool] | None] = queue.SimpleQueue()
        self.scans_pending = 0
        self.catch_up_done = False
        self.sync_requested = 0
        self.sync_done = 0
        self.rescan_every = 0.0
        self.network_fs = False  # other machines may write (inotify cannot see that; /proc cannot tell)
        self.tree: TreeWatcher | None = None
        self.journal: Journal | None = None
        self.on_catch_up: Callable[[], None] = lambda: None  # after the first catch-up scan (the heap trim)
        self.on_create: Callable[[], None] = lambda: None  # something was created (the connection warmer)
        self.on_created: Callable[[str], None] | None = None  # a new regular file (a job's growing file)
        self._last_rescan = self._last_fallback = 0.0

    def open(self, journal: Journal) -> TreeWatcher:
        """Watch the folder, then queue the catch-up scan: nothing falls in between."""
        self.journal = journal
        self._last_rescan = self._last_fallback = time.monotonic()
        self.tree = TreeWatcher(self.directory, dir_selected=self.dir_selected)
        self.tree.watch_tree("")
        self._scan_queue.put(("", True))
        self.scans_pending = 1
        return self.tree

    def plan_rescans(self, setting: float | None) -> float:
        """Seconds between full rescans: ``watch.rescan_seconds``, or by default none on a local
        file system and :data:`NETWORK_RESCAN_SECONDS` on a network one."""
        fstype = mount_fstype(str(self.directory), read_mounts()) or ""
        self.network_fs = is_network_fs(fstype)
        rescan = setting
        if rescan is None:
            rescan = NETWORK_RESCAN_SECONDS if self.network_fs else 0.0
            if rescan:
                log.info("%s is on a network file system (%s): rescanning every %.0fs for other machines' writes",
                         self.directory, fstype, rescan, extra={"event": "watch.network_fs"})
        self.rescan_every = rescan
        return rescan

    def requeue_journalled(self) -> None:
        """The files the journal says are pending (or failed), for the next start to push first."""
        assert self.journal is not None
        for rel, row in self.journal.rows(states=(PENDING, FAILED)).items():
            try:
                st = os.lstat(self.directory / rel)
            except OSError:
                continue  # gone: the catch-up scan's compaction drops the row
            self._mark_ready(rel, trust_owner=row.ino == st.st_ino, now=time.monotonic(), seen_wall=row.first_seen)

    def left_out_examples(self, n: int = 5) -> tuple[str, ...]:
        """The latest files the filters left out (call under the watcher's lock)."""
        return tuple(list(self._left_out)[-n:])

    @property
    def idle(self) -> bool:
        """The catch-up scan is done and no scan is queued (call under the watcher's lock)."""
        return self.catch_up_done and self.scans_pending == 0

    # -- which files count ---------------------------------------------------------------------------

    def dir_selected(self, rel: str) -> bool:
        return not self._dirs.dir_excluded(rel)

    def selected(self, rel: str) -> bool:
        """Whether a file is one to push; a file the user's filters leave out is counted, never silent."""
        if self._never.excluded(rel):
            return False
        if self._users(rel):
            return True
        with self._cond:
            digest = hash(rel)  # every file counted once, however often rescans find it (names: the last few)
            known = digest in self._left_out_seen
            if not known:
                self._left_out_seen.add(digest)
                self.left_out_count += 1
                self._left_out[rel] = None
                if len(self._left_out) > LEFT_OUT_KEPT:
                    self._left_out.popitem(last=False)
            first = self.left_out_count == 1 and not known
        if not known:
            (log.info if first else log.debug)(
                "not pushing %s: left out by watch.include / watch.exclude (SYNCBRIDGE_WATCH_INCLUDE / "
                "SYNCBRIDGE_WATCH_EXCLUDE)%s", rel, "; further files left out are counted in status" if first else "",
                extra={"event": "watch.left_out", "path": rel})
        return False

    # -- the reader ----------------------------------------------------------------------------------

    def reader_loop(self) -> None:
        tree = self.tree
        assert tree is not None
        try:
            while True:
                stopping = self._stop.is_set()
                if not stopping:
                    tree.wait(None)
                # Sync requests made before this point are covered by the drain below
                # (their events were queued in the kernel before they asked).
                with self._cond:
                    covered = self.sync_requested
                changes = tree.drain()
                now = time.monotonic()
                for change in changes:
                    self._on_change(change, now)
                with self._cond:
                    self.sync_done = covered
                    self._cond.notify_all()
                if stopping:
                    return
        except Exception:  # noqa: BLE001 - a reader crash must be loud, and stop() still drains
            log.exception("the inotify reader failed; falling back to rescans", extra={"event": "watch.reader_failed"})
            self.rescan_every = self.rescan_every or FALLBACK_RESCAN_SECONDS

    def _on_change(self, change: Change, now: float) -> None:
        action, rel = change.action, change.rel
        if action is Action.READY:
            if self.selected(rel):
                self._mark_ready(rel, trust_owner=True, now=now, closed=True)
        elif action is Action.CREATED:
            self.on_create()  # its upload at close should find a connection ready
            # A new hard link to a finished file (os.link(tmp, final)) has no close event. When the
            # temp name is already gone by the time we look (link count back to 1), a file that has
            # bytes at its creation event is taken as found by a scan: pushed once nothing writes it
            # (it used to be dropped, and never pushed, when its new folder's scan ran before the link).
            if not self._never.excluded(rel):
                with contextlib.suppress(OSError):
                    st = os.lstat(self.directory / rel)
                    if self.on_created is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 \
                            and self.selected(rel):
                        self.on_created(rel)
                    if stat.S_ISREG(st.st_mode) and self.selected(rel):
                        if st.st_nlink > 1:
                            self._mark_ready(rel, trust_owner=True, now=now, closed=True)
                        elif st.st_size > 0:
                            self._mark_ready(rel, trust_owner=True, now=now, closed=False)
        elif action is Action.GONE:
            if not self._never.excluded(rel) and self._users(rel):
                self._mark_gone(rel)
        elif action is Action.NEW_DIR:
            self.queue_scan(rel, full=False)
        elif action is Action.RESCAN:
            self.queue_scan("", full=True)
        elif action is Action.SELF_GONE:
            log.error("the watched folder %s went away; watching again when it is back", self.directory,
                      extra={"event": "watch.root_gone"})

    # -- the scanner ---------------------------------------------------------------------------------

    def queue_scan(self, rel: str, *, full: bool) -> None:
        with self._cond:
            self.scans_pending += 1
        self._scan_queue.put((rel, full))

    def end_scans(self) -> None:
        """The scanner finishes the scans queued so far, then exits."""
        self._scan_queue.put(None)

    def scanner_loop(self) -> None:
        while True:
            request = self._scan_queue.get()
            if request is None:
                with self._cond:
                    self.scans_pending = 0
                    self._cond.notify_all()
                return
            rel_dir, full = request
            try:
                # Stopping: a new folder's scan still runs (its early files have no event), a full
                # rescan does not (a safety net; the next start's catch-up scan does one).
                if not (full and self._stop.is_set()):
                    self._scan(rel_dir, full=full)
            except Exception:  # noqa: BLE001
                log.exception("scanning %s failed", self.directory / rel_dir, extra={"event": "watch.scan_failed"})
            finally:
                first_catch_up = full and rel_dir == "" and not self.catch_up_done
                with self._cond:
                    self.scans_pending -= 1
                    if full and rel_dir == "" and not self._stop.is_set():
                        self.catch_up_done = True  # not when a stop cut it short or skipped it
                    self._cond.notify_all()
                if first_catch_up:
                    self.on_catch_up()

    def _scan(self, rel_dir: str, *, full: bool) -> None:
        journal = self.journal
        assert journal is not None
        started = time.time()
        rows = journal.rows() if full else None
        seen: set[str] = set()
        count = 0
        for rel, st in scan_tree(self.directory, rel_dir, dir_selected=self.dir_selected,
                                 file_selected=self.selected, stop=self._stop if full else self.scan_abort):
            seen.add(rel)
            row = rows.get(rel) if rows is not None else journal.get(rel)
            if uploaded_already(row, st):
                continue
            count += 1
            self._mark_ready(rel, trust_owner=row is not None and row.ino == st.st_ino, now=time.monotonic())
        if full and rel_dir == "" and not self._stop.is_set():
            removed = journal.compact(seen=seen, before=started)
            log.debug("scan of %s: %d files to push, %d stale journal rows removed", self.directory, count, removed,
                      extra={"event": "watch.scanned"})

    def tend(self, now: float) -> None:
        """The maintainer's round (about once a second): watch the folder again when it is back,
        retry the subtrees that could not be watched (and rescan them), and the periodic rescan."""
        tree = self.tree
        if tree is not None and tree.root_lost and self.directory.is_dir():
            log.info("%s is back; watching it again", self.directory, extra={"event": "watch.root_back"})
            tree.watch_tree("")
            self.queue_scan("", full=True)
        unwatched = tree.unwatched_snapshot() if tree is not None else ()
        if tree is not None and unwatched and now - self._last_fallback >= FALLBACK_RESCAN_SECONDS:
            self._last_fallback = now
            for rel in unwatched:
                if tree.watch_tree(rel):  # the limit was raised meanwhile
                    log.info("watching %s again", self.directory / rel, extra={"event": "watch.rewatched"})
                self.queue_scan(rel, full=False)
        if self.rescan_every and now - self._last_rescan >= self.rescan_every:
            self._last_rescan = now
            self.queue_scan("", full=True)
