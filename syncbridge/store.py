"""Object-store adapters: the bucket as syncbridge's in-process code sees it.

Two implementations of one small interface:

* :class:`S3Store`: boto3 against any S3-compatible endpoint (R2, AWS, MinIO,
  ``rclone serve s3``, moto). Every client has checksums set to
  ``when_required``: botocore >= 1.36 sends CRC32 headers by default, which R2
  and other S3-compatible stores reject (boto/boto3#4392).
* :class:`LocalStore`: the embedded default, a folder standing for the bucket
  (the same folder rclone's local backend uses), with real conditional writes
  (``os.link`` of a complete temp file is create-if-absent; If-Match holds a
  lock while it compares), so every command works without credentials.

Conditional writes (``If-None-Match: *``, ``If-Match: <etag>``) are what lets
many pods share a bucket without a coordinator. Some stores accept the header
and ignore it (``rclone serve s3``); :meth:`Store.conditional_writes` probes
once and remembers, so callers can refuse to pretend.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import io
import logging
import math
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import attrs

from .config import RemoteConfig
from .diagnose import diagnose
from .fmt import warn_once
from .errors import PreconditionFailedError, SourceChangedError, StoreError, UnsafePathError
from .fsutil import TEMP_SUFFIX, ensure_private_dir, private_state_dir
from .hashing import HashingWriter
from .keys import key_to_relpath
from .retry import RETRYABLE_CODES, retryable

__all__ = ["ObjectInfo", "PutHeaders", "Store", "S3Store", "LocalStore", "open_store", "make_s3_client", "RETRYABLE_CODES",
           "check_endpoint"]

log = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MIN_PART = 8 * 1024 * 1024
_MAX_PARTS = 10_000


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

    def close(self) -> None:
        pass


# -- S3 -------------------------------------------------------------------------------


def make_s3_client(remote: RemoteConfig, *, max_pool_connections: int = 10, max_attempts: int = 3,
                   connect_timeout: float = 5.0, read_timeout: float = 60.0):
    """A boto3 S3 client for ``remote`` with R2-safe checksum settings."""
    import boto3
    from botocore.config import Config as BotoConfig

    if remote.is_local:
        raise ValueError("the local bucket has no S3 client")
    import botocore.session

    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    session = boto3.session.Session(botocore_session=core)
    client = session.client(
        "s3",
        endpoint_url=remote.endpoint,
        aws_access_key_id=remote.access_key,
        aws_secret_access_key=remote.secret_key,
        region_name="auto" if remote.provider == "Cloudflare" else remote.region,
        verify=str(remote.ca_bundle) if remote.ca_bundle else None,
        config=BotoConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            signature_version="s3v4",
            s3={"addressing_style": "virtual" if remote.provider == "AWS" else "path"},
            max_pool_connections=max_pool_connections,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
        ),
    )
    # botocore asks every PUT with a body to wait for "100 Continue" first: one more round trip per
    # output on a real link, and a full second against a server that never sends it (R2's local
    # emulator). Like the Go SDK rclone uses, only bodies past EXPECT_CONTINUE_MIN ask. (The header
    # is not signed, so it can go after signing.)
    client.meta.events.register("before-send.s3", _drop_small_expect)
    return client


EXPECT_CONTINUE_MIN = 2 * 1024 * 1024


def _drop_small_expect(request: Any, **_kwargs: Any) -> None:
    headers = request.headers
    if "Expect" in headers:
        try:
            length = int(headers.get("Content-Length") or 0)
        except ValueError:
            return
        if length < EXPECT_CONTINUE_MIN:
            del headers["Expect"]


def _parse_timestamp(value: Any) -> dt.datetime:
    """Timestamps in responses: the ISO 8601 with a zone of listings read by ``datetime.fromisoformat``
    (0.3 us each, where botocore's dateutil parser takes 25 us: 13 ms of a pull's plan for a
    500-object listing), anything else (HTTP dates in headers, epochs) by botocore's parser."""
    if isinstance(value, str) and "T" in value:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.utils import parse_timestamp

    return parse_timestamp(value)


