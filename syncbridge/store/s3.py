"""The S3 store: boto3 against any S3-compatible endpoint (R2, AWS, MinIO, ``rclone serve s3``, moto).

Every client has checksums set to ``when_required``: botocore >= 1.36 sends CRC32 headers by
default, which R2 and other S3-compatible stores reject (boto/boto3#4392). Answers become
:class:`~syncbridge.errors.StoreError` with the code, the status and, where
:mod:`syncbridge.diagnose` knows it, the setting to fix; whether to retry is :mod:`syncbridge.retry`'s.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, Callable, Iterator, Mapping


from ..config.model import RemoteConfig
from ..diagnose import diagnose
from ..errors import PreconditionFailedError, StoreError
from ..retry import retryable
from .base import ObjectInfo, PutHeaders, Store, _Changed, _GuardedReader, _source_changed

__all__ = ["S3Store", "make_s3_client", "EXPECT_CONTINUE_MIN", "MULTIPART_THRESHOLD"]

log = logging.getLogger("syncbridge.store")

MULTIPART_THRESHOLD = 64 * 1024 * 1024
_MIN_PART = 8 * 1024 * 1024
_MAX_PARTS = 10_000


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
    # emulator). Like the Go SDK rclone uses, only bodies of at least remote.expect_continue_min
    # (SYNCBRIDGE_EXPECT_CONTINUE_MIN) ask. (The header is not signed, so it can go after signing.)
    expect = _ExpectBelow(remote.expect_continue_min)
    client.meta.events.register("before-send.s3", expect)
    client._syncbridge_expect = expect  # S3Store.warm reads when it last sent
    return client


EXPECT_CONTINUE_MIN = 2 * 1024 * 1024  # the setting's default


class _ExpectBelow:
    """A ``before-send`` handler: drops ``Expect: 100-continue`` from bodies smaller than ``minimum``
    and notes when the client last sent anything (for :meth:`S3Store.warm`)."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self.last_sent = time.monotonic()

    def __call__(self, request: Any, **_kwargs: Any) -> None:
        self.last_sent = time.monotonic()
        headers = request.headers
        if "Expect" in headers:
            try:
                length = int(headers.get("Content-Length") or 0)
            except ValueError:
                return
            if length < self.minimum:
                del headers["Expect"]


def _quiet(pool: Any) -> bool:
    """Whether the connection on top of ``pool`` is connected with nothing to read: a look that takes
    nothing out of the pool (a request taking it at that moment finds it as it was)."""
    from urllib3.util.wait import wait_for_read

    try:
        conn = pool.pool.queue[-1]
        sock = conn.sock if conn is not None else None
        return sock is not None and not wait_for_read(sock, timeout=0.0)
    except (AttributeError, IndexError, OSError, ValueError):
        return False


def _usable(conn: Any) -> bool:
    """Whether an idle pooled connection can carry the next request: connected, and nothing to read
    but what TLS sends unasked. A TLS 1.3 server sends session tickets a round trip after the
    handshake; unread, they make the socket readable, which urllib3 takes for a closed connection
    (it would drop a connection made ready before any request and connect again). They are read
    here; data or an EOF on an idle connection still means the server closed it."""
    import ssl

    from urllib3.util.wait import wait_for_read

    sock = getattr(conn, "sock", None)
    if sock is None:
        return False
    if not wait_for_read(sock, timeout=0.0):
        return True
    if not isinstance(sock, ssl.SSLSocket):
        return False
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        sock.recv(1)  # b"": closed; a byte: an answer nobody asked for
        return False
    except ssl.SSLWantReadError:
        return True  # only TLS records (tickets), now read
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


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


def _store_error(exc: BaseException, *, key: str | None, action: str, mid_body: bool = False) -> StoreError:
    """``exc`` as a :class:`StoreError`; ``mid_body``: it broke off the body of an answered request."""
    error = _answer_error(exc, key=key, action=action)
    error.mid_body = mid_body
    return error


