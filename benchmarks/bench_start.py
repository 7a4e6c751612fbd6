"""Benchmark: a spot pod stopped right after a burst of outputs, syncbridge start vs the wiring it replaces.

Side by side, in one run, against a loopback ``rclone serve s3``:

* **replaced**: the template's ``start.sh`` as proposed: ``r2_sync.sh &`` (``inotifywait -m -r
  -e close_write | while read f; do python3 upload_one.py "$f" & done``, one process and
  one boto3 client per file, key = basename) and then ``exec python app``;
* **syncbridge**: ``bin/syncbridge-start -- python app`` with ``ENABLE_R2_SYNC=true``.

The app writes ``--files`` files (50 KB, nested folders, unique names) as fast as it can,
then idles. As soon as the last one is closed the "pod" gets SIGTERM; what is still
running 5 s later is SIGKILLed with its whole process group (a container's PID namespace
ends when PID 1 exits, so for the replaced design everything dies with the app). Reported:
outputs in the bucket afterwards, seconds from SIGTERM to exit, and the start-up overhead
(time from exec to the app's first line) of ``syncbridge start`` against running the app
directly.

    python benchmarks/bench_start.py [--files 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from syncbridge.config import load_config  # noqa: E402
from syncbridge.demo.localserver import serve_rclone_s3  # noqa: E402
from syncbridge.store import open_store  # noqa: E402

APP = r'''
import os, sys, time
from pathlib import Path
Path(sys.argv[3]).write_text(repr(time.time()))
out, n = Path(sys.argv[1]), int(sys.argv[2])
payload = os.urandom(50_000)
for i in range(n):
    target = out / f"batch{i % 5}" / f"img_{i:05d}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as fh:
        fh.write(payload)
Path(sys.argv[3] + ".done").write_text(repr(time.time()))
while True:
    time.sleep(1)
'''

REPLACED = r'''#!/bin/bash
OUT="$1"; shift
mkdir -p "$OUT"
inotifywait -m -r -q -e close_write --format '%w%f' "$OUT" | while read -r f; do
    python3 "$UPLOAD_ONE" "$f" &
done &
sleep 0.5   # let inotifywait set up its watches
exec "$@"
'''


def _wait(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.005)
    return False


def _stop_like_a_spot_pod(proc: subprocess.Popen) -> float:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
        seconds = time.monotonic() - started
    except subprocess.TimeoutExpired:
        seconds = float("inf")
    # The container ends: every process still in its group goes.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return seconds


def run(kind: str, server, bucket: str, work: Path, files: int) -> dict[str, float]:
    out = work / kind / "output"
    mark = work / kind / "app-started"
    app_py = work / "app.py"
    env = {"PATH": f"{ROOT / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(work / "home"),
           **server.environ(bucket), "SYNCBRIDGE_STATE_DIR": str(work / kind / "state"),
           "SYNCBRIDGE_WORKSPACE": str(work / kind), "COMFYUI_OUTPUT_DIR": str(out), "ENABLE_R2_SYNC": "true",
           "SYNCBRIDGE_WATCH_PREFIX": kind,
           "BENCH_ENDPOINT": server.endpoint, "BENCH_KEY": server.access_key, "BENCH_SECRET": server.secret_key,
           "BENCH_BUCKET": bucket, "UPLOAD_ONE": str(ROOT / "benchmarks" / "baseline_upload_one.py")}
    app = [sys.executable, str(app_py), str(out), str(files), str(mark)]
    if kind == "replaced":
        script = work / "start_replaced.sh"
        argv = ["bash", str(script), str(out), *app]
    else:
        argv = [str(ROOT / "bin" / "syncbridge-start"), "--", *app]
    out.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if not _wait(Path(str(mark) + ".done"), 120):
        raise SystemExit(f"{kind}: the app did not finish its burst")
    overhead = float(mark.read_text()) - launched
    seconds = _stop_like_a_spot_pod(proc)
    config = load_config({**server.environ(bucket), "SYNCBRIDGE_STATE_DIR": str(work / "client")})
    store = open_store(config.remote, state_dir=work / "client")
    if kind == "replaced":
        names = {f"img_{i:05d}.png" for i in range(files)}
        landed = sum(1 for info in store.list("") if info.key in names)
    else:
        landed = sum(1 for info in store.list(f"{kind}/") if info.key.endswith(".png"))
    return {"landed": landed, "stop_seconds": seconds, "overhead": overhead}


def direct_overhead(work: Path) -> float:
    mark = work / "direct-started"
    launched = time.time()
    proc = subprocess.Popen([sys.executable, str(work / "app.py"), str(work / "direct-out"), "1", str(mark)],
                            start_new_session=True)
    _wait(Path(str(mark) + ".done"), 60)
    overhead = float(mark.read_text()) - launched
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    args = parser.parse_args()
    if not shutil.which("inotifywait"):
        raise SystemExit("the replaced design needs inotifywait (apt-get install inotify-tools)")
    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    try:
        (work / "app.py").write_text(APP)
        (work / "start_replaced.sh").write_text(REPLACED)
        with serve_rclone_s3(work / "s3") as server:
            results = {}
            for kind in ("replaced", "syncbridge"):
                bucket = f"bench-{kind}"
                server.create_bucket(bucket)
                results[kind] = run(kind, server, bucket, work, args.files)
            direct = direct_overhead(work)
        print(f"spot stop right after a burst of {args.files} x 50 KB outputs (SIGTERM, SIGKILL 5 s later)")
        print(f"{'':<12} {'in bucket':>10} {'lost':>6} {'SIGTERM->exit':>14} {'app start after exec':>21}")
        for kind, r in results.items():
            stop = "killed at 5 s" if r["stop_seconds"] == float("inf") else f"{r['stop_seconds']:.2f} s"
            print(f"{kind:<12} {r['landed']:>10} {args.files - r['landed']:>6} {stop:>14} {r['overhead']:>19.2f} s")
        print(f"{'direct app':<12} {'-':>10} {'-':>6} {'-':>14} {direct:>19.2f} s")
        sb, old = results["syncbridge"], results["replaced"]
        print(f"ratios: outputs kept syncbridge/replaced = {sb['landed'] / max(old['landed'], 1):.1f}x; "
              f"start-up overhead of syncbridge start = {sb['overhead'] - direct:.2f} s over the direct app")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