def _store_error(exc: BaseException, *, key: str | None, action: str) -> StoreError:
    """Map a botocore exception to a StoreError carrying code, status and retryability."""
    from botocore import exceptions as bexc

    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = str(err.get("Message") or code)
        where = f" {key!r}" if key else ""
        if status == 412 or code == "PreconditionFailed":
            return PreconditionFailedError(f"{action}{where}: precondition failed (the object exists or changed)",
                                           key=key, code=code or "PreconditionFailed", status=412)
        again = retryable(code=code, status=status)  # the one table: syncbridge.retry
        found = diagnose(code, status)
        if found is not None and found.fatal:
            again = False
            if code == "NotImplemented":  # R2 names the header it refuses: say which
                detail = f" ({message})" if message and message != code else ""
                return StoreError(f"{action}{where} failed: {found.what}{detail}: {found.fix}", key=key, code=code,
                                  status=status, retryable=False, setting=found.setting, fix=found.fix)
            return StoreError(f"{action}{where} failed: {found.what} ({code or status}): {found.fix}", key=key,
                              code=code or str(status or ""), status=status, retryable=False, setting=found.setting,
                              fix=found.fix)
        return StoreError(f"{action}{where} failed: {code or status}: {message}", key=key, code=code,
                          status=status, retryable=again)
    if isinstance(exc, bexc.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        # Not transient: retrying cannot make the certificate trusted.
        found = diagnose("CertificateUntrusted")
        return StoreError(f"{action} {key!r} failed: the endpoint's TLS certificate is not trusted ({exc}); for a "
                          f"private CA, set SYNCBRIDGE_CA_BUNDLE to its PEM file", key=key, code="CertificateUntrusted",
                          retryable=False, setting=found.setting if found else None, fix=found.fix if found else None)
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectionClosedError, bexc.ReadTimeoutError,
                        bexc.ConnectTimeoutError, bexc.ResponseStreamingError, bexc.ProxyConnectionError,
                        bexc.IncompleteReadError,  # a body cut short behind a 200: transient
                        bexc.HTTPClientError, ConnectionError, TimeoutError)):
        return StoreError(f"{action} {key!r} failed: {type(exc).__name__}: {exc}", key=key,
                          code=type(exc).__name__, retryable=True)
    if isinstance(exc, bexc.NoCredentialsError):
        return StoreError(f"{action} failed: no credentials (set R2_ACCESS_KEY and R2_SECRET_KEY)", key=key,
                          code="NoCredentials")
    return StoreError(f"{action} {key!r} failed: {type(exc).__name__}: {exc}", key=key, code=type(exc).__name__,
                      retryable=isinstance(exc, OSError))


def _metadata(response: Mapping) -> dict[str, str]:
    """User metadata with lower-case names, as AWS and R2 return them (rclone serve s3 capitalises them:
    ``Sha256``), so ``info.metadata["sha256"]`` works against every store."""
    return {str(k).lower(): v for k, v in (response.get("Metadata") or {}).items()}


def _strip_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


