"""What an inotify event means, and how ready files are gathered: pure, no clocks, threads or inotify here.

* :func:`classify`: an inotify event mask to what the watcher should do (an :class:`Action`);
  :class:`Change` is one such event with its path relative to the watched folder.
* :class:`DeadlineBatcher`: gathers ready paths until a deadline fixed at the
  **first** event (``first + delay``), with caps that flush at once; later
  events never push the deadline back (a job writing a file every 0.5 s with a
  1 s delay still sees every file within 1 s).

The inotify flag values are the kernel's ABI (``<sys/inotify.h>``); they are
spelled out here so this module does not import ``inotify_simple``.
"""

from __future__ import annotations

import enum
from typing import Generic, Hashable, TypeVar

import attrs


__all__ = [
    "IN_ACCESS", "IN_MODIFY", "IN_ATTRIB", "IN_CLOSE_WRITE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_CREATE",
    "IN_DELETE", "IN_DELETE_SELF", "IN_MOVE_SELF", "IN_UNMOUNT", "IN_Q_OVERFLOW", "IN_IGNORED", "IN_ISDIR",
    "IN_ONLYDIR", "IN_DONT_FOLLOW", "IN_EXCL_UNLINK", "WATCH_MASK",
    "Action", "Change", "classify", "DeadlineBatcher",
]

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

# What each directory watch asks for. IN_DONT_FOLLOW + IN_ONLYDIR: a symlink is
# never watched through (symlinks are not followed out of DIR).
WATCH_MASK = (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_DELETE_SELF
              | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)


class Action(enum.Enum):
    """What one inotify event means for the watcher."""

    READY = "ready"          # a file is complete (IN_CLOSE_WRITE, IN_MOVED_TO): push it
    CREATED = "created"      # a file appeared; complete only if it is a new hard link (link count > 1)
    GONE = "gone"            # a file was deleted or moved away: forget it
    NEW_DIR = "new_dir"      # watch it, then scan it (files made before the watch existed)
    DIR_GONE = "dir_gone"    # a directory was deleted or moved away: drop its watches
    SELF_GONE = "self_gone"  # the watched directory itself went away
    RESCAN = "rescan"        # the kernel dropped events (IN_Q_OVERFLOW): scan everything
    FORGET_WD = "forget_wd"  # the kernel removed a watch (IN_IGNORED)
    IGNORE = "ignore"


@attrs.frozen
class Change:
    """One thing that happened below the root: ``rel`` is relative to it ("" for the root)."""

    action: Action
    rel: str


def classify(mask: int) -> Action:
    """Map an inotify event mask to an :class:`Action`."""
    if mask & IN_Q_OVERFLOW:
        return Action.RESCAN
    if mask & IN_IGNORED:
        return Action.FORGET_WD
    if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
        return Action.SELF_GONE
    if mask & IN_ISDIR:
        if mask & (IN_CREATE | IN_MOVED_TO):
            return Action.NEW_DIR
        if mask & (IN_DELETE | IN_MOVED_FROM):
            return Action.DIR_GONE
        return Action.IGNORE
    if mask & (IN_CLOSE_WRITE | IN_MOVED_TO):
        return Action.READY
    if mask & IN_CREATE:
        return Action.CREATED
    if mask & (IN_DELETE | IN_MOVED_FROM):
        return Action.GONE
    return Action.IGNORE


T = TypeVar("T", bound=Hashable)


class DeadlineBatcher(Generic[T]):
    """Collects items until a deadline fixed when the first one arrives.

    Args:
        delay: seconds from the first item to the deadline (0: every item is due at once).
        max_items: flush as soon as this many distinct items are waiting.
        max_delay: hard cap on how long any item waits, whatever ``delay`` says.

    Adding an item already waiting does not move anything (a rewritten file is
    pushed once, with its newest content, at the original deadline).
    """

    def __init__(self, *, delay: float, max_items: int = 1000, max_delay: float = 10.0) -> None:
        if delay < 0 or max_items < 1:
            raise ValueError("delay must be >= 0 and max_items >= 1")
        self.delay = min(delay, max_delay)
        self.max_items = max_items
        self._items: dict[T, None] = {}
        self._first: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, *, now: float) -> None:
        if self._first is None:
            self._first = now
        self._items[item] = None

    @property
    def deadline(self) -> float | None:
        """When the current batch is due (``None``: nothing waiting)."""
        if self._first is None:
            return None
        return self._first + self.delay

    def due(self, *, now: float) -> bool:
        if self._first is None:
            return False
        return len(self._items) >= self.max_items or now >= self._first + self.delay

    def take(self, *, now: float, force: bool = False) -> list[T]:
        """The batch, in arrival order, if it is due (or ``force``); else nothing."""
        if not (force or self.due(now=now)):
            return []
        items = list(self._items)
        self._items.clear()
        self._first = None
        return items

