"""THE protocol of a cache entry: how one is published, what it claims, how a copy is verified.

A cache entry is the object ``<cache_prefix>/<path>`` (a snapshot: one object per file plus its
index). Every writer and every reader goes through here:

* **publish** (:func:`publish`): a HEAD first (an equal entry is there: nothing to send), then a
  conditional put (``If-None-Match: *``) carrying the file's sha256 in metadata. A PUT is atomic,
  so an entry is never visible half-written. The loser of a race between pods verifies the
  winner's object instead of overwriting it: same size and sha256 is ``exists``, anything else is
  ``conflict`` (nothing overwritten). The outcome is a :class:`WriteBack`, never an exception,
  except that the store's own failures raise :class:`~syncbridge.errors.StoreError`.
* **claims** (:func:`entry_sha256`): the sha256 an entry carries in its metadata (any case of the
  name: rclone serve s3 capitalises it), or ``None`` for an object put there by other means. Such
  an object is still an entry; a copy of it is then verified by size (and the manifest's sha256).
* **verify** (:func:`verify`): a copy is accepted only when its size and sha256 match what the
  manifest or the entry says; the level checked (``sha256`` or ``size``) is recorded.
* **snapshots** (:func:`publish_snapshot`, :func:`combine`): each file, then the index last (a
  reader that finds the index finds every file); the snapshot's outcome is the first bad one, else
  ``pushed`` when anything was sent, else ``exists``.

:func:`fetch` puts the read side together for callers outside a pull (the fleet's tools, tests):
GET into a temp file beside ``dest``, hashed while written, verified, renamed.
"""

from __future__ import annotations

import enum
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import attrs

from ..errors import PreconditionFailedError
from ..fsutil import temp_beside
from ..hashing import HashingWriter
from ..store import ObjectInfo, Store
from .manifest import SNAPSHOT_INDEX
from .source import SourceError

__all__ = ["SHA256_META", "Outcome", "WriteBack", "entry_sha256", "publish", "publish_snapshot", "combine",
           "verify", "fetch"]

SHA256_META = "sha256"  # user metadata name of an entry's checksum (x-amz-meta-sha256)


class Outcome(enum.Enum):
    """What happened to one cache write."""

    PUSHED = "pushed"  # this pod sent it
    EXISTS = "exists"  # the cache already holds the same bytes
    CONFLICT = "conflict"  # the cache holds another object at the key (left as it is)
    FAILED = "failed"  # the store refused or failed
    SKIPPED = "skipped"  # not tried (the cache refused access, or stopped answering)


@attrs.frozen
class WriteBack:
    """One cache write's outcome, with what went wrong in words (``detail``)."""

    outcome: Outcome
    detail: str = ""

    @property
    def bad(self) -> bool:
        """A conflict or a failure: the cache does not hold this pod's bytes, and the report says so."""
        return self.outcome in (Outcome.CONFLICT, Outcome.FAILED)

    def __str__(self) -> str:
        return self.outcome.value + (f": {self.detail}" if self.detail else "")


PUSHED = WriteBack(Outcome.PUSHED)
EXISTS = WriteBack(Outcome.EXISTS)


def entry_sha256(info: ObjectInfo) -> str | None:
    """The sha256 an entry claims (lower case), or ``None`` when it carries none."""
    theirs = {k.lower(): v for k, v in info.metadata.items()}.get(SHA256_META)
    return theirs.lower() if theirs else None


def _compare(info: ObjectInfo, key: str, size: int, sha256: str | None) -> WriteBack:
    """An entry already at ``key``: the same bytes (size, and sha256 when both sides know it) or not."""
    theirs = entry_sha256(info)
    if info.size == size and (theirs is None or sha256 is None or theirs == sha256.lower()):
        return EXISTS
    return WriteBack(Outcome.CONFLICT, f"{key} holds another object ({info.size} bytes, sha256 {str(theirs)[:12]}...)")


def publish(store: Store, key: str, path: str | os.PathLike[str] | None, sha256: str | None, *,
            data: bytes | None = None) -> WriteBack:
    """Publish a verified file (or ``data``) as entry ``key`` unless an equal entry is there.

    Returns ``pushed``, ``exists`` or ``conflict``; raises :class:`~syncbridge.errors.StoreError` when
    the store fails.
    """
    size = len(data) if data is not None else os.path.getsize(path)  # type: ignore[arg-type]
    info = store.head(key)
    if info is not None:
        return _compare(info, key, size, sha256)
    metadata = {SHA256_META: sha256} if sha256 else {}
    try:
        if data is not None:
            store.put_bytes(key, data, if_none_match=True, metadata=metadata)
        else:
            store.put_file(path, key, if_none_match=True, metadata=metadata)  # type: ignore[arg-type]
        return PUSHED
    except PreconditionFailedError:
        info = store.head(key)
        return _compare(info, key, size, sha256) if info is not None else EXISTS


def combine(results: Sequence[WriteBack]) -> WriteBack:
    """The outcome of several writes (a snapshot's files and index): the first bad one, else ``pushed``
    when any was sent, else ``exists``."""
    bad = next((r for r in results if r.bad), None)
    if bad is not None:
        return bad
    return PUSHED if any(r.outcome is Outcome.PUSHED for r in results) else EXISTS


def publish_snapshot(store: Store, key_of: Callable[[str], str], folder: Path) -> WriteBack:
    """Publish a verified snapshot folder: each file of its index, then the index itself (last, so a
    reader that finds the index finds every file). ``key_of(rel)`` names the entry of a file."""
    index_bytes = (folder / SNAPSHOT_INDEX).read_bytes()
    index = json.loads(index_bytes)
    results = [publish(store, key_of(rel), folder / rel, entry["sha256"]) for rel, entry in index["files"].items()]
    results.append(publish(store, key_of(SNAPSHOT_INDEX), None, None, data=index_bytes))
    return combine(results)


def verify(size: int, sha256: str, *, want_size: int | None, want_sha256: str | None, what: str,
           source: str) -> str:
    """Check a copy against what the manifest or the entry says it must be.

    Returns the level checked: ``sha256``, ``size`` (only the size was known) or ``""`` (nothing was).

    Raises:
        SourceError: wrong size or sha256 (not retryable: the same bytes would come again).
    """
    if want_size is not None and size != want_size:
        raise SourceError(f"{what}: got {size} bytes, expected {want_size}", source=source)
    if want_sha256 and sha256 != want_sha256:
        raise SourceError(f"{what}: sha256 mismatch: got {sha256[:12]}..., expected {want_sha256[:12]}...",
                          source=source)
    return "sha256" if want_sha256 else ("size" if want_size is not None else "")


def fetch(store: Store, key: str, dest: Path, *, sha256: str | None = None) -> tuple[ObjectInfo, str]:
    """Copy entry ``key`` to ``dest``: a temp file beside it, hashed while written, verified against
    ``sha256`` (else what the entry claims) and its size, then renamed into place.

    Returns the entry and the level verified (see :func:`verify`).

    Raises:
        SourceError: the copy does not verify (nothing is left at ``dest``).
        StoreError: the store failed (a missing entry: status 404).
    """
    with temp_beside(dest) as (fd, tmp):
        with os.fdopen(os.dup(fd), "wb") as out:
            writer = HashingWriter(out)
            info = store.download_to(key, writer)  # type: ignore[arg-type]
        level = verify(writer.size, writer.hexdigest(), want_size=info.size, want_sha256=sha256 or entry_sha256(info),
                       what=f"cache entry {key}", source="cache")
        os.replace(tmp, dest)
    return info, level
