"""The bucket as syncbridge's in-process code sees it: one small interface (:class:`Store`), the
object record, the headers of a put, and the guard that keeps a changing file from being published."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Mapping

import attrs

from ..errors import PreconditionFailedError, SourceChangedError, StoreError
from ..fmt import warn_once

__all__ = ["ObjectInfo", "PutHeaders", "Store"]

log = logging.getLogger("syncbridge.store")


@attrs.frozen
class PutHeaders:
    """HTTP headers an upload stores with the object."""

    content_type: str | None = None
    cache_control: str | None = None

    def s3_kwargs(self) -> dict[str, str]:
        out = {}
        if self.content_type:
            out["ContentType"] = self.content_type
        if self.cache_control:
            out["CacheControl"] = self.cache_control
        return out


class _Changed(Exception):
    """Raised inside an upload body when its source changed (deliberately not an OSError, which
    the HTTP stack would take for a network failure)."""


class _GuardedReader:
    """A file body that asks ``unchanged()`` before it hands out its last bytes."""

    def __init__(self, fh: BinaryIO, size: int, unchanged: Callable[[], bool]) -> None:
        self._fh, self._size, self._unchanged = fh, size, unchanged
        self.changed = False

    def read(self, n: int = -1) -> bytes:
        pos = self._fh.tell()
        data = self._fh.read(n)
        if data and pos + len(data) >= self._size or not data and pos < self._size:
            if self.changed or not self._unchanged():
                self.changed = True
                raise _Changed
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def __len__(self) -> int:
        return self._size


def _source_changed(key: str, path: str | os.PathLike[str]) -> SourceChangedError:
    return SourceChangedError(f"put {key!r}: {os.fspath(path)} changed while it was uploaded; the upload was "
                              f"abandoned", key=key, code="SourceChanged")


@attrs.frozen
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes
    last_modified: dt.datetime  # aware, UTC
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    content_type: str = ""  # as stored ("" when the store does not say)


class Store:
    """Interface shared by :class:`S3Store` and :class:`LocalStore`."""

    description: str = ""
    ca_bundle: Path | None = None  # the CA certificates a client of presign_get's URLs must trust (None: public)
    _conditional: bool | None = None

    def head(self, key: str) -> ObjectInfo | None:  # pragma: no cover - interface
        raise NotImplementedError

    def put_file(self, path: str | os.PathLike[str], key: str, *, if_none_match: bool = False,
                 if_match: str | None = None, metadata: Mapping[str, str] | None = None,
                 headers: "PutHeaders | None" = None, unchanged: Callable[[], bool] | None = None) -> ObjectInfo:
        """Upload a file. ``unchanged`` is asked just before the upload completes (before the last
        bytes of a single PUT are sent, before a multipart upload is completed); when it says the
        file changed, the upload is abandoned (the object is left as it was) and
        :class:`~syncbridge.errors.SourceChangedError` is raised: a prefix of a file being written
        is never published."""
        raise NotImplementedError  # pragma: no cover

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  metadata: Mapping[str, str] | None = None, headers: "PutHeaders | None" = None) -> ObjectInfo:
        raise NotImplementedError  # pragma: no cover

    def get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        raise NotImplementedError  # pragma: no cover

    def download_to(self, key: str, fileobj: BinaryIO, *, offset: int = 0) -> ObjectInfo:
        """Write the object (from byte ``offset``) to an open binary file."""
        raise NotImplementedError  # pragma: no cover

    def download_range(self, key: str, fd: int, *, start: int, end: int) -> int:
        """Write bytes ``[start, end)`` of the object at the same offsets of the open file ``fd`` (``os.pwrite``).

        Several ranges of one object can be fetched at once from different threads.
        Returns the number of bytes written; a short read raises a retryable :class:`StoreError`.
        """
        raise NotImplementedError  # pragma: no cover

    def presign_get(self, key: str, *, expires: int = 3600) -> str | None:
        """A presigned GET URL for ``key`` (None when the store has no URLs: the local bucket).

        The URL is a credential for ``expires`` seconds: never log it.
        """
        return None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        raise NotImplementedError  # pragma: no cover

    def delete(self, key: str) -> None:
        raise NotImplementedError  # pragma: no cover

    def check_bucket(self, *, prefix: str = "") -> None:
        """Raise :class:`StoreError` when the bucket does not exist or cannot be listed (under ``prefix``)."""
        next(iter(self.list(prefix)), None)

    def conditional_writes(self, probe_prefix: str = ".syncbridge/probe") -> bool:
        """Whether the store enforces ``If-None-Match: *`` (probed once: two creates of one key)."""
        if self._conditional is None:
            key = f"{probe_prefix}/{uuid.uuid4().hex}"
            self.put_bytes(key, b"1", if_none_match=True)
            try:
                self.put_bytes(key, b"2", if_none_match=True)
                self._conditional = False
                warn_once(log, ("no conditional writes", self.description),
                          "%s does not enforce conditional writes (If-None-Match): the watcher checks with a HEAD "
                          "before each first upload, and leases cannot keep two pods apart there",
                          self.description, event="store.no_conditional_writes")
            except PreconditionFailedError:
                self._conditional = True
            finally:
                with contextlib.suppress(StoreError):
                    self.delete(key)
        return self._conditional

    def warm(self, *, idle_after: float | None = None) -> bool:
        """Have a connection ready for the next request (see :meth:`S3Store.warm`); no-op by default."""
        return False

    def close(self) -> None:
        pass


