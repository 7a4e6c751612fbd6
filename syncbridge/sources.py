"""Where a model comes from: the R2 cache, Hugging Face, CivitAI, a plain URL.

Each source is an object with two steps:

* :meth:`Source.offer` asks (cheaply: one HEAD or metadata call) what the
  source would deliver: the files, each with its size and sha256 when the
  source knows them. :class:`NotAvailable` means "not here, try the next one".
* :meth:`Source.fetch` writes one file to a temp path the caller chose (beside
  the target) and returns what was written (:class:`Fetched`: size and sha256,
  hashed while writing). The caller verifies and renames; a source never
  touches the final path.

Secrets: ``HF_TOKEN`` goes only to ``huggingface_hub`` (which drops it on
redirects to another host); ``CIVITAI_API_KEY`` is sent only as an
``Authorization: Bearer`` header, only to the CivitAI endpoint's own origin,
never in a URL, never to the host a download redirects to. Redirects are
followed by hand here for that reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence
from urllib.parse import urljoin, urlsplit

import attrs

from .errors import CancelledError, StoreError, SyncBridgeError
from .keys import encode_name, join_key
from .manifest import SNAPSHOT_INDEX, ModelSpec
from .store import Store

__all__ = [
    "RemoteFile",
    "Offer",
    "Fetched",
    "SourceError",
    "NotAvailable",
    "Source",
    "CacheSource",
    "HfSource",
    "CivitaiSource",
    "UrlSource",
    "sha256_file",
    "cache_key",
    "origin_of",
    "default_sources",
]

log = logging.getLogger(__name__)

OnBytes = Callable[[int], None]
_CHUNK = 1024 * 1024
# Small reads from HTTP streams: what arrived before a dropped connection is kept for the resume.
_STREAM_CHUNK = 64 * 1024
_HASH_READ = 8 * 1024 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


@attrs.frozen
class RemoteFile:
    """One file a source offers. ``rel`` is ``""`` for a single-file model, else the path inside the snapshot.

    ``size`` is exact when set; ``approx_size`` (CivitAI's ``sizeKB``) only feeds the disk-space check.
    """

    rel: str
    size: int | None
    sha256: str | None
    ref: Any = None
    approx_size: int | None = None

    @property
    def planned_size(self) -> int:
        return self.size if self.size is not None else (self.approx_size or 0)


@attrs.frozen
class Offer:
    """What a source would deliver for one model."""

    source: str
    detail: str
    files: tuple[RemoteFile, ...]
    meta: Any = None  # snapshot: repo, revision (written into the snapshot index)

    @property
    def size(self) -> int:
        return sum(f.planned_size for f in self.files)

    @property
    def size_known(self) -> bool:
        return all(f.size is not None for f in self.files)


@attrs.frozen
class Fetched:
    """What a fetch wrote: size and sha256 of the temp file."""

    size: int
    sha256: str


class SourceError(SyncBridgeError, OSError):
    """A source failed for one model; :attr:`retryable` says whether the same source may work on a retry."""

    def __init__(self, message: str, *, source: str, retryable: bool = False) -> None:
        self.source = source
        self.retryable = retryable
        super().__init__(message)


class NotAvailable(SourceError):
    """The source does not have this model (404, no cache entry): try the next one."""


def sha256_file(path: str | os.PathLike[str], *, on_bytes: OnBytes | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in large blocks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(_HASH_READ)
            if not block:
                break
            digest.update(block)
            size += len(block)
            if on_bytes:
                on_bytes(len(block))
    return size, digest.hexdigest()


def cache_key(cache_prefix: str, model_path: str, rel: str = "") -> str:
    """``<cache_prefix>/<path>[/<rel>]``, each segment encoded as rclone's S3 remote would."""
    rel_path = "/".join(encode_name(p) for p in model_path.split("/"))
    if rel:
        rel_path += "/" + "/".join(encode_name(p) for p in rel.split("/"))
    return join_key(cache_prefix, rel_path)


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: two URLs are the same origin only when all three match."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _safe_url(url: str) -> str:
    """A URL without its query (presigned URLs carry signatures) for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("model download cancelled")


class Source:
    """One rung of the model-source ladder."""

    name = "source"
    upstream = True  # False only for the team's own cache

    def applies(self, model: ModelSpec) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def offer(self, model: ModelSpec) -> Offer:  # pragma: no cover - interface
        raise NotImplementedError

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:  # pragma: no cover - interface
        raise NotImplementedError

    def resumable(self) -> bool:
        """Whether a temp file left by an interrupted fetch is continued (else it is started over)."""
        return False


# -- the team's cache in the bucket -------------------------------------------------------


class _HashingWriter:
    def __init__(self, fh: BinaryIO, on_bytes: OnBytes, cancel: threading.Event | None) -> None:
        self.fh = fh
        self.digest = hashlib.sha256()
        self.size = 0
        self.on_bytes = on_bytes
        self.cancel = cancel

    def write(self, data: bytes) -> int:
        _check_cancel(self.cancel)
        self.fh.write(data)
        self.digest.update(data)
        self.size += len(data)
        self.on_bytes(len(data))
        return len(data)


# StoreError codes (botocore's, or the exception's type name) that mean the bucket did not answer.
_UNREACHABLE = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ConnectionError", "TimeoutError", "timeout", "ConnectionRefusedError",
    "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "RemoteDisconnected",
})


class CacheSource(Source):
    """``<cache_prefix>/<path>`` in the bucket (R2: no egress fees, no rate limits).

    Large objects come as parallel ranged GETs of a presigned URL, written with
    ``pwrite`` into one temp file and hashed in order as they land (the bytes that
    continue the hashed prefix straight from the socket buffer), so verification
    needs no second pass over the file, and an interrupted download resumes (see
    :meth:`_ranged`). Many small objects come in one rclone batch (:meth:`prefetch`).
    ``benchmarks/bench_models.py`` compares this with tuned ``rclone copy`` and ``s5cmd``.

    Args:
        store: a callable returning the (lazily opened) store.
        streams: ranged GETs in flight per large object.
        part_size: bytes per ranged GET.
        big: objects at least this large use ranged GETs.
        timeout: seconds a ranged GET may wait for bytes before it is retried.

    A cache that stops answering (a timeout or a lost connection, after the retries) is skipped for
    the rest of the pull: every later offer or fetch fails at once, naming the first failure, so the
    models go upstream instead of each waiting out its own timeouts.
    """

    name = "cache"
    upstream = False

    def __init__(self, store: Callable[[], Store], cache_prefix: str, *, streams: int = 4,
                 part_size: int = 32 * 1024 * 1024, big: int = 64 * 1024 * 1024, timeout: float = 60.0) -> None:
        self._store = store
        self.timeout = timeout
        self._down: str | None = None  # why the cache was given up on in this pull
        self._refused: StoreError | None = None  # the store refused to let us read (credentials, bucket)
        self._refused_write: StoreError | None = None  # ... or only to write (a read-only token)
        self.cache_prefix = cache_prefix
        self.streams = max(1, streams)
        self.part_size = part_size
        self.big = big
        # key -> a complete copy already fetched by a batch (see prefetch), waiting to be verified
        self._prefetched: dict[str, Path] = {}
        self._pending: dict[str, threading.Event] = {}  # key -> set when its file (or the batch) is done
        self._lock = threading.Lock()

    def list_offers(self, models: Sequence[ModelSpec]) -> dict[str, Offer | SourceError]:
        """Offers for many single-file models from one listing of the cache prefix (instead of a HEAD each).

        A listing carries no metadata, so a model without a manifest sha256 is
        left out (its offer comes from a HEAD, which reads the sha256 metadata).
        """
        wanted = {self.key(m): m for m in models if not m.is_snapshot and m.sha256}
        if not wanted or self.down:
            return {}
        found: dict[str, Offer | SourceError] = {}
        try:
            for info in self._store().list(self.cache_prefix + "/" if self.cache_prefix else ""):
                model = wanted.get(info.key)
                if model is not None:
                    found[model.name] = Offer(self.name, info.key, (RemoteFile("", info.size, None, info.key),))
        except StoreError as exc:
            if self._unreachable(exc) or self.refusal(exc):  # no HEAD per model: each would fail the same way
                return {m.name: SourceError(f"cache: {exc}", source=self.name) for m in wanted.values()}
            log.info("cache listing failed (%s); asking per model", exc, extra={"event": "models.list_failed"})
            return {}
        for key, model in wanted.items():
            found.setdefault(model.name, NotAvailable(f"not in the cache ({key})", source=self.name))
        return found

    def prefetch(self, files: Sequence[RemoteFile], staging: Path,
                 run: Callable[[list[str], Callable[[str], None]], None], *,
                 registered: threading.Event | None = None) -> None:
        """Fetch many small objects with one batch copy into ``staging`` (rclone: Go-speed concurrency
        instead of one Python request each); :meth:`fetch` then moves and verifies each.

        ``run(args, copied)`` runs rclone with ``copy <prefix> <staging> --files-from-raw <list>`` style
        arguments and calls ``copied(rel)`` as rclone reports each file done, so each model is verified
        and put in place while the batch goes on. A failed batch is not an error: the files it did not
        deliver are fetched one by one.
        """
        prefix = self.cache_prefix + "/" if self.cache_prefix else ""
        files = [f for f in files if f.ref.startswith(prefix) and "\n" not in f.ref]
        rels = [f.ref[len(prefix):] for f in files]
        by_rel = {rel: f.ref for f, rel in zip(files, rels)}
        with self._lock:
            for f in files:  # fetch() of these waits for its file (or the batch's end) instead of asking the store
                self._pending[f.ref] = threading.Event()
        if registered is not None:
            registered.set()
        if not rels:
            return

        def copied(rel: str) -> None:
            key = by_rel.get(rel)
            path = staging / rel
            if key is None or not path.is_file():
                return
            with self._lock:
                self._prefetched[key] = path
                ready = self._pending.pop(key, None)
            if ready is not None:
                ready.set()

        try:
            staging.mkdir(parents=True, exist_ok=True)
            listing = staging.with_name(staging.name + ".lst")
            listing.write_text("".join(r + "\n" for r in rels), encoding="utf-8", errors="surrogateescape")
            try:
                run(["--files-from-raw", str(listing)], copied)
            except SyncBridgeError as exc:
                log.warning("batch copy from the cache failed (%s); fetching one by one", exc,
                            extra={"event": "models.batch_failed"})
            finally:
                listing.unlink(missing_ok=True)
            for rel in rels:  # whatever the log did not announce but is there
                copied(rel)
        finally:
            with self._lock:
                left = [self._pending.pop(f.ref, None) for f in files]
            for ready in left:
                if ready is not None:
                    ready.set()

    def applies(self, model: ModelSpec) -> bool:
        return True

    def resumable(self) -> bool:
        return True  # a large object continues from its sidecar; a small one is simply fetched again

    def key(self, model: ModelSpec, rel: str = "") -> str:
        return cache_key(self.cache_prefix, model.path, rel)

    def _unreachable(self, exc: StoreError) -> bool:
        """Whether ``exc`` says the bucket is not answering (a timeout, a refused or lost connection, after
        the retries); the first such failure takes the cache out of this pull."""
        if exc.status is not None or exc.code not in _UNREACHABLE:  # a local error (a full disk) is not one
            return False
        with self._lock:
            if self._down is None:
                self._down = str(exc)
                log.warning("the cache did not answer (%s): it is skipped for the rest of this pull", exc,
                            extra={"event": "models.cache_down"})
        return True

    def refusal(self, exc: BaseException, *, writing: bool = False) -> bool:
        """Whether ``exc`` is the store refusing our credentials, bucket or permissions (a wrong
        R2_SECRET_KEY, a missing R2_BUCKET, a read-only token): said once, loudly, naming the setting.
        A refused read skips the cache for the rest of this pull; a refused write (``writing``: a
        read-only token) skips only the write-backs. The pull's report carries it, so a cache that
        never fills is never a quiet line among the results."""
        if not isinstance(exc, StoreError) or exc.retryable or not exc.setting:
            return False
        with self._lock:
            first = self._refused is None and self._refused_write is None
            if writing:
                self._refused_write = self._refused_write or exc
            else:
                self._refused = self._refused or exc
        if first:
            consequence = ("nothing is written back to it for the rest of this pull" if writing else
                           "models come from upstream; the cache is skipped for the rest of this pull")
            log.error("the cache refused access: %s (%s)", exc, consequence,
                      extra={"event": "models.cache_refused", "setting": exc.setting})
        return True

    @property
    def refused(self) -> StoreError | None:
        """The store's first refusal in this pull (credentials, bucket, permissions; reading or writing)."""
        return self._refused or self._refused_write

    @property
    def write_refused(self) -> StoreError | None:
        return self._refused or self._refused_write

    @property
    def read_refused(self) -> StoreError | None:
        return self._refused

    def check(self) -> None:
        """One listing before a pull fetches anything: a bucket that refuses us (R2 answers a HEAD in a
        missing bucket with a bare 404, which reads as "not cached") is found and said here."""
        try:
            self._store().check_bucket()
        except StoreError as exc:
            self._unreachable(exc) or self.refusal(exc)

    def begin_pull(self) -> None:
        """A new pull gives a cache that stopped answering (or refused) in an earlier one another chance."""
        with self._lock:
            self._down = None
            self._refused = None
            self._refused_write = None

    @property
    def down(self) -> bool:
        """Whether the cache stopped answering or refused access in this pull (it is then skipped, write-back
        included)."""
        return self._down is not None or self._refused is not None

    def _check_up(self) -> None:
        if self._down is not None:  # a miss, not a new failure: the first one was reported
            raise NotAvailable(f"cache: skipped, it stopped answering earlier in this pull ({self._down})",
                               source=self.name)
        if self._refused is not None:
            raise NotAvailable(f"cache: skipped, it refused access earlier in this pull (check "
                               f"{self._refused.setting})", source=self.name)

    def offer(self, model: ModelSpec) -> Offer:
        self._check_up()
        store = self._store()
        if model.is_snapshot:
            key = self.key(model, SNAPSHOT_INDEX)
            try:
                data, _ = store.get_bytes(key)
            except StoreError as exc:
                if exc.status == 404 or exc.code in ("NoSuchKey", "404", "NotFound"):
                    raise NotAvailable(f"no snapshot index at {key}", source=self.name) from exc
                self._unreachable(exc) or self.refusal(exc)
                raise SourceError(f"cache: {exc}", source=self.name, retryable=exc.retryable) from exc
            try:
                index = json.loads(data)
                files = tuple(RemoteFile(rel, int(v["size"]), str(v["sha256"]).lower(), self.key(model, rel))
                              for rel, v in sorted(index["files"].items()))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise SourceError(f"cache: snapshot index {key} is not valid: {exc}", source=self.name) from exc
            return Offer(self.name, f"{store.description}: {self.key(model)}/", files, meta=index)
        key = self.key(model)
        try:
            info = store.head(key)
        except StoreError as exc:
            self._unreachable(exc) or self.refusal(exc)
            raise SourceError(f"cache: {exc}", source=self.name, retryable=exc.retryable) from exc
        if info is None:
            raise NotAvailable(f"not in the cache ({key})", source=self.name)
        sha = {k.lower(): v for k, v in info.metadata.items()}.get("sha256")
        return Offer(self.name, key, (RemoteFile("", info.size, sha.lower() if sha else None, key),))

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        key = file.ref
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            while not pending.wait(0.5):
                _check_cancel(cancel)
        with self._lock:
            staged = self._prefetched.pop(key, None)
        if staged is not None:
            try:
                os.replace(staged, temp)
                size, sha = sha256_file(temp, on_bytes=on_bytes)
                return Fetched(size, sha)
            except FileNotFoundError:
                pass  # gone (another puller took it): fetch it the ordinary way
        self._check_up()
        store = self._store()
        try:
            if file.size is not None and file.size >= self.big:
                return self._ranged(store, key, file.size, temp, on_bytes, cancel,
                                    expected=model.sha256 or file.sha256)
            # Retried like a ranged part: one connection reset (or a body cut short behind a
            # 200) used to fail the model when the cache was its only source.
            for attempt in range(3):
                try:
                    with open(temp, "wb") as fh:
                        writer = _HashingWriter(fh, on_bytes, cancel)
                        store.download_to(key, writer)  # type: ignore[arg-type]
                    if file.size is not None and writer.size != file.size:
                        raise StoreError(f"get {key!r}: got {writer.size} of {file.size} bytes", key=key,
                                         code="ShortRead", retryable=True)
                    return Fetched(writer.size, writer.digest.hexdigest())
                except StoreError as exc:
                    no_space = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC
                    if not exc.retryable or exc.status == 404 or no_space or attempt == 2:
                        raise
                    log.info("cache get of %s failed (%s); retrying", key, exc,
                             extra={"event": "models.get_retry", "key": key})
            raise AssertionError("unreachable")  # pragma: no cover
        except StoreError as exc:
            if exc.status == 404:
                raise NotAvailable(f"cache: {key} disappeared", source=self.name) from exc
            self._unreachable(exc) or self.refusal(exc)
            raise SourceError(f"cache: {exc}", source=self.name, retryable=exc.retryable) from exc

    def _ranged(self, store: Store, key: str, size: int, temp: Path, on_bytes: OnBytes,
                cancel: threading.Event | None, *, expected: str | None = None) -> Fetched:
        """Parallel ranged GETs into one temp file, hashed in order as the bytes land (no second pass).

        A sidecar (``<temp>.resume``) records the object's ETag and how far the file is known to be
        complete, so an interrupted pull (a killed pod, a dropped connection) continues from there:
        the kept prefix is re-hashed from disk (GB/s) instead of fetched again. Every response must carry
        the recorded ETag, so a cache object replaced in between is never spliced onto the old bytes:
        the download starts over instead, as it does when a resumed file misses ``expected`` (its kept
        bytes did not survive a host crash, say), rather than failing over to an upstream.
        """
        resume = _Resume(temp.with_name(temp.name + RESUME_SUFFIX), key, size)
        reported = [0]

        def counted(n: int) -> None:
            reported[0] += n
            on_bytes(n)

        try:
            fetched = self._ranged_once(store, key, size, temp, counted, cancel, resume)
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

        return self._ranged_once(store, key, size, temp, again, cancel, _Resume(resume.path, key, size))

    def _ranged_once(self, store: Store, key: str, size: int, temp: Path, on_bytes: OnBytes,
                     cancel: threading.Event | None, resume: _Resume) -> Fetched:
        kept = resume.load() if temp.exists() else 0
        if kept and temp.stat().st_size < kept:  # the file lost its tail: the sidecar is not to be trusted
            kept = 0
        resume.resumed = kept > 0
        # No posix_fallocate: reserving the blocks up front doubled the kernel time of the writes that
        # follow on ext4 (benchmarks/bench_models.py); the free-space check has run before any download.
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | (0 if kept else os.O_TRUNC), 0o644)
        try:
            os.ftruncate(fd, size)
            digest = _OrderedDigest(fd, size)
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

            readers: list[_RangeReader] = []

            def worker() -> None:
                reader = _RangeReader(url, etag=resume.etag, cafile=store.ca_bundle, timeout=self.timeout) \
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
                        for attempt in range(3):
                            _check_cancel(cancel)
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
                                    if attempt < 2:
                                        continue
                                if not exc.retryable or attempt == 2:
                                    raise
                                log.info("cache part %s-%s of %s failed (%s); retrying", start, end, key, exc,
                                         extra={"event": "models.part_retry", "key": key})
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