class S3Store(Store):
    """A bucket behind an S3-compatible endpoint."""

    def __init__(self, remote: RemoteConfig, *, max_pool_connections: int = 10, max_attempts: int = 3,
                 multipart_threshold: int = MULTIPART_THRESHOLD, connect_timeout: float = 5.0,
                 read_timeout: float = 60.0) -> None:
        self.remote = remote
        self.bucket = remote.bucket
        self.description = remote.describe()
        self.ca_bundle = remote.ca_bundle
        self.multipart_threshold = multipart_threshold
        self.client = make_s3_client(remote, max_pool_connections=max_pool_connections, max_attempts=max_attempts,
                                     connect_timeout=connect_timeout, read_timeout=read_timeout)

    def _call(self, action: str, key: str | None, fn, **kwargs):
        from botocore import exceptions as bexc

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise _store_error(exc, key=key, action=action) from exc

    def head(self, key: str) -> ObjectInfo | None:
        from botocore import exceptions as bexc

        try:
            r = self.client.head_object(Bucket=self.bucket, Key=key)
        except bexc.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _store_error(exc, key=key, action="head") from exc
        except (bexc.BotoCoreError, OSError) as exc:
            raise _store_error(exc, key=key, action="head") from exc
        return ObjectInfo(key, int(r.get("ContentLength", 0)), _strip_etag(r.get("ETag")),
                          r["LastModified"].astimezone(dt.timezone.utc), _metadata(r), r.get("ContentType") or "")

    def _cond_kwargs(self, if_none_match: bool, if_match: str | None) -> dict[str, str]:
        kwargs: dict[str, str] = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = f'"{if_match}"'
        return kwargs

    def put_bytes(self, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
                  metadata: Mapping[str, str] | None = None, headers: PutHeaders | None = None) -> ObjectInfo:
        extra = headers.s3_kwargs() if headers else {}
        r = self._call("put", key, self.client.put_object, Key=key, Body=data, Metadata=dict(metadata or {}),
                       **extra, **self._cond_kwargs(if_none_match, if_match))
        return ObjectInfo(key, len(data), _strip_etag(r.get("ETag")), dt.datetime.now(dt.timezone.utc),
                          dict(metadata or {}), extra.get("ContentType", ""))

    def put_file(self, path: str | os.PathLike[str], key: str, *, if_none_match: bool = False,
                 if_match: str | None = None, metadata: Mapping[str, str] | None = None,
                 headers: PutHeaders | None = None, unchanged: Callable[[], bool] | None = None) -> ObjectInfo:
        extra = headers.s3_kwargs() if headers else {}
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size >= self.multipart_threshold:
                etag = self._multipart(fh, size, key, self._cond_kwargs(if_none_match, if_match), metadata or {},
                                       extra, unchanged, path)
            else:
                body: Any = fh if unchanged is None else _GuardedReader(fh, size, unchanged)
                try:
                    r = self._call("put", key, self.client.put_object, Key=key, Body=body, ContentLength=size,
                                   Metadata=dict(metadata or {}), **extra, **self._cond_kwargs(if_none_match, if_match))
                except (StoreError, _Changed) as exc:
                    if getattr(body, "changed", False):
                        raise _source_changed(key, path) from exc
                    raise
                if getattr(body, "changed", False):
                    raise _source_changed(key, path)
                etag = _strip_etag(r.get("ETag"))
        return ObjectInfo(key, size, etag, dt.datetime.now(dt.timezone.utc), dict(metadata or {}),
                          extra.get("ContentType", ""))

    def _multipart(self, fh: BinaryIO, size: int, key: str, cond: Mapping[str, str],
                   metadata: Mapping[str, str], extra: Mapping[str, str] | None = None,
                   unchanged: Callable[[], bool] | None = None, path: str | os.PathLike[str] = "") -> str:
        # All non-trailing parts the same size: R2 rejects anything else (InvalidPart).
        part_size = max(_MIN_PART, math.ceil(size / (_MAX_PARTS - 1)))
        part_size = math.ceil(part_size / (1024 * 1024)) * 1024 * 1024
        upload = self._call("create multipart upload", key, self.client.create_multipart_upload, Key=key,
                            Metadata=dict(metadata), **dict(extra or {}))
        upload_id = upload["UploadId"]
        fd = fh.fileno()
        count = math.ceil(size / part_size)

        def send(number: int) -> dict:
            data = os.pread(fd, part_size, (number - 1) * part_size)
            r = self._call("upload part", key, self.client.upload_part, Key=key, UploadId=upload_id,
                           PartNumber=number, Body=data)
            return {"PartNumber": number, "ETag": r["ETag"]}

        try:
            with ThreadPoolExecutor(max_workers=min(4, count)) as pool:
                parts = list(pool.map(send, range(1, count + 1)))
            if unchanged is not None and not unchanged():
                raise _source_changed(key, path)  # aborted below: the parts never become an object
            r = self._call("complete multipart upload", key, self.client.complete_multipart_upload, Key=key,
                           UploadId=upload_id, MultipartUpload={"Parts": parts}, **cond)
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise
        return _strip_etag(r.get("ETag"))

    def check_bucket(self, *, prefix: str = "") -> None:
        self._call(f"list bucket {self.bucket!r}" + (f" under {prefix!r}" if prefix else ""), None,
                   self.client.list_objects_v2, MaxKeys=1, **({"Prefix": prefix} if prefix else {}))

    def get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        r = self._call("get", key, self.client.get_object, Key=key)
        try:
            data = r["Body"].read()
        except Exception as exc:  # noqa: BLE001 - streaming errors of every kind
            raise _store_error(exc, key=key, action="get") from exc
        info = ObjectInfo(key, int(r.get("ContentLength", len(data))), _strip_etag(r.get("ETag")),
                          r["LastModified"].astimezone(dt.timezone.utc), _metadata(r))
        if len(data) != info.size:
            raise StoreError(f"get {key!r}: got {len(data)} of {info.size} bytes", key=key, code="ShortRead",
                             retryable=True)
        return data, info

    def download_to(self, key: str, fileobj: BinaryIO, *, offset: int = 0) -> ObjectInfo:
        kwargs = {"Range": f"bytes={offset}-"} if offset else {}
        r = self._call("get", key, self.client.get_object, Key=key, **kwargs)
        expected = int(r.get("ContentLength", 0))
        got = 0
        try:
            for chunk in r["Body"].iter_chunks(1024 * 1024):
                fileobj.write(chunk)
                got += len(chunk)
        except Exception as exc:  # noqa: BLE001
            raise _store_error(exc, key=key, action="get") from exc
        if got != expected:
            raise StoreError(f"get {key!r}: got {got} of {expected} bytes", key=key, code="ShortRead",
                             retryable=True)
        total = offset + expected
        return ObjectInfo(key, total, _strip_etag(r.get("ETag")), r["LastModified"].astimezone(dt.timezone.utc),
                          _metadata(r))

    def presign_get(self, key: str, *, expires: int = 3600) -> str | None:
        try:
            return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                                      ExpiresIn=expires)
        except Exception as exc:  # noqa: BLE001 - no URL: callers use download_range
            log.debug("presign %s failed: %s", key, exc)
            return None

    def download_range(self, key: str, fd: int, *, start: int, end: int) -> int:
        r = self._call("get", key, self.client.get_object, Key=key, Range=f"bytes={start}-{end - 1}")
        pos = start
        try:
            for chunk in r["Body"].iter_chunks(1024 * 1024):
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, pos)
                    view = view[written:]
                    pos += written
        except Exception as exc:  # noqa: BLE001 - streaming errors of every kind
            raise _store_error(exc, key=key, action="get") from exc
        if pos != end:
            raise StoreError(f"get {key!r} bytes {start}-{end - 1}: got {pos - start} of {end - start} bytes",
                             key=key, code="ShortRead", retryable=True)
        return pos - start

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        from botocore import exceptions as bexc

        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(item["Key"], int(item["Size"]), _strip_etag(item.get("ETag")),
                                     item["LastModified"].astimezone(dt.timezone.utc))
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise _store_error(exc, key=prefix or None, action="list") from exc

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Key=key)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


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


