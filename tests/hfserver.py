"""A loopback server speaking the parts of the Hugging Face Hub protocol huggingface_hub uses to download.

* ``HEAD|GET /{repo}/resolve/{revision}/{path}``: for an LFS file a 302 to
  ``/cdn/{sha256}`` with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size`` and ``ETag``; a small (non-LFS) file is served directly with
  its git blob id as ETag. Unknown repos/files: 404 with ``X-Error-Code``
  (``RepoNotFound`` / ``EntryNotFound``), as the Hub answers.
* ``GET /cdn/{sha256}`` on a second port (another origin, like the Hub's CDN): the bytes, with
  ``Range`` support.
* ``POST /api/models/{repo}/paths-info/{revision}`` and
  ``GET /api/models/{repo}/tree/{revision}?recursive=true``: file metadata
  (size, blob id, LFS sha256).

Faults a real Hub cannot be made to produce on demand: ``drop_after[path]``
closes the connection after that many bytes (once), ``corrupt[path]`` serves
other bytes of the same size. Every request is logged (method, path, headers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN = 64  # files of at least this many bytes are stored as LFS objects in this fake


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str]) -> None:
        self.method = method
        self.path = path
        self.headers = headers

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 that logs requests and hands them to ``handle``."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.requests: list[Recorded] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _any(self) -> None:
                # header names title-cased: httpx sends them in lower case
                server.requests.append(Recorded(self.command, self.path,
                                                {k.title(): v for k, v in self.headers.items()}))
                try:
                    handle(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_HEAD = do_POST = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send_body(h: BaseHTTPRequestHandler, data: bytes, *, status: int = 200, headers: dict[str, str] | None = None,
              drop_after: int | None = None, ranges: bool = True, trickle: float = 0.0) -> None:
    """Answer with ``data`` (honouring a ``Range: bytes=N-`` header), optionally dropping the connection,
    or sending 64 KiB every ``trickle`` seconds (a slow link)."""
    start = 0
    rng = h.headers.get("Range")
    if rng and ranges and status == 200 and rng.startswith("bytes="):
        first, _, last = rng[6:].partition("-")
        start = int(first)
        end = int(last) + 1 if last else len(data)
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = data[start:end]
        status = 206
    else:
        body = data
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Accept-Ranges", "bytes")
    if status == 206:
        h.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command == "HEAD":
        return
    if drop_after is not None and drop_after < len(body):
        h.wfile.write(body[:drop_after])
        h.wfile.flush()
        h.close_connection = True
        with contextlib.suppress(OSError):
            import socket

            h.connection.shutdown(socket.SHUT_RDWR)
        return
    if trickle:
        import time

        with contextlib.suppress(OSError):
            for pos in range(0, len(body), 65536):
                h.wfile.write(body[pos:pos + 65536])
                h.wfile.flush()
                time.sleep(trickle)
        return
    h.wfile.write(body)


def send_json(h: BaseHTTPRequestHandler, obj, *, status: int = 200, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(obj).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(data)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HfHub:
    """The fake Hub. ``add(repo, {path: bytes})``; ``url`` is the endpoint to pass as HF_ENDPOINT / endpoint=."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.trickle: dict[str, float] = {}  # file name -> seconds between 64 KiB pieces
        self.server = LoopbackServer(self._handle)
        # The CDN is another origin (another port), as cdn-lfs.huggingface.co is: huggingface_hub
        # reads the metadata from the redirect itself and drops the token on the way there.
        self.cdn = LoopbackServer(self._handle)
        self.url = self.server.url
        self.token: str | None = None  # when set, API and resolve calls need "Authorization: Bearer <token>"

    @property
    def requests(self) -> list[Recorded]:
        return self.server.requests + self.cdn.requests

    def add(self, repo: str, files: dict[str, bytes]) -> None:
        self.repos.setdefault(repo, {}).update(files)

    def _by_sha(self, sha: str) -> tuple[str, bytes] | None:
        for files in self.repos.values():
            for path, data in files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return path, data
        return None

    def _info(self, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
        if len(data) >= LFS_MIN:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _authorized(self, h: BaseHTTPRequestHandler) -> bool:
        return self.token is None or h.headers.get("Authorization") == f"Bearer {self.token}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        if path.startswith("/cdn/"):
            found = self._by_sha(path[5:])
            if found is None:
                send_json(h, {"error": "not found"}, status=404)
                return
            name, data = found
            if name in self.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            drop = self.drop_after.pop(name, None)
            send_body(h, data, headers={"Content-Type": "application/octet-stream"}, drop_after=drop,
                      trickle=self.trickle.get(name, 0.0))
            return
        if path.startswith("/api/models/"):
            rest = path[len("/api/models/"):]
            length = int(h.headers.get("Content-Length") or 0)
            form = parse_qs(h.rfile.read(length).decode()) if length else {}
            for marker in ("/paths-info/", "/tree/"):
                if marker in rest:
                    repo, _, revision = rest.partition(marker)
                    break
            else:
                send_json(h, {"error": "unknown api"}, status=404)
                return
            files = self.repos.get(repo)
            if files is None or not self._authorized(h):
                send_json(h, {"error": "Repository not found"}, status=404 if files is None else 401,
                          headers={"X-Error-Code": "RepoNotFound"})
                return
            if marker == "/paths-info/":
                wanted = form.get("paths", [])
                send_json(h, [self._info(p, files[p]) for p in wanted if p in files])
            else:
                entries = [self._info(p, d) for p, d in sorted(files.items())]
                folders = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
                entries += [{"type": "directory", "path": f, "oid": "0" * 40} for f in folders]
                send_json(h, entries)
            return
        if "/resolve/" in path:
            repo, _, rest = path.lstrip("/").partition("/resolve/")
            revision, _, filename = rest.partition("/")
            files = self.repos.get(repo)
            if files is None or not self._authorized(h):
                send_json(h, {"error": "Repository not found"}, status=404 if files is None else 401,
                          headers={"X-Error-Code": "RepoNotFound"})
                return
            data = files.get(filename)
            if data is None:
                send_json(h, {"error": "Entry not found"}, status=404,
                          headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": self.COMMIT})
                return
            common = {"X-Repo-Commit": self.COMMIT}
            if len(data) >= LFS_MIN:
                sha = hashlib.sha256(data).hexdigest()
                h.send_response(302)
                for k, v in {**common, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                             "ETag": f'"{git_blob_id(data)}"', "Location": f"{self.cdn.url}/cdn/{sha}",
                             "Content-Length": "0"}.items():
                    h.send_header(k, v)
                h.end_headers()
                return
            if filename in self.corrupt:
                data = bytes(b ^ 0xFF for b in data)
            send_body(h, data, headers={**common, "ETag": f'"{git_blob_id(data)}"'},
                      drop_after=self.drop_after.pop(filename, None))
            return
        send_json(h, {"error": "not found"}, status=404)


@contextlib.contextmanager
def serve_hf() -> Iterator[HfHub]:
    hub = HfHub()
    hub.server.start()
    hub.cdn.start()
    try:
        yield hub
    finally:
        hub.server.stop()
        hub.cdn.stop()