RESUME_SUFFIX = ".resume"


class _Resume:
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
            tmp = self.path.with_name(self.path.name + ".tmp")
            with contextlib.suppress(OSError):
                tmp.write_text(json.dumps({"key": self.key, "size": self.size, "etag": self.etag,
                                           "complete": complete}), encoding="utf-8")
                os.replace(tmp, self.path)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _OrderedDigest:
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


class _RangeReader:
    """Ranged GETs of one presigned URL over one kept-alive connection, read into a reused buffer."""

    # Small enough to stay in the CPU cache between the socket read, the hash and the write.
    _BUFFER = 256 * 1024
    # Written in pieces of this size (what Go's io.Copy uses): in this VM, 256 KiB writes into the
    # page cache cost 1.2 to 3.4 s of kernel time per 2 GB against about 1.2 s for 32 KiB ones.
    _WRITE = 32 * 1024

    def __init__(self, url: str, *, etag: str | None = None, cafile: str | os.PathLike[str] | None = None,
                 timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.cafile = cafile
        self.timeout = timeout
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.shown = _safe_url(url)
        self.conn = None
        self.buffer = memoryview(bytearray(self._BUFFER))
        self.etag = etag  # every response must carry it (the first one sets it)
        self.reached = 0  # how far the last read_into got (written and handed to ``landed``)

    def _connect(self):
        import http.client

        if self.conn is None:
            if self.https:
                import ssl

                # The CA bundle the store's client uses (the configured one, else botocore's), so a
                # presigned URL is trusted exactly as the store's own requests.
                cafile = self.cafile
                if cafile is None:
                    try:
                        from botocore.httpsession import get_cert_path

                        cafile = get_cert_path(True)
                    except Exception:  # noqa: BLE001 - fall back to the system's CAs
                        cafile = None
                self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                        context=ssl.create_default_context(cafile=cafile))
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def read_into(self, fd: int, start: int, end: int,
                  landed: Callable[[int, int, memoryview], None] | None = None,
                  write_lock: threading.Lock | None = None, cancel: threading.Event | None = None) -> None:
        """Bytes ``[start, end)`` to the same offsets of ``fd``; ``landed(a, b, data)`` after each write.
        A set ``cancel`` stops it between two reads (CancelledError), not at the end of the range."""
        import http.client

        try:
            conn = self._connect()
            conn.request("GET", self.target, headers={"Range": f"bytes={start}-{end - 1}",
                                                      "Accept-Encoding": "identity"})
            response = conn.getresponse()
            # rclone serve s3 answers a range with 200 plus Content-Range: accept what the header says.
            ranged = (response.getheader("Content-Range") or "").startswith(f"bytes {start}-")
            if response.status not in (200, 206) or not ranged:
                response.read()
                retryable = response.status >= 500 or response.status in (408, 429)
                raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: HTTP {response.status}",
                                 code=str(response.status), status=response.status, retryable=retryable)
            etag = (response.getheader("ETag") or "").strip('"') or None
            if etag and self.etag and etag != self.etag:
                response.close()
                raise StoreError(f"get {self.shown}: the object changed during the download (ETag {etag}, "
                                 f"was {self.etag}); starting over", code="ETagChanged", retryable=True)
            self.etag = self.etag or etag
            pos = self.reached = start
            while pos < end:
                if cancel is not None and cancel.is_set():
                    self.close()
                    raise CancelledError("model download cancelled")
                n = response.readinto(self.buffer[:min(self._BUFFER, end - pos)])
                if not n:
                    break
                view = self.buffer[:n]
                at = pos
                with write_lock or contextlib.nullcontext():
                    while view:
                        written = os.pwrite(fd, view[:self._WRITE], pos)
                        view = view[written:]
                        pos += written
                if landed is not None:
                    landed(at, pos, self.buffer[:n])
                self.reached = pos
            if pos != end:
                raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: got {pos - start} bytes", code="ShortRead",
                                 retryable=True)
            response.read()  # drain, keep the connection for the next part
        except StoreError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: {type(exc).__name__}: {exc}",
                             code=type(exc).__name__, retryable=True) from exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def abort(self) -> None:
        """From another thread: end a read that waits on the socket (it then fails, and is not retried
        once the cancel is seen)."""
        import socket

        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


