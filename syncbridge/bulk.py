"""Bulk operations through rclone: push, pull, bisync.

Each call is one rclone process (see :mod:`syncbridge.rclone.runner` for why) and
returns a :class:`TransferSummary`. Keys from the bucket are untrusted: pull
lists first and refuses any key that would land outside the local folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs

from .fmt import human_bytes as _human
from .config import Config, Folder
from .errors import RcloneError, StoreError, SyncBridgeError, UnsafePathError
from .fleet import bisync_lease
from .fsutil import private_state_dir
from .fleet.lease import LeaseBusyError
from .keys import key_to_relpath
from .rclone import Rclone
from .rclone.argv import Progress, bisync_argv, copy_argv, remote_path
from .store import S3Store, check_endpoint, open_store

__all__ = ["TransferSummary", "push", "pull", "bisync", "sync_folder", "BisyncError", "bisync_workdir"]

log = logging.getLogger(__name__)

# rclone lists a raw "." or ".." key segment as full-width dots (its Dot encoding), so
# it never lands outside the folder, but it cannot fetch it either: copying such an
# entry failed the whole pull (exit 4). They are skipped like the other unsafe keys.
_RCLONE_DOT_NAMES = ("\uff0e", "\uff0e\uff0e")


@attrs.frozen
class TransferSummary:
    """What a bulk operation did."""

    operation: str
    source: str
    destination: str
    files: int
    bytes: int
    seconds: float
    dry_run: bool = False
    skipped: tuple[str, ...] = ()
    errors: int = 0
    deletes: int = 0
    resync: bool = False
    held_by: str = ""  # bisync skipped: another pod holds the prefix's lease (bisync.on_busy = skip)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.held_by:
            return f"{self.operation}: skipped: {self.held_by}"
        verb = "would transfer" if self.dry_run else "transferred"
        text = (f"{self.operation}: {verb} {self.files} file{'s' if self.files != 1 else ''}, "
                f"{_human(self.bytes)} in {self.seconds:.1f}s ({self.mb_per_s:.1f} MB/s)")
        if self.deletes:
            text += f", {self.deletes} deleted"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (unsafe names)"
        return text


def _prepare(config: Config, rclone: Rclone | None) -> Rclone:
    """What every bulk operation does first: a private state directory, a reachable endpoint.

    The state directory is created 0700 before rclone's local backend would create it
    (0755) as the parent of the embedded bucket. An endpoint that refuses connections
    fails here in milliseconds instead of after rclone's minutes of retries.
    """
    private_state_dir(config.state_dir)
    rc = rclone or Rclone(config)
    if config.remote.is_local:
        config.remote.local_bucket_dir.mkdir(parents=True, exist_ok=True)
    else:
        if config.remote.endpoint and not rc.proxied:  # through a proxy a direct connect proves nothing
            check_endpoint(config.remote.endpoint, ca_bundle=config.remote.ca_bundle)
        _check_credentials(config)
    return rc


def _check_credentials(config: Config) -> None:
    """One listing of the bucket before rclone starts: a wrong key, a wrong secret or a missing bucket
    fails here at once, naming the setting (rclone retried a NoSuchBucket for minutes, 30 lines of it,
    and called a wrong secret 'error not otherwise categorised, retry')."""
    store = S3Store(config.remote, max_attempts=1, connect_timeout=5.0, read_timeout=15.0)
    try:
        store.check_bucket()
    except StoreError as exc:
        if exc.code == "AccessDenied":  # a token scoped to some prefixes: rclone's own requests tell
            log.debug("bucket pre-check: %s", exc, extra={"event": "bulk.precheck_denied"})
        elif not exc.retryable:
            raise
        # a transient answer: rclone's own retries deal with it
        log.debug("bucket pre-check: %s", exc, extra={"event": "bulk.precheck_retryable"})
    finally:
        store.close()


def _checked_prefix(op: str, prefix: str) -> str:
    """``prefix`` without outer slashes, refused when a segment is ``..``, ``.`` or empty.

    rclone cleans its paths, so ``p/../../x`` would name another bucket on S3, and a
    folder outside the embedded bucket on the local backend.
    """
    key = prefix.strip("/")
    if key:
        try:
            key_to_relpath(key)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{op}: PREFIX {prefix!r} is not a safe key prefix: {exc}", path=prefix) from exc
    return key


def _make_folder(op: str, path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise SyncBridgeError(f"{op}: {path} exists and is not a folder") from exc
    except OSError as exc:
        raise SyncBridgeError(f"{op}: cannot create the folder {path}: {exc.strerror or exc}") from exc


class BisyncError(SyncBridgeError):
    """bisync stopped; :attr:`recover` is the command that gets it going again."""

    def __init__(self, message: str, *, recover: str, cause: RcloneError | None = None,
                 how: str = "to recover, check both sides, then run") -> None:
        self.recover = recover
        self.cause = cause
        super().__init__(f"{message}\n  {how}: {recover}")


def _summary(op: str, src: str, dst: str, started: float, progress: Progress | None, transferred: Sequence[str],
             *, dry_run: bool, skipped: Sequence[str] = (), resync: bool = False) -> TransferSummary:
    files = progress.transfers if progress else len(transferred)
    if dry_run:
        files = len(transferred) or files
    return TransferSummary(op, src, dst, files, progress.bytes if progress else 0, time.monotonic() - started,
                           dry_run=dry_run, skipped=tuple(skipped), errors=progress.errors if progress else 0,
                           deletes=progress.deletes if progress else 0, resync=resync)


def push(
    config: Config,
    local: str | os.PathLike[str],
    prefix: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    transfers: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    rclone: Rclone | None = None,
) -> TransferSummary:
    """Copy a local folder (or one file) to ``<bucket>/<prefix>``. Nothing is deleted in the bucket.

    A single file goes to ``<prefix>`` itself, or to ``<prefix>/<name>`` when
    ``prefix`` ends with ``/``.
    """
    rc = _prepare(config, rclone)
    src = Path(local)
    if not src.exists():
        raise SyncBridgeError(f"push: {src} does not exist")
    single = src.is_file()
    key = _checked_prefix("push", prefix)
    if single and (prefix.endswith("/") or not key):
        key = f"{key}/{src.name}" if key else src.name
    dst = remote_path(config.remote, key)
    extra = ["--transfers", str(transfers)] if transfers else []
    started = time.monotonic()
    result = rc.run(copy_argv(str(src), dst, single_file=single, include=include, exclude=exclude,
                              dry_run=dry_run, extra=extra),
                    on_progress=on_progress, cancel=cancel, what=f"push {src} -> {key or '/'}")
    return _summary("push", str(src), key, started, result.progress, result.transferred, dry_run=dry_run)


def pull(
    config: Config,
    prefix: str,
    local: str | os.PathLike[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    transfers: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    rclone: Rclone | None = None,
) -> TransferSummary:
    """Copy ``<bucket>/<prefix>`` (a folder, or one object) to a local folder or file.

    Keys that would escape ``local`` (``..``, absolute, backslashes) are skipped
    with a warning naming each; nothing else in the run is affected.
    """
    rc = _prepare(config, rclone)
    key = _checked_prefix("pull", prefix)
    dest = Path(local)
    extra = ["--transfers", str(transfers)] if transfers else []
    started = time.monotonic()
    # One listing, in which a key's raw backslash (put there by another tool) stays apart from the
    # full-width one our own encoding writes: such a key cannot round-trip, and is left out below.
    entries = rc.lsjson(remote_path(config.remote, key, raw_backslash=True))
    single = False
    if not entries and key:
        # Maybe the prefix names one object.
        parent, _, name = key.rpartition("/")
        for entry in rc.lsjson(remote_path(config.remote, parent), recursive=False):
            if entry.get("Path") == name and not entry.get("IsDir"):
                single = True
                break
    if single:
        target = dest / key.rpartition("/")[2] if dest.is_dir() else dest
        result = rc.run(copy_argv(remote_path(config.remote, key), str(target), single_file=True, dry_run=dry_run,
                                  extra=extra), on_progress=on_progress, cancel=cancel, what=f"pull {key}")
        return _summary("pull", key, str(target), started, result.progress, result.transferred, dry_run=dry_run)

    if not entries:
        log.warning("nothing to pull: no objects under %r in %s", key or "/", config.remote.describe(),
                    extra={"event": "pull.empty", "prefix": key})
        if not dry_run:
            _make_folder("pull", dest)
        return TransferSummary("pull", key, str(dest), 0, 0, time.monotonic() - started, dry_run=dry_run)
    unsafe: list[str] = []  # as rclone names them
    shown: list[str] = []  # as the bucket holds them
    for entry in entries:
        rel = entry.get("Path", "")
        try:
            key_to_relpath(rel)
            if any(part in _RCLONE_DOT_NAMES for part in rel.split("/")):
                raise UnsafePathError(f"key {rel!r} has a '.' or '..' segment", path=rel)
        except UnsafePathError as exc:
            unsafe.append(rel)
            # rclone shows a raw "." / ".." segment as full-width dots; name the real key
            real = "/".join({"\uff0e": ".", "\uff0e\uff0e": ".."}.get(part, part) for part in rel.split("/"))
            shown.append(f"{key}/{real}" if key else real)
            log.warning("pull: skipped key %r: not a safe path below %s ('..', '.', absolute, backslash or "
                        "empty segment)", shown[-1], dest,
                        extra={"event": "pull.unsafe_key", "key": shown[-1], "reason": str(exc)})
    if not dry_run:
        _make_folder("pull", dest)
    # Anchored exclude rules for exactly the unsafe names, before the user's filters (the first
    # matching rule wins). Not --files-from-raw: its one-name-per-line format cannot hold a
    # name with a newline, which would then be dropped from an otherwise normal pull.
    result = rc.run(copy_argv(remote_path(config.remote, key), str(dest), include=include,
                              exclude=[*_fleet_excludes(config, key),
                                       *("/" + _glob_literal(_decoded(rel)) for rel in unsafe), *exclude],
                              dry_run=dry_run, extra=extra),
                    on_progress=on_progress, cancel=cancel, what=f"pull {key or '/'} -> {dest}")
    return _summary("pull", key, str(dest), started, result.progress, result.transferred, dry_run=dry_run,
                    skipped=shown)


def _decoded(rel: str) -> str:
    """A name from a raw-backslash listing as rclone's copy names it (its BackSlash encoding decoded)."""
    quoted = "\u201b\uff3c"
    return "\x00".join(part.replace("\uff3c", "\\") for part in rel.split(quoted)).replace("\x00", "\uff3c")


