"""Faults a real S3 server cannot be made to produce (503 SlowDown, 500, a hung PUT), injected by a
loopback proxy in front of ``rclone serve s3``; everything else is real."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest

from syncbridge.config import load_config
from syncbridge.journal import read_summary
from syncbridge.store import open_store
from syncbridge.watch import OutputWatcher, journal_path, read_status

from .conftest import new_bucket, server_env

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message></Error>")
INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
            b"<Message>We encountered an internal error.</Message></Error>")


class FaultProxy:
    """Forwards to an S3 endpoint; PUTs can be failed (a list of statuses to answer first) or hung."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_puts: list[int] = []
        self.hang_puts = threading.Event()
        self.release = threading.Event()
        self.puts = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command == "PUT":
                    with proxy.lock:
                        proxy.puts += 1
                        status = proxy.fail_puts.pop(0) if proxy.fail_puts else None
                    if proxy.hang_puts.is_set():
                        proxy.release.wait(60)
                        return
                    if status is not None:
                        payload = SLOWDOWN if status in (429, 503) else INTERNAL
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    conn.putheader(name, value)  # Host kept as the client signed it
                conn.endheaders(body)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxied(rclone_s3, tmp_path: Path) -> Iterator[tuple[FaultProxy, dict[str, str]]]:
    bucket = new_bucket(rclone_s3)
    with FaultProxy(rclone_s3.endpoint) as proxy:
        env = server_env(rclone_s3, bucket, tmp_path)
        env["R2_ENDPOINT"] = proxy.endpoint
        yield proxy, env


def _objects(env: dict[str, str]) -> dict[str, bytes]:
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        return {o.key: store.get_bytes(o.key)[0] for o in store.list("outputs/")}
    finally:
        store.close()


def test_slowdown_and_5xx_are_retried_until_everything_lands(proxied) -> None:
    proxy, env = proxied
    config = load_config(env)
    out = config.watch.dir
    proxy.fail_puts = [503, 429, 500, 503, 503, 500]
    with OutputWatcher(config) as watcher:
        for i in range(10):
            (out / f"f{i}.png").parent.mkdir(parents=True, exist_ok=True)
            (out / f"f{i}.png").write_bytes(b"%d" % i * 100)
        assert watcher.wait_idle(60), watcher.stats()
        stats = watcher.stats()
    assert stats.retries >= 4 and stats.failed == 0 and stats.uploaded == 10  # (the heartbeat may take some)
    assert "SlowDown" in (stats.last_error or "") or "InternalError" in (stats.last_error or "")
    got = _objects(env)
    assert got == {f"outputs/f{i}.png": b"%d" % i * 100 for i in range(10)}


def test_sigterm_with_hung_uploads_exits_within_the_drain_deadline(proxied) -> None:
    """A spot pod's 5 s: PUTs that never answer must not hold the process past the deadline."""
    proxy, env = proxied
    env = dict(env, SYNCBRIDGE_DRAIN_SECONDS="1.5")
    state = Path(env["SYNCBRIDGE_STATE_DIR"])
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    proxy.hang_puts.set()
    proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "watch"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (read_status(state) or {}).get("catch_up_done"):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for i in range(20):
            (out / f"h{i}.png").write_bytes(b"%d" % i)
        deadline = time.monotonic() + 30
        while proxy.puts < 2 or (read_status(state) or {}).get("pending") != 20:  # accepted, stuck in flight
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 1.5 + 2.5, f"exit took {elapsed:.1f}s after SIGTERM"
    assert proc.returncode == 1 and "NOT everything pushed" in stderr and "20 pending" in stderr
    summary = read_summary(journal_path(state))
    assert summary is not None and summary.pending == 20
