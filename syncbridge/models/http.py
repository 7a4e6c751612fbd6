"""The HTTP clients of the model sources.

* :class:`Http`: urllib3 with redirects followed by hand, so a credential (``CIVITAI_API_KEY``) is
  sent only as an ``Authorization: Bearer`` header, only to its own origin, never in a URL and never
  to the host a download redirects to; downloads resume with ``Range``.
* :class:`RangeReader`: ranged GETs of one presigned cache URL over one kept-alive ``http.client``
  connection, read into a reused buffer (far less CPU per byte than botocore's streaming body).
* :class:`HttpSource`: a source that speaks plain HTTP through one shared, lazily made pool.

Whether a status or a failure is worth another try comes from :mod:`syncbridge.retry`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

from ..errors import CancelledError, StoreError
from ..hashing import file_digest, new_digest, sha256_file
from ..retry import ATTEMPTS, pause, retryable_status
from .source import Fetched, NotAvailable, OnBytes, Source, SourceError, check_cancel, origin_of, safe_url

__all__ = ["Http", "HttpSource", "RangeReader"]

log = logging.getLogger(__name__)

# Small reads from HTTP streams: what arrived before a dropped connection is kept for the resume.
_STREAM_CHUNK = 64 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)


class Http:
    """urllib3 with redirects followed by hand, so credentials never reach another origin."""

    def __init__(self, *, user_agent: str = "syncbridge", timeout: float = 60.0) -> None:
        import urllib3

        self._urllib3 = urllib3
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=15.0, read=timeout),
                                        headers={"User-Agent": user_agent})

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                auth: tuple[tuple[str, str, int], dict[str, str]] | None = None, source: str):
        """One request, following up to 5 redirects; ``auth = (origin, headers)`` adds those headers
        only on hops whose origin is exactly ``origin``. Returns the unread response and its final URL."""
        for _ in range(6):
            send = dict(headers or {})
            if auth is not None and origin_of(url) == auth[0]:
                send.update(auth[1])
            try:
                response = self.pool.request(method, url, headers=send, redirect=False, preload_content=False)
            except self._urllib3.exceptions.HTTPError as exc:
                raise SourceError(f"{source}: {safe_url(url)}: {type(exc).__name__}: {exc}", source=source,
                                  retryable=True) from exc
            if response.status in _REDIRECTS and response.headers.get("Location"):
                response.drain_conn()
                response.release_conn()
                url = urljoin(url, response.headers["Location"])
                if urlsplit(url).scheme not in ("http", "https"):
                    raise SourceError(f"{source}: redirect to a non-HTTP URL", source=source)
                if response.status == 303:
                    method = "GET"
                continue
            return response, url
        raise SourceError(f"{source}: too many redirects", source=source)

    def download(self, url: str, temp: Path, *, source: str, expected_size: int | None,
                 auth: tuple[tuple[str, str, int], dict[str, str]] | None, on_bytes: OnBytes,
                 cancel: threading.Event | None, attempts: int = ATTEMPTS + 1) -> Fetched:
        """GET ``url`` into ``temp``, resuming a partial ``temp`` with ``Range`` when the server allows it.

        A connection dropped half way is retried from where it stopped (up to ``attempts``: a resume
        costs only what is missing, so one more than a request's), with the backoff of
        :mod:`syncbridge.retry` between tries (urllib3 itself retries nothing here).
        """
        last: SourceError | None = None
        for attempt in range(attempts):
            if attempt and not pause(attempt, cancel=cancel):
                break
            check_cancel(cancel)
            have = temp.stat().st_size if temp.exists() else 0
            if expected_size is not None and have > expected_size:
                have = 0
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
            response, final = self.request("GET", url, headers=headers, auth=auth, source=source)
            try:
                status = response.status
                if status == 416 and have and expected_size == have:
                    return Fetched(*sha256_file(temp))
                if status in (404, 410):
                    raise NotAvailable(f"{source}: {safe_url(final)}: HTTP {status}", source=source)
                if status in (401, 403):
                    raise SourceError(f"{source}: {safe_url(final)}: refused (HTTP {status})", source=source)
                if status == 206 and have:
                    content_range = response.headers.get("Content-Range", "")
                    if not content_range.startswith(f"bytes {have}-"):
                        have = 0  # an answer for another range: start over
                        response.drain_conn()
                        temp.unlink(missing_ok=True)
                        continue
                    mode = "ab"
                elif status == 200:
                    mode, have = "wb", 0
                else:
                    raise SourceError(f"{source}: {safe_url(final)}: HTTP {status}", source=source,
                                      # 416: the kept part does not fit the file (any more): asked again
                                      retryable=retryable_status(status) or status == 416)
                length = response.headers.get("Content-Length")
                remaining = int(length) if length and length.isdigit() else None
                digest = file_digest(temp)[1] if mode == "ab" else new_digest()  # the kept part, then the rest
                got = 0
                with open(temp, mode) as out:
                    try:
                        for chunk in response.stream(_STREAM_CHUNK):
                            check_cancel(cancel)
                            out.write(chunk)
                            digest.update(chunk)
                            got += len(chunk)
                            on_bytes(len(chunk))
                    except self._urllib3.exceptions.HTTPError as exc:
                        raise SourceError(f"{source}: {safe_url(final)}: connection lost after {have + got} bytes "
                                          f"({type(exc).__name__})", source=source, retryable=True) from exc
                if remaining is not None and got != remaining:
                    raise SourceError(f"{source}: {safe_url(final)}: got {have + got} bytes, expected "
                                      f"{have + remaining}", source=source, retryable=True)
                return Fetched(have + got, digest.hexdigest())
            except SourceError as exc:
                if not exc.retryable:
                    raise
                last = exc
                log.info("%s; resuming", exc, extra={"event": "models.resume", "source": source})
            finally:
                response.release_conn()
        check_cancel(cancel)
        assert last is not None
        raise last

    def head(self, url: str, *, source: str):
        return self.request("HEAD", url, headers={"Accept-Encoding": "identity"}, source=source)


class HttpSource(Source):
    """A source that speaks plain HTTP through one shared, lazily made connection pool."""

    _http: Http | None = None

    @property
    def http(self) -> Http:
        if self._http is None:
            self._http = Http()
        return self._http



class RangeReader:
    """Ranged GETs of one presigned URL over one kept-alive connection, read into a reused buffer."""

    # Small enough to stay in the CPU cache between the socket read, the hash and the write.
    _BUFFER = 256 * 1024
    # Written in pieces of this size (what Go's io.Copy uses): in this VM, 256 KiB writes into the
    # page cache cost 1.2 to 3.4 s of kernel time per 2 GB against about 1.2 s for 32 KiB ones.
    _WRITE = 32 * 1024

    def __init__(self, url: str, *, etag: str | None = None, cafile: str | os.PathLike[str] | None = None,
                 timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.cafile = cafile
        self.timeout = timeout
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.target = parts.path + (f"?{parts.query}" if parts.query else "")
        self.shown = safe_url(url)
        self.conn = None
        self.buffer = memoryview(bytearray(self._BUFFER))
        self.etag = etag  # every response must carry it (the first one sets it)
        self.reached = 0  # how far the last read_into got (written and handed to ``landed``)

    def _connect(self):
        import http.client

        if self.conn is None:
            if self.https:
                import ssl

                # The CA bundle the store's client uses (the configured one, else botocore's), so a
                # presigned URL is trusted exactly as the store's own requests.
                cafile = self.cafile
                if cafile is None:
                    try:
                        from botocore.httpsession import get_cert_path

                        cafile = get_cert_path(True)
                    except Exception:  # noqa: BLE001 - fall back to the system's CAs
                        cafile = None
                self.conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout,
                                                        context=ssl.create_default_context(cafile=cafile))
            else:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self.conn

    def read_into(self, fd: int, start: int, end: int,
                  landed: Callable[[int, int, memoryview], None] | None = None,
                  write_lock: threading.Lock | None = None, cancel: threading.Event | None = None) -> None:
        """Bytes ``[start, end)`` to the same offsets of ``fd``; ``landed(a, b, data)`` after each write.
        A set ``cancel`` stops it between two reads (CancelledError), not at the end of the range."""
        import http.client

        try:
            conn = self._connect()
            conn.request("GET", self.target, headers={"Range": f"bytes={start}-{end - 1}",
                                                      "Accept-Encoding": "identity"})
            response = conn.getresponse()
            # rclone serve s3 answers a range with 200 plus Content-Range: accept what the header says.
            ranged = (response.getheader("Content-Range") or "").startswith(f"bytes {start}-")
            if response.status not in (200, 206) or not ranged:
                response.read()
                retryable = retryable_status(response.status)
                raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: HTTP {response.status}",
                                 code=str(response.status), status=response.status, retryable=retryable)
            etag = (response.getheader("ETag") or "").strip('"') or None
            if etag and self.etag and etag != self.etag:
                response.close()
                raise StoreError(f"get {self.shown}: the object changed during the download (ETag {etag}, "
                                 f"was {self.etag}); starting over", code="ETagChanged", retryable=True)
            self.etag = self.etag or etag
            pos = self.reached = start
            while pos < end:
                if cancel is not None and cancel.is_set():
                    self.close()
                    raise CancelledError("model download cancelled")
                n = response.readinto(self.buffer[:min(self._BUFFER, end - pos)])
                if not n:
                    break
                view = self.buffer[:n]
                at = pos
                with write_lock or contextlib.nullcontext():
                    while view:
                        written = os.pwrite(fd, view[:self._WRITE], pos)
                        view = view[written:]
                        pos += written
                if landed is not None:
                    landed(at, pos, self.buffer[:n])
                self.reached = pos
            if pos != end:
                raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: got {pos - start} bytes", code="ShortRead",
                                 retryable=True)
            response.read()  # drain, keep the connection for the next part
        except StoreError:
            self.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise StoreError(f"get {self.shown} bytes {start}-{end - 1}: {type(exc).__name__}: {exc}",
                             code=type(exc).__name__, retryable=True) from exc

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def abort(self) -> None:
        """From another thread: end a read that waits on the socket (it then fails, and is not retried
        once the cancel is seen)."""
        import socket

        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

