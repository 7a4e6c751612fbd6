"""The status page's HTTP server: the standard library's, on its own daemon threads, read-only.

Routes (GET and HEAD only):

* ``/``: the page (:mod:`.html`), which polls ``status.json``;
* ``/status.json``: what ``syncbridge status --json`` prints, made safe to show (:func:`.page.page_document`),
  plus ``page`` and, when heartbeats are on, ``fleet``;
* ``/metrics``: the same in the Prometheus text format;
* ``/thumb?path=REL``: an image below the output folder, read from the local file (never through the bucket):
  the path must pass :func:`.page.thumb_relpath` and its real path (symlinks resolved) must stay inside the
  output folder's real path; only regular files, at most :data:`THUMB_MAX_BYTES`.

The pusher is never slowed: the document is built at most once per :data:`CACHE_SECONDS` whatever the number
of viewers (requests in between share it), at most :data:`MAX_CONCURRENT` requests are served at once (503
beyond), a slow client's socket times out, and the fleet's pods are listed from the bucket by a background
thread only while someone looks at the page.

With ``SYNCBRIDGE_STATUS_TOKEN`` every route answers 401 unless the request carries the token: as
``Authorization: Bearer TOKEN``, or once as ``?token=TOKEN``, answered by a redirect without it that sets an
HttpOnly cookie (a value derived from the token, not the token). Comparisons are constant-time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import shutil
import socket
import stat
import threading
import time
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlencode, urlsplit

from .. import __version__
from ..config import Config
from .html import CSP, PAGE
from .page import IMAGE_TYPES, metrics_text, page_document, thumb_relpath

__all__ = ["StatusServer", "Listener", "resolve_bind", "CACHE_SECONDS", "THUMB_MAX_BYTES", "COOKIE_NAME"]

log = logging.getLogger("syncbridge.statuspage")

CACHE_SECONDS = 1.0
MAX_CONCURRENT = 16
SOCKET_TIMEOUT = 10.0
THUMB_MAX_BYTES = 32 * 1024 * 1024
FLEET_WATCHED_SECONDS = 60.0  # the fleet is listed only while the page was asked for this recently
FLEET_MIN_INTERVAL = 10.0
COOKIE_NAME = "syncbridge_status"

COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def in_container(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("RUNPOD_POD_ID")) or Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()


def resolve_bind(setting: str, environ: Mapping[str, str]) -> str:
    """``start.status_bind``: ``auto`` is 0.0.0.0 in a container (RunPod's proxy reaches it), else 127.0.0.1."""
    if setting and setting != "auto":
        return setting
    return "0.0.0.0" if in_container(environ) else "127.0.0.1"


class _Fleet:
    """The fleet's pods, listed from the bucket in a background thread while the page is watched."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.interval = max(FLEET_MIN_INTERVAL, config.fleet.heartbeat_seconds)
        self.doc: dict[str, Any] = {"pods": [], "updated_at": None}
        self.watched_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def view(self) -> dict[str, Any]:
        self.watched_at = time.monotonic()
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="syncbridge-status-fleet", daemon=True)
                self._thread.start()
        return self.doc

    def _run(self) -> None:
        import attrs

        from ..fleet.status import fleet_status

        while not self._stop.is_set():
            if time.monotonic() - self.watched_at < FLEET_WATCHED_SECONDS:
                try:
                    pods = fleet_status(self.config)
                    self.doc = {"pods": [attrs.asdict(p) | {"status": p.status} for p in pods],
                                "updated_at": time.time()}
                except Exception as exc:  # noqa: BLE001 - the page says it; the pod goes on
                    self.doc = {**self.doc, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


class StatusServer:
    """Serves the status page for ``config``; :meth:`listen` on one or more ports, :meth:`close` all.

    Args:
        config: the resolved configuration (state dir, output folder, token, secrets).
        report: builds the status report (default :func:`~.report.status_report`).
    """

    def __init__(self, config: Config, *, report: Callable[[], Mapping[str, Any]] | None = None) -> None:
        if report is None:
            from .report import status_report

            def report() -> Mapping[str, Any]:
                return status_report(config)
        self.config = config
        self._report = report
        self.output_dir = os.path.realpath(str(config.watch.dir))
        self._secrets = tuple(s for s in (*config.secrets, config.watch.webhook_url) if s)
        token = config.start.status_token
        self._token = token.encode("utf-8") if token else None
        self._cookie = (hmac.new(self._token, b"syncbridge status cookie", hashlib.sha256).hexdigest()
                        if self._token else "")
        self._fleet = _Fleet(config) if config.fleet.heartbeat_seconds > 0 else None
        self._doc: dict[str, Any] | None = None
        self._doc_at = -1e9
        self._doc_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._listeners: list[Listener] = []
        self.requests = 0

    # -- the data ------------------------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The /status.json document, rebuilt at most once per :data:`CACHE_SECONDS`."""
        with self._doc_lock:
            now = time.monotonic()
            if self._doc is None or now - self._doc_at >= CACHE_SECONDS:
                fleet = self._fleet.view() if self._fleet is not None else None
                self._doc = page_document(self._report(), output_dir=str(self.config.watch.dir),
                                          secrets=self._secrets, pod_id=self.config.pod_id, version=__version__,
                                          fleet=fleet, now=time.time(),
                                          public_url=bool(self.config.watch.public_url))
                self._doc_at = now
            return self._doc

    # -- listening -------------------------------------------------------------------------------
    def listen(self, port: int, bind: str = "127.0.0.1", *, name: str = "status") -> "Listener":
        """Serve on ``bind:port`` from a daemon thread. Raises OSError when the port cannot be bound."""
        listener = Listener(self, bind, port, name=name)
        self._listeners.append(listener)
        return listener

    def close(self) -> None:
        for listener in self._listeners:
            listener.close()
        if self._fleet is not None:
            self._fleet.stop()

    # -- requests --------------------------------------------------------------------------------
    def authorized(self, headers: Any, query: Mapping[str, list[str]]) -> str:
        """``ok``, ``cookie`` (a valid ``?token=``: set the cookie and redirect) or ``no``."""
        if self._token is None:
            return "ok"
        auth = headers.get("Authorization") or ""
        if auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode("utf-8"), self._token):
            return "ok"
        raw = headers.get("Cookie")
        if raw:
            with contextlib.suppress(CookieError):
                morsel = SimpleCookie(raw).get(COOKIE_NAME)
                if morsel is not None and hmac.compare_digest(morsel.value.encode("utf-8"),
                                                              self._cookie.encode("utf-8")):
                    return "ok"
        for given in query.get("token", [])[:1]:
            if hmac.compare_digest(given.encode("utf-8"), self._token):
                return "cookie"
        return "no"

    def thumb_file(self, raw: str) -> tuple[int, str] | None:
        """An open descriptor and content type for a thumbnail request, or None (404)."""
        rel = thumb_relpath(raw)
        if rel is None:
            return None
        real = os.path.realpath(os.path.join(self.output_dir, rel))
        if not real.startswith(self.output_dir.rstrip("/") + "/"):
            return None
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if not stat.S_ISREG(info.st_mode) or info.st_size > THUMB_MAX_BYTES:
            os.close(fd)
            return None
        return fd, IMAGE_TYPES[os.path.splitext(real)[1].lower()]