def _unsafe_listing(rel: str) -> bool:
    """Whether a path rclone listed under a prefix would not be a safe relative path (see :func:`pull`)."""
    try:
        key_to_relpath(rel)
    except UnsafePathError:
        return True
    return any(part in _RCLONE_DOT_NAMES for part in rel.split("/"))


def _fleet_excludes(config: Config, key: str) -> list[str]:
    """An anchored rule leaving out the fleet's own objects (leases, heartbeats: no one's files) when
    ``key`` holds them: the whole bucket, or a parent of ``fleet.prefix``."""
    fleet = config.fleet.prefix.strip("/")
    if fleet and (not key or fleet.startswith(key + "/")):
        return ["/" + _glob_literal(fleet[len(key):].strip("/")) + "/**"]
    return []


def _glob_literal(name: str) -> str:
    """An rclone filter glob that matches exactly ``name`` (its special characters escaped)."""
    return "".join("\\" + ch if ch in "\\*?[]{}" else ch for ch in name)


def bisync_workdir(config: Config, local: Path, prefix: str) -> Path:
    """Where bisync keeps its listings and lock for one (local, prefix) pair."""
    ident = f"{local.resolve()}\0{config.remote.describe()}\0{prefix.strip('/')}"
    digest = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return private_state_dir(config.state_dir, "bisync", digest)


