"""The watcher's durable journal: what is pending, what was uploaded where.

One SQLite database, ``<state_dir>/watch/journal.sqlite3`` (WAL, files 0600),
one row per file the watcher knows, keyed by the watched folder, the key
prefix template and the file's path relative to the folder:

* ``pending``: seen complete, not yet in the bucket (with attempts and the
  last error, so ``syncbridge status`` can say why);
* ``done``: in the bucket at ``key`` with ``etag``, uploaded from a file of
  this ``size``/``mtime_ns``/``ino`` (an unchanged file is not uploaded again
  after a restart; ``etag`` is also the proof that the object at ``key`` is
  ours, so a rewrite may replace it);
* ``failed``: a fatal error (403, NoSuchBucket...), kept until it succeeds.

Rows for files that no longer exist are compacted away after each full scan,
so the journal holds what is pending plus what is needed to avoid re-uploads.
A journal that SQLite cannot read is moved aside (loudly) and a new one
started: the start-up scan and the bucket-side collision check make that safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import attrs

from ..fsutil import ensure_private_dir

__all__ = ["Journal", "Row", "JournalSummary", "read_summary", "JOURNAL_NAME", "PENDING", "DONE", "FAILED"]

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.sqlite3"
PENDING, DONE, FAILED = "pending", "done", "failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    root BLOB NOT NULL,
    template TEXT NOT NULL,
    rel BLOB NOT NULL,
    state TEXT NOT NULL,
    key TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    ino INTEGER,
    etag TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    first_seen REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (root, template, rel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_open ON files (state, first_seen) WHERE state != 'done';
"""


@attrs.frozen
class Row:
    """One file as the journal knows it."""

    rel: str
    state: str
    key: str | None
    size: int | None
    mtime_ns: int | None
    ino: int | None
    etag: str | None  # what this watcher put at ``key`` (None: nothing of ours there)
    attempts: int
    last_error: str | None
    first_seen: float | None
    updated: float


@attrs.frozen
class JournalSummary:
    """Counts over every folder in a journal, for ``syncbridge status`` without a daemon."""

    pending: int
    failed: int
    done: int
    oldest_pending: float | None  # wall-clock time the oldest pending file was seen
    failures: tuple[tuple[str, str | None, str | None], ...]  # (rel, key, last_error), at most 20


def _b(rel: str) -> bytes:
    return os.fsencode(rel)


def _s(blob: bytes) -> str:
    return os.fsdecode(bytes(blob))


def _row(r: tuple) -> Row:
    return Row(_s(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10])


