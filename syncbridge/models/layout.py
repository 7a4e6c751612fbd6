"""The files a pull keeps beside a model: temp parts, snapshot staging, per-model locks.

Every download goes to a temp file beside its target (on the same file system, so the final
rename is atomic) named after the target and the source, so an interrupted pull resumes from it
and a later one cleans up exactly the names it could have left. Nothing here leaves the models
folder: :func:`inside` checks every target, following symlinks of the part that exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable

from .manifest import SNAPSHOT_INDEX, ModelSpec
from .ranged import RESUME_SUFFIX

__all__ = ["PART_SUFFIX", "SNAPSHOT_STAGING", "LOCK_MIN_SIZE", "inside", "part_path", "clean_parts", "model_lock",
           "tree_size"]

PART_SUFFIX = ".sbpart"
SNAPSHOT_STAGING = ".sbsnap"


def inside(base: Path, target: Path, resolved: dict[Path, str] | None = None) -> bool:
    """Whether ``target`` (following symlinks of its existing part) stays inside ``base``.

    ``resolved`` caches the real paths of folders for one pull (a realpath is a syscall per path
    component: for 500 models in one folder it cost more CPU than fetching them).
    """
    if resolved is None:
        resolved = {}

    def real(folder: Path) -> str:
        found = resolved.get(folder)
        if found is None:
            found = os.path.realpath(folder)
            if os.path.isdir(found):  # a folder made later is resolved again once it exists
                resolved[folder] = found
        return found

    if os.path.islink(target):
        full = os.path.realpath(target)
    else:
        full = os.path.join(real(target.parent), target.name)
    return full.startswith(real(base).rstrip(os.sep) + os.sep)


def part_path(target: Path, source: str) -> Path:
    return target.with_name(f".{target.name}.{source}{PART_SUFFIX}")


def clean_parts(target: Path, model: ModelSpec, hidden: dict[Path, frozenset[str]] | None = None) -> None:
    """Remove temp files and staging folders an earlier run left for this target (known names only).

    ``hidden`` caches, per folder and per pull, the dot-names in it (one listing instead of a failed
    unlink per possible leftover of each model: a folder of 500 models cost 2,500 syscalls).
    """
    if model.is_snapshot:
        names = [f".{target.name}{SNAPSHOT_STAGING}", f".{target.name}.sbold"]
    else:
        names = [f".{target.name}.{s}{PART_SUFFIX}" for s in ("cache", "hf", "civitai", "url")]
        names += [f".{target.name}.hf{PART_SUFFIX}.d", f".{target.name}.cache{PART_SUFFIX}{RESUME_SUFFIX}"]
    if hidden is not None:
        there = hidden.get(target.parent)
        if there is None:
            try:
                with os.scandir(target.parent) as entries:
                    there = frozenset(e.name for e in entries if e.name.startswith("."))
            except OSError:
                there = None
            if there is not None:
                hidden[target.parent] = there
        if there is not None:
            names = [n for n in names if n in there]
    for name in names:
        leftover = target.with_name(name)
        try:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
        except FileNotFoundError:
            pass


# Models smaller than this are fetched without the per-model lock: fetching one twice costs less
# than the lock file.
LOCK_MIN_SIZE = 16 * 1024 * 1024


@contextlib.contextmanager
def model_lock(models_dir: Path, model: ModelSpec, on_wait: Callable[[], None], *, size: int):
    """An exclusive lock per model path (flock), so two pullers sharing a models folder do not download
    the same model twice. Correctness does not depend on it: only verified files are renamed into place."""
    if size < LOCK_MIN_SIZE and not model.is_snapshot:
        yield
        return
    lock_dir = models_dir / ".syncbridge" / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(model.path.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    fd = os.open(lock_dir / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def tree_size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != SNAPSHOT_INDEX)
        return path.stat().st_size
    except OSError:
        return 0