def _answer_error(exc: BaseException, *, key: str | None, action: str) -> StoreError:
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
        self._warming = threading.Lock()
        self._pool_ref: Any = None
        self._pool()  # before the first connection, so every one tolerates session tickets

    def _call(self, action: str, key: str | None, fn, **kwargs):
        from botocore import exceptions as bexc

        self._await_warm()
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (bexc.BotoCoreError, bexc.ClientError, OSError) as exc:
            raise _store_error(exc, key=key, action=action) from exc

    def head(self, key: str) -> ObjectInfo | None:
        from botocore import exceptions as bexc

        self._await_warm()
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

    # -- a multipart upload driven by the caller (a growing file's parts sent as they are written) --

    def create_multipart(self, key: str, *, metadata: Mapping[str, str] | None = None,
                         headers: PutHeaders | None = None) -> str:
        """Start a multipart upload at ``key``; its upload id. Nothing is visible until it is completed."""
        extra = headers.s3_kwargs() if headers else {}
        r = self._call("create multipart upload", key, self.client.create_multipart_upload, Key=key,
                       Metadata=dict(metadata or {}), **extra)
        return r["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Send part ``number`` (1-based; sending a number again replaces that part); its ETag."""
        r = self._call("upload part", key, self.client.upload_part, Key=key, UploadId=upload_id, PartNumber=number,
                       Body=data)
        return r["ETag"]

    def complete_multipart(self, key: str, upload_id: str, etags: list[str], *, if_none_match: bool = False) -> str:
        """Make the parts (ETags in part order) the object at ``key``; its ETag."""
        parts = [{"PartNumber": i, "ETag": etag} for i, etag in enumerate(etags, 1)]
        r = self._call("complete multipart upload", key, self.client.complete_multipart_upload, Key=key,
                       UploadId=upload_id, MultipartUpload={"Parts": parts},
                       **self._cond_kwargs(if_none_match, None))
        return _strip_etag(r.get("ETag"))

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Best effort: a failure is logged (its parts stay billable until the bucket's lifecycle rule,
        7 days by default on R2, drops them), never raised into the upload it ends."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:  # noqa: BLE001 - any failure: the caller is already ending this upload
            error = _store_error(exc, key=key, action="abort multipart upload")
            log.warning("could not abort the unfinished multipart upload of %s (upload id %s): %s; its parts stay "
                        "in bucket %r until its lifecycle rule removes them", key, upload_id, error, self.bucket,
                        extra={"event": "store.abort_failed", "key": key})

    def check_bucket(self, *, prefix: str = "") -> None:
        self._call(f"list bucket {self.bucket!r}" + (f" under {prefix!r}" if prefix else ""), None,
                   self.client.list_objects_v2, MaxKeys=1, **({"Prefix": prefix} if prefix else {}))

    def get_bytes(self, key: str) -> tuple[bytes, ObjectInfo]:
        r = self._call("get", key, self.client.get_object, Key=key)
        try:
            data = r["Body"].read()
        except Exception as exc:  # noqa: BLE001 - streaming errors of every kind
            raise _store_error(exc, key=key, action="get", mid_body=True) from exc
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
            raise _store_error(exc, key=key, action="get", mid_body=True) from exc
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
            raise _store_error(exc, key=key, action="get", mid_body=True) from exc
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

    def warm(self, *, idle_after: float | None = None) -> bool:
        """Have a connected idle connection to the endpoint wait in the client's pool, so the next
        request does not pay TCP and TLS handshakes (round trips of their own on a real link).

        Best effort (it never raises): the connection on top of the pool (the next one a request
        takes) is left alone when it is still usable; when the server or an edge has closed it, or
        when the client has sent nothing for ``idle_after`` seconds (re-opened before an edge's
        idle timeout closes it), it is replaced by a freshly connected one. No request is sent. A
        request that comes while it connects waits for that connection instead of making its own.

        Returns:
            Whether a connection was opened.
        """
        import queue

        expect = self._expect
        stale = idle_after is not None and expect is not None and time.monotonic() - expect.last_sent >= idle_after
        pool = self._pool()
        if pool is None or pool.pool is None:
            return False
        if not stale and _quiet(pool):
            return False  # the next request's connection is there and nothing came on it: taken from no one
        with self._warming:
            try:
                conn = pool.pool.get(block=False)  # the top: what the next request takes (the pool is LIFO)
            except queue.Empty:
                return False  # every connection is in use: none is idle
            try:
                if conn is not None and not stale and conn.is_connected:
                    return False
                if conn is None:
                    conn = pool._new_conn()
                else:
                    conn.close()
                session = self.client._endpoint.http_session
                session._setup_ssl_cert(conn, self.client.meta.endpoint_url, session._verify)
                conn.connect()
                if expect is not None:
                    expect.last_sent = time.monotonic()
                return True
            except Exception as exc:  # noqa: BLE001 - unreachable now: the upload will say so
                log.debug("cannot warm a connection to %s: %s", self.description, exc)
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                return False
            finally:
                pool._put_conn(conn)

    def _pool(self) -> Any:
        """The client's urllib3 pool for the endpoint (None if this botocore/urllib3 hides it), its
        connections made to tolerate TLS session tickets (:func:`_usable`)."""
        if self._pool_ref is None:
            try:
                session = self.client._endpoint.http_session
                url = self.client.meta.endpoint_url
                manager = session._get_connection_manager(url, session._proxy_config.proxy_url_for(url))
                pool = manager.connection_from_url(url)
                base = pool.ConnectionCls
                pool.ConnectionCls = type(base.__name__, (base,), {"is_connected": property(_usable)})
                self._pool_ref = pool
            except Exception as exc:  # noqa: BLE001 - another urllib3 or botocore: requests connect themselves
                log.debug("no connection pool to warm for %s: %s", self.description, exc)
                self._pool_ref = False
        return self._pool_ref or None

    def _await_warm(self) -> None:
        """A connection being made ready: wait for it (less than making one of our own would take)."""
        if self._warming.locked():
            with self._warming:
                pass

    @property
    def _expect(self) -> "_ExpectBelow | None":
        return getattr(self.client, "_syncbridge_expect", None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


