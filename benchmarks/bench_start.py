"""Benchmark: a spot pod stopped right after a burst of outputs, syncbridge start vs the wiring it replaces.

Side by side, in one run, against a loopback ``rclone serve s3``:

* **replaced**: the template's ``start.sh`` as proposed: ``r2_sync.sh &`` (``inotifywait -m -r
  -e close_write | while read f; do python3 upload_one.py "$f" & done``, one process and
  one boto3 client per file, key = basename) and then ``exec python app``;
* **syncbridge**: ``bin/syncbridge-start -- python app`` with ``ENABLE_R2_SYNC=true``
  (``SYNCBRIDGE_PYTHON`` set to this interpreter, ``PYTHONPATH`` and the working directory to this
  checkout, so the script runs ``python -m syncbridge start`` from the code under test);
* **syncbridge-before** (``--before REV``): the same run with the ``syncbridge`` package of git
  revision REV (extracted with ``git archive``; ``PYTHONPATH`` and the working directory set to it:
  ``benchmarks/revision.py``). The file each tree imports is printed once, and the report ends with
  the ratios after/before: outputs kept, seconds from SIGTERM to exit, start-up overhead.

The app writes ``--files`` files (50 KB, nested folders, unique names) as fast as it can,
then idles. As soon as the last one is closed the "pod" gets SIGTERM; what is still
running 5 s later is SIGKILLed with its whole process group (a container's PID namespace
ends when PID 1 exits, so for the replaced design everything dies with the app). Reported:
outputs in the bucket afterwards, seconds from SIGTERM to exit, and the start-up overhead
(time from exec to the app's first line) of ``syncbridge start`` against running the app
directly.

    python benchmarks/bench_start.py [--files 100] [--before REV [--rounds N]]

``--rounds N`` (default 1) repeats the syncbridge runs N times, after and before alternating, and
reports each figure's median (outputs kept: the least of any run; the replaced design runs once).
Without ``inotifywait`` the replaced design is skipped with a message when ``--before`` is given (an
error otherwise). A smoke run:
``--before REV --files 100`` (``--files 20`` shows the drain fix of 0.3 against an older revision:
outputs found by a scan of a new subfolder were left in the journal; docs/benchmarks.md).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
LINK = {"one_way": 0.0, "on": False}  # --rtt-ms: each run's own emulated link

from revision import Tree, announce, before_tree, current_tree  # noqa: E402
from wanproxy import WanProxy  # noqa: E402

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


def run(kind: str, server, bucket: str, work: Path, files: int, tree: Tree | None = None) -> dict[str, float]:
    """One stopped pod. ``kind`` names its folder and key prefix; ``tree`` is the syncbridge it runs
    (None: the replaced design)."""
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
    cwd = None
    if tree is None:
        script = work / "start_replaced.sh"
        argv = ["bash", str(script), str(out), *app]
    else:
        # bin/syncbridge-start runs `$SYNCBRIDGE_PYTHON -m syncbridge start`: this interpreter, and the
        # tree's package through PYTHONPATH and the working directory (not a `syncbridge` on PATH).
        argv = [str(ROOT / "bin" / "syncbridge-start"), "--", *app]
        env = tree.env({**env, "SYNCBRIDGE_PYTHON": sys.executable})
        cwd = tree.cwd
    wan = None
    if LINK["on"]:
        wan = WanProxy(server.endpoint, one_way=LINK["one_way"])
        wan.start()
        env["R2_ENDPOINT"] = env["BENCH_ENDPOINT"] = wan.endpoint
    out.mkdir(parents=True, exist_ok=True)
    launched = time.time()
    log = work / kind / "stderr.log"  # syncbridge's own lines: shown when outputs were lost
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err if tree else subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    if not _wait(Path(str(mark) + ".done"), 120):
        raise SystemExit(f"{kind}: the app did not finish its burst")
    overhead = float(mark.read_text()) - launched
    seconds = _stop_like_a_spot_pod(proc)
    counts = wan.counts() if wan is not None else {}
    if wan is not None:
        wan.stop()
    config = load_config({**server.environ(bucket), "SYNCBRIDGE_STATE_DIR": str(work / "client")})
    store = open_store(config.remote, state_dir=work / "client")
    if tree is None:
        names = {f"img_{i:05d}.png" for i in range(files)}
        landed = sum(1 for info in store.list("") if info.key in names)
    else:
        landed = sum(1 for info in store.list(f"{kind}/") if info.key.endswith(".png"))
        if landed < files:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            print(f"{kind}: {files - landed} of {files} outputs not in the bucket; its last lines:\n  "
                  + "\n  ".join(tail), file=sys.stderr, flush=True)
    return {"landed": landed, "stop_seconds": seconds, "overhead": overhead,
            "requests": counts.get("requests", 0), "connections": counts.get("connections", 0)}


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


def _median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs; outputs kept is the least of any run."""
    def med(values):
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1]
                                                                  + values[len(values) // 2]) / 2
    return {"landed": min(r["landed"] for r in runs), "stop_seconds": med([r["stop_seconds"] for r in runs]),
            "overhead": med([r["overhead"] for r in runs]), "requests": med([r["requests"] for r in runs]),
            "connections": med([r["connections"] for r in runs])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--before", metavar="REV",
                        help="add syncbridge from git revision REV (syncbridge-before), side by side")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each syncbridge contender, after and before alternating (median; default 1)")
    parser.add_argument("--rtt-ms", type=float, default=0,
                        help="each run reaches the server through benchmarks/wanproxy.py adding this round trip; "
                        "requests and connections per run are printed")
    args = parser.parse_args()
    LINK.update(on=bool(args.rtt_ms), one_way=args.rtt_ms / 2000)
    kinds = ["replaced", "syncbridge"]
    if not shutil.which("inotifywait"):
        if not args.before:
            raise SystemExit("the replaced design needs inotifywait (apt-get install inotify-tools)")
        print("skipping the replaced design: inotifywait not found (apt-get install inotify-tools)", flush=True)
        kinds.remove("replaced")
    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    try:
        trees = {"syncbridge": current_tree()}
        if args.before:
            trees["syncbridge-before"] = before_tree(args.before, work)
            kinds.append("syncbridge-before")
            announce(list(trees.values()), args.before, base={"PATH": os.environ["PATH"]})
        (work / "app.py").write_text(APP)
        (work / "start_replaced.sh").write_text(REPLACED)
        with serve_rclone_s3(work / "s3") as server:
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
            if "replaced" in kinds:
                server.create_bucket("bench-replaced")
                runs["replaced"].append(run("replaced", server, "bench-replaced", work, args.files))
            sb_kinds = [k for k in kinds if k != "replaced"]
            for round_no in range(args.rounds):
                for kind in sb_kinds[round_no % len(sb_kinds):] + sb_kinds[:round_no % len(sb_kinds)]:
                    name = kind if round_no == 0 else f"{kind}-{round_no}"
                    bucket = f"bench-{name}"
                    server.create_bucket(bucket)
                    runs[kind].append(run(name, server, bucket, work, args.files, trees[kind]))
            results = {kind: _median_run(r) for kind, r in runs.items()}
            direct = direct_overhead(work)
        print(f"spot stop right after a burst of {args.files} x 50 KB outputs (SIGTERM, SIGKILL 5 s later)")
        width = max(12, *(len(k) for k in results))
        print(f"{'':<{width}} {'in bucket':>10} {'lost':>6} {'SIGTERM->exit':>14} {'app start after exec':>21}")
        for kind, r in results.items():
            stop = "killed at 5 s" if r["stop_seconds"] == float("inf") else f"{r['stop_seconds']:.2f} s"
            print(f"{kind:<{width}} {r['landed']:>10} {args.files - r['landed']:>6} {stop:>14} "
                  f"{r['overhead']:>19.2f} s")
        print(f"{'direct app':<{width}} {'-':>10} {'-':>6} {'-':>14} {direct:>19.2f} s")
        if args.rtt_ms:
            print(f"over an emulated {args.rtt_ms:g} ms round trip: requests per output (HTTP requests the link "
                  f"carried / outputs) and connections opened")
            for kind, r in results.items():
                print(f"  {kind:<{width}} {r['requests'] / args.files:>6.2f} requests/output "
                      f"{r['connections']:>5.0f} connections")
        sb = results["syncbridge"]
        if "replaced" in results:
            old = results["replaced"]
            print(f"ratios: outputs kept syncbridge/replaced = {sb['landed'] / max(old['landed'], 1):.1f}x; "
                  f"start-up overhead of syncbridge start = {sb['overhead'] - direct:.2f} s over the direct app")
        if "syncbridge-before" in results:
            _after_vs_before(sb, results["syncbridge-before"], direct, args, runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _after_vs_before(after: dict[str, float], before: dict[str, float], direct: float, args,
                     runs: dict[str, list[dict[str, float]]]) -> None:
    def ratio(a: float, b: float) -> str:
        if a == float("inf") or b == float("inf"):
            return "- (killed)"
        return f"{a / b:.2f}" if b > 0 else "-"

    rounds = f"median of {args.rounds}, alternating" if args.rounds > 1 else "one run each"
    print(f"after vs before ({args.before}; {rounds}; < 1 is faster after, except outputs kept):")
    print(f"  outputs kept       after {after['landed']:>7}    before {before['landed']:>7}    "
          f"after/before = {after['landed'] / max(before['landed'], 1):.2f}")
    print(f"  SIGTERM->exit      after {after['stop_seconds']:>7.2f} s  before {before['stop_seconds']:>7.2f} s  "
          f"after/before = {ratio(after['stop_seconds'], before['stop_seconds'])}")
    a, b = after["overhead"] - direct, before["overhead"] - direct
    print(f"  start-up overhead  after {a:>7.2f} s  before {b:>7.2f} s  after/before = {ratio(a, b)}  "
          f"(app start after exec, minus the direct app's {direct:.2f} s)")
    if args.rounds > 1:
        def cells(kind: str, key: str) -> str:
            return ", ".join(f"{r[key]:.2f}" if isinstance(r[key], float) else str(r[key]) for r in runs[kind])
        for key, label in (("landed", "outputs kept"), ("stop_seconds", "SIGTERM->exit (s)"),
                           ("overhead", "app start after exec (s)")):
            print(f"  per round, {label}: after {cells('syncbridge', key)}; before {cells('syncbridge-before', key)}")


if __name__ == "__main__":
    main()
