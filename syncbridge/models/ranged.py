"""The ranged parallel download engine of the cache: large objects as parallel ranged GETs.

Several streams GET byte ranges of one presigned URL (:class:`~syncbridge.models.http.RangeReader`;
the store's own ranged GET is the fallback) and ``pwrite`` them into one temp file. The sha256 is
computed in order as the ranges land (:class:`OrderedDigest`: the bytes that continue the hashed
prefix straight from the socket buffer), so verification needs no second pass over the file. A
sidecar (:class:`Resume`) lets an interrupted download continue where it stopped.

``benchmarks/bench_models.py`` compares this with tuned ``rclone copy`` and ``s5cmd``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path

from ..errors import CancelledError, StoreError
from ..fsutil import temp_beside
from ..retry import ATTEMPTS, pause, retry_by_hand
from ..store import Store
from .http import RangeReader
from .source import Fetched, OnBytes, check_cancel

__all__ = ["Ranged", "Resume", "OrderedDigest", "RESUME_SUFFIX"]

log = logging.getLogger(__name__)

RESUME_SUFFIX = ".resume"


class Ranged:
    """Parallel ranged GETs of one object into one temp file.

    Args:
        streams: ranged GETs in flight per object.
        part_size: bytes per ranged GET.
        timeout: seconds a ranged GET may wait for bytes before it is retried.
    """

    def __init__(self, *, streams: int = 4, part_size: int = 32 * 1024 * 1024, timeout: float = 60.0) -> None:
        self.streams = max(1, streams)
        self.part_size = part_size
        self.timeout = timeout

    def download(self, store: Store, key: str, size: int, temp: Path, on_bytes: OnBytes,
                cancel: threading.Event | None, *, expected: str | None = None) -> Fetched:
        """Parallel ranged GETs into one temp file, hashed in order as the bytes land (no second pass).

        A sidecar (``<temp>.resume``) records the object's ETag and how far the file is known to be
        complete, so an interrupted pull (a killed pod, a dropped connection) continues from there:
        the kept prefix is re-hashed from disk (GB/s) instead of fetched again. Every response must carry
        the recorded ETag, so a cache object replaced in between is never spliced onto the old bytes:
        the download starts over instead, as it does when a resumed file misses ``expected`` (its kept
        bytes did not survive a host crash, say), rather than failing over to an upstream.
        """
        resume = Resume(temp.with_name(temp.name + RESUME_SUFFIX), key, size)
        reported = [0]

        def counted(n: int) -> None:
            reported[0] += n
            on_bytes(n)

        try:
            fetched = self._once(store, key, size, temp, counted, cancel, resume)
            if not (resume.resumed and expected and fetched.sha256 != expected):
                return fetched
            why = "the resumed file does not match its sha256"
        except StoreError as exc:
            if exc.code != "ETagChanged":
                raise
            why = "it changed during the download"
        log.info("%s: %s; starting over", key, why, extra={"event": "models.restart", "key": key})
        resume.discard()
        temp.unlink(missing_ok=True)
        already = [reported[0]]

        def again(n: int) -> None:  # progress counts each byte once across both tries
            skip = min(already[0], n)
            already[0] -= skip
            if n > skip:
                on_bytes(n - skip)

        return self._once(store, key, size, temp, again, cancel, Resume(resume.path, key, size))

    def _once(self, store: Store, key: str, size: int, temp: Path, on_bytes: OnBytes,
                     cancel: threading.Event | None, resume: Resume) -> Fetched:
        kept = resume.load() if temp.exists() else 0
        if kept and temp.stat().st_size < kept:  # the file lost its tail: the sidecar is not to be trusted
            kept = 0
        resume.resumed = kept > 0
        # No posix_fallocate: reserving the blocks up front doubled the kernel time of the writes that
        # follow on ext4 (benchmarks/bench_models.py); the free-space check has run before any download.
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | (0 if kept else os.O_TRUNC), 0o644)
        try:
            os.ftruncate(fd, size)
            digest = OrderedDigest(fd, size)
            if kept:
                log.info("resuming %s at %d of %d bytes", key, kept, size,
                         extra={"event": "models.resume", "key": key, "offset": kept})
                digest.landed(0, kept)
                on_bytes(kept)
            parts = [(start, min(start + self.part_size, size)) for start in range(kept, size, self.part_size)]
            done = [False] * len(parts)
            failure: list[BaseException] = []
            cond = threading.Condition()
            next_part = [0]
            etags: set[str | None] = set()
            # One writer per file at a time: ext4 serializes buffered writes to an inode anyway, and
            # streams left to contend for it there spin in the kernel (4 streams x 4 files took twice the
            # CPU of 2 x 4, measured in benchmarks/bench_models.py); waiting here sleeps instead.
            write_lock = threading.Lock()
            # A presigned URL read with http.client straight into a reused buffer costs far less CPU per
            # byte than botocore's streaming body (benchmarks/bench_models.py); the store's own ranged GET
            # is the fallback (and the only way for the local bucket).
            url = store.presign_get(key, expires=6 * 3600)

            readers: list[RangeReader] = []

            def worker() -> None:
                reader = RangeReader(url, etag=resume.etag, cafile=store.ca_bundle, timeout=self.timeout) \
                    if url else None
                if reader is not None:
                    with cond:
                        readers.append(reader)
                try:
                    while True:
                        with cond:
                            if failure or next_part[0] >= len(parts):
                                return
                            index = next_part[0]
                            next_part[0] += 1
                        start, end = parts[index]
                        at = start  # a retry asks only for what the failed try did not deliver
                        for attempt in range(ATTEMPTS):
                            check_cancel(cancel)
                            try:
                                if reader is not None:
                                    reader.read_into(fd, at, end, digest.landed, write_lock, cancel)
                                    with cond:
                                        etags.add(reader.etag)
                                        resume.etag = resume.etag or reader.etag
                                else:
                                    store.download_range(key, fd, start=at, end=end)
                                    digest.landed(at, end)
                                break
                            except StoreError as exc:
                                if exc.code == "ETagChanged":
                                    raise
                                if reader is not None:
                                    at = max(at, reader.reached)
                                    # Whatever went wrong with the URL (TLS, a proxy, an expiry), the store's
                                    # own client gets the remaining attempts.
                                    reader.close()
                                    reader = None
                                    if attempt < ATTEMPTS - 1:
                                        continue
                                # The store's client retried the request itself: only a body cut short
                                # is tried again here, after a backoff (syncbridge.retry).
                                if not retry_by_hand(code=exc.code, mid_body=exc.mid_body) or attempt == ATTEMPTS - 1:
                                    raise
                                log.info("cache part %s-%s of %s failed (%s); retrying", start, end, key, exc,
                                         extra={"event": "models.part_retry", "key": key})
                                if not pause(attempt + 1, cancel=cancel):
                                    check_cancel(cancel)
                        on_bytes(end - start)
                        with cond:
                            done[index] = True
                            cond.notify_all()
                        resume.save(digest.position)
                except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                    with cond:
                        failure.append(exc)
                        cond.notify_all()
                finally:
                    if reader is not None:
                        reader.close()

            threads = [threading.Thread(target=worker, daemon=True, name=f"cache-get-{i}")
                       for i in range(min(self.streams, len(parts)))]
            for t in threads:
                t.start()
            try:
                with cond:
                    while not all(done) and not failure:
                        cond.wait(0.2)
                        if cancel is not None and cancel.is_set():
                            failure.append(CancelledError("stopped"))
                            for reader in readers:  # a read waiting on a stalled server returns now
                                reader.abort()
                    if failure:
                        raise failure[0]
            finally:
                with cond:
                    if not all(done):
                        failure.append(CancelledError("stopped"))
                    cond.notify_all()
                for t in threads:
                    t.join()
                resume.save(digest.position)
            if len(etags) > 1:  # streams that started before the first response could not compare
                raise StoreError(f"get {key!r}: the object changed during the download (ETags {sorted(map(str, etags))})",
                                 key=key, code="ETagChanged", retryable=True)
            sha = digest.hexdigest()
        finally:
            os.close(fd)
        resume.discard()
        return Fetched(size, sha)



class Resume:
    """The sidecar of a ranged download: ``{"key", "size", "etag", "complete"}``, where ``complete`` is
    the length of the prefix known to be on disk (only ever the hashed prefix: bytes land out of order)."""

    def __init__(self, path: Path, key: str, size: int) -> None:
        self.path = path
        self.key = key
        self.size = size
        self.etag: str | None = None
        self.resumed = False  # whether this download continued a kept prefix
        self._saved = -1
        self._lock = threading.Lock()

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("key") != self.key or data.get("size") != self.size or not data.get("etag"):
                return 0
            complete = int(data["complete"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        if not 0 < complete <= self.size:
            return 0
        self.etag = str(data["etag"])
        self._saved = complete
        return complete

    def save(self, complete: int) -> None:
        """Record progress (an atomic replace; a failure to write it only costs the resume)."""
        with self._lock:
            if self.etag is None or complete <= self._saved:
                return
            self._saved = complete
            data = json.dumps({"key": self.key, "size": self.size, "etag": self.etag, "complete": complete})
            with contextlib.suppress(OSError), temp_beside(self.path) as (fd, tmp):
                os.write(fd, data.encode())
                os.replace(tmp, self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class OrderedDigest:
    """The sha256 of a file whose byte ranges land out of order from several streams.

    Each landed range either continues the hashed prefix, and is hashed at once from the buffer it
    arrived in (still in the CPU cache), or waits in a table of landed ranges until the prefix reaches
    it, and is then read back from the page cache. One thread hashes at a time; hashlib releases the
    GIL on large buffers, so the other streams keep receiving meanwhile.
    """

    _READ = 1024 * 1024

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.digest = hashlib.sha256()
        self.position = 0  # bytes [0, position) are hashed
        self._landed: dict[int, int] = {}  # start -> end of ranges on disk but not hashed yet
        self._busy = False
        self._lock = threading.Lock()
        self._buffer: memoryview | None = None

    def landed(self, start: int, end: int, data: memoryview | None = None) -> None:
        """Bytes ``[start, end)`` are in the file (and, when given, in ``data``, which the caller reuses)."""
        with self._lock:
            if end <= self.position:
                return  # delivered again (a retried range): already hashed
            if self._busy or start > self.position:
                self._landed[start] = max(end, self._landed.get(start, end))
                return
            self._busy = True
            skip = self.position - start
        if data is not None:
            self.digest.update(data[skip:])
        else:
            self._hash_from_file(start + skip, end)
        self._catch_up(end)

    def _catch_up(self, position: int) -> None:
        while True:
            with self._lock:
                self.position = position
                end = self._landed.pop(position, None)
                if end is None:
                    self._busy = False
                    return
                while end in self._landed:  # one read for a run of adjacent ranges
                    end = self._landed.pop(end)
            self._hash_from_file(position, end)
            position = end

    def _hash_from_file(self, start: int, end: int) -> None:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(self._READ))
        pos = start
        while pos < end:
            n = os.preadv(self.fd, [self._buffer[:min(self._READ, end - pos)]], pos)
            if n <= 0:
                raise StoreError(f"the temp file ended at {pos} of {end} bytes", code="ShortRead", retryable=True)
            self.digest.update(self._buffer[:n])
            pos += n

    def hexdigest(self) -> str:
        with self._lock:
            if self.position != self.size or self._busy or self._landed:
                raise StoreError(f"only {self.position} of {self.size} bytes arrived in order", code="ShortRead",
                                 retryable=True)
        return self.digest.hexdigest()

