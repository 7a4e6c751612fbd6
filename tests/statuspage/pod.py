"""A pod on this machine for the status page's tests: ``syncbridge start`` with a stand-in app, plain HTTP
requests to its page (raw paths, so encoded traversal reaches the server as sent), PNG files, and a real
headless Chromium (Debian's, driven by Playwright) whose requests to anything but the pod are aborted."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

from ..conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium reaches for Google's services, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

# The stand-in app: writes COUNT images into OUT, one every INTERVAL seconds, then waits for STOP.
APP = r"""
import os, struct, sys, time, zlib
out, count, interval, stop = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
def png(w, h, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
os.makedirs(out, exist_ok=True)
for i in range(count):
    with open(os.path.join(out, "ComfyUI_%05d_.png" % (i + 1)), "wb") as fh:
        fh.write(png(96, 64, ((40 * i) % 256, 120, 200 - (20 * i) % 200)))
    time.sleep(interval)
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    time.sleep(0.05)
"""


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts_dir() -> Path:
    """Where screenshots go: $SYNCBRIDGE_TEST_ARTIFACTS, else tests/.artifacts (ignored by git)."""
    path = Path(os.environ.get("SYNCBRIDGE_TEST_ARTIFACTS") or ROOT / "tests" / ".artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def get(port: int, path: str, headers: dict[str, str] | None = None, *, method: str = "GET",
        host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    """One request with ``path`` sent exactly as given: (status, headers, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, {k: v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def start_pod(env: dict[str, str], app: list[str], log: Path) -> subprocess.Popen:
    full = dict(env)
    full.setdefault("PATH", os.environ.get("PATH", ""))
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "syncbridge", "start", "--", *app], env=full, stdout=fh,
                                stderr=subprocess.STDOUT)


def wait_page(port: int, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
    def up() -> bool:
        try:
            return get(port, "/status.json", headers)[0] == 200
        except OSError:
            return False

    wait_for(up, timeout, f"the status page on port {port}", interval=0.1)


def stop_pod(proc: subprocess.Popen, stop_file: Path, timeout: float = 30) -> int:
    stop_file.write_text("stop")
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A Playwright browser on the system's Chromium (never a downloaded one)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
