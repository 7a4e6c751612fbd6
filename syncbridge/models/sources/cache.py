"""The team's cache in the bucket: ``<cache_prefix>/<path>``, the first rung of the ladder.

R2 has no egress fees and no rate limits, so a model any pod fetched once comes from here for
every pod after it. Large objects come through the ranged parallel engine
(:mod:`syncbridge.models.ranged`); many small ones in one rclone batch (:meth:`CacheSource.prefetch`);
the rest with one GET each. Entries are written by :mod:`syncbridge.models.cacheentry`, which
also says what an entry claims (its size and sha256).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

from ...errors import StoreError, SyncBridgeError
from ...hashing import HashingWriter, sha256_file
from ...retry import ATTEMPTS, pause, retry_by_hand, unreachable
from ...store import Store
from ..cacheentry import entry_sha256
from ..manifest import SNAPSHOT_INDEX, ModelSpec
from ..ranged import Ranged
from ..source import Fetched, NotAvailable, Offer, OnBytes, RemoteFile, Source, SourceError, cache_key, check_cancel

__all__ = ["CacheSource"]

log = logging.getLogger(__name__)


class CacheSource(Source):
    """``<cache_prefix>/<path>`` in the bucket (R2: no egress fees, no rate limits).

    Large objects come as parallel ranged GETs (:class:`~syncbridge.models.ranged.Ranged`: hashed as
    they land, resumed after an interruption). Many small objects come in one rclone batch
    (:meth:`prefetch`).

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
        self.ranged = Ranged(streams=streams, part_size=part_size, timeout=timeout)
        self.streams = self.ranged.streams
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
        if not unreachable(code=exc.code, status=exc.status):  # a local error (a full disk) is not one
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
        return Offer(self.name, key, (RemoteFile("", info.size, entry_sha256(info), key),))

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        key = file.ref
        with self._lock:
            pending = self._pending.get(key)
        if pending is not None:
            while not pending.wait(0.5):
                check_cancel(cancel)
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
                return self.ranged.download(store, key, file.size, temp, on_bytes, cancel,
                                            expected=model.sha256 or file.sha256)
            return self._get(store, key, file.size, temp, on_bytes, cancel)
        except StoreError as exc:
            if exc.status == 404:
                raise NotAvailable(f"cache: {key} disappeared", source=self.name) from exc
            self._unreachable(exc) or self.refusal(exc)
            raise SourceError(f"cache: {exc}", source=self.name, retryable=exc.retryable) from exc

    def _get(self, store: Store, key: str, size: int | None, temp: Path, on_bytes: OnBytes,
             cancel: threading.Event | None) -> Fetched:
        """One GET into ``temp``, hashed while written. The store's client retries the request itself;
        a body cut short (a connection reset, fewer bytes behind a 200) is asked for again here, after
        a backoff: one such break used to fail the model when the cache was its only source."""
        def counted(n: int) -> None:
            check_cancel(cancel)
            on_bytes(n)

        for attempt in range(1, ATTEMPTS + 1):
            try:
                with open(temp, "wb") as fh:
                    writer = HashingWriter(fh, on_bytes=counted)
                    store.download_to(key, writer)  # type: ignore[arg-type]
                if size is not None and writer.size != size:
                    raise StoreError(f"get {key!r}: got {writer.size} of {size} bytes", key=key,
                                     code="ShortRead", retryable=True)
                return Fetched(writer.size, writer.hexdigest())
            except StoreError as exc:
                no_space = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC
                if not retry_by_hand(code=exc.code, mid_body=exc.mid_body) or no_space or attempt == ATTEMPTS:
                    raise
                log.info("cache get of %s failed (%s); retrying", key, exc,
                         extra={"event": "models.get_retry", "key": key})
                if not pause(attempt, cancel=cancel):
                    check_cancel(cancel)
        raise AssertionError("unreachable")  # pragma: no cover