def check_endpoint(endpoint: str, *, timeout: float = 5.0, ca_bundle: str | os.PathLike[str] | None = None,
                   answer_timeout: float = 10.0) -> float:
    """Open (and close) one connection to the endpoint, with a TLS handshake for https (verifying
    the certificate against ``ca_bundle``, else the system's CAs), and see that an HTTP answer
    comes to an unsigned ``HEAD /`` (any status: an S3 server refuses it, but answers).

    rclone retries a refused connection for minutes (measured: 7m46s before a push
    to a closed port gave up, with a misleading "is a file not a directory"), an
    untrusted certificate likewise (3m51s, the same message), and waits on a server
    that accepts connections but never answers for longer still (still waiting after
    150 s), so bulk operations check this first and fail fast with a clear message.

    Returns:
        The connect time in seconds.

    Raises:
        StoreError: ``code`` is ``NameResolution``, ``ConnectionRefused``,
            ``ConnectFailed`` or ``NoAnswer`` (retryable: the server may come back),
            or ``CertificateUntrusted`` or ``TLSFailed`` (not retryable).
    """
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise StoreError(f"cannot resolve the endpoint's host {host!r} (R2_ENDPOINT={endpoint}): {exc.strerror}",
                         code="NameResolution", retryable=True) from exc
    last: OSError | None = None
    for family, kind, proto, _, addr in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.settimeout(timeout)
            started = time.monotonic()
            try:
                sock.connect(addr)
                seconds = time.monotonic() - started
            except OSError as exc:
                last = exc
                continue
            where = f"{host}:{port} (R2_ENDPOINT={endpoint})"
            if parts.scheme == "https":
                with _tls(sock, host, where, ca_bundle) as tls:
                    _check_answer(tls, host, where, answer_timeout)
            else:
                _check_answer(sock, host, where, answer_timeout)
            return seconds
    if isinstance(last, ConnectionRefusedError):
        raise StoreError(f"cannot connect to the endpoint {host}:{port} (R2_ENDPOINT={endpoint}): connection refused "
                         f"(is the server running? is the port right?)", code="ConnectionRefused",
                         retryable=True) from last
    reason = "timed out" if isinstance(last, (TimeoutError, socket.timeout)) else str(last)
    raise StoreError(f"cannot connect to the endpoint {host}:{port} (R2_ENDPOINT={endpoint}): {reason}",
                     code="ConnectFailed", retryable=True) from last


