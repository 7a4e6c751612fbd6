"""One file to the bucket, without clobbering anyone's object and without publishing half a file.

:meth:`Uploader.push` uploads one file and says how it went (an
:class:`~syncbridge.watch.scheduler.Outcome`); it never raises for a store or file error:

1. ``lstat`` before; a file unchanged since its recorded upload is skipped. A file a scan
   found (no close seen) waits until no process has it open for writing, or it has been quiet
   (:class:`FinishCheck`).
2. The key is ``<prefix>/<relpath>`` (segments in rclone's Ctl encoding). A key this watcher
   uploaded before (its journal holds the ETag) is overwritten only if the object is still the
   one we put there; any other existing object with different content is kept, and the file
   goes to a sibling key (``name.~<md5 prefix>.ext``, logged and journalled). First uploads use
   ``If-None-Match: *`` where the store enforces it, and rewrites of a small file ``If-Match:
   <our ETag>`` (one request each), else HEAD before PUT. An identical object already there is
   adopted (nothing sent).
3. Small files are read whole first (one consistent read); large ones are streamed and the
   upload is abandoned if the file changes under it. ``lstat`` after: a file changed during
   the upload is uploaded again, so the bucket never keeps a torn or stale version as the
   final one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable

import attrs

from ..config import Config, WatchConfig
from ..errors import PreconditionFailedError, SourceChangedError, StoreError, UnsafePathError
from ..fsutil import open_for_writing
from ..hashing import md5_file
from ..keys import object_key, public_url, sibling_key
from ..mediatypes import content_type
from ..store import LocalStore, ObjectInfo, PutHeaders, S3Store, Store
from .journal import DONE, Journal, Row
from .notify import PushedOutput
from .scheduler import UNSENT, Item, Outcome, Unfinished, quiet_by_mtime, quiet_left

__all__ = ["Uploader", "Route", "FinishCheck", "file_sig", "uploaded_already", "connect_store", "check_store", "ORIGIN_META", "INMEMORY_MAX"]

log = logging.getLogger(__name__)

ORIGIN_META = "syncbridge-origin"  # object metadata: which pod put it (only used to adopt identical objects)
INMEMORY_MAX = 4 * 1024 * 1024  # files up to this size are read whole before the PUT
FATAL_REPEAT_SECONDS = 60.0  # the same setting-named failure is logged in full at most this often
WRITERS_TTL = 0.1  # seconds a look at /proc for open writers is reused
KEY_ATTEMPTS = 4  # the canonical key, then sibling keys (md5 twice, then random tokens)
# The watcher's own retry loop is in charge (with backoff, without limit); botocore
# retries would hide failures and stretch a SIGTERM drain past its deadline.
S3_MAX_ATTEMPTS = 1
S3_CONNECT_TIMEOUT = 2.0
S3_READ_TIMEOUT = 20.0


def connect_store(config: Config, *, connections: int) -> Store:
    """The watcher's store: one client with ``connections`` pooled, short timeouts and no retries of its own."""
    remote = config.remote
    if remote.is_local:
        return LocalStore(remote.local_bucket_dir, lock_dir=config.state_dir / "locks")
    store = S3Store(remote, max_pool_connections=connections, max_attempts=S3_MAX_ATTEMPTS,
                    connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT)
    # botocore memoizes every JSON file it read to build the client (endpoints, partitions,
    # defaults: about 2 MB); the client keeps what it needs, so a long-lived daemon lets go
    # of the memo (a later lookup would just read the file again).
    cache = getattr(getattr(store.client, "_loader", None), "_cache", None)
    if isinstance(cache, dict):
        cache.clear()
    return store


