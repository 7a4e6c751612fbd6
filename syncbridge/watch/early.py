"""A growing file sent while it is written: its full parts go out as they appear, the rest at its close.

ffmpeg writes a video over seconds or minutes; an upload that starts at the close leaves the whole
file to send at the end. For a job's files (:class:`~syncbridge.watch.upload.Route`) the watcher
starts a :class:`Tail` when a file is created: a thread that follows its size and sends each full
part (:data:`PART_SIZE`, all parts but the last of one size, as R2 requires) of a multipart upload
as soon as it is written. Nothing is visible in the bucket until :meth:`Tail.finish`, called by the
upload at the file's close, has

1. read the whole file once more, comparing each part sent with what is there now (ffmpeg seeks
   back to rewrite the header at the end: a part that changed is sent again) and hashing it (sha256);
2. sent the rest;
3. checked the file did not change meanwhile, and completed the upload (``If-None-Match`` where
   the store enforces it).

So the bucket never holds a prefix of the file, nor bytes it no longer has. A file that shrinks,
is replaced (another inode), outgrows :data:`MAX_PARTS` or stays quiet for :data:`IDLE_SECONDS`
has its upload aborted, and the close uploads it as usual.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import SourceChangedError, StoreError
from ..store import ObjectInfo, PutHeaders

__all__ = ["Tail", "PART_SIZE", "tail_supported"]

log = logging.getLogger(__name__)

PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
POLL_SECONDS = 0.05
IDLE_SECONDS = 600.0


class Tail:
    """Follows one growing file and sends its full parts (see the module's doc)."""

    def __init__(self, store: Any, key: str, path: Path, *, metadata: Mapping[str, str], headers: PutHeaders,
                 part_size: int = PART_SIZE) -> None:
        self.store = store
        self.key = key
        self.path = path
        self._metadata = dict(metadata)
        self._headers = headers
        self.part_size = part_size
        self.upload_id: str | None = None
        self.etags: list[str] = []
        self._crcs: list[bytes] = []  # a digest of each part sent early
        self._sha = hashlib.sha256()  # of the parts sent, in order (continued at the close if none changed)
        self._ino: int | None = None
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="syncbridge-tail", daemon=True)
        self._thread.start()

    @property
    def sent(self) -> int:
        return len(self.etags) * self.part_size

    def _run(self) -> None:
        last_growth = time.monotonic()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            self.failed = f"cannot open: {exc.strerror or exc}"
            return
        try:
            self._ino = os.fstat(fd).st_ino
            while not self._stop.is_set():
                try:
                    st = os.stat(self.path)
                except OSError:
                    self.failed = "gone"
                    break
                if st.st_ino != self._ino or st.st_size < self.sent:
                    self.failed = "replaced or truncated"
                    break
                if st.st_size - self.sent >= self.part_size:
                    if len(self.etags) >= MAX_PARTS - 1:
                        self.failed = "too many parts"
                        break
                    data = os.pread(fd, self.part_size, self.sent)
                    if len(data) < self.part_size:
                        continue
                    if self.upload_id is None:
                        self.upload_id = self.store.create_multipart(self.key, metadata=self._metadata,
                                                                     headers=self._headers)
                    self.etags.append(self.store.upload_part(self.key, self.upload_id, len(self.etags) + 1, data))
                    self._crcs.append(_part_digest(data))
                    self._sha.update(data)
                    last_growth = time.monotonic()
                    continue
                if time.monotonic() - last_growth > IDLE_SECONDS:
                    self.failed = "quiet for too long"
                    break
                self._stop.wait(POLL_SECONDS)
        except StoreError as exc:
            self.failed = str(exc)
        except OSError as exc:
            self.failed = f"cannot read: {exc.strerror or exc}"
        finally:
            os.close(fd)

    def abort(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.upload_id is not None:
            self.store.abort_multipart(self.key, self.upload_id)
            self.upload_id = None

    def finish(self, before: os.stat_result, unchanged: Callable[[], bool], *,
               if_none_match: bool) -> tuple[ObjectInfo, str] | None:
        """Complete the upload with the file as it is now (``before``: its stat at the close). Returns the
        object and the file's sha256, or None when nothing was sent early (the caller uploads as usual).

        Raises:
            SourceChangedError: the file changed meanwhile (the upload is aborted; nothing is visible).
            StoreError: the store failed (the upload is aborted).
        """
        self._stop.set()
        self._thread.join()
        if self.failed or self.upload_id is None or before.st_ino != self._ino or before.st_size < self.sent:
            if self.failed:
                log.debug("sending %s as written stopped (%s); uploading it at its close", self.path, self.failed,
                          extra={"event": "watch.tail_stopped"})
            self.abort()
            return None
        try:
            # One pass: each part sent early is compared with the file as it is now (sha1: fast with the CPU's instructions; an accidental match is out of reach) and sent
            # again if it changed; the rest is sent. The sha256 of the parts sent early is continued
            # unless one of them changed (then the file is hashed again from the start).
            digest = self._sha
            changed = False
            resent = 0
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_ino != self._ino:
                    raise SourceChangedError("replaced", key=self.key, code="SourceChanged")
                number = total = 0
                early = len(self.etags)
                while True:
                    data = fh.read(self.part_size)
                    if not data:
                        break
                    total += len(data)
                    number += 1
                    if number <= early:
                        if _part_digest(data) != self._crcs[number - 1] or len(data) != self.part_size:
                            self.etags[number - 1] = self.store.upload_part(self.key, self.upload_id, number, data)
                            resent += 1
                            changed = True
                    else:
                        digest.update(data)
                        self.etags.append(self.store.upload_part(self.key, self.upload_id, number, data))
            if changed:
                digest = hashlib.sha256()
                with open(self.path, "rb") as fh:
                    while chunk := fh.read(1 << 20):
                        digest.update(chunk)
            if number < len(self.etags) or total != before.st_size or not unchanged():
                raise SourceChangedError(f"{self.path} changed while it was uploaded", key=self.key,
                                         code="SourceChanged")
            etag = self.store.complete_multipart(self.key, self.upload_id, self.etags, if_none_match=if_none_match)
        except BaseException:
            self.abort()
            raise
        self.upload_id = None
        log.debug("%s: %d parts sent as it was written, %d sent again at its close", self.path,
                  len(self.etags) - resent, resent, extra={"event": "watch.tail_done"})
        info = ObjectInfo(self.key, before.st_size, etag, _now(), dict(self._metadata),
                          self._headers.content_type or "")
        return info, digest.hexdigest()


def _part_digest(data: bytes) -> bytes:
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def tail_supported(store: Any) -> bool:
    return all(hasattr(store, name) for name in ("create_multipart", "upload_part", "complete_multipart",
                                                   "abort_multipart"))

