"""The benchmarks' WAN proxy (benchmarks/wanproxy.py): its delay, bandwidth cap, idle close and counters.

A loopback HTTP/1.1 server with keep-alive stands behind it; the client is http.client.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.wanproxy import WanProxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(b"x" * int(self.path.rsplit("/", 1)[-1] or 0))

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(b"")

    def do_PUT(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(str(len(body)).encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def upstream():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _timed(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[float, bytes]:
    t0 = time.monotonic()
    conn.request(method, path, body=body)
    data = conn.getresponse().read()
    return time.monotonic() - t0, data


def test_each_round_trip_costs_two_one_way_delays_and_a_new_connection_one_more(upstream):
    with WanProxy(upstream, one_way=0.05) as wan:
        conn = http.client.HTTPConnection("127.0.0.1", wan.port, timeout=10)
        first, _ = _timed(conn, "GET", "/0")  # the emulated TCP handshake, then the request
        second, _ = _timed(conn, "GET", "/0")
        third, data = _timed(conn, "PUT", "/k", b"y" * 5000)
        conn.close()
    assert data == b"5000"
    assert 0.2 <= first < 0.45, first
    assert 0.1 <= second < 0.3, second
    assert 0.1 <= third < 0.3, third
    # without the proxy a request costs next to nothing: the delay is the proxy's
    direct = http.client.HTTPConnection(*upstream.rsplit("/", 1)[-1].split(":"), timeout=10)
    alone, _ = _timed(direct, "GET", "/0")
    direct.close()
    assert alone < 0.05


def test_counts_requests_by_method_and_connections(upstream):
    with WanProxy(upstream, one_way=0.0) as wan:
        conn = http.client.HTTPConnection("127.0.0.1", wan.port, timeout=10)
        # bodies that look like request lines are bodies, not requests
        _timed(conn, "PUT", "/a", b"\r\nGET /x HTTP/1.1\r\n\r\n" * 3000)
        _timed(conn, "HEAD", "/a")
        _timed(conn, "GET", "/70000")
        conn.close()
        other = http.client.HTTPConnection("127.0.0.1", wan.port, timeout=10)
        _timed(other, "PUT", "/b", b"z")
        other.close()
        time.sleep(0.1)
        counts = wan.counts()
    assert counts == {"connections": 2, "requests": 4, "PUT": 2, "HEAD": 1, "GET": 1}, counts


def test_bandwidth_cap_paces_a_body(upstream):
    with WanProxy(upstream, one_way=0.0, bandwidth=2_000_000, handshake=False) as wan:
        conn = http.client.HTTPConnection("127.0.0.1", wan.port, timeout=10)
        took, data = _timed(conn, "GET", "/1000000")
        conn.close()
    assert len(data) == 1_000_000
    assert 0.45 <= took < 2.0, took


def test_idle_connections_are_closed_and_recorded(upstream):
    with WanProxy(upstream, one_way=0.0, idle_close=0.3) as wan:
        sock = socket.create_connection(("127.0.0.1", wan.port), timeout=5)
        sock.sendall(b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while not answer.endswith(b"xxx"):
            answer += sock.recv(4096)
        t0 = time.monotonic()
        assert sock.recv(4096) == b""  # the proxy hung up on the idle connection
        waited = time.monotonic() - t0
        sock.close()
        busy = socket.create_connection(("127.0.0.1", wan.port), timeout=5)
        for _ in range(4):  # a connection kept busy stays open past the idle time
            time.sleep(0.15)
            busy.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert busy.recv(4096).startswith(b"HTTP/1.1 200")
        assert wan.open_now() == 1
        busy.close()
        time.sleep(0.1)
        records = list(wan.connections)
    assert 0.2 <= waited < 1.0, waited
    assert [r.closed_by for r in records] == ["idle", "client"]
    assert wan.counts()["requests"] == 5
