"""Resource bounds of the output watcher: memory, file descriptors, journal size.

Runs ``python -m syncbridge watch DIR`` as its own process against a loopback
``rclone serve s3`` (or moto) and samples it from ``/proc`` (no psutil):

1. **volume run**: ``--files`` (default 100,000) small files written as fast as possible in
   nested folders (1,000 per folder; the inotify queue may overflow, which forces rescans).
   Reports RSS when idle before the run (the baseline), at its peak, and at the end once
   everything is in the bucket; open file descriptors (min/max); files/s. Then the files
   are deleted and RSS is sampled again.
2. **soak**: ``--rate`` files/s (default 20) for ``--soak-seconds`` (default 600); the writer
   also deletes the oldest files so the folder holds ``--keep`` (default 1,000), as a pod
   that cleans its outputs would. Every 5 s: journal rows by state, journal size (db + WAL),
   RSS, fds. Bounded means: pending rows stay near zero, total rows track the files in the
   folder (rows of deleted files are dropped), not the files ever written, and the journal's
   size stops growing once the folder is at ``--keep``.

Figures are printed as ratios against the baseline (idle RSS, the folder's file count).

    python benchmarks/bench_resources.py                              # full: 100,000 files + 10 min
    python benchmarks/bench_resources.py --files 5000 --soak-seconds 30   # short run

Not run in CI (see docs/tests.md and docs/benchmarks.md; the CI suite covers correctness).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from syncbridge.demo.localserver import serve_rclone_s3
from tests.servers import serve_moto  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 1e6


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def status(state: Path) -> dict:
    try:
        return json.loads((state / "watch" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def journal_figures(state: Path) -> tuple[dict[str, int], int]:
    db = state / "watch" / "journal.sqlite3"
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.exists())
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = dict(conn.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        rows = {}
    return rows, size


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss: list[float] = []
        self.fds: list[int] = []

    def sample(self) -> tuple[float, int]:
        r, f = rss_mb(self.pid), fd_count(self.pid)
        self.rss.append(r)
        self.fds.append(f)
        return r, f


def wait_uploaded(state: Path, total: int, sampler: Sampler, timeout: float) -> float:
    started = time.monotonic()
    last_print = 0.0
    while time.monotonic() - started < timeout:
        sampler.sample()
        st = status(state)
        if st.get("uploaded", 0) + st.get("skipped", 0) >= total and st.get("pending", 1) == 0:
            return time.monotonic() - started
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"  ... uploaded {st.get('uploaded', 0)}/{total}, pending {st.get('pending')}, "
                  f"rss {sampler.rss[-1]:.0f} MB, fds {sampler.fds[-1]}", flush=True)
        time.sleep(0.5)
    raise SystemExit(f"not everything uploaded within {timeout:.0f}s: {status(state)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files in the volume run (default 100000)")
    parser.add_argument("--size", type=int, default=512, help="bytes per file (default 512)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="volume runs one after another (a high-water mark stays level; a leak grows)")
    parser.add_argument("--soak-seconds", type=float, default=600, help="soak duration (default 600)")
    parser.add_argument("--rate", type=float, default=20, help="files per second in the soak (default 20)")
    parser.add_argument("--keep", type=int, default=1000, help="files kept in the folder during the soak")
    parser.add_argument("--server", choices=("rclone", "moto"), default="rclone")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sb-bench-res-"))
    out, state = work / "out", work / "state"
    out.mkdir()
    serve = serve_rclone_s3(work / "s3", log_file=work / "s3.log") if args.server == "rclone" else serve_moto()
    with serve as server:
        bucket = "bench-res"
        server.create_bucket(bucket)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "SYNCBRIDGE_", "RCLONE_"))}
        env.update(server.environ(bucket))
        env.update({"SYNCBRIDGE_STATE_DIR": str(state), "SYNCBRIDGE_WORKSPACE": str(work),
                    "SYNCBRIDGE_POD_ID": "bench", "SYNCBRIDGE_HEARTBEAT_SECONDS": "0",
                    "SYNCBRIDGE_WATCH_INCLUDE": "*.png"})
        log = open(work / "watch.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "watch", str(out), "--prefix", "res"], env=env,
                                stdout=log, stderr=log, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not status(state).get("catch_up_done") and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)
            sampler = Sampler(proc.pid)
            base_rss, base_fds = sampler.sample()
            print(f"watcher pid {proc.pid} idle: RSS {base_rss:.1f} MB, {base_fds} fds (the baseline)")

            # 1. volume run(s)
            payload = os.urandom(args.size)
            uploaded_total = 0
            for round_no in range(1, args.rounds + 1):
                t0 = time.monotonic()
                for i in range(args.files):
                    folder = out / f"r{round_no}d{i // 1000:03d}"
                    if i % 1000 == 0:
                        folder.mkdir()
                        sampler.sample()
                    with open(folder / f"f{i:06d}.png", "wb") as fh:
                        fh.write(payload)
                wrote = time.monotonic() - t0
                uploaded_total += args.files
                sampler.rss.clear()
                sampler.fds.clear()
                took = wait_uploaded(state, uploaded_total, sampler, args.timeout)
                end_rss, end_fds = sampler.sample()
                rows, size = journal_figures(state)
                print(f"\nvolume run {round_no}: {args.files} files written in {wrote:.1f}s, all in the bucket "
                      f"{took:.1f}s later ({args.files / (wrote + took):.0f} files/s overall)")
                print(f"  RSS MB:   start {base_rss:.1f}  peak {max(sampler.rss):.1f}  end {end_rss:.1f}   "
                      f"(end/start {end_rss / base_rss:.2f}x, peak/start {max(sampler.rss) / base_rss:.2f}x)")
                print(f"  open fds: start {base_fds}  min {min(sampler.fds)}  max {max(sampler.fds)}  end {end_fds}")
                print(f"  journal:  {rows} rows, {size / 1e6:.1f} MB")
                for p in out.iterdir():
                    for f in p.iterdir():
                        f.unlink()
                    p.rmdir()
                time.sleep(5)
                after_rss, after_fds = sampler.sample()
                rows, size = journal_figures(state)
                print(f"  after deleting every file: RSS {after_rss:.1f} MB ({after_rss / base_rss:.2f}x start), "
                      f"{after_fds} fds, journal {sum(rows.values())} rows, {size / 1e6:.1f} MB")
            args.files = uploaded_total

            # 2. soak
            if args.soak_seconds > 0:
                print(f"\nsoak: {args.rate:g} files/s for {args.soak_seconds:.0f}s, folder kept at {args.keep} files")
                live: collections.deque[Path] = collections.deque()
                soak = out / "soak"
                soak.mkdir()
                t0 = time.monotonic()
                written = 0
                next_sample = t0
                samples = []
                while time.monotonic() - t0 < args.soak_seconds:
                    due = int((time.monotonic() - t0) * args.rate)
                    while written < due:
                        path = soak / f"s{written // 500:04d}" / f"img_{written:07d}.png"
                        path.parent.mkdir(exist_ok=True)
                        with open(path, "wb") as fh:
                            fh.write(payload)
                        live.append(path)
                        written += 1
                        while len(live) > args.keep:
                            live.popleft().unlink()
                    if time.monotonic() >= next_sample:
                        next_sample += 5
                        r, f = sampler.sample()
                        rows, size = journal_figures(state)
                        samples.append((time.monotonic() - t0, written, len(live), rows, size, r, f))
                    time.sleep(0.01)
                took = wait_uploaded(state, args.files + written, sampler, 120)
                r, f = sampler.sample()
                rows, size = journal_figures(state)
                samples.append((time.monotonic() - t0, written, len(live), rows, size, r, f))
                print(f"  {'t':>6} {'written':>8} {'in folder':>9} {'rows':>7} {'pending':>7} {'journal MB':>10} "
                      f"{'RSS MB':>7} {'fds':>4}")
                step = max(1, len(samples) // 12)
                for t, w, n, rows_, size_, r_, f_ in samples[::step] + samples[-1:]:
                    print(f"  {t:6.0f} {w:8d} {n:9d} {sum(rows_.values()):7d} "
                          f"{rows_.get('pending', 0) + rows_.get('failed', 0):7d} {size_ / 1e6:10.2f} {r_:7.1f} {f_:4d}")
                first_full = next((s for s in samples if s[2] >= args.keep), samples[0])
                print(f"  journal rows / files in folder at the end: {sum(rows.values()) / max(1, len(live)):.2f}x "
                      f"(files ever written in the soak: {written}); journal size end / when the folder "
                      f"first held {args.keep}: {size / max(1, first_full[4]):.2f}x; RSS end / baseline "
                      f"{r / base_rss:.2f}x; fds max {max(sampler.fds)}; last upload {took:.1f}s after the writer stopped")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()
    print(f"\n(work folder {work}; watch log {work / 'watch.log'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