def check_store(store: Store, prefix: str) -> None:
    """One listing under the prefix: a bucket that refuses us (a wrong key or secret, a missing bucket)
    stops the start at once, naming the setting, instead of failing every output for hours. A token
    that may write but not list (AccessDenied) and a bucket that does not answer yet are only said:
    the uploads tell, and outputs wait in the journal.

    Raises:
        StoreError: the store refuses us for good (not retryable).
    """
    try:
        store.check_bucket(prefix=f"{prefix}/" if prefix else "")
    except StoreError as exc:
        if exc.code == "AccessDenied":
            log.warning("the token may not list %s (%s); watching anyway, each upload will tell", prefix or "/",
                        exc, extra={"event": "watch.list_denied"})
        elif not exc.retryable:
            raise
        log.warning("the bucket does not answer yet (%s); watching anyway: outputs wait in the journal and are "
                    "pushed when it does", exc, extra={"event": "watch.store_unreachable"})


@attrs.frozen(eq=False)
class Route:
    """Where the files of one scope go instead of ``<watcher prefix>/<relpath>`` (a job's, see
    :mod:`syncbridge.jobs`): ``<prefix>/<relpath>`` in ``store``.

    ``conditional``: whether ``store`` enforces ``If-None-Match`` (None: the watcher's own answer, for
    a route on the watcher's store; a bucket of the job's own is never probed: it is checked with a
    HEAD before each first upload). ``tracker`` is told how each of its files went (under the
    watcher's lock: it must only take notes).
    """

    store: Store
    prefix: str
    tracker: Any
    conditional: bool | None = None
    early: bool = False  # send a growing file's parts while it is written (watch.early.Tail)
    tails: dict[str, Any] = attrs.field(factory=dict)  # rel -> its Tail, under the watcher's lock
    rels: set[str] = attrs.field(factory=set)  # the files it took, under the watcher's lock