def _check_answer(sock: socket.socket, host: str, where: str, timeout: float) -> None:
    """Send ``HEAD /`` and wait for the status line of an answer."""
    sock.settimeout(timeout)
    try:
        sock.sendall(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        first = sock.recv(64)
    except (TimeoutError, socket.timeout) as exc:
        raise StoreError(f"the endpoint {where} accepted a connection but sent no answer in {timeout:g} s "
                         f"(a hung server, or a proxy in between that does not forward?)", code="NoAnswer",
                         retryable=True) from exc
    except OSError as exc:  # reset or hung up on before any answer
        raise StoreError(f"the endpoint {where} closed the connection without an answer ({exc}; is it an S3 "
                         f"endpoint?)", code="NoAnswer", retryable=True) from exc
    if not first.startswith(b"HTTP/"):
        what = "closed the connection" if not first else f"answered {first[:20]!r}, not HTTP,"
        raise StoreError(f"the endpoint {where} {what} (is it an S3 endpoint?)", code="NoAnswer", retryable=True)


@contextlib.contextmanager
def _tls(sock: socket.socket, host: str, where: str, ca_bundle: str | os.PathLike[str] | None):
    import ssl

    context = ssl.create_default_context(cafile=os.fspath(ca_bundle) if ca_bundle else None)
    try:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=True)
    except ssl.SSLCertVerificationError as exc:
        raise StoreError(f"the TLS certificate of the endpoint {where} is not trusted: {exc.verify_message}; "
                         f"for a private CA, set SYNCBRIDGE_CA_BUNDLE to its PEM file", code="CertificateUntrusted",
                         retryable=False) from exc
    except ssl.SSLError as exc:
        raise StoreError(f"no TLS handshake with the endpoint {where}: {exc.reason or exc} (does it speak https?)",
                         code="TLSFailed", retryable=False) from exc
    except OSError as exc:
        raise StoreError(f"TLS handshake with the endpoint {where} failed: {exc}", code="ConnectFailed",
                         retryable=True) from exc
    with tls:
        yield tls


def open_store(remote: RemoteConfig, *, state_dir: Path, max_pool_connections: int = 10,
               max_attempts: int = 3, read_timeout: float = 60.0) -> Store:
    """The store for ``remote``: S3 when an endpoint is set, else the local bucket folder.

    ``read_timeout``: how long a request may wait for the next bytes of an answer before it is retried.
    """
    if remote.is_local:
        private_state_dir(state_dir)  # before the bucket folder inside it, so it is 0700
        return LocalStore(remote.local_bucket_dir, lock_dir=state_dir / "locks")
    return S3Store(remote, max_pool_connections=max_pool_connections, max_attempts=max_attempts,
                   read_timeout=read_timeout)