class _Handler(BaseHTTPRequestHandler):
    server_version = "syncbridge-status"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT
    page: StatusServer  # set on the subclass made per listener

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("status page: " + format, *args, extra={"event": "statuspage.request"})

    def _send(self, status: int, body: bytes, content_type: str, *, headers: Mapping[str, str] | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        for name, value in COMMON_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("Cache-Control", cache)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _text(self, status: int, text: str, **kw: Any) -> None:
        self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8", **kw)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        page = self.page
        if not page._slots.acquire(blocking=False):
            self._text(503, "busy, try again\n", headers={"Retry-After": "1", "Connection": "close"})
            self.close_connection = True
            return
        try:
            page.requests += 1
            self._route(page)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            page._slots.release()

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self._text(405, "read-only: GET or HEAD\n", headers={"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _route(self, page: StatusServer) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=8) if parts.query else {}
        verdict = page.authorized(self.headers, query)
        if verdict == "no":
            self._text(401, "401: this status page needs its token (SYNCBRIDGE_STATUS_TOKEN): send "
                            "Authorization: Bearer TOKEN, or open it once with ?token=TOKEN\n",
                       headers={"WWW-Authenticate": 'Bearer realm="syncbridge"'})
            return
        if verdict == "cookie":
            rest = urlencode([(k, v) for k, vs in query.items() if k != "token" for v in vs])
            secure = "; Secure" if (self.headers.get("X-Forwarded-Proto") or "").lower() == "https" else ""
            self._text(303, "see other\n", headers={
                "Location": (parts.path or "/") + (f"?{rest}" if rest else ""),
                "Set-Cookie": f"{COOKIE_NAME}={page._cookie}; HttpOnly; SameSite=Strict; Path=/{secure}"})
            return
        path = parts.path
        if path in ("/", "/index.html"):
            self._send(200, PAGE, "text/html; charset=utf-8")
        elif path == "/status.json":
            body = json.dumps(page.document(), sort_keys=True, allow_nan=False).encode("utf-8")
            self._send(200, body, "application/json")
        elif path == "/metrics":
            self._send(200, metrics_text(page.document()).encode("utf-8"), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/thumb":
            self._thumb(page, (query.get("path") or [""])[0])
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon", cache="max-age=86400")
        else:
            self._text(404, "not found\n")

    def _thumb(self, page: StatusServer, raw: str) -> None:
        found = page.thumb_file(raw)
        if found is None:
            self._text(404, "no such image in the output folder\n")
            return
        fd, content_type = found
        with open(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self.send_response(200)
            for name, value in COMMON_HEADERS.items():
                self.send_header(name, value)
            self.send_header("Content-Security-Policy", "default-src 'none'")
            self.send_header("Cache-Control", "private, max-age=300")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(fh, self.wfile, 256 * 1024)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 32


class Listener:
    """One listening socket serving the page from a daemon thread."""

    def __init__(self, page: StatusServer, bind: str, port: int, *, name: str) -> None:
        handler = type("Handler", (_Handler,), {"page": page})
        if ":" in bind:
            server_cls = type("Server6", (_Server,), {"address_family": socket.AF_INET6})
        else:
            server_cls = _Server
        self.server = server_cls((bind, port), handler)
        self.bind, self.port = bind, self.server.server_address[1]
        self.name = name
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"syncbridge-{name}-page", daemon=True)
        self._thread.start()
        self._closed = False

    def close(self, timeout: float = 2.0) -> bool:
        """Stop listening; True when the port is free again within ``timeout`` seconds."""
        if self._closed:
            return True
        self._closed = True
        done = threading.Event()

        def shut() -> None:
            self.server.shutdown()
            done.set()

        threading.Thread(target=shut, daemon=True).start()
        done.wait(timeout)
        self.server.server_close()
        return port_free(self.bind, self.port)


def port_free(bind: str, port: int) -> bool:
    """Whether ``bind:port`` can be listened on now (as the app will, with SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError:
            return False
    return True
