"""Benchmark: does the status page slow the pusher? Side by side in one run, against a loopback ``rclone serve s3``.

Contenders (each a ``syncbridge start --no-models --no-folders --watch`` process with its own output folder,
state and bucket, running at the same time, files written to them alternately):

(a) ``no page``: SYNCBRIDGE_STATUS_PORT unset;
(b) ``page polled 1/s``: the page served, and a viewer in this process doing what an open browser tab does,
    once a second: GET /status.json and /metrics, and each new output's thumbnail once;
(c) ``page polled 10/s`` (``--stress``): the same ten times a second (ten tabs).

Figures: push latency from the writer's ``close()`` to the object answering HEAD (polled every 2 ms), for
``--files`` images of ``--size`` KB written every ``--interval`` s to each contender, p50/p95; the watcher's
own p50/p95 (its status); and each contender's ratio to (a). Target: (b) within noise, p50 and p95 <= 1.1x.

    python benchmarks/bench_status.py [--files 80] [--interval 0.2] [--size 100] [--stress]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syncbridge.demo.localserver import serve_rclone_s3  # noqa: E402

ACCESS, SECRET = "benchAKIDstatus01", "benchSECRETstatusValue-0123456789"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Contender:
    def __init__(self, name: str, server, work: Path, *, page_every: float | None) -> None:
        self.name = name
        self.bucket = "bench-" + name.replace(" ", "-").replace("/", "").lower()
        server.create_bucket(self.bucket)
        self.root = work / self.bucket
        self.out = self.root / "out"
        self.out.mkdir(parents=True)
        self.page_every = page_every
        self.port = free_port() if page_every is not None else None
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root / "home"),
                    "SYNCBRIDGE_STATE_DIR": str(self.root / "state"), "SYNCBRIDGE_WORKSPACE": str(self.root),
                    "COMFYUI_OUTPUT_DIR": str(self.out), "SYNCBRIDGE_POD_ID": self.bucket,
                    "SYNCBRIDGE_HEARTBEAT_SECONDS": "0", **server.environ(self.bucket)}
        if self.port is not None:
            self.env.update({"SYNCBRIDGE_STATUS_PORT": str(self.port), "SYNCBRIDGE_STATUS_BIND": "127.0.0.1"})
        self.proc: subprocess.Popen | None = None
        self.latencies: list[float] = []
        self.lost = 0
        self.requests = 0
        self.request_errors = 0
        self.own: tuple[float | None, float | None] = (None, None)
        self._stop = threading.Event()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "start", "--no-models", "--no-folders",
                                      "--watch"], env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "start.log", "wb"))
        deadline = time.monotonic() + 30
        status = self.root / "state" / "watch" / "status.json"
        while not status.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"{self.name}: the watcher did not start; see {self.root / 'start.log'}")
            time.sleep(0.05)
        if self.port is not None:
            threading.Thread(target=self._viewer, daemon=True).start()

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
            return resp.read()

    def _viewer(self) -> None:
        """What an open tab does: status.json every period (the page polls it), /metrics, each new thumbnail."""
        shown: set[str] = set()
        self._get("/")
        while not self._stop.wait(self.page_every):
            try:
                doc = json.loads(self._get("/status.json"))
                self._get("/metrics")
                self.requests += 2
                for output in doc.get("recent") or []:
                    if output["path"] not in shown:
                        shown.add(output["path"])
                        self._get("/thumb?path=" + urllib.request.quote(output["path"]))
                        self.requests += 1
            except OSError:
                self.request_errors += 1

    def own_figures(self) -> tuple[float | None, float | None]:
        try:
            doc = json.loads((self.root / "state" / "watch" / "status.json").read_text())
        except (OSError, ValueError):
            return None, None
        return doc.get("p50_latency"), doc.get("p95_latency")

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def s3_client(server):
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=BotoConfig(request_checksum_calculation="when_required", max_pool_connections=64,
                                          response_checksum_validation="when_required", retries={"max_attempts": 1},
                                          s3={"addressing_style": "path"}))


def measure(contenders: list[Contender], client, *, files: int, interval: float, size: int) -> None:
    lock = threading.Lock()
    threads = []

    def poll(c: Contender, key: str, closed: float) -> None:
        deadline = closed + 30
        while time.monotonic() < deadline:
            try:
                client.head_object(Bucket=c.bucket, Key=key)
                with lock:
                    c.latencies.append(time.monotonic() - closed)
                return
            except Exception:  # noqa: BLE001 - not there yet
                time.sleep(0.002)
        with lock:
            c.lost += 1

    payload = b"\x89PNG\r\n\x1a\n" + os.urandom(size * 1024)
    for i in range(files):
        for c in (contenders if i % 2 == 0 else list(reversed(contenders))):  # alternate who goes first
            name = f"ComfyUI_{i:05d}_.png"
            with open(c.out / name, "wb") as fh:
                fh.write(payload)
            closed = time.monotonic()
            t = threading.Thread(target=poll, args=(c, f"outputs/{name}", closed), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(interval)
    for t in threads:
        t.join()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[min(len(data), max(1, int(round(q * len(data))))) - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=80, help="images written to each contender (default 80)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between writes (default 0.2)")
    parser.add_argument("--size", type=int, default=100, help="KB per image (default 100)")
    parser.add_argument("--stress", action="store_true", help="also a contender whose page is polled 10 times a second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        work = Path(tmp)
        with serve_rclone_s3(work / "s3", access_key=ACCESS, secret_key=SECRET, log_file=work / "s3.log") as server:
            contenders = [Contender("no page", server, work, page_every=None),
                          Contender("page polled 1/s", server, work, page_every=1.0)]
            if args.stress:
                contenders.append(Contender("page polled 10/s", server, work, page_every=0.1))
            try:
                for c in contenders:
                    c.start()
                time.sleep(1.0)
                client = s3_client(server)
                started = time.monotonic()
                measure(contenders, client, files=args.files, interval=args.interval, size=args.size)
                took = time.monotonic() - started
                time.sleep(1.5)  # the watchers' status files catch up (written about once a second)
                for c in contenders:
                    c.own = c.own_figures()
            finally:
                for c in contenders:
                    c.stop()
    base = contenders[0]
    b50, b95 = pct(base.latencies, 0.5), pct(base.latencies, 0.95)
    print(f"bench_status: {args.files} x {args.size} KB images per contender, one every {args.interval}s, "
          f"{took:.0f}s; rclone serve s3 on loopback; push latency = close() to HEAD 200")
    print(f"{'contender':<18} {'p50':>10} {'p95':>10} {'p50 x':>7} {'p95 x':>7} {'own p50':>10} {'own p95':>10} "
          f"{'lost':>5} {'page requests':>14}")
    for c in contenders:
        p50, p95 = pct(c.latencies, 0.5), pct(c.latencies, 0.95)
        own50, own95 = c.own
        r50 = f"{p50 / b50:.2f}" if p50 and b50 else "-"
        r95 = f"{p95 / b95:.2f}" if p95 and b95 else "-"
        reqs = "-" if c.port is None else f"{c.requests} ({c.request_errors} err)"
        print(f"{c.name:<18} {ms(p50):>10} {ms(p95):>10} {r50:>7} {r95:>7} {ms(own50):>10} {ms(own95):>10} "
              f"{c.lost:>5} {reqs:>14}")
    page = contenders[1]
    ok = (page.lost == 0 and base.lost == 0 and pct(page.latencies, 0.5) <= 1.1 * b50
          and pct(page.latencies, 0.95) <= 1.1 * b95)
    print(f"target (page polled 1/s within 1.1x of no page, p50 and p95; nothing lost): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