# -- Hugging Face -------------------------------------------------------------------------------


def _hf_progress_class(on_bytes: OnBytes, cancel: threading.Event | None = None):
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):  # type: ignore[misc, valid-type]
        """huggingface_hub's progress hook, turned into byte counts for our own display; it is also
        where a cancel (Ctrl-C, a stop) interrupts a download mid-file (the *.incomplete is kept)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            _check_cancel(cancel)
            if n:
                on_bytes(int(n))
            return super().update(n)

    return _Progress


class HfSource(Source):
    """A file or snapshot of a Hugging Face repo, through ``huggingface_hub``.

    The endpoint is passed explicitly (``HF_ENDPOINT`` is read by
    ``huggingface_hub`` at import time, so setting it later has no effect).
    The sha256 of an LFS file comes from ``HfApi.get_paths_info``
    (``huggingface_hub`` itself checks only the size).
    """

    name = "hf"

    def __init__(self, *, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token

    def applies(self, model: ModelSpec) -> bool:
        return model.hf is not None

    def resumable(self) -> bool:
        return True

    def _api(self):
        from huggingface_hub import HfApi

        # token=False: never fall back to a token stored in ~/.cache/huggingface.
        return HfApi(endpoint=self.endpoint, token=self._token or False)

    def _error(self, exc: BaseException, what: str) -> SourceError:
        from huggingface_hub import errors as hf_errors

        if isinstance(exc, hf_errors.GatedRepoError):
            return SourceError(f"hf: {what}: gated repository; accept its terms on the Hub and set HF_TOKEN",
                               source=self.name)
        if isinstance(exc, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                            hf_errors.EntryNotFoundError)):
            hint = "" if self._token else " (private repos need HF_TOKEN)"
            return NotAvailable(f"hf: {what}: not found{hint}", source=self.name)
        if isinstance(exc, hf_errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                return SourceError(f"hf: {what}: refused ({status}); check HF_TOKEN", source=self.name)
            return SourceError(f"hf: {what}: HTTP {status}", source=self.name,
                               retryable=status is None or status >= 500 or status == 429)
        return SourceError(f"hf: {what}: {type(exc).__name__}: {exc}", source=self.name, retryable=True)

    def offer(self, model: ModelSpec) -> Offer:
        from huggingface_hub.hf_api import RepoFile

        spec = model.hf
        assert spec is not None
        api = self._api()
        try:
            if spec.snapshot:
                from huggingface_hub.utils import filter_repo_objects

                entries = [e for e in api.list_repo_tree(spec.repo, revision=spec.revision, repo_type=spec.repo_type,
                                                         recursive=True) if isinstance(e, RepoFile)]
                entries = list(filter_repo_objects(entries, allow_patterns=list(spec.allow) or None,
                                                   key=lambda e: e.path))
                if not entries:
                    raise NotAvailable(f"hf: {spec.describe()}: no files match allow = {list(spec.allow)}",
                                       source=self.name)
            else:
                entries = [e for e in api.get_paths_info(spec.repo, [spec.file], revision=spec.revision,
                                                         repo_type=spec.repo_type) if isinstance(e, RepoFile)]
                if not entries:
                    raise NotAvailable(f"hf: {spec.describe()}: no such file", source=self.name)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - huggingface_hub and httpx errors, mapped
            raise self._error(exc, spec.describe()) from exc
        files = []
        for entry in entries:
            sha = entry.lfs.sha256 if entry.lfs is not None else None
            size = entry.lfs.size if entry.lfs is not None else entry.size
            files.append(RemoteFile("" if not spec.snapshot else entry.path, int(size), sha, entry.path))
        return Offer(self.name, spec.describe(), tuple(files),
                     meta={"repo": spec.repo, "revision": spec.revision, "repo_type": spec.repo_type,
                           "allow": list(spec.allow)})

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        from huggingface_hub import hf_hub_download

        spec = model.hf
        assert spec is not None
        # huggingface_hub downloads into <local_dir>/.cache/huggingface/download/*.incomplete
        # (resumed on the next run) and moves the file into local_dir: a hidden folder beside
        # the target keeps all of that on the target's file system.
        staging = temp.with_name(temp.name + ".d")
        _check_cancel(cancel)
        try:
            path = hf_hub_download(
                spec.repo, file.ref, revision=spec.revision, repo_type=spec.repo_type, local_dir=staging,
                cache_dir=staging / ".hub-cache", token=self._token or False, endpoint=self.endpoint,
                tqdm_class=_hf_progress_class(on_bytes, cancel),
            )
            os.replace(path, temp)
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc, f"{spec.repo}@{spec.revision}/{file.ref}")
            if not error.retryable:  # keep a resumable *.incomplete only when a retry may use it
                shutil.rmtree(staging, ignore_errors=True)
            raise error from exc
        shutil.rmtree(staging, ignore_errors=True)
        size, sha = sha256_file(temp)
        return Fetched(size, sha)


# -- plain HTTP (CivitAI downloads, URLs) -----------------------------------------------------


class _Http:
    """urllib3 with redirects followed by hand, so credentials never reach another origin."""

    def __init__(self, *, user_agent: str = "syncbridge", timeout: float = 60.0) -> None:
        import urllib3

        self._urllib3 = urllib3
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=15.0, read=timeout),
                                        headers={"User-Agent": user_agent})

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                auth: tuple[tuple[str, str, int], dict[str, str]] | None = None, source: str):
        """One request, following up to 5 redirects; ``auth = (origin, headers)`` adds those headers
        only on hops whose origin is exactly ``origin``. Returns the unread response and its final URL."""
        for _ in range(6):
            send = dict(headers or {})
            if auth is not None and origin_of(url) == auth[0]:
                send.update(auth[1])
            try:
                response = self.pool.request(method, url, headers=send, redirect=False, preload_content=False)
            except self._urllib3.exceptions.HTTPError as exc:
                raise SourceError(f"{source}: {_safe_url(url)}: {type(exc).__name__}: {exc}", source=source,
                                  retryable=True) from exc
            if response.status in _REDIRECTS and response.headers.get("Location"):
                response.drain_conn()
                response.release_conn()
                url = urljoin(url, response.headers["Location"])
                if urlsplit(url).scheme not in ("http", "https"):
                    raise SourceError(f"{source}: redirect to a non-HTTP URL", source=source)
                if response.status == 303:
                    method = "GET"
                continue
            return response, url
        raise SourceError(f"{source}: too many redirects", source=source)

    def download(self, url: str, temp: Path, *, source: str, expected_size: int | None,
                 auth: tuple[tuple[str, str, int], dict[str, str]] | None, on_bytes: OnBytes,
                 cancel: threading.Event | None, attempts: int = 4) -> Fetched:
        """GET ``url`` into ``temp``, resuming a partial ``temp`` with ``Range`` when the server allows it.

        A connection dropped half way is retried from where it stopped (up to ``attempts``).
        """
        last: SourceError | None = None
        for _ in range(attempts):
            _check_cancel(cancel)
            have = temp.stat().st_size if temp.exists() else 0
            if expected_size is not None and have > expected_size:
                have = 0
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            response, final = self.request("GET", url, headers=headers, auth=auth, source=source)
            try:
                status = response.status
                if status == 416 and have and expected_size == have:
                    return Fetched(*sha256_file(temp))
                if status in (404, 410):
                    raise NotAvailable(f"{source}: {_safe_url(final)}: HTTP {status}", source=source)
                if status in (401, 403):
                    raise SourceError(f"{source}: {_safe_url(final)}: refused (HTTP {status})", source=source)
                if status == 206 and have:
                    content_range = response.headers.get("Content-Range", "")
                    if not content_range.startswith(f"bytes {have}-"):
                        have = 0  # an answer for another range: start over
                        response.drain_conn()
                        temp.unlink(missing_ok=True)
                        continue
                    mode = "ab"
                elif status == 200:
                    mode, have = "wb", 0
                else:
                    raise SourceError(f"{source}: {_safe_url(final)}: HTTP {status}", source=source,
                                      retryable=status >= 500 or status in (408, 429) or status == 416)
                length = response.headers.get("Content-Length")
                remaining = int(length) if length and length.isdigit() else None
                digest = hashlib.sha256()
                if mode == "ab":
                    with open(temp, "rb") as fh:
                        for block in iter(lambda: fh.read(_HASH_READ), b""):
                            digest.update(block)
                got = 0
                with open(temp, mode) as out:
                    try:
                        for chunk in response.stream(_STREAM_CHUNK):
                            _check_cancel(cancel)
                            out.write(chunk)
                            digest.update(chunk)
                            got += len(chunk)
                            on_bytes(len(chunk))
                    except self._urllib3.exceptions.HTTPError as exc:
                        raise SourceError(f"{source}: {_safe_url(final)}: connection lost after {have + got} bytes "
                                          f"({type(exc).__name__})", source=source, retryable=True) from exc
                if remaining is not None and got != remaining:
                    raise SourceError(f"{source}: {_safe_url(final)}: got {have + got} bytes, expected "
                                      f"{have + remaining}", source=source, retryable=True)
                return Fetched(have + got, digest.hexdigest())
            except SourceError as exc:
                if not exc.retryable:
                    raise
                last = exc
                log.info("%s; resuming", exc, extra={"event": "models.resume", "source": source})
            finally:
                response.release_conn()
        assert last is not None
        raise last

    def head(self, url: str, *, source: str):
        return self.request("HEAD", url, headers={"Accept-Encoding": "identity"}, source=source)


class _HttpSource(Source):
    """A source that speaks plain HTTP through one shared, lazily made connection pool."""

    _http: _Http | None = None

    @property
    def http(self) -> _Http:
        if self._http is None:
            self._http = _Http()
        return self._http


class CivitaiSource(_HttpSource):
    """A CivitAI model version: ``GET {endpoint}/api/v1/model-versions/{id}`` lists the files with their
    SHA256; the download URL answers with a redirect to presigned storage on another host."""

    name = "civitai"

    def __init__(self, *, endpoint: str, api_key: str | None, http: _Http | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._auth = ((origin_of(self.endpoint), {"Authorization": f"Bearer {api_key}"}) if api_key else None)
        self._http = http

    def applies(self, model: ModelSpec) -> bool:
        return model.civitai is not None

    def resumable(self) -> bool:
        return True

    def offer(self, model: ModelSpec) -> Offer:
        spec = model.civitai
        assert spec is not None
        url = f"{self.endpoint}/api/v1/model-versions/{spec.version_id}"
        response, _ = self.http.request("GET", url, headers={"Accept": "application/json"}, auth=self._auth,
                                        source=self.name)
        try:
            body = response.read()
        except self.http._urllib3.exceptions.HTTPError as exc:
            raise SourceError(f"civitai: version {spec.version_id}: {exc}", source=self.name, retryable=True) \
                from exc
        finally:
            response.release_conn()
        if response.status == 404:
            raise NotAvailable(f"civitai: model version {spec.version_id} not found", source=self.name)
        if response.status in (401, 403):
            hint = "; set CIVITAI_API_KEY" if self._auth is None else "; check CIVITAI_API_KEY"
            raise SourceError(f"civitai: model version {spec.version_id}: refused (HTTP {response.status}){hint}",
                              source=self.name)
        if response.status != 200:
            raise SourceError(f"civitai: model version {spec.version_id}: HTTP {response.status}", source=self.name,
                              retryable=response.status >= 500 or response.status == 429)
        try:
            files = json.loads(body)["files"]
            if spec.file is not None:
                chosen = next((f for f in files if f.get("name") == spec.file), None)
                if chosen is None:
                    names = ", ".join(str(f.get("name")) for f in files)
                    raise NotAvailable(f"civitai: version {spec.version_id} has no file {spec.file!r} (it has: "
                                       f"{names})", source=self.name)
            else:
                chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
                if chosen is None:
                    raise NotAvailable(f"civitai: version {spec.version_id} lists no files", source=self.name)
            sha = (chosen.get("hashes") or {}).get("SHA256")
            size_kb = chosen.get("sizeKB")
            download = str(chosen["downloadUrl"])
        except SourceError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SourceError(f"civitai: version {spec.version_id}: unexpected answer ({exc})", source=self.name) \
                from exc
        approx = int(float(size_kb) * 1024) if isinstance(size_kb, (int, float)) else None
        return Offer(self.name, f"version {spec.version_id} ({chosen.get('name')})",
                     (RemoteFile("", None, sha.lower() if isinstance(sha, str) else None, download, approx),))

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        return self.http.download(file.ref, temp, source=self.name, expected_size=file.size, auth=self._auth,
                                  on_bytes=on_bytes, cancel=cancel)


class UrlSource(_HttpSource):
    """A plain http(s) URL: no credentials, resumed with ``Range`` where the server supports it."""

    name = "url"

    def __init__(self, *, http: _Http | None = None) -> None:
        self._http = http

    def applies(self, model: ModelSpec) -> bool:
        return model.url is not None

    def resumable(self) -> bool:
        return True

    def offer(self, model: ModelSpec) -> Offer:
        assert model.url is not None
        response, final = self.http.head(model.url, source=self.name)
        response.drain_conn()
        response.release_conn()
        if response.status in (404, 410):
            raise NotAvailable(f"url: {_safe_url(final)}: HTTP {response.status}", source=self.name)
        if response.status in (401, 403):
            raise SourceError(f"url: {_safe_url(final)}: refused (HTTP {response.status})", source=self.name)
        size = None
        if response.status == 200:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
        elif response.status not in (405, 501):  # HEAD not allowed: size unknown, GET may still work
            raise SourceError(f"url: {_safe_url(final)}: HTTP {response.status}", source=self.name,
                              retryable=response.status >= 500 or response.status == 429)
        return Offer(self.name, _safe_url(model.url), (RemoteFile("", size, None, model.url),))

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        return self.http.download(file.ref, temp, source=self.name, expected_size=file.size, auth=None,
                                  on_bytes=on_bytes, cancel=cancel)


def default_sources(*, store: Callable[[], Store] | None, cache_prefix: str, hf_endpoint: str, hf_token: str | None,
                    civitai_endpoint: str, civitai_api_key: str | None, streams: int = 4,
                    cache_timeout: float = 60.0) -> list[Source]:
    """The ladder in its fixed order: cache (when a store is given), Hugging Face, CivitAI, URL.

    Nothing here opens a connection or imports an HTTP library: a warm start never asks a source.
    """
    ladder: list[Source] = []
    if store is not None:
        ladder.append(CacheSource(store, cache_prefix, streams=streams, timeout=cache_timeout))
    ladder.append(HfSource(endpoint=hf_endpoint, token=hf_token))
    ladder.append(CivitaiSource(endpoint=civitai_endpoint, api_key=civitai_api_key))
    ladder.append(UrlSource())
    return ladder


def describe_sources(sources: Sequence[Source], model: ModelSpec) -> list[str]:
    return [s.name for s in sources if s.applies(model)]
