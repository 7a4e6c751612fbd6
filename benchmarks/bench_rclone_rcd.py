"""rclone: one process per operation vs one long-lived ``rclone rcd``, side by side.

Both modes do the same work against ``rclone serve s3`` on 127.0.0.1:

* ``--small`` single-file copies (``copyto`` of a 4 KB file: what an output watcher
  would do per finished image), then
* ``--bulk`` folder copies (``copy`` of a folder of ``--files`` files: what push/pull
  do), each to a fresh prefix so every run really transfers, then
* one copy of a folder holding a single ``--big-mb`` MB file (bytes dominate).

Mode A runs each operation as its own rclone process through ``syncbridge.rclone.Rclone``
(exactly what ``syncbridge push`` does: env-configured remote, JSON log parsing, stats).
Mode B starts one ``rclone rcd`` on a unix socket in a 0700 folder, with basic auth given
through its environment (``RCLONE_RC_USER`` / ``RCLONE_RC_PASS``, never argv), the remote
defined by the same ``RCLONE_CONFIG_SYNCBRIDGE_*`` variables, and drives it with
``operations/copyfile`` and ``sync/copy``. Mode B's time includes starting rcd.

Usage::

    python benchmarks/bench_rclone_rcd.py [--small 50] [--bulk 3] [--files 100] [--big-mb 64] [--repeat 3]

Prints per-mode timings (median of the repeats) and the ratio A/B.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from syncbridge.config import load_config
from syncbridge.demo.localserver import serve_rclone_s3
from syncbridge.rclone import Rclone
from syncbridge.rclone.argv import copy_argv, remote_path


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 300.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Rcd:
    """A long-lived ``rclone rcd`` on a unix socket, with auth from its environment."""

    def __init__(self, rc: Rclone, workdir: Path) -> None:
        self.socket = str(workdir / "rc.sock")
        user, password = "sb", secrets.token_urlsafe(24)
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        env = {**rc._env, "RCLONE_RC_USER": user, "RCLONE_RC_PASS": password}
        argv = [rc.binary, "rcd", "--rc-addr", f"unix://{self.socket}", "--config", "/dev/null",
                "--transfers", str(rc.config.rclone.transfers), "--checkers", str(rc.config.rclone.checkers)]
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.call("core/version")
                return
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("rclone rcd did not start") from None
                time.sleep(0.005)

    def call(self, method: str, **params: object) -> dict:
        conn = _UnixHTTPConnection(self.socket)
        try:
            conn.request("POST", "/" + method, body=json.dumps(params),
                         headers={"Content-Type": "application/json", "Authorization": self._auth})
            response = conn.getresponse()
            data = json.loads(response.read() or b"{}")
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"{method}: HTTP {response.status}: {data}")
        return data

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def make_data(root: Path, *, small: int, bulk: int, files: int, big_mb: int) -> tuple[list[Path], list[Path], Path]:
    singles = root / "singles"
    singles.mkdir(parents=True)
    small_files = []
    for i in range(small):
        path = singles / f"img_{i:05d}_.png"
        path.write_bytes(os.urandom(4096))
        small_files.append(path)
    folders = []
    for b in range(bulk):
        folder = root / f"folder{b}"
        folder.mkdir()
        for i in range(files):
            (folder / f"f{i:04d}.bin").write_bytes(os.urandom(4096))
        folders.append(folder)
    big = root / "big"
    big.mkdir()
    with open(big / "model.safetensors", "wb") as fh:
        for _ in range(big_mb):
            fh.write(os.urandom(1024 * 1024))
    return small_files, folders, big


def run_processes(rc: Rclone, small_files: list[Path], folders: list[Path], big: Path,
                  tag: str) -> tuple[float, float, float]:
    started = time.perf_counter()
    for path in small_files:
        rc.run(copy_argv(str(path), remote_path(rc.config.remote, f"{tag}/singles/{path.name}"), single_file=True))
    middle = time.perf_counter()
    for folder in folders:
        rc.run(copy_argv(str(folder), remote_path(rc.config.remote, f"{tag}/{folder.name}")))
    bulk_done = time.perf_counter()
    rc.run(copy_argv(str(big), remote_path(rc.config.remote, f"{tag}/big")))
    return middle - started, bulk_done - middle, time.perf_counter() - bulk_done


def run_rcd(rc: Rclone, small_files: list[Path], folders: list[Path], big: Path, tag: str,
            workdir: Path) -> tuple[float, ...]:
    started = time.perf_counter()
    rcd = Rcd(rc, workdir)
    try:
        up = time.perf_counter()
        bucket_fs = remote_path(rc.config.remote)
        for path in small_files:
            rcd.call("operations/copyfile", srcFs=str(path.parent), srcRemote=path.name, dstFs=bucket_fs,
                     dstRemote=f"{tag}/singles/{path.name}")
        middle = time.perf_counter()
        for folder in folders:
            rcd.call("sync/copy", srcFs=str(folder), dstFs=remote_path(rc.config.remote, f"{tag}/{folder.name}"))
        bulk_done = time.perf_counter()
        rcd.call("sync/copy", srcFs=str(big), dstFs=remote_path(rc.config.remote, f"{tag}/big"))
        done = time.perf_counter()
    finally:
        rcd.close()
    return up - started, middle - up, bulk_done - middle, done - bulk_done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=50, help="single-file copies per run")
    parser.add_argument("--bulk", type=int, default=3, help="folder copies per run")
    parser.add_argument("--files", type=int, default=100, help="files per folder")
    parser.add_argument("--big-mb", type=int, default=64, help="size of the one big file, MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per mode (median reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o700)
        small_files, folders, big = make_data(tmp / "data", small=args.small, bulk=args.bulk, files=args.files,
                                              big_mb=args.big_mb)
        with serve_rclone_s3(tmp / "s3root") as server:
            server.create_bucket("bench")
            env = {"HOME": str(tmp / "home"), "SYNCBRIDGE_STATE_DIR": str(tmp / "state"), **server.environ("bench"),
                   "PATH": os.environ.get("PATH", "")}
            rc = Rclone(load_config(env))
            rc.version()
            a_runs, b_runs = [], []
            for r in range(args.repeat):  # interleaved, so both modes see the same machine load
                a_runs.append(run_processes(rc, small_files, folders, big, f"proc{r}"))
                b_runs.append(run_rcd(rc, small_files, folders, big, f"rcd{r}", tmp))
    med = statistics.median
    a_small, a_bulk, a_big = (med(r[i] for r in a_runs) for i in range(3))
    b_start, b_small, b_bulk, b_big = (med(r[i] for r in b_runs) for i in range(4))
    n, m = args.small, args.bulk
    print(f"rclone {'.'.join(map(str, rc.version()))}, {n} single-file copies + {m} folder copies of "
          f"{args.files} x 4 KB, median of {args.repeat} runs, rclone serve s3 on 127.0.0.1, {os.cpu_count()} CPUs")
    print(f"{'':28}{'process/op':>12}{'rcd':>12}{'ratio':>9}")
    print(f"{'single-file copy (per op)':28}{a_small / n * 1000:>10.1f}ms{b_small / n * 1000:>10.1f}ms"
          f"{(a_small / n) / (b_small / n):>8.1f}x")
    print(f"{'folder copy (per op)':28}{a_bulk / m * 1000:>10.1f}ms{b_bulk / m * 1000:>10.1f}ms"
          f"{a_bulk / b_bulk:>8.2f}x")
    print(f"{f'{args.big_mb} MB file copy':28}{a_big * 1000:>10.1f}ms{b_big * 1000:>10.1f}ms{a_big / b_big:>8.2f}x")
    print(f"{'rcd start-up':28}{'':>12}{b_start * 1000:>10.1f}ms")
    total_a, total_b = a_small + a_bulk + a_big, b_start + b_small + b_bulk + b_big
    print(f"{'total incl. rcd start-up':28}{total_a:>11.2f}s{total_b:>11.2f}s{total_a / total_b:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
