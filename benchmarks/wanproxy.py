"""A loopback TCP proxy that makes a link look like a wide-area one: delay, bandwidth, an edge's idle close.

Every benchmark so far ran on loopback, where a round trip costs nothing: a protocol that needs
three trips looks as fast as one that needs one. :class:`WanProxy` sits in front of a loopback
server and relays bytes (it never parses or changes them, so TLS passes through untouched) with:

* ``one_way`` seconds added to every chunk, in each direction, in order (a round trip costs
  ``2 * one_way``). A new connection first waits one round trip before its first bytes go on,
  as a TCP handshake does over a real link (the client's ``connect()`` on loopback returns at
  once, so without it a handshake would look free);
* ``bandwidth`` bytes per second, per direction and connection (None: no cap);
* ``idle_close`` seconds: a connection with no byte either way for that long is closed on both
  sides, as an edge (Cloudflare's, a load balancer) closes idle keep-alive connections.

It counts connections opened, and HTTP/1.x request lines seen going upstream (on plain HTTP;
over TLS it sees ciphertext only, so count requests behind the TLS end instead), so benchmarks
print requests and connections per operation beside times. Stdlib only; its own asyncio loop in
a daemon thread; every method is safe from any thread::

    with WanProxy(server.endpoint, one_way=0.025, idle_close=60) as wan:
        env["R2_ENDPOINT"] = wan.endpoint
        ...
        print(wan.counts())   # {"connections": 3, "requests": 41, "PUT": 40, "HEAD": 1, ...}

``python benchmarks/wanproxy.py --upstream http://127.0.0.1:PORT --rtt-ms 50`` runs it standalone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import threading
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

__all__ = ["WanProxy", "ConnectionRecord"]

_CHUNK = 64 * 1024
_METHODS = (b"GET", b"PUT", b"HEAD", b"POST", b"DELETE", b"OPTIONS", b"PATCH")


class _RequestCounter:
    """Counts HTTP/1.x requests in a client's byte stream: heads up to their blank line, bodies skipped
    by ``Content-Length``. A stream it cannot follow (chunked bodies, TLS) stops being counted."""

    def __init__(self, proxy: "WanProxy", record: "ConnectionRecord") -> None:
        self.proxy, self.record = proxy, record
        self.head = b""
        self.body_left = 0
        self.lost = False

    def feed(self, data: bytes) -> None:
        while data and not self.lost:
            if self.body_left:
                skip = min(self.body_left, len(data))
                self.body_left -= skip
                data = data[skip:]
                continue
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 256 * 1024 or not self.head[:8].split(b" ")[0] in _METHODS + (b"",):
                    self.lost = len(self.head) > 8
                return
            head, data, self.head = self.head[:end], self.head[end + 4:], b""
            method = head.split(b" ", 1)[0]
            if method not in _METHODS:
                self.lost = True
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip() or 0)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.lost = True
            self.body_left = length
            self.record.requests += 1
            self.proxy._count("requests")
            self.proxy._count(method.decode())


class ConnectionRecord:
    """One client connection: when it opened (monotonic), when it closed, who closed it."""

    __slots__ = ("opened", "closed", "closed_by", "requests")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.closed: float | None = None
        self.closed_by: str | None = None  # "client", "server", "idle"
        self.requests = 0

    def __repr__(self) -> str:
        return f"ConnectionRecord(opened={self.opened:.3f}, closed={self.closed}, by={self.closed_by})"


def loop_thread(setup: Callable[[], Awaitable[None]], name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """An event loop in a daemon thread, ``setup()`` run on it before this returns (its exception raised here).
    The loop runs until stopped (``loop.call_soon_threadsafe(loop.stop)``); then the tasks left are cancelled
    and the loop is closed. Shared with tests/faultproxy.py."""
    ready = threading.Event()
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(setup())
        except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
            failure.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        loop.run_forever()
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise TimeoutError(f"{name}: its event loop did not start within 10 s")
    if failure:
        raise failure[0]
    return loop, thread


class WanProxy:
    """The proxy; a context manager listening on 127.0.0.1 (a free port unless given).

    Args:
        upstream: the server, ``http(s)://127.0.0.1:PORT`` (only the host and port count).
        one_way: seconds added to each direction.
        bandwidth: bytes per second per direction and connection (None: unlimited).
        idle_close: close a connection idle (no bytes either way) this many seconds (None: never).
        handshake: make a new connection wait one round trip before its first bytes go on.
    """

    def __init__(self, upstream: str, *, one_way: float = 0.0, bandwidth: float | None = None,
                 idle_close: float | None = None, handshake: bool = True, port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the WAN proxy only talks to loopback servers, got {upstream!r}")
        self.scheme = parts.scheme or "http"
        self.upstream = (parts.hostname, parts.port or (443 if self.scheme == "https" else 80))
        self.one_way = one_way
        self.bandwidth = bandwidth
        self.idle_close = idle_close
        self.handshake = handshake
        self.port = port
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self.connections: list[ConnectionRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- life cycle --------------------------------------------------------------------------
    def __enter__(self) -> "WanProxy":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._loop, self._thread = loop_thread(self._listen, "wanproxy")

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port, reuse_address=True,
                                                  backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        loop = self._loop

        def close() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        loop.call_soon_threadsafe(close)
        self._thread.join(10)
        self._loop = self._thread = None

    # -- counters ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """``connections``, ``requests`` (request lines seen upstream) and one count per HTTP method."""
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        """Zero the counters and forget the connection records (open connections stay open)."""
        with self._lock:
            self._counts.clear()
            self.connections = [c for c in self.connections if c.closed is None]

    def opened_since(self, when: float) -> int:
        """Connections opened at or after ``when`` (``time.monotonic()``)."""
        with self._lock:
            return sum(1 for c in self.connections if c.opened >= when)

    def open_now(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.closed is None)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # -- relay ---------------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        record = ConnectionRecord(time.monotonic())
        with self._lock:
            self._counts["connections"] += 1
            self.connections.append(record)
        up_writer: asyncio.StreamWriter | None = None
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                record.closed_by = "server"
                return
            state = {"last": time.monotonic()}
            # Bytes the client sent before its handshake would have finished go on one round trip late.
            start_floor = record.opened + (3 * self.one_way if self.handshake else 0.0)
            pumps = [asyncio.ensure_future(self._pump(reader, up_writer, state, record, upstream=True,
                                                      floor=start_floor)),
                     asyncio.ensure_future(self._pump(up_reader, writer, state, record, upstream=False, floor=0.0))]
            watchdog = asyncio.ensure_future(self._idle_watch(state)) if self.idle_close else None
            waiting = set(pumps) | ({watchdog} if watchdog else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if watchdog is not None and watchdog in done:
                record.closed_by = "idle"
            # One side finished (its pump forwarded the EOF): let the other finish its queued bytes.
            rest = [p for p in pumps if not p.done()]
            if watchdog is not None and watchdog in done:
                for p in rest:
                    p.cancel()
            elif rest:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.gather(*rest, return_exceptions=True),
                                           timeout=4 * self.one_way + 1.0)
            if record.closed_by is None:
                first = next(iter(done))
                record.closed_by = "client" if first is pumps[0] else "server"
            if watchdog is not None and not watchdog.done():
                watchdog.cancel()
            for p in pumps:
                if not p.done():
                    p.cancel()
        except asyncio.CancelledError:
            pass
        finally:
            record.closed = time.monotonic()
            for w in (writer, up_writer):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()
            self._tasks.discard(task)

    async def _idle_watch(self, state: dict) -> None:
        assert self.idle_close is not None
        while True:
            left = state["last"] + self.idle_close - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(left)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, state: dict,
                    record: ConnectionRecord, *, upstream: bool, floor: float) -> None:
        """Copy ``reader`` to ``writer``, each chunk delivered ``one_way`` after it arrived, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._deliver(queue, writer, state))
        requests = _RequestCounter(self, record)
        wire_free = 0.0  # when the (capped) link has finished sending what came before
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""  # a reset: passed on as a close
                now = time.monotonic()
                state["last"] = now
                if upstream and data:
                    requests.feed(data)
                if data and self.bandwidth:
                    wire_free = max(now, wire_free) + len(data) / self.bandwidth
                    due = wire_free + self.one_way
                else:
                    due = now + self.one_way
                await queue.put((max(due, floor), data))
                if not data:
                    break
            await sender
        finally:
            if not sender.done():
                sender.cancel()

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, state: dict) -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                return  # the other end is gone
            state["last"] = time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rtt-ms", type=float, default=50.0, help="round trip added (half each way)")
    parser.add_argument("--bandwidth-mbit", type=float, default=None, help="cap per direction and connection")
    parser.add_argument("--idle-close", type=float, default=None, help="close connections idle this many seconds")
    args = parser.parse_args(argv)
    bandwidth = args.bandwidth_mbit * 1e6 / 8 if args.bandwidth_mbit else None
    with WanProxy(args.upstream, one_way=args.rtt_ms / 2000, bandwidth=bandwidth, idle_close=args.idle_close,
                  port=args.port) as wan:
        print(f"listening on {wan.endpoint} -> {args.upstream} (rtt {args.rtt_ms:g} ms)", flush=True)
        try:
            while True:
                time.sleep(10)
                print(wan.counts(), flush=True)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
