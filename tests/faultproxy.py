"""A loopback HTTP proxy that injects the faults a real S3 server cannot be made to produce.

It sits between syncbridge (boto3 or rclone) and a loopback S3 server on
127.0.0.1 and relays HTTP/1.1 requests as they stream (``Expect: 100-continue``,
``Content-Length`` and chunked bodies, keep-alive on the client side, one fresh
upstream connection per request). Rules decide, per request, whether to:

* ``refuse``    close the client connection at once (no response);
* ``reset``     forward part of the request body (``phase="request"``) or of the
  response body (``phase="response"``), then reset both connections (RST);
* ``stall``     wait ``seconds`` before forwarding (``phase="request"``) or after
  part of the response body (``phase="response"``), then carry on;
* ``error``     answer ``status`` (500/503/429...) with a proper S3 XML error body
  (``code``: ``SlowDown``, ``ServiceUnavailable``, ``InternalError``, ``AccessDenied``...);
* ``truncate``  answer a GET with ``200`` and only part of the body, then close
  (``lie=True``: rewrite ``Content-Length`` to the short length, so only a checksum
  can tell).

Schedules: :meth:`FaultProxy.outage` stops listening (connections are refused) and
drops every open connection, for a while or until :meth:`FaultProxy.restore`.

It runs its own asyncio loop in a daemon thread; every control method is safe
to call from the test's thread::

    with FaultProxy(server.endpoint) as proxy:
        proxy.add(Rule("error", method="PUT", status=503, code="SlowDown", probability=0.2))
        env["R2_ENDPOINT"] = proxy.endpoint
        ...
        assert proxy.count("error") > 0

``python -m tests.faultproxy --upstream URL [--port N] [--rule JSON]...`` runs it
standalone (handy for the benchmarks and for poking at it by hand).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import socket
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urlsplit

from benchmarks.wanproxy import loop_thread

__all__ = ["Rule", "FaultProxy", "Seen", "s3_error_body", "ACTIONS"]

ACTIONS = ("refuse", "reset", "stall", "error", "truncate")
_ERROR_MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "InternalError": "We encountered an internal error. Please try again.",
    "AccessDenied": "Access Denied",
    "NoSuchKey": "The specified key does not exist.",
}
_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
_HEAD_LIMIT = 256 * 1024
_CHUNK = 256 * 1024


@dataclass
class Rule:
    """One fault, applied to requests that match every given condition.

    Args:
        action: one of :data:`ACTIONS`.
        method: HTTP method to match (``"PUT"``), or any.
        path: regular expression searched in the URL-decoded path (``/bucket/key``).
        query: substring the raw query must contain (``"uploadId"``, ``"partNumber="``).
        min_body: only requests whose ``Content-Length`` is at least this.
        times: fire at most this many times (``None``: no limit).
        skip: let the first ``skip`` matching requests through untouched.
        probability: fire with this probability (the proxy's RNG is seeded).
        phase: ``"request"`` or ``"response"`` (for ``reset`` and ``stall``).
        fraction: how much of the body passes before a reset, stall or truncation.
        after_bytes: the same as an absolute byte count (wins over ``fraction``).
        seconds: how long a stall lasts.
        status: the status of an ``error`` answer.
        code: the S3 error code in an ``error`` answer's XML body.
        lie: ``truncate`` rewrites ``Content-Length`` to match the short body.
    """

    action: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    min_body: int = 0
    times: int | None = None
    skip: int = 0
    probability: float = 1.0
    phase: str = "request"
    fraction: float = 0.5
    after_bytes: int | None = None
    seconds: float = 5.0
    status: int = 503
    code: str = "SlowDown"
    lie: bool = False
    fired: int = field(default=0, init=False)
    seen: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {ACTIONS}")
        if self.phase not in ("request", "response"):
            raise ValueError(f"phase must be request or response, got {self.phase!r}")
        self._path_re = re.compile(self.path) if self.path else None

    def matches(self, method: str, path: str, query: str, length: int | None) -> bool:
        if self.method and method != self.method.upper():
            return False
        if self._path_re and not self._path_re.search(path):
            return False
        if self.query and self.query not in query:
            return False
        if self.min_body and (length or 0) < self.min_body:
            return False
        return True

    def cut(self, total: int | None) -> int:
        """Bytes to pass before the fault, for a body of ``total`` bytes (unknown: 64 KiB)."""
        if self.after_bytes is not None:
            return self.after_bytes
        if total is None:
            return 64 * 1024
        return int(total * self.fraction)


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it."""

    at: float
    method: str
    path: str
    query: str
    action: str | None
    status: int | None
    length: int | None = None  # the request's Content-Length (the size of a PUT's body)
    headers: dict | None = None  # the request's headers as sent (lower-case names), for relayed requests


def s3_error_body(code: str, resource: str, request_id: str) -> bytes:
    message = _ERROR_MESSAGES.get(code, code)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>").encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Reset(Exception):
    """Drop both connections with RST."""


class _Close(Exception):
    """End the client connection with a normal close (FIN) where a body should have continued."""


class _Head:
    """A parsed request or response head."""

    def __init__(self, raw: bytes) -> None:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def set(self, name: str, value: str | None) -> None:
        low = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != low]
        if value is not None:
            self.headers.append((name, value))

    @property
    def length(self) -> int | None:
        value = self.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.get("Transfer-Encoding") or "").lower()

    def encode(self) -> bytes:
        return ("\r\n".join([self.start, *(f"{k}: {v}" for k, v in self.headers)]) + "\r\n\r\n").encode("latin-1")


