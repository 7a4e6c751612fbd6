"""Fetching one model from one source: into a temp part beside the target, verified, renamed into place.

A single file goes to ``.<name>.<source>.sbpart`` (kept for a resume when the source can continue
it); a snapshot is staged in a hidden folder, each file verified against the offer, an index
written, and the finished folder swapped into place. Verification is the cache-entry rule of
:func:`syncbridge.models.cacheentry.verify`; verified hashes go to the local record
(:class:`~syncbridge.models.localstate.HashCache`), so the next start reads nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

from ..fsutil import atomic_write_bytes, fsync_dir
from .cacheentry import verify
from .layout import SNAPSHOT_STAGING, inside, part_path
from .localstate import HashCache
from .manifest import SNAPSHOT_INDEX, ModelSpec
from .source import Offer, RemoteFile, Source, SourceError

__all__ = ["Fetcher"]


class Fetcher:
    """Puts models in place under ``models_dir``.

    Args:
        hashes: the local record verified hashes are written to.
        on_bytes: ``on_bytes(model, n)`` as bytes arrive (progress).
        cancel: set to stop a download.
    """

    def __init__(self, models_dir: Path, hashes: HashCache, *, on_bytes: Callable[[ModelSpec, int], None],
                 cancel: threading.Event) -> None:
        self.models_dir = models_dir
        self.hashes = hashes
        self.on_bytes = on_bytes
        self.cancel = cancel
        # Per-pull caches of the file system: real paths of folders, folders made.
        self.resolved: dict[Path, str] = {}
        self._made: set[Path] = set()

    def inside(self, target: Path) -> bool:
        """Whether ``target`` stays inside the models folder (symlinks followed)."""
        return inside(self.models_dir, target, self.resolved)

    def file(self, source: Source, model: ModelSpec, target: Path, remote: RemoteFile) -> tuple[str, str]:
        """Fetch a single-file model; returns (sha256, verified)."""
        if not self.inside(target):
            raise SourceError(f"{target} resolves outside {self.models_dir} (a symlink?)", source=source.name)
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        temp = part_path(target, source.name)
        if not source.resumable():
            temp.unlink(missing_ok=True)
        try:
            fetched = source.fetch(model, remote, temp, on_bytes=lambda n: self.on_bytes(model, n),
                                   cancel=self.cancel)
            verified = verify(fetched.size, fetched.sha256,
                              want_size=model.size if model.size is not None else remote.size,
                              want_sha256=model.sha256 or remote.sha256, what=source.name, source=source.name)
        except SourceError as exc:
            if not exc.retryable:
                temp.unlink(missing_ok=True)  # wrong bytes: never resume from them
            raise
        except BaseException:
            if not source.resumable():
                temp.unlink(missing_ok=True)
            raise
        # No fsync per file: a torn file after a host crash fails verification on the next start.
        os.replace(temp, target)
        self.hashes.put(target, fetched.sha256, verified=verified)
        return fetched.sha256, verified

    def snapshot(self, source: Source, model: ModelSpec, target: Path, offer: Offer) -> str:
        """Fetch a snapshot folder; returns the level verified (``sha256``, or ``size`` when the offer
        knew no hashes)."""
        if not self.inside(target):
            raise SourceError(f"{target} resolves outside {self.models_dir} (a symlink?)", source=source.name)
        staging = target.with_name(f".{target.name}{SNAPSHOT_STAGING}")
        staging.mkdir(parents=True, exist_ok=True)
        files: dict[str, dict[str, Any]] = {}
        levels = set()
        for remote in offer.files:
            dest = staging / remote.rel
            if not inside(staging, dest):
                raise SourceError(f"snapshot file {remote.rel!r} would leave {target}", source=source.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha = None
            with contextlib.suppress(FileNotFoundError):  # verified by an earlier, interrupted run
                st = os.stat(dest)
                known = self.hashes.get(dest, st)
                if known and known[1] and st.st_size == remote.size and remote.sha256 in (None, known[0]):
                    sha = known[0]
            if sha is None:
                temp = part_path(dest, source.name)
                try:
                    fetched = source.fetch(model, remote, temp, on_bytes=lambda n: self.on_bytes(model, n),
                                           cancel=self.cancel)
                    level = verify(fetched.size, fetched.sha256, want_size=remote.size, want_sha256=remote.sha256,
                                   what=f"{source.name} {remote.rel}", source=source.name)
                    levels.add(level)
                except SourceError as exc:
                    if not exc.retryable:
                        temp.unlink(missing_ok=True)
                    raise
                os.replace(temp, dest)
                sha = fetched.sha256
                self.hashes.put(dest, sha, verified=level)
            files[remote.rel] = {"size": remote.size if remote.size is not None else os.path.getsize(dest),
                                 "sha256": remote.sha256 or sha}
        spec = model.hf
        assert spec is not None
        index = {"repo": spec.repo, "revision": spec.revision, "allow": list(spec.allow), "source": source.name,
                 "files": files}
        atomic_write_bytes(staging / SNAPSHOT_INDEX, json.dumps(index, indent=1, sort_keys=True).encode(), mode=0o644)
        # Swap the finished folder into place; an older, unverified folder goes aside first.
        old = target.with_name(f".{target.name}.sbold")
        if target.exists() or target.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
        for rel in files:  # rename keeps size and mtime: re-key the hashes under the final paths
            path = target / rel
            self.hashes.put(path, files[rel]["sha256"], verified="sha256")
        return "size" if levels == {"size"} else "sha256"