_COLS = "rel, state, key, size, mtime_ns, ino, etag, attempts, last_error, first_seen, updated"


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, check_same_thread=False)
    else:
        # Create the file 0600 before SQLite does: its -wal and -shm files copy the mode.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(path, 0o600)
        conn = sqlite3.connect(str(path), timeout=5, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class Journal:
    """The journal of one watched folder and prefix template. Thread-safe (one connection, one lock).

    Args:
        path: the database file (its folder is created 0700).
        root: the watched folder (absolute).
        template: the key prefix template (``outputs/{pod_id}``); a different
            template is a different set of rows, so changing the prefix pushes
            the folder again under the new one.
    """

    def __init__(self, path: Path, *, root: str, template: str) -> None:
        self.path = Path(path)
        ensure_private_dir(self.path.parent)
        self._root = _b(root)
        self._template = template
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("journal %s is unreadable (%s); moved aside to %s, starting a new one (files already in the "
                      "bucket are recognised by content, not uploaded twice)", self.path, exc, aside,
                      extra={"event": "watch.journal_corrupt"})
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = _connect(self.path)
        try:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new database
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("journal %s: WAL not available (%s)", self.path, mode)
            # NORMAL in WAL mode: a commit survives the process being killed (kill -9);
            # only a power cut may lose the last commits, and the start-up scan covers that.
            conn.execute("PRAGMA synchronous=NORMAL")
            # A small page cache (default 2 MB): rows are tiny and mostly written, and the
            # daemon's idle footprint counts on a pod.
            conn.execute("PRAGMA cache_size=-512")
            conn.executescript(_SCHEMA)
            conn.execute("SELECT count(*) FROM files").fetchone()
        except BaseException:
            conn.close()
            raise
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("journal is closed")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reads -----------------------------------------------------------------------

    def get(self, rel: str) -> Row | None:
        with self._lock:
            r = self._conn.execute(f"SELECT {_COLS} FROM files WHERE root=? AND template=? AND rel=?",
                                   (self._root, self._template, _b(rel))).fetchone()
        return _row(r) if r else None

    def rows(self, *, states: Iterable[str] | None = None) -> dict[str, Row]:
        """Every row of this folder (optionally only those in ``states``), by relative path."""
        sql = f"SELECT {_COLS} FROM files WHERE root=? AND template=?"
        args: list = [self._root, self._template]
        if states is not None:
            states = list(states)
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += states
        with self._lock:
            found = self._conn.execute(sql, args).fetchall()
        return {row.rel: row for row in map(_row, found)}

    def counts(self) -> dict[str, int]:
        with self._lock:
            found = self._conn.execute("SELECT state, count(*) FROM files WHERE root=? AND template=? GROUP BY state",
                                       (self._root, self._template)).fetchall()
        return {state: n for state, n in found}

    # -- writes ----------------------------------------------------------------------

    def mark_pending(self, items: Iterable[tuple[str, float]]) -> None:
        """Record files as pending (``(rel, first_seen)``); key, etag and ownership are kept."""
        now = time.time()
        data = [(self._root, self._template, _b(rel), seen, now) for rel, seen in items]
        if not data:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO files (root, template, rel, state, first_seen, updated) VALUES (?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT (root, template, rel) DO UPDATE SET "
                "first_seen = CASE WHEN state = 'pending' THEN coalesce(first_seen, excluded.first_seen) "
                "ELSE excluded.first_seen END, state = 'pending', updated = excluded.updated", data)

    def mark_done(self, rel: str, *, key: str, size: int, mtime_ns: int, ino: int, etag: str | None) -> None:
        """Record a file as in the bucket at ``key``; ``etag`` None: the object there is not ours to replace."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO files (root, template, rel, state, key, size, mtime_ns, ino, etag, attempts, last_error, "
                "first_seen, updated) VALUES (?, ?, ?, 'done', ?, ?, ?, ?, ?, 0, NULL, NULL, ?) "
                "ON CONFLICT (root, template, rel) DO UPDATE SET state='done', key=excluded.key, size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, ino=excluded.ino, etag=excluded.etag, attempts=0, last_error=NULL, "
                "first_seen=NULL, updated=excluded.updated",
                (self._root, self._template, _b(rel), key, size, mtime_ns, ino, etag, time.time()))

    def note_error(self, rel: str, *, key: str | None, error: str, attempts: int, fatal: bool) -> None:
        """Record a failed attempt; ``fatal`` moves the row to ``failed`` (kept, retried later)."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO files (root, template, rel, state, key, attempts, last_error, first_seen, updated) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (root, template, rel) DO UPDATE SET "
                "state=excluded.state, key=coalesce(files.key, excluded.key), attempts=excluded.attempts, "
                "last_error=excluded.last_error, first_seen=coalesce(files.first_seen, excluded.first_seen), "
                "updated=excluded.updated",
                (self._root, self._template, _b(rel), FAILED if fatal else PENDING, key, attempts, error[:2000], now,
                 now))

    def disown(self, rels: Iterable[str], *, prefix: str) -> None:
        """The objects these files were put at under ``prefix/`` (a job's outputs, once the job's scope is
        closed) are no longer theirs to replace: a later version of the file is a new output."""
        head = prefix.rstrip("/") + "/"
        data = [(len(head), head, self._root, self._template, _b(rel)) for rel in rels]
        if data:
            with self._tx() as conn:
                conn.executemany("UPDATE files SET etag=NULL WHERE substr(key, 1, ?) = ? AND root=? AND template=? "
                                 "AND rel=?", data)

    def forget(self, rels: Iterable[str]) -> None:
        """Drop rows (the files were deleted or moved away: a new file of that name is a new output)."""
        data = [(self._root, self._template, _b(rel)) for rel in rels]
        if data:
            with self._tx() as conn:
                conn.executemany("DELETE FROM files WHERE root=? AND template=? AND rel=?", data)

    def compact(self, *, seen: set[str], before: float) -> int:
        """Drop rows of files not ``seen`` by a full scan that started at ``before`` (wall clock).

        Rows touched since ``before`` are kept: their files appeared during the scan.

        Returns:
            How many rows were removed.
        """
        seen_b = {_b(rel) for rel in seen}
        with self._lock:
            found = self._conn.execute("SELECT rel FROM files WHERE root=? AND template=? AND updated < ?",
                                       (self._root, self._template, before)).fetchall()
        stale = [(self._root, self._template, r[0]) for r in found if bytes(r[0]) not in seen_b]
        if stale:
            with self._tx() as conn:
                conn.executemany("DELETE FROM files WHERE root=? AND template=? AND rel=?", stale)
            with self._lock, contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA incremental_vacuum")
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return len(stale)


def read_summary(path: Path) -> JournalSummary | None:
    """Counts from a journal without writing to it (``None`` when there is no journal)."""
    if not Path(path).exists():
        return None
    conn = _connect(Path(path), readonly=True)
    try:
        counts = dict(conn.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
        oldest = conn.execute("SELECT min(first_seen) FROM files WHERE state='pending'").fetchone()[0]
        failures = tuple((_s(r[0]), r[1], r[2]) for r in conn.execute(
            "SELECT rel, key, last_error FROM files WHERE state='failed' ORDER BY updated DESC LIMIT 20"))
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return JournalSummary(counts.get(PENDING, 0), counts.get(FAILED, 0), counts.get(DONE, 0), oldest, failures)
