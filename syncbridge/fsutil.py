"""Small file-system helpers shared by the I/O modules.

* the state directory and everything in it is private (0700 folders, 0600 files);
* a file reaches its final name only complete: written to a unique temp file
  beside the target, flushed, then renamed (``os.replace`` is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["ensure_private_dir", "private_state_dir", "atomic_write_bytes", "temp_beside", "TEMP_SUFFIX",
           "fsync_dir", "open_for_writing", "make_output_dir",
           "NETWORK_FS_TYPES", "is_network_fs", "mount_fstype"]

TEMP_SUFFIX = ".sbtmp"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and missing parents with mode 0700 (existing ones are left as they are)."""
    old = os.umask(0o077)
    try:
        path.mkdir(parents=True, exist_ok=True)
    finally:
        os.umask(old)
    return path


def private_state_dir(state_dir: Path, *parts: str) -> Path:
    """``state_dir/parts...``, created 0700, with ``state_dir`` itself forced to 0700."""
    ensure_private_dir(state_dir)
    with contextlib.suppress(OSError):
        os.chmod(state_dir, 0o700)
    return ensure_private_dir(state_dir.joinpath(*parts)) if parts else state_dir


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def temp_beside(target: Path, *, mode: int = 0o644) -> Iterator[tuple[int, Path]]:
    """A temp file in the target's folder; removed unless the caller renamed it away.

    Yields ``(fd, temp_path)``. The caller writes, then ``os.replace(temp, target)``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name[:80]}.", suffix=TEMP_SUFFIX, dir=target.parent)
    temp = Path(name)
    os.fchmod(fd, mode)
    try:
        yield fd, temp
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def atomic_write_bytes(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``target`` so that readers see the old or the new file, never a torn one."""
    with temp_beside(target, mode=mode) as (fd, temp):
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.replace(temp, target)
    fsync_dir(target.parent)


def open_for_writing(root: str, *, proc: str = "/proc") -> set[str] | None:
    """Paths below ``root`` that a process on this machine has open for writing, or ``None`` when
    that cannot be told (no ``/proc``, or another user's processes cannot be looked into).

    Reads ``/proc/<pid>/fd`` links and the ``flags`` of ``/proc/<pid>/fdinfo``. It sees only this
    machine (this container's pid namespace): a writer on another machine of a network file
    system is invisible, so callers use it only on local file systems.
    """
    prefix = root.rstrip("/") + "/"
    found: set[str] = set()
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except OSError:
            return None  # someone else's process: it could be writing, we cannot tell
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if not target.startswith(prefix):
                continue
            try:
                with open(f"{proc}/{pid}/fdinfo/{fd}", encoding="ascii", errors="replace") as fh:
                    flags = next((int(line.split()[1], 8) for line in fh if line.startswith("flags:")), 0)
            except (OSError, ValueError, IndexError):
                continue
            if flags & 0o3 in (os.O_WRONLY, os.O_RDWR):
                found.add(target)
    return found


def make_output_dir(out: Path, workspace: Path) -> bool:
    """Create the configured output folder when it lies in the pod's workspace (a folder that exists):
    the app would make it at its start, after the watcher. Anywhere else (``/workspace/...`` on a
    laptop, where the variable was not set) nothing is made. Returns whether the folder exists now."""
    if out.is_dir():
        return True
    if not (workspace.is_dir() and workspace in out.parents):
        return False
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return True


NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre", "gpfs",
    "beegfs", "afs", "ncpfs", "davfs", "fuse", "fuseblk", "virtiofs", "juicefs", "mfs",
})


def is_network_fs(fstype: str) -> bool:
    """Whether other machines may write to a file system of this type (inotify cannot see that)."""
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse.")


def _unescape_mount(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_fstype(path: str, mounts_text: str) -> str | None:
    """The file-system type of the mount holding absolute ``path``, from the text of ``/proc/mounts``."""
    best, best_type = -1, None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:  # later mounts over the same point win
            best, best_type = len(point), fields[2]
    return best_type
