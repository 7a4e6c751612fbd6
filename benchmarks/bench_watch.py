"""Benchmark of the output push, side by side in one run, against a loopback ``rclone serve s3``.

Contenders (each a separate process tree, each with its own folder and bucket):

(a) ``replaced``: the design syncbridge replaces,
    ``inotifywait -m -r -e close_write | while read f; do python upload_one.py "$f" & done``
    (one Python process and one boto3 client per file, key = basename). Needs
    ``inotifywait``: ``apt-get install -y inotify-tools``; skipped with a message otherwise.
(b) ``reference``: a minimal loop, inotify_simple + one reused boto3 client and 8 threads
    (``benchmarks/reference_loop.py``): what the machine allows.
(c) ``syncbridge``: ``python -m syncbridge watch DIR``. ``rclone serve s3`` ignores
    ``If-None-Match``, so by default the watcher sends HEAD then PUT for each new file here
    (to never overwrite another pod's object); on R2, AWS or MinIO it sends one conditional PUT.
(d) ``syncbridge-1req``: the same with ``SYNCBRIDGE_WATCH_CONDITIONAL=on``: one request per new
    file, the request pattern it uses on R2 (measured here only; on this server that setting
    would not protect another pod's object).
(e) ``syncbridge-webhook`` (``--webhook``): (c) with ``SYNCBRIDGE_WEBHOOK_URL`` pointing at a
    loopback receiver in this process: what one JSON POST per batch of outputs costs the push.
(f) ``syncbridge-before`` (``--before REV``): (c) from another git revision of this repository
    (its ``syncbridge`` package extracted with ``git archive`` into the work folder, run with
    ``PYTHONPATH`` and the working directory set to it: ``benchmarks/revision.py``), for
    before/after figures in one run. Every syncbridge contender runs the same way from its tree
    (this checkout for (c) to (e)), and the file each one imports is printed once.

Figures:

* latency from the writer's ``close()`` to the object answering HEAD, for 100 KB files
  written every 200 ms: p50/p95 (target: within 2x of the reference);
* a burst of 500 x 50 KB files in nested folders written as fast as possible: seconds until
  all are in the bucket (target: <= 1.5x the reference), processes (target <= 2), peak RSS
  (target <= 120 MB), CPU seconds;
* idle after the burst: CPU seconds over 5 s (target ~0) and RSS (target <= 60 MB);
* lost files and key collisions (target 0; the baseline's are reported).

Not run in CI. ``python benchmarks/bench_watch.py [--files 500] [--latency-files 40] [--only NAME]``.
Before/after: ``python benchmarks/bench_watch.py --only reference --only syncbridge --before REV``
prints "after vs before" ratios (latency p50/p95, burst seconds); a smoke run:
``--before REV --only syncbridge --files 50 --latency-files 10 --reps 1``.
The replaced design is stopped when its process tree passes ``--baseline-rss-cap`` MB
(default 3000) or ``--baseline-timeout`` seconds, so it cannot take the machine down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from revision import Tree, announce, before_tree, current_tree  # noqa: E402
from wanproxy import WanProxy  # noqa: E402

from syncbridge.demo.localserver import serve_rclone_s3  # noqa: E402
from tests.servers import serve_moto  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# -- process-tree sampling (/proc, no psutil) ----------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_pids(root: int) -> list[int]:
    kids = _children_map()
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(kids.get(pid, []))
    return out


def proc_sample(pids: list[int]) -> tuple[int, float, float]:
    """(live processes, RSS bytes, CPU seconds incl. reaped children) of ``pids``."""
    count, rss, cpu = 0, 0, 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        count += 1
        rss += int(statm[1]) * PAGE
        # utime stime cutime cstime are fields 14-17 (1-based); after ")" they start at index 11
        cpu += sum(int(x) for x in fields[11:15]) / TICKS
    return count, rss, cpu


class Sampler(threading.Thread):
    """Samples a process tree every 50 ms: peak process count and peak RSS."""

    def __init__(self, root: int, *, rss_cap: float | None = None, on_cap=None) -> None:
        super().__init__(daemon=True)
        self.root, self.rss_cap, self.on_cap = root, rss_cap, on_cap
        self.peak_procs, self.peak_rss = 0, 0
        self.capped = False
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            count, rss, _ = proc_sample(tree_pids(self.root))
            self.peak_procs = max(self.peak_procs, count)
            self.peak_rss = max(self.peak_rss, rss)
            if self.rss_cap and rss > self.rss_cap and not self.capped:
                self.capped = True
                if self.on_cap:
                    self.on_cap()

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- contenders ---------------------------------------------------------------------------------


class Contender:
    def __init__(self, name: str, server, bucket: str, workdir: Path) -> None:
        self.name, self.server, self.bucket = name, server, bucket
        self.dir = workdir / name / "out"
        self.dir.mkdir(parents=True)
        # The latency files' folder exists before the watcher starts, as ComfyUI's output folder does: a
        # file in a brand-new folder is found by that folder's scan and waits to be seen finished.
        (self.dir / "lat").mkdir()
        self.state = workdir / name / "state"
        self.proc: subprocess.Popen | None = None
        self.wan: WanProxy | None = None  # --rtt-ms: this contender's own emulated link (its own counters)
        self.front = None  # a keep-alive (and TLS) end in front of the server: the test suite's FaultProxy
        if LINK["front"] is not None:
            upstream = server.endpoint
            if LINK["proxy"]:
                from tests.faultproxy import FaultProxy
                self.front = FaultProxy(server.endpoint, tls=LINK["tls"])
                self.front.start()
                upstream = self.front.endpoint
            self.wan = WanProxy(upstream, one_way=LINK["one_way"], idle_close=LINK["idle_close"],
                                bandwidth=LINK["bandwidth"])
            self.wan.start()

    def counts(self) -> dict:
        """The link's counters; behind TLS, the requests as the TLS end counted them."""
        counts = self.wan.counts() if self.wan is not None else {}
        if self.front is not None:
            counts["requests"] = self.front.count("request")
        return counts

    def reset_counts(self) -> None:
        if self.wan is not None:
            self.wan.reset()
        if self.front is not None:
            with self.front._lock:
                self.front._counts.clear()

    @property
    def endpoint(self) -> str:
        return self.wan.endpoint if self.wan is not None else self.server.endpoint

    def key(self, rel: str) -> str:
        return os.path.basename(rel) if self.name == "replaced" else f"outputs/{rel}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "SYNCBRIDGE_", "RCLONE_"))}
        env.update(BENCH_ENDPOINT=self.endpoint, BENCH_KEY=self.server.access_key,
                   BENCH_SECRET=self.server.secret_key, BENCH_BUCKET=self.bucket,
                   **self.server.environ(self.bucket), SYNCBRIDGE_STATE_DIR=str(self.state),
                   SYNCBRIDGE_WORKSPACE=str(self.state.parent), SYNCBRIDGE_POD_ID="bench",
                   SYNCBRIDGE_LOG_LEVEL="warning")
        env["R2_ENDPOINT"] = self.endpoint
        if LINK["ca_file"]:
            env["SYNCBRIDGE_CA_BUNDLE"] = env["AWS_CA_BUNDLE"] = LINK["ca_file"]
        if self.name.startswith("syncbridge"):
            env.update(EXTRA_ENV)
            if self.name != "syncbridge-before":
                env.update(AFTER_ENV)
        if self.name == "syncbridge-1req":
            env["SYNCBRIDGE_WATCH_CONDITIONAL"] = "on"
        if self.name == "syncbridge-webhook":
            env["SYNCBRIDGE_WEBHOOK_URL"] = WEBHOOK_URL[0]
        if self.tree is not None:
            env = self.tree.env(env)
        return env

    @property
    def tree(self) -> Tree | None:
        """The syncbridge tree this contender runs (None: not syncbridge)."""
        if self.name == "syncbridge-before":
            return TREES["before"]
        return TREES["after"] if self.name.startswith("syncbridge") else None

    def start(self) -> None:
        if self.name == "replaced":
            script = ('inotifywait -q -m -r -e close_write --format "%w%f" "$1" | '
                      'while read -r f; do "$2" "$3" "$f" & done')
            argv = ["bash", "-c", script, "bench", str(self.dir), sys.executable, str(HERE / "baseline_upload_one.py")]
        elif self.name == "reference":
            argv = [sys.executable, str(HERE / "reference_loop.py"), str(self.dir)]
        else:
            argv = self.tree.argv("watch", str(self.dir))
        cwd = self.tree.cwd if self.tree is not None else None
        self.proc = subprocess.Popen(argv, env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True, cwd=cwd)
        time.sleep(1.5)  # let it set its watches (and syncbridge its catch-up scan)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited at start: {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with_signal = signal.SIGTERM
            try:
                os.killpg(self.proc.pid, with_signal)
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with _suppress():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # the replaced design leaves uploaders behind: reap the whole group
        with _suppress():
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.wan is not None:
            self.wan.stop()
        if self.front is not None:
            self.front.stop()