def file_sig(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: size, mtime, inode, ctime (no program sets ctime)."""
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def still_as(path: Path, before: os.stat_result) -> bool:
    """Whether ``path`` is still the version ``before`` saw (False when it is gone or unreadable)."""
    try:
        return file_sig(os.lstat(path)) == file_sig(before)
    except OSError:
        return False


def uploaded_already(row: Row | None, st: os.stat_result) -> bool:
    """Whether the journal says this very file (size, mtime, inode) is in the bucket already."""
    return (row is not None and row.state == DONE and row.key is not None and row.size == st.st_size
            and row.mtime_ns == st.st_mtime_ns and row.ino == st.st_ino)


class FinishCheck:
    """How long a file a scan found must still wait before it counts as finished (0: now).

    No process having it open for writing says so at once (this machine's /proc; a look is
    reused for :data:`WRITERS_TTL`, and only when it was taken after the file's last change);
    where that cannot be told (``local_fs`` False: a network file system), its size and mtime
    unchanged for ``quiet_seconds`` do, as this machine's own clock measures it (a network file
    system's mtimes come from another clock). Its close event cuts any wait short.
    """

    def __init__(self, directory: Path, *, quiet_seconds: float, local_fs: bool = True) -> None:
        self.directory = directory
        self.quiet = quiet_seconds
        self.local_fs = local_fs
        self._writers: tuple[float, float, set[str] | None] = (-1e9, 0.0, None)
        self._lock = threading.Lock()

    def wait_for(self, item: Item, path: Path, st: os.stat_result) -> Unfinished:
        if quiet_by_mtime(st.st_mtime, wall=time.time(), quiet=self.quiet):
            return Unfinished(0.0)  # changed long enough ago (and not in the future: another machine's clock)
        if self.local_fs:
            now = time.monotonic()
            wall = time.time()
            with self._lock:
                taken, taken_wall, writers = self._writers
                if now - taken > WRITERS_TTL:
                    writers = open_for_writing(str(self.directory))
                    taken, taken_wall = now, wall
                    self._writers = (now, wall, writers)
            if writers is not None:
                if str(path) in writers:
                    return Unfinished(self.quiet, writing=True)
                if taken_wall <= st.st_mtime + 0.02:
                    # This look is older than the file's last change and may miss its writer: ask the
                    # next one (at most WRITERS_TTL away; one look serves a whole burst of files).
                    return Unfinished(max(0.01, taken + WRITERS_TTL - now), look=True)
                return Unfinished(0.0)
        return Unfinished(quiet_left(item, file_sig(st), now=time.monotonic(), quiet=self.quiet))


class Uploader:
    """Pushes files below ``directory`` to ``store``; shared by the watcher's upload workers.

    Args:
        settings: ``config.watch`` (public URL, presigned links, Cache-Control, conditional writes).
        origin: this pod's id, put in each object's metadata (:data:`ORIGIN_META`).
        prefix: the key prefix for a new key (it follows the clock when it has ``{date}``).
        finished: decides when a file found by a scan is finished.
        presign: whether outputs get a presigned link (someone listens, and the settings ask for it).
        on_collision: called for each file sent to a sibling key (the watcher counts them).
        fatal_retry_seconds: when a fatally failing file is tried again (said in the error).
    """

    def __init__(self, *, store: Store, journal: Journal, directory: Path, settings: WatchConfig, origin: str,
                 prefix: Callable[[], str], finished: FinishCheck, presign: bool, on_collision: Callable[[], None],
                 fatal_retry_seconds: float, rand: random.Random | None = None) -> None:
        self.store = store
        self.journal = journal
        self.directory = directory
        self.settings = settings
        self.origin = origin
        self._prefix = prefix
        self._finished = finished
        self._presign = presign
        self._on_collision = on_collision
        self._fatal_retry_seconds = fatal_retry_seconds
        self._rand = rand or random.Random()
        self._conditional = {"on": True, "off": False}.get(settings.conditional)  # None: probe on first use
        self._conditional_lock = threading.Lock()
        self._fatal_seen: dict[str, tuple[float, int]] = {}  # failure kind -> (last logged, files since)
        self._fatal_lock = threading.Lock()

    def push(self, item: Item, route: Route | None = None) -> tuple[Outcome, Any]:
        """Upload one file (to ``route`` when given). Returns (outcome, detail); never raises for store or
        file errors."""
        journal = self.journal
        path = self.directory / item.rel
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            return self._gone(item)
        except OSError as exc:
            return self._fatal(item, None, f"cannot read {path}: {exc.strerror or exc}")
        if not stat.S_ISREG(before.st_mode):
            return self._gone(item)  # replaced by a symlink or a folder: never followed
        row = journal.get(item.rel)
        try:
            route_key = object_key(route.prefix, item.rel) if route is not None else None
        except UnsafePathError as exc:
            return self._fatal(item, None, f"{item.rel!r} cannot be an object key: {exc}")
        if uploaded_already(row, before) and (route is None or row.key == route_key):  # type: ignore[union-attr]
            if route is None:
                return Outcome.SKIPPED, None
            return self._in_place(item, route, route_key, before)  # type: ignore[arg-type]
        if not item.closed:
            wait = self._finished.wait_for(item, path, before)
            if wait.seconds > 0:
                return Outcome.UNFINISHED, wait
        owned = bool(item.trust_owner and row is not None and row.etag and row.key)
        if route is not None:
            # A route's file overwrites only what it put at the route's own key, never an older key of the
            # same name (an earlier job's, or the watcher's own prefix).
            owned = owned and row.key == route_key  # type: ignore[union-attr]
        try:
            key = row.key if owned else route_key or object_key(self._prefix(), item.rel)  # type: ignore
        except UnsafePathError as exc:
            return self._fatal(item, None, f"{item.rel!r} cannot be an object key: {exc}")
        if route is not None and route.tails:
            early = self._finish_tail(item, route, key, before, path)
            if early is not None:
                return early
        try:
            data = None
            if before.st_size <= INMEMORY_MAX:
                # Small files (most outputs) are read whole first: the bytes sent are one
                # consistent read, and a writer truncating the file cannot stall the PUT.
                with open(path, "rb") as fh:
                    data = fh.read(INMEMORY_MAX + 1)
                    mid = os.fstat(fh.fileno())
                if len(data) > INMEMORY_MAX:
                    data = None
                elif len(data) != before.st_size or file_sig(mid) != file_sig(before):
                    return Outcome.CHANGED, UNSENT  # changed while read: these bytes are not one version of it
            key, info, uploaded = self._upload(path, key, owned_etag=row.etag if owned else None,  # type: ignore
                                               data=data, before=before, route=route)
        except SourceChangedError:
            return Outcome.CHANGED, UNSENT  # the upload was abandoned: the object is as it was
        except FileNotFoundError:
            return self._gone(item)
        except StoreError as exc:
            if exc.retryable:
                with contextlib.suppress(Exception):
                    journal.note_error(item.rel, key=key, error=str(exc), attempts=item.attempts + 1, fatal=False)
                return Outcome.RETRY, str(exc)
            return self._fatal(item, key, str(exc), same=exc.setting and f"{exc.code}:{exc.setting}")
        except OSError as exc:
            return self._fatal(item, key, f"cannot read {path}: {exc.strerror or exc}")
        return self._after(item, path, key, info, uploaded=uploaded, before=before, route=route)

    def _finish_tail(self, item: Item, route: Route, key: str, before: os.stat_result,
                     path: Path) -> tuple[Outcome, Any] | None:
        """Complete the upload a :class:`~syncbridge.watch.early.Tail` made while the file was written; None
        when there is none to complete (the file is uploaded as usual)."""
        tail = route.tails.pop(item.rel, None)
        if tail is None:
            return None
        if tail.key != key:
            tail.abort()
            return None
        conditional = self._enforces(route)
        try:
            if not conditional and route.store.head(key) is not None:
                tail.abort()  # something is there already: the usual path decides (adopt, or a sibling key)
                return None
            done = tail.finish(before, functools.partial(still_as, path, before), if_none_match=conditional)
        except PreconditionFailedError:
            return None  # created meanwhile by someone else: the usual path decides
        except SourceChangedError:
            return Outcome.CHANGED, UNSENT
        except StoreError as exc:
            tail.abort()  # the look before completing failed: the parts sent early must not stay in the bucket
            if exc.retryable:
                return Outcome.RETRY, str(exc)
            return self._fatal(item, key, str(exc))
        if done is None:
            return None
        info, sha256 = done
        outcome, detail = self._after(item, path, key, info, uploaded=True, before=before, route=route)
        if outcome is Outcome.PUSHED:
            detail = attrs.evolve(detail, sha256=sha256)
        return outcome, detail

    def _in_place(self, item: Item, route: Route, key: str, before: os.stat_result) -> tuple[Outcome, Any]:
        """A route's file that the journal says is at its key already (a second event for an unchanged
        file): its record, so the route's tracker has it too."""
        try:
            info = route.store.head(key)
        except StoreError as exc:
            return (Outcome.RETRY, str(exc)) if exc.retryable else self._fatal(item, key, str(exc))
        if info is None or info.size != before.st_size:
            with contextlib.suppress(Exception):
                self.journal.forget([item.rel])  # not there after all: the next try uploads it
            return Outcome.CHANGED, UNSENT
        return Outcome.PUSHED, self._output_record(item.rel, key, before.st_size, info,
                                                   time.monotonic() - item.event_mono, store=route.store)

    def _after(self, item: Item, path: Path, key: str, info: ObjectInfo, *, uploaded: bool,
               before: os.stat_result, route: Route | None = None) -> tuple[Outcome, Any]:
        """Journal the object, then look again: a file changed during its upload goes again."""
        journal = self.journal
        verified = time.monotonic()  # before the look: an event older than this is reflected in it
        try:
            after = os.lstat(path)
        except FileNotFoundError:
            after = None
        # The ETag marks the object as ours (a later rewrite may replace it); an identical
        # object found in place is ours only if our pod's metadata says it put it there.
        ours = uploaded or info.metadata.get(ORIGIN_META) == self.origin
        if ours:
            # We put that object there: a rewrite of this file (even one that arrived while this
            # upload ran, for an item a scan created untrusted) replaces it rather than going to a
            # sibling key.
            item.trust_owner = True
        try:
            journal.mark_done(item.rel, key=key, size=before.st_size, mtime_ns=before.st_mtime_ns,
                              ino=before.st_ino, etag=info.etag if ours else None)
        except RuntimeError:
            pass  # the journal closed: stop() gave up waiting for this upload
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk: the object is in the bucket all the same
            log.warning("pushed %s but cannot record it in the journal %s: %s (a restart will find it in the "
                        "bucket by content)", item.rel, journal.path, exc, extra={"event": "watch.journal_error"})
        if after is None:
            return self._gone(item)
        sig = file_sig(before)
        if file_sig(after) == sig:
            item.verified_mono, item.pushed_sig = verified, sig
        else:
            log.debug("%s changed during its upload; uploading it again", item.rel,
                      extra={"event": "watch.changed_during_upload"})
            item.trust_owner = True  # we just put that object there
            return Outcome.CHANGED, None
        if not uploaded and route is None:
            return Outcome.SKIPPED, None  # a route's tracker needs the record of an identical object adopted
        latency = time.monotonic() - item.event_mono
        output = self._output_record(item.rel, key, before.st_size, info, latency,
                                     store=route.store if route is not None else None)
        log.debug("pushed %s -> %s (%d bytes, %s, %.3fs)%s", item.rel, key, before.st_size, output.content_type,
                  latency, f" {output.url}" if output.url else "", extra={"event": "watch.pushed"})
        return Outcome.PUSHED, output

    def _output_record(self, rel: str, key: str, size: int, info: ObjectInfo, latency: float, *,
                       store: Store | None = None) -> PushedOutput:
        etag = info.etag or ""
        md5 = etag if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag) else None
        if store is not None and store is not self.store:
            # Another bucket (a job's own): the public URL and the presigned links are its tracker's business.
            return PushedOutput(rel, key, size, md5, info.content_type or content_type(rel), latency, time.time())
        url = public_url(self.settings.public_url, key) if self.settings.public_url else None
        presigned = None
        if url is None and self.settings.presign_seconds and self._presign:
            with contextlib.suppress(StoreError):
                presigned = self.store.presign_get(key, expires=self.settings.presign_seconds)
        return PushedOutput(rel, key, size, md5, info.content_type or content_type(rel), latency, time.time(), url,
                            presigned)

    def probe(self) -> None:
        """Find out now whether the store enforces conditional writes (its three requests are then
        not on the first output's path). An unreachable store is asked again at the first upload."""
        if self._conditional is None:
            with contextlib.suppress(StoreError):
                self._conditional_writes()

    def _enforces(self, route: Route | None) -> bool:
        """Whether the store ``route``'s files go to enforces conditional writes: the watcher's probed answer
        for its own store, the route's for a bucket of a job's own (never probed: one that ignores
        If-Match would let a rewrite's PUT replace another's object)."""
        if route is None or route.conditional is None:
            return self._conditional_writes()
        return route.conditional

    def _conditional_writes(self) -> bool:
        if self._conditional is None:
            with self._conditional_lock:
                if self._conditional is None:
                    try:
                        self._conditional = self.store.conditional_writes()
                    except StoreError as exc:
                        if exc.retryable:
                            raise  # the store is unreachable: this upload retries, and so does the probe
                        # e.g. a token scoped to the output prefix cannot write the probe object
                        log.warning("cannot probe the store for conditional writes (%s); checking with HEAD "
                                    "before each first upload instead", exc, extra={"event": "watch.no_probe"})
                        self._conditional = False
                    log.debug("store enforces If-None-Match: %s", self._conditional,
                              extra={"event": "watch.conditional"})
        return self._conditional

    def _upload(self, path: Path, key: str, *, owned_etag: str | None, data: bytes | None,
                before: os.stat_result, route: Route | None = None) -> tuple[str, ObjectInfo, bool]:
        """Put ``path`` at ``key`` without overwriting anyone else's object.

        Returns:
            (key actually used, ObjectInfo, whether bytes were sent).
        """
        store = route.store if route is not None else self.store
        conditional = functools.partial(self._enforces, route)
        canonical = key
        local_md5: str | None = None
        meta = {ORIGIN_META: self.origin}
        # The same Content-Type rclone gives the file (push, bisync): a browser shows it, a <video> plays it.
        headers = PutHeaders(content_type(path.name), self.settings.cache_control)

        unchanged = functools.partial(still_as, path, before)

        def put(target: str, **kwargs: Any) -> ObjectInfo:
            if data is not None:
                return store.put_bytes(target, data, metadata=meta, headers=headers, **kwargs)
            return store.put_file(path, target, metadata=meta, headers=headers, unchanged=unchanged, **kwargs)
        for attempt in range(KEY_ATTEMPTS):
            if owned_etag is not None and data is not None and conditional():
                # A rewrite of our own object in one request: replaced only if it is still the one we put
                # (only where the store the file goes to enforces conditional writes: a job's own bucket
                # is never probed, and one that ignores If-Match would let this PUT replace another's object).
                try:
                    return key, put(key, if_match=owned_etag), True
                except PreconditionFailedError:
                    remote = store.head(key)  # another's now, or gone (R2 answers 412 for a missing key too)
                except StoreError as exc:
                    if exc.status != 404 and exc.code not in ("NoSuchKey", "NotFound", "404"):
                        raise
                    remote = None  # gone (AWS and moto answer 404)
                if remote is None:
                    owned_etag = None  # deleted in between: a first upload again
                    continue
            elif owned_etag is not None:
                remote = store.head(key)
                if remote is None or remote.etag == owned_etag:
                    return key, put(key), True
            elif conditional():
                try:
                    return key, put(key, if_none_match=True), True
                except PreconditionFailedError:
                    remote = store.head(key)
                    if remote is None:
                        continue  # deleted in between: try again
            else:
                remote = store.head(key)
                if remote is None:
                    return key, put(key), True
            # An object is there and it is not (or no longer) ours.
            if local_md5 is None:
                local_md5 = hashlib.md5(data, usedforsecurity=False).hexdigest() if data is not None else md5_file(path)
            if remote.etag == local_md5:
                # Same bytes already there (our upload before a crash, or an identical output): nothing to send.
                return key, remote, False
            token = local_md5[:8] if attempt < 2 else f"{self._rand.getrandbits(32):08x}"
            new_key = sibling_key(canonical, token)
            self._on_collision()
            log.warning("%s already exists with different content that this watcher did not put there; keeping it "
                        "and uploading %s to %s instead", key, path.name, new_key,
                        extra={"event": "watch.collision", "key": key, "sibling": new_key})
            key, owned_etag = new_key, None
        raise StoreError(f"could not find a free key next to {canonical!r}", key=canonical, code="KeyCollision",
                         retryable=True)

    def _gone(self, item: Item) -> tuple[Outcome, Any]:
        with contextlib.suppress(Exception):
            self.journal.forget([item.rel])
        return Outcome.GONE, None

    def _fatal(self, item: Item, key: str | None, message: str, *, same: str | None = None) -> tuple[Outcome, Any]:
        """A failure no retry fixes: journalled, retried later. One that names a setting (a wrong secret
        fails every file alike) is logged in full once a minute, with how many more files it hit."""
        now = time.monotonic()
        loud, hidden = True, 0
        if same:
            with self._fatal_lock:
                last, hidden = self._fatal_seen.get(same, (-1e9, 0))
                loud = now - last >= FATAL_REPEAT_SECONDS
                self._fatal_seen[same] = (now, 0) if loud else (last, hidden + 1)
        if loud:
            more = f"; {hidden} more files failed the same way since" if hidden else ""
            log.error("cannot push %s%s: %s (kept in the journal; retried in %.0f min, on the next event or "
                      "restart%s)", item.rel, f" to {key}" if key else "", message, self._fatal_retry_seconds / 60,
                      more, extra={"event": "watch.fatal", "path": item.rel, "key": key or ""})
        else:
            log.debug("cannot push %s: %s", item.rel, message, extra={"event": "watch.fatal", "path": item.rel})
        with contextlib.suppress(Exception):
            self.journal.note_error(item.rel, key=key, error=message, attempts=item.attempts + 1, fatal=True)
        return Outcome.FATAL, message