def _rst(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer or middlebox would."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """The proxy. Use as a context manager; it listens on 127.0.0.1 (a free port unless given).

    Args:
        upstream: the S3 server's endpoint, ``http://127.0.0.1:PORT``.
        port: port to listen on (0: any free port).
        seed: seed of the RNG behind :attr:`Rule.probability`.
        tls: a server-side SSL context: clients then speak https to the proxy (a TLS endpoint in
            front of the plain loopback server, with a certificate of the test's own CA).
    """

    def __init__(self, upstream: str, *, port: int = 0, seed: int = 1234, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy only talks to loopback servers, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.port = port
        self.tls = tls
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._seen: list[Seen] = []
        self._counts: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._restore_handle: asyncio.TimerHandle | None = None
        self._ids = 0
        self.accept_mode = "relay"  # or "close": accept, then close at once

    # -- life cycle ----------------------------------------------------------------
    def __enter__(self) -> "FaultProxy":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._loop, self._thread = loop_thread(self._listen, "faultproxy")

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        await self._unlisten()
        for writer in list(self._writers):
            _rst(writer)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True,
                                                  backlog=512, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _call(self, coro, timeout: float = 10.0):
        assert self._loop is not None, "proxy not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- control (from any thread) -------------------------------------------------
    def add(self, *rules: Rule) -> "FaultProxy":
        with self._lock:
            self._rules.extend(rules)
        return self

    def clear(self) -> None:
        """Remove every rule (open connections carry on normally)."""
        with self._lock:
            self._rules.clear()

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def outage(self, seconds: float | None = None, *, delay: float = 0.0) -> None:
        """The server goes away: stop listening and drop every open connection.

        Connections are refused until ``seconds`` have passed (``None``: until
        :meth:`restore`). With ``delay`` the outage starts that much later.
        """

        async def begin() -> None:
            await self._unlisten()
            for writer in list(self._writers):
                _rst(writer)
            self._count("outage")
            if seconds is not None:
                self._restore_handle = asyncio.get_running_loop().call_later(
                    seconds, lambda: asyncio.ensure_future(self._relisten()))

        if delay:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(
                lambda: self._loop.call_later(delay, lambda: asyncio.ensure_future(begin())))
        else:
            self._call(begin())

    def restore(self) -> None:
        """End an outage now."""
        self._call(self._relisten())

    async def _relisten(self) -> None:
        if self._restore_handle is not None:
            self._restore_handle.cancel()
            self._restore_handle = None
        if self._server is None:
            await self._listen()

    @property
    def listening(self) -> bool:
        return self._server is not None

    def seen(self, *, method: str | None = None, action: str | None = None) -> list[Seen]:
        with self._lock:
            rows = list(self._seen)
        return [s for s in rows if (method is None or s.method == method) and (action is None or s.action == action)]

    def count(self, action: str) -> int:
        """How many times ``action`` fired (also ``"outage"``, ``"request"`` for every request relayed)."""
        with self._lock:
            return self._counts.get(action, 0)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return predicate()

    # -- internals -----------------------------------------------------------------
    def _count(self, action: str) -> None:
        with self._lock:
            self._counts[action] = self._counts.get(action, 0) + 1

    def _choose(self, method: str, path: str, query: str, length: int | None) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.matches(method, path, query, length):
                    continue
                rule.seen += 1
                if rule.seen <= rule.skip:
                    continue
                if rule.times is not None and rule.fired >= rule.times:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.fired += 1
                self._counts[rule.action] = self._counts.get(rule.action, 0) + 1
                return rule
        return None

    def _record(self, method: str, path: str, query: str, action: str | None, status: int | None,
                length: int | None = None, headers: dict | None = None) -> None:
        with self._lock:
            self._seen.append(Seen(time.monotonic(), method, path, query, action, status, length, headers))
            if len(self._seen) > 200_000:
                del self._seen[:100_000]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.accept_mode == "close":
                self._count("refuse")
                _rst(writer)
                return
            while True:
                try:
                    raw = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                keep = await self._one(_Head(raw), reader, writer)
                if not keep:
                    return
        except _Close:
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            writer.close()
        except _Reset:
            _rst(writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            _rst(writer)
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _one(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Relay one request; return whether the client connection stays open."""
        method, target = (head.start.split(" ") + ["", ""])[:2]
        parts = urlsplit(target)
        path, query = unquote(parts.path), parts.query
        length = head.length
        rule = self._choose(method, path, query, length)
        self._count("request")
        client_close = (head.get("Connection") or "").lower() == "close"
        expect = (head.get("Expect") or "").lower() == "100-continue"
        sent = {k.lower(): v for k, v in head.headers}

        if rule is not None and rule.action == "refuse":
            self._record(method, path, query, "refuse", None)
            raise _Reset
        if rule is not None and rule.action == "error":
            return await self._answer_error(rule, head, method, path, query, reader, writer, expect=expect,
                                            client_close=client_close)
        if rule is not None and rule.action == "stall" and rule.phase == "request":
            await asyncio.sleep(rule.seconds)

        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=_HEAD_LIMIT)
        except OSError:
            # The upstream server itself is down: what a client sees from a dead endpoint.
            self._record(method, path, query, "upstream-down", None)
            raise _Reset from None
        self._writers.add(up_writer)
        try:
            head.set("Connection", "close")
            up_writer.write(head.encode())
            body_rule = rule if rule is not None and rule.action == "reset" and rule.phase == "request" else None
            sender = asyncio.ensure_future(self._relay_request_body(head, reader, up_writer, body_rule))
            receiver = asyncio.ensure_future(self._relay_response(method, path, query, rule, up_reader, writer))
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    for other in (sender, receiver):
                        other.cancel()
                    raise task.exception()
            if not receiver.done():
                status, keep = await receiver
            else:
                status, keep = receiver.result()
            if not sender.done():
                # The server answered before reading the whole body: this connection cannot be reused.
                sender.cancel()
                keep = False
        except _Close:
            self._record(method, path, query, rule.action if rule else None, 200)
            raise
        except (_Reset, ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            _rst(up_writer)
            if rule is not None:
                self._record(method, path, query, rule.action, None)
            raise _Reset from exc
        finally:
            self._writers.discard(up_writer)
            if not up_writer.is_closing():
                up_writer.close()
        self._record(method, path, query, rule.action if rule else None, status, length, sent)
        return keep and not client_close

    async def _relay_request_body(self, head: _Head, reader: asyncio.StreamReader, up: asyncio.StreamWriter,
                                  rule: Rule | None) -> None:
        limit = rule.cut(head.length) if rule else None
        sent = 0

        async def forward(data: bytes) -> None:
            nonlocal sent
            if limit is not None and sent + len(data) >= limit:
                up.write(data[: max(0, limit - sent)])
                with contextlib.suppress(ConnectionError):
                    await up.drain()
                raise _Reset
            sent += len(data)
            up.write(data)
            await up.drain()

        if head.chunked:
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                await forward(line)
                if size == 0:
                    # trailers end with an empty line
                    while True:
                        trailer = await reader.readuntil(b"\r\n")
                        await forward(trailer)
                        if trailer == b"\r\n":
                            return
                remaining = size + 2
                while remaining:
                    data = await reader.read(min(_CHUNK, remaining))
                    if not data:
                        raise ConnectionError("client closed mid-body")
                    remaining -= len(data)
                    await forward(data)
        else:
            remaining = head.length or 0
            while remaining:
                data = await reader.read(min(_CHUNK, remaining))
                if not data:
                    raise ConnectionError("client closed mid-body")
                remaining -= len(data)
                await forward(data)

    async def _relay_response(self, method: str, path: str, query: str, rule: Rule | None,
                              up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bool]:
        while True:
            raw = await up.readuntil(b"\r\n\r\n")
            head = _Head(raw)
            status = int(head.start.split(" ")[1])
            if 100 <= status < 200:
                writer.write(raw)  # 100 Continue: the client may now send the body
                await writer.drain()
                continue
            break
        no_body = method == "HEAD" or status in (204, 304)
        length = 0 if no_body else head.length
        keep = True
        if not no_body and length is None and not head.chunked:
            keep = False  # body runs to EOF: the client must see the close too
        head.set("Connection", None if keep else "close")

        cut: int | None = None
        action = rule.action if rule else None
        if rule is not None and not no_body and (action == "truncate" or
                                                 (action in ("reset", "stall") and rule.phase == "response")):
            cut = rule.cut(length)
            if action == "truncate" and rule.lie and length is not None:
                head.set("Content-Length", str(cut))
        writer.write(head.encode())
        sent = 0

        async def forward(data: bytes) -> bool:
            """Write ``data`` unless the fault point is reached; False once a lying truncation ended the body."""
            nonlocal sent, cut
            if cut is not None and sent + len(data) >= cut:
                first, rest = data[: cut - sent], data[cut - sent:]
                writer.write(first)
                await writer.drain()
                sent += len(first)
                if action == "stall":
                    cut = None
                    await asyncio.sleep(rule.seconds)
                    if rest:
                        writer.write(rest)
                        await writer.drain()
                        sent += len(rest)
                    return True
                if action == "truncate":
                    if rule.lie:
                        return False
                    raise _Close
                raise _Reset
            sent += len(data)
            writer.write(data)
            await writer.drain()
            return True

        if no_body:
            await writer.drain()
        elif head.chunked:
            # Relayed as is; a fault cuts the raw stream.
            while True:
                line = await up.readuntil(b"\r\n")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if not await forward(line):
                    return status, False
                if size == 0:
                    while True:
                        trailer = await up.readuntil(b"\r\n")
                        await forward(trailer)
                        if trailer == b"\r\n":
                            break
                    break
                remaining = size + 2
                while remaining:
                    data = await up.read(min(_CHUNK, remaining))
                    if not data:
                        raise _Reset
                    remaining -= len(data)
                    if not await forward(data):
                        return status, False
        elif length is not None:
            remaining = length
            while remaining:
                data = await up.read(min(_CHUNK, remaining))
                if not data:
                    raise _Reset
                remaining -= len(data)
                if not await forward(data):
                    return status, True  # the lie told the client the body is complete
        else:
            while True:
                data = await up.read(_CHUNK)
                if not data:
                    break
                if not await forward(data):
                    return status, False
        if cut is not None and action == "truncate" and not rule.lie:
            raise _Close  # body shorter than the cut: still end the connection early
        return status, keep

    async def _answer_error(self, rule: Rule, head: _Head, method: str, path: str, query: str,
                            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, expect: bool,
                            client_close: bool) -> bool:
        self._ids += 1
        body = b"" if method == "HEAD" else s3_error_body(rule.code, path, f"faultproxy-{self._ids}")
        # With Expect: 100-continue the client has not sent the body and will not: answer, then close.
        # Without it, read the body away first so the connection stays usable (keep-alive).
        close = expect or client_close or head.chunked
        if not expect and not head.chunked:
            remaining = head.length or 0
            while remaining:
                data = await reader.read(min(_CHUNK, remaining))
                if not data:
                    return False
                remaining -= len(data)
        reason = _REASONS.get(rule.status, "Error")
        out = _Head(f"HTTP/1.1 {rule.status} {reason}\r\n".encode())
        out.headers = [("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
                       ("x-amz-request-id", f"faultproxy-{self._ids}"),
                       ("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))]
        if rule.status in (429, 503):
            out.headers.append(("Retry-After", "1"))
        if close:
            out.headers.append(("Connection", "close"))
        # recorded before the answer leaves, so a client that got it always finds it in seen()
        self._record(method, path, query, "error", rule.status)
        writer.write(out.encode() + body)
        await writer.drain()
        if close:
            # Half-close and read what the client still sends, so it sees our answer, not a reset.
            with contextlib.suppress(OSError):
                writer.write_eof()
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError, OSError):
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    data = await asyncio.wait_for(reader.read(_CHUNK), timeout=max(0.01, deadline - time.monotonic()))
                    if not data:
                        break
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the S3 server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rule", action="append", default=[], metavar="JSON",
                        help='a rule as JSON, e.g. {"action": "error", "method": "PUT", "probability": 0.2}')
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.upstream, port=args.port)
    proxy.add(*(Rule(**json.loads(text)) for text in args.rule))
    with proxy:
        print(proxy.endpoint, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