def _clear_stale_locks(workdir: Path) -> None:
    """Remove bisync lock files whose rclone is gone (killed with -9, pod restarted).

    rclone writes ``{"PID": ...}`` to ``<workdir>/*.lck`` and refuses to start while
    the file exists and has not expired (``--max-lock``), so after an impatient
    SIGKILL every run failed with "prior lock file found" until someone deleted it.
    The lock only guards against a second rclone on this machine (cross-pod safety
    is the lease's job), so a lock whose process no longer runs bisync is stale.
    """
    for lock in workdir.glob("*.lck"):
        try:
            pid = int(json.loads(lock.read_text(encoding="utf-8"))["PID"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        if b"bisync" in argv:
            continue  # a live bisync holds it: let rclone refuse
        log.warning("bisync.stale_lock", extra={"event": "bisync.stale_lock", "lock": str(lock), "pid": pid})
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def _make_private(workdir: Path) -> None:
    """rclone writes its listings 0644; the state directory's files are 0600 (they list every file name)."""
    for path in workdir.iterdir():
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)


def bisync(
    config: Config,
    local: str | os.PathLike[str],
    prefix: str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    resync: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    rclone: Rclone | None = None,
    force: bool = False,
) -> TransferSummary:
    """Two-way sync of a local folder with ``<bucket>/<prefix>``.

    The first run (no listings in the state directory) is done as a resync,
    which only adds files on both sides. Later runs use rclone's unattended
    settings (resilient, recover, lock timeout, max-delete guard) and the
    configured conflict policy. ``force`` lets one run delete more than
    ``bisync.max_delete`` percent of the files (after the guard stopped a run
    whose deletions were intended).

    Raises:
        BisyncError: bisync needs attention; the message carries the command
            that recovers.
    """
    rc = _prepare(config, rclone)
    src = Path(local)
    key = _checked_prefix("bisync", prefix)
    if src.exists() and not src.is_dir():
        raise SyncBridgeError(f"bisync: LOCAL {src} is not a folder (bisync syncs folders; use push or pull "
                              f"for one file)")
    workdir = bisync_workdir(config, src, key)
    first = not any(workdir.glob("*.path1.lst"))
    do_resync = resync or first
    command = f"syncbridge bisync {shlex.quote(str(src))} {shlex.quote(key or '/')}"
    if first and not resync:
        _refuse_a_silent_resync(config, src, key, command)
    if not dry_run:
        _make_folder("bisync", src)
    if do_resync and config.remote.is_local:
        # bisync --resync needs path2 to exist: an empty folder on the local backend (nothing on S3).
        # An empty folder is no object, so a dry run may make it too.
        (config.remote.local_bucket_dir / key).mkdir(parents=True, exist_ok=True)
    recover = f"{command} --resync"
    # One hostile key in the bucket ("x/../y", listed by rclone as full-width dots it then cannot
    # fetch) made every bisync of the prefix abort with a critical error, --resync included.
    # Such keys are left out with a warning, as pull skips them.
    unsafe = [e.get("Path", "") for e in rc.lsjson(remote_path(config.remote, key, raw_backslash=True))
              if _unsafe_listing(e.get("Path", ""))]
    for rel in unsafe:
        log.warning("bisync: left out key %r: not a safe path below %s", f"{key}/{rel}" if key else rel, src,
                    extra={"event": "bisync.unsafe_key", "key": f"{key}/{rel}" if key else rel})
    exclude = [*("/" + _glob_literal(_decoded(rel)) for rel in unsafe), *exclude]
    # the lease guarding this very run is rewritten while it runs
    own = _fleet_excludes(config, key)
    args = bisync_argv(
        str(src), remote_path(config.remote, key), workdir=str(workdir), resync=do_resync,
        conflict_resolve=config.bisync.conflict_resolve, conflict_loser=config.bisync.conflict_loser,
        max_delete=config.bisync.max_delete, max_lock=config.bisync.max_lock, include=include,
        exclude=[*own, *exclude], dry_run=dry_run, force=force,
    )
    started = time.monotonic()
    # rclone's bisync lock is a local file; the lease in the bucket keeps other pods off this prefix.
    lease = contextlib.ExitStack()
    if not dry_run:
        try:
            held = lease.enter_context(bisync_lease(config, key, cancel=cancel))
        except LeaseBusyError as exc:
            log.warning("bisync %s: skipped (bisync.on_busy = skip): %s", key or "/", exc,
                        extra={"event": "bisync.skipped_busy", "holder": exc.holder})
            return TransferSummary("bisync", str(src), key, 0, 0, time.monotonic() - started, held_by=str(exc))
        cancel = held.cancel if held is not None else cancel
    _clear_stale_locks(workdir)
    try:
        result = rc.run(args, on_progress=on_progress, cancel=cancel, what=f"bisync {src} <-> {key or '/'}")
    except RcloneError as exc:
        tail = exc.stderr_tail.lower()
        if "max-delete" in tail or "too many deletes" in tail:
            raise BisyncError(f"bisync {src} <-> {key}: stopped, more than {config.bisync.max_delete}% of the "
                              f"files would be deleted (bisync.max_delete guard); nothing was deleted.\n"
                              f"  to bring the deleted files back from the other side instead, run: {recover}",
                              recover=f"{command} --force", how="if the deletions are intended, run",
                              cause=exc) from exc
        if "safety abort" in tail and "all files were changed" in tail:
            raise BisyncError(f"bisync {src} <-> {key}: stopped, every file changed on one side since the last run "
                              f"(rclone's guard against a wiped or replaced folder); nothing was changed.\n"
                              f"  to rebuild from both sides instead (the local copy wins where both changed), "
                              f"run: {recover}",
                              recover=f"{command} --force", how="if the changes are intended, run",
                              cause=exc) from exc
        if exc.returncode == 7 or "must run --resync" in tail or "critical" in tail:
            raise BisyncError(f"bisync {src} <-> {key}: critical error, bisync stopped to protect your files:\n"
                              f"{exc.stderr_tail}", recover=recover, cause=exc) from exc
        raise
    finally:
        _make_private(workdir)
        lease.close()  # renewals stop; released, or LeaseLostError if another pod took it over
    if not dry_run:
        _record_state_dir(config, src, key)
    return _summary("bisync", str(src), key, started, result.progress, result.transferred, dry_run=dry_run,
                    resync=do_resync)


def _state_marker_key(config: Config, src: Path, key: str) -> str:
    """Where the bucket remembers which state directory holds this pod's bisync state for (folder, prefix)."""
    pair = hashlib.sha256(f"{config.pod_id}\0{src.resolve()}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    prefix = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{config.fleet.prefix}/bisync-state/{prefix}/{pair}.json"


def _refuse_a_silent_resync(config: Config, src: Path, key: str, command: str) -> None:
    """No listings here, but this pod bisynced this folder with this prefix from another state directory
    (SYNCBRIDGE_STATE_DIR changed): a resync would bring back every file deleted on either side since,
    so it is refused unless asked for. A new pod, or a wiped state directory, resyncs as before."""
    store = open_store(config.remote, state_dir=config.state_dir, max_attempts=1)
    try:
        data, _ = store.get_bytes(_state_marker_key(config, src, key))
        recorded = json.loads(data)
    except (StoreError, ValueError):
        return  # never bisynced from here (or unreadable): the first run is a resync, as always
    finally:
        store.close()
    old = str(recorded.get("state_dir") or "")
    if old and old != str(config.state_dir):
        raise BisyncError(
            f"bisync {src} <-> {key or '/'}: no bisync state in {config.state_dir}, but this pod bisynced this "
            f"folder before with its state in {old} (SYNCBRIDGE_STATE_DIR changed?). A first run is a resync, "
            f"which would bring back every file deleted on either side since; nothing was changed.",
            recover=f"{command} --resync",
            how=f"set SYNCBRIDGE_STATE_DIR={shlex.quote(old)} again, or, to accept that, run")


def _record_state_dir(config: Config, src: Path, key: str) -> None:
    body = {"pod": config.pod_id, "local": str(src.resolve()), "prefix": key, "state_dir": str(config.state_dir),
            "at": time.time()}
    store = open_store(config.remote, state_dir=config.state_dir, max_attempts=2)
    try:
        store.put_bytes(_state_marker_key(config, src, key), json.dumps(body).encode())
    except StoreError as exc:  # the bisync itself went through: only the guard's memory is missing
        log.warning("bisync: could not record its state directory in the bucket (%s)", exc,
                    extra={"event": "bisync.state_marker"})
    finally:
        store.close()


def sync_folder(config: Config, folder: Folder, *, cancel: threading.Event | None = None) -> TransferSummary:
    """One configured folder (``SYNCBRIDGE_FOLDERS`` or ``[[folder]]``) the way its mode says: pull, push or bisync."""
    if folder.mode == "pull":
        return pull(config, folder.prefix, folder.local, include=folder.include, exclude=folder.exclude,
                    cancel=cancel)
    if folder.mode == "push":
        return push(config, folder.local, folder.prefix, include=folder.include, exclude=folder.exclude,
                    cancel=cancel)
    return bisync(config, folder.local, folder.prefix, include=folder.include, exclude=folder.exclude, cancel=cancel)
