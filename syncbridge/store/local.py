"""The local store: a folder standing for the bucket (the embedded default, no credentials needed).

It is the same folder rclone's local backend uses, with real conditional writes (``os.link`` of a
complete temp file is create-if-absent; If-Match holds a lock while it compares).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import io
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping


from ..errors import PreconditionFailedError, StoreError, UnsafePathError
from ..fsutil import TEMP_SUFFIX, ensure_private_dir
from ..hashing import HashingWriter
from ..keys import key_to_relpath
from .base import ObjectInfo, PutHeaders, Store, _source_changed

__all__ = ["LocalStore"]

log = logging.getLogger("syncbridge.store")


# -- local folder ----------------------------------------------------------------------


class LocalStore(Store):
    """The embedded default: a folder that stands for the bucket.

    Keys map to paths below the folder (refusing any key that would escape it).
    ETags are MD5 of the content (as S3 gives for single-part uploads), kept
    with metadata in ``user.*`` extended attributes where the file system has
    them. Writes go to a temp file and are linked/renamed into place, so a
    reader never sees a torn object.
    """

    _locks = threading.Lock()

    def __init__(self, root: Path, *, lock_dir: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock_dir = ensure_private_dir(Path(lock_dir))
        self.description = f"local bucket folder {self.root}"
        self._conditional = True

    def _path(self, key: str) -> Path:
        try:
            return self.root / key_to_relpath(key)
        except UnsafePathError as exc:
            raise StoreError(f"key {key!r} is not a safe object key: {exc}", key=key, code="InvalidKey") from exc

    @contextlib.contextmanager
    def _key_lock(self, key: str):
        name = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        with open(self.lock_dir / name, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @staticmethod
    def _xattrs(path: Path) -> dict[str, str]:
        out: dict[str, str] = {}
        try:
            for name in os.listxattr(path):
                if name.startswith("user.sb."):
                    out[name[8:]] = os.getxattr(path, name).decode("utf-8", "replace")
        except OSError:
            pass
        return out

    def _info(self, key: str, path: Path, st: os.stat_result | None = None) -> ObjectInfo:
        st = st or path.stat()
        attrs_ = self._xattrs(path)
        etag = attrs_.pop("etag", "") or f"{st.st_size:x}-{st.st_mtime_ns:x}"
        meta = {k[5:]: v for k, v in attrs_.items() if k.startswith("meta.")}
        return ObjectInfo(key, st.st_size, etag, dt.datetime.fromtimestamp(st.st_mtime, dt.timezone.utc), meta,
                          attrs_.get("content-type", ""))

    def head(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not path.is_file():
            return None
        return self._info(key, path, st)

    def _write(self, key: str, source: BinaryIO | bytes, *, if_none_match: bool, if_match: str | None,
               metadata: Mapping[str, str] | None, headers: PutHeaders | None = None,
               unchanged: Callable[[], bool] | None = None) -> ObjectInfo:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"put {key!r}: a parent of the key is an object", key=key, code="InvalidKey") from exc
        tmp = target.with_name(f".{target.name[:60]}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
        try:
            with open(tmp, "wb") as out:
                writer = HashingWriter(out, "md5")  # the ETag S3 gives a single-part object
                if isinstance(source, (bytes, bytearray, memoryview)):
                    writer.write(source)
                else:
                    for chunk in iter(lambda: source.read(1024 * 1024), b""):
                        writer.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            etag = writer.hexdigest()
            with contextlib.suppress(OSError):
                os.setxattr(tmp, "user.sb.etag", etag.encode())
                for name, value in (metadata or {}).items():
                    os.setxattr(tmp, f"user.sb.meta.{name.lower()}", str(value).encode())
                if headers is not None and headers.content_type:
                    os.setxattr(tmp, "user.sb.content-type", headers.content_type.encode())
            if unchanged is not None and not unchanged():
                raise _source_changed(key, getattr(source, "name", key))
            with self._key_lock(key):
                current = self.head(key)
                if if_none_match and current is not None:
                    raise PreconditionFailedError(f"put {key!r}: precondition failed (the object exists)", key=key,
                                                  code="PreconditionFailed", status=412)
                if if_match is not None and (current is None or current.etag != if_match):
                    raise PreconditionFailedError(f"put {key!r}: precondition failed (the object changed)",
                                                  key=key, code="PreconditionFailed", status=412)
                if if_none_match:
                    try:
                        os.link(tmp, target)  # atomic create-if-absent, also against other processes
                    except FileExistsError as exc:
                        raise PreconditionFailedError(f"put {key!r}: precondition failed (the object exists)",
                                                      key=key, code="PreconditionFailed", status=412) from exc
                else:
                    os.replace(tmp, target)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"put {key!r} failed: {exc.strerror or exc}", key=key, code=errno.errorcode.get(
                exc.errno or 0, "OSError"), retryable=exc.errno in (errno.ENOSPC, errno.EAGAIN)) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return self._info(key, target)

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  metadata: Mapping[str, str] | None = None, headers: PutHeaders | None = None) -> ObjectInfo:
        return self._write(key, data, if_none_match=if_none_match, if_match=if_match, metadata=metadata,
                           headers=headers)

    def put_file(self, path: str | os.PathLike[str], key: str, *, if_none_match: bool = False,
                 if_match: str | None = None, metadata: Mapping[str, str] | None = None,
                 headers: PutHeaders | None = None, unchanged: Callable[[], bool] | None = None) -> ObjectInfo:
        with open(path, "rb") as fh:
            return self._write(key, fh, if_none_match=if_none_match, if_match=if_match, metadata=metadata,
                               headers=headers, unchanged=unchanged)

    def get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        buf = io.BytesIO()
        info = self.download_to(key, buf)
        return buf.getvalue(), info

    def download_to(self, key: str, fileobj: BinaryIO, *, offset: int = 0) -> ObjectInfo:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                info = self._info(key, path, os.fstat(fh.fileno()))
                fh.seek(offset)
                for chunk in iter(lambda: fh.read(1024 * 1024), b""):
                    fileobj.write(chunk)
        except FileNotFoundError as exc:
            raise StoreError(f"get {key!r}: no such object in {self.description}", key=key, code="NoSuchKey",
                             status=404) from exc
        return info

    def download_range(self, key: str, fd: int, *, start: int, end: int) -> int:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                pos = start
                while pos < end:
                    data = os.pread(fh.fileno(), min(8 * 1024 * 1024, end - pos), pos)
                    if not data:
                        break
                    view = memoryview(data)
                    while view:
                        written = os.pwrite(fd, view, pos)
                        view = view[written:]
                        pos += written
        except FileNotFoundError as exc:
            raise StoreError(f"get {key!r}: no such object in {self.description}", key=key, code="NoSuchKey",
                             status=404) from exc
        if pos != end:
            raise StoreError(f"get {key!r} bytes {start}-{end - 1}: the object is shorter", key=key,
                             code="ShortRead", retryable=True)
        return pos - start

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            raise StoreError(f"{self.description} does not exist", code="NoSuchBucket", status=404)
        base = self.root
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, base)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            if prefix and not (rel_dir.startswith(prefix) or prefix.startswith(rel_dir)):
                dirnames[:] = []
                continue
            for name in sorted(filenames):
                if name.endswith((TEMP_SUFFIX, ".partial")):
                    continue
                key = rel_dir + name
                if key.startswith(prefix):
                    path = Path(dirpath) / name
                    with contextlib.suppress(FileNotFoundError):
                        yield self._info(key, path)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


