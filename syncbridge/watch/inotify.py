"""Recursive inotify over one folder, and the scan that complements it.

:class:`TreeWatcher` owns one ``inotify_simple.INotify`` and the map from watch
descriptors to folders (inotify has neither recursion nor paths: that is ours).
Its :meth:`~TreeWatcher.read` blocks in ``poll`` on the inotify descriptor and
a wake-up pipe (no polling loop: an idle watcher uses no CPU) and turns raw
events into :class:`Change` records with paths relative to the root:

* a new folder is watched first and then reported as ``Action.NEW_DIR`` so the
  caller scans it: files made before the watch existed are not missed;
* ``IN_Q_OVERFLOW`` becomes ``Action.RESCAN``;
* a watch the kernel refuses for lack of watches (``ENOSPC``) is logged loudly,
  naming ``fs.inotify.max_user_watches`` and the sysctl that raises it, and the
  folder is listed in :attr:`TreeWatcher.unwatched` so the caller rescans it
  periodically instead.

Symlinks are never followed: watches use ``IN_DONT_FOLLOW | IN_ONLYDIR`` and
:func:`scan_tree` does not descend into (or report) symlinks, so a link to
``/etc`` inside the folder stays a link.

Only one thread may call :meth:`TreeWatcher.read` (inotify_simple is not safe
to read from several); :meth:`TreeWatcher.wake` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
import threading
from pathlib import Path
from typing import Callable, Iterator

from inotify_simple import INotify

from .events import WATCH_MASK, Action, Change, classify

__all__ = ["TreeWatcher", "Change", "scan_tree", "read_mounts", "max_user_watches", "watch_limit_message"]

log = logging.getLogger(__name__)

MAX_WATCHES_FILE = "/proc/sys/fs/inotify/max_user_watches"


def max_user_watches() -> int | None:
    try:
        return int(Path(MAX_WATCHES_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def watch_limit_message(folder: str) -> str:
    limit = max_user_watches()
    shown = f"fs.inotify.max_user_watches={limit}" if limit is not None else "fs.inotify.max_user_watches"
    return (f"cannot watch {folder}: the inotify watch limit is reached ({shown}, per user, shared by every "
            f"process). Raise it with `sysctl -w fs.inotify.max_user_watches=524288` (on the host, for a "
            f"container). Until then this folder is rescanned periodically instead of watched.")


def read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text(errors="replace")
    except OSError:
        return ""


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def scan_tree(root: Path, rel_dir: str, *, dir_selected: Callable[[str], bool],
              file_selected: Callable[[str], bool],
              stop: threading.Event | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Regular files below ``root/rel_dir`` as ``(rel, lstat)``; never follows symlinks.

    Folders that vanish or cannot be read while scanning are skipped (logged).
    """
    stack = [rel_dir]
    while stack:
        if stop is not None and stop.is_set():
            return
        current = stack.pop()
        try:
            with os.scandir(root / current if current else root) as it:
                entries = list(it)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            continue
        except OSError as exc:
            log.warning("cannot scan %s: %s", root / current, exc.strerror or exc,
                        extra={"event": "watch.scan_error"})
            continue
        subdirs = []
        for entry in entries:
            rel = _join(current, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if dir_selected(rel):
                    subdirs.append(rel)
            elif stat.S_ISREG(st.st_mode) and file_selected(rel):
                yield rel, st
            # symlinks, sockets, fifos, devices: never pushed, never followed
        stack.extend(sorted(subdirs, reverse=True))


class TreeWatcher:
    """Recursive inotify watches on ``root`` and every selected folder below it.

    Args:
        root: the folder (resolved once; a symlinked root is followed, nothing below it is).
        dir_selected: whether a folder (relative path) is watched at all
            (``temp/``, ``.cache/`` and hidden folders are not).
    """

    def __init__(self, root: Path, *, dir_selected: Callable[[str], bool]) -> None:
        self.root = Path(os.path.realpath(root))
        self.dir_selected = dir_selected
        self._inotify = INotify(nonblocking=True)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._inotify.fileno(), select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
        self._lock = threading.Lock()  # guards the maps: watch_tree runs from the reader and the caller
        self._wd_rel: dict[int, str] = {}
        self._rel_wd: dict[str, int] = {}
        self.unwatched: set[str] = set()  # subtrees we could not watch (rescanned instead)
        self.root_lost = False
        self._limit_logged = False
        self._closed = False

    @property
    def watch_count(self) -> int:
        return len(self._wd_rel)

    def unwatched_snapshot(self) -> tuple[str, ...]:
        """The folders that could not be watched (safe to call from any thread)."""
        with self._lock:
            return tuple(sorted(self.unwatched))

    def watch_tree(self, rel_dir: str = "") -> bool:
        """Watch ``rel_dir`` and every selected folder below it. Returns False when some could not be watched."""
        complete = True
        stack = [rel_dir]
        while stack:
            current = stack.pop()
            path = self.root / current if current else self.root
            try:
                wd = self._inotify.add_watch(path, WATCH_MASK)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                    continue  # gone already (or a symlink, refused by IN_ONLYDIR|IN_DONT_FOLLOW)
                complete = False
                with self._lock:
                    self.unwatched.add(current)
                if exc.errno == errno.ENOSPC:
                    if not self._limit_logged:
                        self._limit_logged = True
                        log.error(watch_limit_message(str(path)), extra={"event": "watch.watch_limit",
                                                                          "folder": str(path)})
                    else:
                        log.debug("cannot watch %s: watch limit", path)
                else:
                    log.error("cannot watch %s: %s; rescanning it periodically instead", path,
                              exc.strerror or exc, extra={"event": "watch.watch_failed", "folder": str(path)})
                continue  # its subfolders are covered by the rescan of this one
            with self._lock:
                old = self._wd_rel.get(wd)
                if old is not None and old != current:
                    self._rel_wd.pop(old, None)
                self._wd_rel[wd] = current
                self._rel_wd[current] = wd
                self.unwatched.discard(current)
                if current == "":
                    self.root_lost = False
            try:
                with os.scandir(path) as it:
                    subdirs = [_join(current, e.name) for e in it if e.is_dir(follow_symlinks=False)]
            except OSError:
                continue
            stack.extend(d for d in subdirs if self.dir_selected(d))
        return complete

    def _drop_subtree(self, rel_dir: str) -> None:
        prefix = rel_dir + "/"
        with self._lock:
            gone = [(rel, wd) for rel, wd in self._rel_wd.items() if rel == rel_dir or rel.startswith(prefix)]
            for rel, wd in gone:
                self._rel_wd.pop(rel, None)
                self._wd_rel.pop(wd, None)
            self.unwatched = {u for u in self.unwatched if not (u == rel_dir or u.startswith(prefix))}
        for _, wd in gone:
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)

    def wake(self) -> None:
        """Make a blocked :meth:`read` return (from any thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def read(self, timeout: float | None = None) -> list[Change]:
        """Wait for events (up to ``timeout`` seconds; ``None`` = until some arrive or :meth:`wake`).

        New folders are watched before this returns (and reported as NEW_DIR so
        the caller scans them).
        """
        self.wait(timeout)
        return self.drain()

    def wait(self, timeout: float | None = None) -> None:
        """Block until events are queued, :meth:`wake` is called, or ``timeout`` seconds pass."""
        if self._closed:
            return
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        try:
            ready = self._poll.poll(ms)
        except InterruptedError:  # pragma: no cover - PEP 475 retries poll; kept for safety
            ready = []
        if any(fd == self._wake_r for fd, _ in ready):
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 4096):
                    pass

    def drain(self) -> list[Change]:
        """Whatever events are queued now, without waiting."""
        out: list[Change] = []
        if self._closed:
            return out
        while True:
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                events = []
            if not events:
                return out
            for event in events:
                self._translate(event, out)

    def _translate(self, event, out: list[Change]) -> None:
        action = classify(event.mask)
        if action is Action.RESCAN:
            log.warning("inotify queue overflowed (events were dropped): rescanning %s", self.root,
                        extra={"event": "watch.overflow"})
            out.append(Change(Action.RESCAN, ""))
            return
        with self._lock:
            rel_dir = self._wd_rel.get(event.wd)
        if rel_dir is None:
            return  # a watch we already dropped
        if action is Action.FORGET_WD:
            with self._lock:
                self._wd_rel.pop(event.wd, None)
                if self._rel_wd.get(rel_dir) == event.wd:
                    del self._rel_wd[rel_dir]
            if rel_dir == "":
                self.root_lost = True
                out.append(Change(Action.SELF_GONE, ""))
            return
        if action is Action.SELF_GONE:
            if rel_dir == "":
                self.root_lost = True
                out.append(Change(Action.SELF_GONE, ""))
            return
        if action is Action.IGNORE or not event.name:
            return
        rel = _join(rel_dir, event.name)
        if action is Action.NEW_DIR:
            if self.dir_selected(rel):
                self.watch_tree(rel)
                out.append(Change(Action.NEW_DIR, rel))
            return
        if action is Action.DIR_GONE:
            self._drop_subtree(rel)
            out.append(Change(Action.DIR_GONE, rel))
            return
        out.append(Change(action, rel))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self._inotify.close()