WEBHOOK_URL: list[str] = [""]
results_floor: list[float] = [0.0, 0.0]  # one way + a direct PUT: p50, p95
EXTRA_ENV: dict[str, str] = {}  # --env: settings for every syncbridge contender
AFTER_ENV: dict[str, str] = {}  # --env-after: settings the before revision may not know
# --rtt-ms: what each contender's WanProxy relays to (the server, or the TLS proxy in front of it)
LINK: dict = {"front": None, "one_way": 0.0, "idle_close": None, "bandwidth": None, "ca_file": None, "tls": None,
              "proxy": False}
TREES: dict[str, Tree] = {"after": current_tree()}
WEBHOOK_POSTS = [0, 0]  # requests, outputs


def start_webhook_receiver() -> str:
    """A loopback receiver that takes every POST (204), counting requests and outputs."""
    import json as _json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = _json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            WEBHOOK_POSTS[0] += 1
            WEBHOOK_POSTS[1] += len(body["outputs"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/hook"


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def s3_client(server):
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name="us-east-1",
                        config=BotoConfig(request_checksum_calculation="when_required", max_pool_connections=64,
                                          response_checksum_validation="when_required", retries={"max_attempts": 1},
                                          s3={"addressing_style": "path"}))


def head_ok(client, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception:  # noqa: BLE001
        return False


def bucket_keys(client, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    return keys


# -- measurements -------------------------------------------------------------------------------


def measure_latency(c: Contender, client, *, files: int, timeout: float) -> dict:
    latencies: list[float] = []
    lost = 0
    lock = threading.Lock()
    threads = []

    def poll(key: str, closed: float) -> None:
        nonlocal lost
        deadline = closed + timeout
        while time.monotonic() < deadline:
            if head_ok(client, c.bucket, key):
                with lock:
                    latencies.append(time.monotonic() - closed)
                return
            time.sleep(0.001)
        with lock:
            lost += 1

    payload = os.urandom(100 * 1024)
    for i in range(files):
        rel = f"lat/file_{i:04d}.png"
        path = c.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(payload)
        closed = time.monotonic()
        t = threading.Thread(target=poll, args=(c.key(rel), closed), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.2)
    for t in threads:
        t.join()
    latencies.sort()
    return {"p50": statistics.median(latencies) if latencies else None,
            "p95": latencies[max(0, int(0.95 * len(latencies)) - 1)] if latencies else None, "lost": lost}


def measure_latency_interleaved(contenders: list[Contender], client, *, files: int, timeout: float = 30) -> dict:
    """Latency of several contenders under the same background load: round-robin, one file at a time.

    Each round writes one file to each contender in turn (starting with a different one each
    round) and waits for it to answer HEAD before the next; rounds start every 200 ms.
    """
    found: dict[str, list[float]] = {c.name: [] for c in contenders}
    lost = {c.name: 0 for c in contenders}
    payload = os.urandom(100 * 1024)
    for i in range(files):
        round_start = time.monotonic()
        order = contenders[i % len(contenders):] + contenders[:i % len(contenders)]
        for c in order:
            rel = f"lat/file_{i:04d}.png"
            path = c.dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(payload)
            closed = time.monotonic()
            while time.monotonic() - closed < timeout:
                if head_ok(client, c.bucket, c.key(rel)):
                    found[c.name].append(time.monotonic() - closed)
                    break
                time.sleep(0.001)
            else:
                lost[c.name] += 1
        time.sleep(max(0.0, 0.2 - (time.monotonic() - round_start)))
    out = {}
    for name, values in found.items():
        first = values[0] if values else None  # the first output since the start
        values.sort()
        out[name] = {"first": first, "p50": statistics.median(values) if values else None,
                     "p95": values[max(0, int(0.95 * len(values)) - 1)] if values else None, "lost": lost[name]}
    return out


def measure_burst(c: Contender, client, *, files: int, timeout: float, rss_cap: float | None,
                  tag: str = "burst") -> dict:
    assert c.proc is not None
    killed = threading.Event()

    def cap() -> None:
        killed.set()
        with _suppress():
            os.killpg(c.proc.pid, signal.SIGKILL)

    _, _, cpu0 = proc_sample(tree_pids(c.proc.pid))
    sampler = Sampler(c.proc.pid, rss_cap=rss_cap, on_cap=cap)
    sampler.start()
    rels = [f"{tag}/run{i % 5}/batch{(i // 5) % 10}/img_{i // 50:03d}.png" for i in range(files)]
    payload = os.urandom(50 * 1024)
    expected_keys = {c.key(r) for r in rels}
    t0 = time.monotonic()
    for rel in rels:
        path = c.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    written = time.monotonic() - t0
    done_at = None
    while time.monotonic() - t0 < timeout and not killed.is_set():
        present = bucket_keys(client, c.bucket) & expected_keys
        if present == expected_keys:
            done_at = time.monotonic() - t0
            break
        time.sleep(0.05)
    cpu_now = proc_sample(tree_pids(c.proc.pid))[2]
    sampler.stop()
    present = bucket_keys(client, c.bucket) & expected_keys
    return {"seconds": done_at, "write_seconds": written, "procs": sampler.peak_procs,
            "peak_rss_mb": sampler.peak_rss / 1e6, "cpu_s": cpu_now - cpu0,
            "in_bucket": len(present), "distinct_keys": len(expected_keys),
            "collisions": files - len(expected_keys), "lost": len(expected_keys) - len(present),
            "killed": killed.is_set()}


def measure_idle(c: Contender, seconds: float = 5.0) -> dict:
    assert c.proc is not None
    time.sleep(2.0)
    pids = [c.proc.pid]
    _, _, cpu0 = proc_sample(tree_pids(c.proc.pid))
    time.sleep(seconds)
    count, rss, cpu1 = proc_sample(tree_pids(c.proc.pid))
    _ = pids
    return {"cpu_s": cpu1 - cpu0, "rss_mb": rss / 1e6, "procs": count}


# -- report -------------------------------------------------------------------------------------


def fmt(value, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=500, help="files in the burst (default 500)")
    parser.add_argument("--latency-files", type=int, default=40, help="files in the latency run (default 40)")
    parser.add_argument("--only", action="append", choices=["replaced", "reference", "syncbridge", "syncbridge-1req",
                                                            "syncbridge-webhook", "syncbridge-before"],
                        help="run only these contenders (repeatable)")
    parser.add_argument("--webhook", action="store_true", help="add (e): syncbridge with a webhook receiver on")
    parser.add_argument("--before", metavar="REV", help="add (f): syncbridge from git revision REV, side by side")
    parser.add_argument("--reps", type=int, default=3, help="bursts per contender (the median counts; default 3)")
    parser.add_argument("--baseline-rss-cap", type=float, default=3000, help="MB; stop the replaced design beyond")
    parser.add_argument("--baseline-timeout", type=float, default=90, help="seconds for the replaced design's burst")
    parser.add_argument("--rtt-ms", type=float, default=0, help="emulated round trip between each contender and the "
                        "server (benchmarks/wanproxy.py; 0: direct). Requests per output are printed beside times")
    parser.add_argument("--idle-close", type=float, default=None, metavar="SECONDS",
                        help="the emulated link closes connections idle this long (an edge's keep-alive limit)")
    parser.add_argument("--bandwidth-mbit", type=float, default=None, help="emulated link's cap per direction")
    parser.add_argument("--tls", action="store_true", help="https to the server (a private CA, the test suite's TLS "
                        "proxy in front of it), so new connections pay TLS handshakes")
    parser.add_argument("--server", choices=["rclone", "moto"], default="rclone",
                        help="the S3 server (moto enforces If-None-Match, as R2 does: one request per new output)")
    parser.add_argument("--idle-first", type=float, default=0, metavar="SECONDS",
                        help="after the latency run, stay idle this long, then time the first output (0: skip)")
    parser.add_argument("--no-burst", action="store_true", help="skip the bursts and the idle figures")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every syncbridge contender (repeatable), e.g. "
                        "SYNCBRIDGE_HEARTBEAT_SECONDS=0")
    parser.add_argument("--env-after", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the syncbridge contenders of this checkout only (not --before's)")
    args = parser.parse_args()
    for items, into in ((args.env, EXTRA_ENV), (args.env_after, AFTER_ENV)):
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name.startswith(("SYNCBRIDGE_", "R2_")):
                parser.error(f"--env wants NAME=VALUE with a SYNCBRIDGE_ name, got {item!r}")
            into[name] = value
    names = args.only or ["replaced", "reference", "syncbridge", "syncbridge-1req"]
    if args.webhook and "syncbridge-webhook" not in names:
        names.append("syncbridge-webhook")
    if args.before and "syncbridge-before" not in names:
        names.append("syncbridge-before")
    if "syncbridge-webhook" in names:
        WEBHOOK_URL[0] = start_webhook_receiver()
    if "replaced" in names and shutil.which("inotifywait") is None:
        print("skipping (a) the replaced design: inotifywait not found; install it with "
              "`apt-get install -y inotify-tools`", file=sys.stderr)
        names = [n for n in names if n != "replaced"]
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        work = Path(tmp)
        if "syncbridge-before" in names:
            if not args.before:
                parser.error("syncbridge-before needs --before REV")
            TREES["before"] = before_tree(args.before, work)
            announce([TREES["after"], TREES["before"]], args.before)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(serve_moto(log_file=work / "moto.log") if args.server == "moto"
                                         else serve_rclone_s3(work / "server"))
            client = s3_client(server)
            if args.rtt_ms or args.idle_close or args.bandwidth_mbit or args.tls:
                # moto closes every connection after one answer; the fault proxy in front of it keeps the
                # client's connection alive (as R2 does) and terminates TLS with --tls.
                LINK["proxy"] = args.tls or args.server == "moto"
                if args.tls:
                    from tests.store.test_tls import make_tls
                    (work / "tls").mkdir()
                    ca_file, LINK["tls"] = make_tls(work / "tls")
                    LINK["ca_file"] = str(ca_file)
                LINK.update(front=server.endpoint, one_way=args.rtt_ms / 2000, idle_close=args.idle_close,
                            bandwidth=args.bandwidth_mbit * 1e6 / 8 if args.bandwidth_mbit else None)
                floor, floor95 = transfer_floor(client, server, args.rtt_ms / 2000)
                results_floor[:] = [floor, floor95]
                print(f"   emulated link: rtt {args.rtt_ms:g} ms{', TLS' if args.tls else ''}"
                      f"{f', idle close {args.idle_close:g} s' if args.idle_close else ''}; floor (one way + a "
                      f"direct PUT of 100 KB) p50 {floor * 1000:.1f} ms, p95 {floor95 * 1000:.1f} ms",
                      file=sys.stderr, flush=True)
            if "replaced" in names:
                # Alone, first: it takes the machine over and would distort the others' figures.
                server.create_bucket("bench-replaced")
                c = Contender("replaced", server, "bench-replaced", work)
                print("== replaced (alone)", file=sys.stderr, flush=True)
                c.start()
                try:
                    res = {"latency": measure_latency(c, client, files=args.latency_files, timeout=60)}
                    print(f"   latency {res['latency']}", file=sys.stderr, flush=True)
                    res["idle_before"] = measure_idle(c, 3.0)
                    res["burst"] = measure_burst(c, client, files=args.files, timeout=args.baseline_timeout,
                                                 rss_cap=args.baseline_rss_cap * 1e6)
                    print(f"   burst {res['burst']}", file=sys.stderr, flush=True)
                    if not res["burst"]["killed"]:
                        res["idle"] = measure_idle(c)
                    results["replaced"] = res
                finally:
                    c.stop()
            # The others side by side: all running at once, measured in turn, so background
            # load on a shared machine falls on each of them alike.
            others = []
            for name in [n for n in names if n != "replaced"]:
                server.create_bucket(f"bench-{name}")
                others.append(Contender(name, server, f"bench-{name}", work))
            try:
                for c in others:
                    c.start()
                    results[c.name] = {}
                if others:
                    for c in others:
                        results[c.name]["idle_before"] = measure_idle(c, 3.0)
                    for c in others:
                        c.reset_counts()
                    lat = measure_latency_interleaved(others, client, files=args.latency_files)
                    for c in others:
                        results[c.name]["latency"] = lat[c.name]
                        if c.wan is not None:
                            results[c.name]["latency"]["counts"] = c.counts()
                    print(f"   latency {lat}", file=sys.stderr, flush=True)
                    if args.idle_first:
                        first = measure_first_after_idle(others, client, idle=args.idle_first)
                        for c in others:
                            results[c.name]["first"] = first[c.name]
                        print(f"   first after {args.idle_first:g} s idle {first}", file=sys.stderr, flush=True)
                    bursts: dict[str, list[dict]] = {c.name: [] for c in others}
                    for r in range(0 if args.no_burst else args.reps):
                        order = others[r % len(others):] + others[:r % len(others)]
                        for c in order:
                            b = measure_burst(c, client, files=args.files, timeout=120, rss_cap=None, tag=f"burst{r}")
                            print(f"   {c.name} burst {r}: {b}", file=sys.stderr, flush=True)
                            bursts[c.name].append(b)
                    for c in others if not args.no_burst else ():
                        runs = bursts[c.name]
                        best = sorted(runs, key=lambda b: b["seconds"] or 1e9)[len(runs) // 2]  # the median run
                        best = dict(best, peak_rss_mb=max(b["peak_rss_mb"] for b in runs),
                                    procs=max(b["procs"] for b in runs), lost=sum(b["lost"] for b in runs))
                        results[c.name]["burst"] = best
                    for c in others if not args.no_burst else ():
                        results[c.name]["idle"] = measure_idle(c)
            finally:
                for c in others:
                    c.stop()
    print()
    link = (f", emulated link rtt {args.rtt_ms:g} ms{' TLS' if args.tls else ''}"
            f"{f' idle-close {args.idle_close:g} s' if args.idle_close else ''}" if LINK["front"] else "")
    print(f"output push benchmark: loopback {'moto' if args.server == 'moto' else 'rclone serve s3'}{link}, "
          f"{os.cpu_count()} CPUs, "
          f"{args.latency_files} x 100 KB every 200 ms, burst {args.files} x 50 KB in nested folders "
          f"(median of {args.reps}; reference and syncbridge interleaved)")
    col = max(16, *(len(n) + 2 for n in results))
    header = f"{'':34}" + "".join(f"{n:>{col}}" for n in results)
    print(header)

    def row(label: str, get) -> None:
        cells = []
        for name in results:
            try:
                cells.append(get(results[name]))
            except (KeyError, TypeError):
                cells.append("-")
        print(f"{label:34}" + "".join(f"{c:>{col}}" for c in cells))

    row("latency p50 (s)", lambda r: fmt(r["latency"]["p50"]))
    row("latency p95 (s)", lambda r: fmt(r["latency"]["p95"]))
    row("latency files lost", lambda r: fmt(r["latency"]["lost"]))
    if LINK["front"]:
        n = args.latency_files
        row("latency: requests per output", lambda r: fmt(r["latency"]["counts"]["requests"] / n, digits=2))
        row("latency: connections opened", lambda r: fmt(r["latency"]["counts"].get("connections", 0)))
        row("first output after start (s)", lambda r: fmt(r["latency"]["first"]))
        floor, floor95 = results_floor
        row("latency p50 / floor p50", lambda r: fmt(r["latency"]["p50"] / floor, digits=2))
        row("latency p95 / floor p50", lambda r: fmt(r["latency"]["p95"] / floor, digits=2))
        row("latency p95 / floor p95", lambda r: fmt(r["latency"]["p95"] / floor95, digits=2))
    if args.idle_first:
        row(f"first after {args.idle_first:g} s idle (s)", lambda r: fmt(r["first"]["seconds"]))
        row("first after idle / warm p50", lambda r: fmt(r["first"]["seconds"] / r["latency"]["p50"], digits=2))
        row("first after idle: new connections", lambda r: fmt(r["first"]["connections"]))
    row("burst: all in bucket (s)", lambda r: fmt(r["burst"]["seconds"], digits=2) if r["burst"]["seconds"]
        else ("killed" if r["burst"]["killed"] else "never"))
    row("burst: processes (peak)", lambda r: fmt(r["burst"]["procs"]))
    row("burst: peak RSS (MB)", lambda r: fmt(r["burst"]["peak_rss_mb"], digits=0))
    row("burst: CPU (s)", lambda r: "n/a" if r["burst"]["killed"] else fmt(r["burst"]["cpu_s"], digits=2))
    row("burst: objects in bucket", lambda r: f"{r['burst']['in_bucket']}/{r['burst']['distinct_keys']}")
    row("burst: key collisions", lambda r: fmt(r["burst"]["collisions"]))
    row("burst: files lost", lambda r: fmt(r["burst"]["collisions"] + r["burst"]["lost"]))
    row("idle before burst: RSS (MB)", lambda r: fmt(r["idle_before"]["rss_mb"], digits=0))
    row("idle: CPU over 5 s (s)", lambda r: fmt(r["idle"]["cpu_s"], digits=3))
    row("idle: RSS (MB)", lambda r: fmt(r["idle"]["rss_mb"], digits=0))
    if "reference" in results:
        row("latency p50 / reference", lambda r: fmt(r["latency"]["p50"] / results["reference"]["latency"]["p50"],
                                                     digits=2))
        row("latency p95 / reference", lambda r: fmt(r["latency"]["p95"] / results["reference"]["latency"]["p95"],
                                                     digits=2))
    if WEBHOOK_URL[0]:
        print(f"webhook receiver: {WEBHOOK_POSTS[0]} POSTs carrying {WEBHOOK_POSTS[1]} outputs")
    ok = True
    for name in ("syncbridge", "syncbridge-1req"):
        if name in results and "reference" in results and not args.no_burst:
            ok &= _checks(name, results[name], results["reference"])
    pairs = [("syncbridge-webhook", "syncbridge", 1.3, "webhook on vs off"),
             ("syncbridge", "syncbridge-before", 1.3, "after vs before")]
    for name, base, limit, label in pairs:
        if name in results and base in results:
            print(f"\n{label}:")
            for q in ("p50", "p95"):
                a, b = results[name]["latency"][q], results[base]["latency"][q]
                ratio = a / b if a is not None and b else None
                passed = ratio is not None and ratio <= limit
                ok &= passed
                print(f"  {'PASS' if passed else 'FAIL'}  latency {q} {name} / {base}: "
                      f"{'-' if ratio is None else f'{ratio:.2f}'} (limit {limit})")
            a, b = (results[name].get("burst", {}).get("seconds"), results[base].get("burst", {}).get("seconds"))
            if a and b:
                print(f"        burst seconds {name} / {base}: {a / b:.2f}")
    if LINK["front"]:
        limit = 1.3
        print(f"\nagainst the floor (one way {args.rtt_ms / 2:g} ms + a direct PUT through the same hops: "
              f"p50 {results_floor[0] * 1000:.1f} ms, p95 {results_floor[1] * 1000:.1f} ms; each quantile against "
              f"the floor's own):")
        for name in results:
            if not name.startswith("syncbridge"):
                continue
            for i, q in enumerate(("p50", "p95")):
                value = results[name]["latency"][q]
                ratio = value / results_floor[i] if value else None
                passed = ratio is not None and ratio <= limit
                print(f"  {'PASS' if passed else 'FAIL'}  latency {q} {name} / floor: "
                      f"{'-' if ratio is None else f'{ratio:.2f}'} (limit {limit})")
            if "first" in results[name]:
                value, warm = results[name]["first"]["seconds"], results[name]["latency"]["p50"]
                ratio = value / warm if value and warm else None
                passed = ratio is not None and ratio <= 1.5
                print(f"  {'PASS' if passed else 'FAIL'}  first output after {args.idle_first:g} s idle / warm p50, "
                      f"{name}: {'-' if ratio is None else f'{ratio:.2f}'} (limit 1.5)")
    return 0 if ok else 1


def transfer_floor(client, server, one_way: float, samples: int = 40) -> tuple[float, float]:
    """One way plus the median PUT of a 100 KB body (no 100-continue) on a warm connection through the
    same hops as the contenders minus the delay (the fault proxy in front of moto, when there is
    one): the least any pusher can take from a close to a visible object over the emulated link."""
    payload = os.urandom(100 * 1024)
    server.create_bucket("bench-floor")
    with contextlib.ExitStack() as stack:
        endpoint = server.endpoint
        if LINK["proxy"]:
            from tests.faultproxy import FaultProxy
            endpoint = stack.enter_context(FaultProxy(server.endpoint)).endpoint
        put = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=server.access_key,
                           aws_secret_access_key=server.secret_key, region_name="us-east-1",
                           config=BotoConfig(request_checksum_calculation="when_required",
                                             response_checksum_validation="when_required",
                                             s3={"addressing_style": "path"}))
        times = []
        for i in range(samples + 1):
            t0 = time.monotonic()
            put.put_object(Bucket="bench-floor", Key=f"floor/{i}", Body=payload)  # bytes: no 100-continue
            times.append(time.monotonic() - t0)
            time.sleep(0.05)
        put.close()
    times = sorted(times[1:])
    return one_way + statistics.median(times), one_way + times[max(0, int(0.95 * len(times)) - 1)]


def measure_first_after_idle(contenders: list, client, *, idle: float) -> dict:
    """Stay idle ``idle`` seconds, then, for each contender in turn, write one 100 KB file and time
    it from close to visible; also count the connections its link opened after the close."""
    time.sleep(idle)
    out = {}
    payload = os.urandom(100 * 1024)
    for c in contenders:
        rel = f"lat/first_after_idle_{int(idle)}.png"
        path = c.dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(payload)
        closed = time.monotonic()
        seconds = None
        while time.monotonic() - closed < 30:
            if head_ok(client, c.bucket, c.key(rel)):
                seconds = time.monotonic() - closed
                break
            time.sleep(0.001)
        out[c.name] = {"seconds": seconds,
                       "connections": c.wan.opened_since(closed) if c.wan is not None else None}
    return out


def _checks(name: str, sb: dict, ref: dict) -> bool:
    ok = True
    print(f"\n{name} vs targets:")
    checks = []
    a, b = sb["latency"]["p50"], ref["latency"]["p50"]
    checks.append(("latency p50 within 1.3x of the reference", a is not None and b and a / b, 1.3))
    a, b = sb["latency"]["p95"], ref["latency"]["p95"]
    checks.append(("latency p95 within 2x of the reference", a is not None and b and a / b, 2.0))
    a, b = sb["burst"]["seconds"], ref["burst"]["seconds"]
    checks.append(("burst time within 1.5x of the reference", a and b and a / b, 1.5))
    checks.append(("burst processes <= 2", sb["burst"]["procs"], 2))
    checks.append(("burst peak RSS <= 120 MB", sb["burst"]["peak_rss_mb"], 120))
    checks.append(("idle RSS <= 60 MB", sb.get("idle", {}).get("rss_mb"), 60))
    checks.append(("idle CPU over 5 s <= 0.05 s", sb.get("idle", {}).get("cpu_s"), 0.05))
    checks.append(("files lost + collisions == 0", sb["burst"]["lost"] + sb["burst"]["collisions"]
                   + sb["latency"]["lost"], 0))
    for label, value, limit in checks:
        passed = value is not None and value is not False and value <= limit
        ok &= bool(passed)
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"  {'PASS' if passed else 'FAIL'}  {label}: {shown} (limit {limit})")
    return ok


if __name__ == "__main__":
    sys.exit(main())
