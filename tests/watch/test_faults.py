"""The output watcher under faults injected by the loopback proxy (tests/faultproxy.py): answers a real
S3 server cannot be made to give (503 SlowDown, 500, a hung PUT), outages, resets, SIGTERM and SIGKILL.

Each scenario ends by comparing the folder with the bucket: every file present is in
the bucket under its key with identical bytes (ETag = MD5 for single-part uploads on
both loopback servers; the 50 MB files are downloaded and hashed).

Sizes and counts are parameters (environment variables) so a long run is possible:
``SYNCBRIDGE_FAULT_BURST`` (1000 files), ``SYNCBRIDGE_FAULT_OUTAGE`` (10 s),
``SYNCBRIDGE_FAULT_BIG_MB`` (50), ``SYNCBRIDGE_FAULT_BIG_COUNT`` (2),
``SYNCBRIDGE_FAULT_KILL_RUNS`` (20).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

watch = pytest.importorskip("syncbridge.watch")

from syncbridge.keys import object_key  # noqa: E402
from syncbridge.config import load_config  # noqa: E402
from syncbridge.store import S3Store  # noqa: E402

from ..conftest import new_bucket, server_env  # noqa: E402
from ..faultproxy import FaultProxy, Rule  # noqa: E402

PREFIX = "w"
BURST = int(os.environ.get("SYNCBRIDGE_FAULT_BURST", "1000"))
OUTAGE = float(os.environ.get("SYNCBRIDGE_FAULT_OUTAGE", "10"))
BIG_MB = int(os.environ.get("SYNCBRIDGE_FAULT_BIG_MB", "50"))
BIG_COUNT = int(os.environ.get("SYNCBRIDGE_FAULT_BIG_COUNT", "2"))
KILL_RUNS = int(os.environ.get("SYNCBRIDGE_FAULT_KILL_RUNS", "20"))


# -- helpers shared with test_churn.py -----------------------------------------------------------

class Rig:
    """A watched folder, a bucket behind the fault proxy, and a direct (fault-free) view of the bucket."""

    def __init__(self, server, tmp_path: Path, proxy: FaultProxy | None, **env_extra: str) -> None:
        self.server = server
        self.bucket = new_bucket(server)
        self.out = tmp_path / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        env = server_env(server, self.bucket, tmp_path)
        env.update({"COMFYUI_OUTPUT_DIR": str(self.out), "SYNCBRIDGE_WATCH_PREFIX": PREFIX,
                    "SYNCBRIDGE_HEARTBEAT_SECONDS": "0", "SYNCBRIDGE_DRAIN_SECONDS": "3"})
        env.update(env_extra)
        self.direct_config = load_config(env)
        if proxy is not None:
            env["R2_ENDPOINT"] = proxy.endpoint
        self.env = env
        self.config = load_config(env)
        self.store = S3Store(self.direct_config.remote)
        self.proxy = proxy

    def expected(self) -> dict[str, tuple[Path, int]]:
        """key -> (path, size) for every file in the folder now."""
        out = {}
        for path in self.out.rglob("*"):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(self.out).as_posix()
                out[object_key(PREFIX, rel)] = (path, path.stat().st_size)
        return out

    def objects(self) -> dict[str, str]:
        return {info.key: info.etag for info in self.store.list(PREFIX + "/")}

    def differences(self, *, full: bool = False) -> list[str]:
        want = self.expected()
        have = self.objects()
        siblings: dict[str, list[str]] = {}
        for k in have:
            match = re.match(r"^(.*)\.~[0-9a-f]{8}((?:\.[^./]*)?)$", k)
            if match:
                siblings.setdefault(match.group(1) + match.group(2), []).append(k)
        problems = []
        for key, (path, _size) in want.items():
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            # A file deleted (or moved away) and then made again is a new output: the pushed one
            # is kept and the new bytes go to a sibling key, name.~<8 hex>.ext (docs/watch.md).
            if have.get(key) != md5:
                key = next((k for k in siblings.get(key, ()) if have[k] == md5), key)
            if key not in have:
                problems.append(f"missing {key}")
                continue
            if full:
                got, _ = self.store.get_bytes(key)
                if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
                    problems.append(f"different bytes {key}")
            elif have[key] != md5:
                problems.append(f"different bytes {key}")
        return problems

    def wait_converged(self, timeout: float, *, full: bool = False) -> list[str]:
        deadline = time.monotonic() + timeout
        problems = self.differences(full=full)
        while problems and time.monotonic() < deadline:
            time.sleep(0.25)
            problems = self.differences(full=full)
        return problems

    def start_cli(self, log: Path) -> subprocess.Popen:
        """``syncbridge watch`` as its own process (session), as a container would run it."""
        handle = open(log, "ab")
        try:
            return subprocess.Popen([sys.executable, "-m", "syncbridge", "watch", str(self.out)], env=self.env,
                                    stdout=handle, stderr=handle, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            handle.close()


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_status(rig: Rig, predicate, timeout: float) -> bool:
    return wait_for(lambda: predicate(watch.read_status(rig.config.state_dir) or {}), timeout)


@pytest.fixture
def rig(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        yield Rig(rclone_s3, tmp_path, proxy)


# -- scenarios ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_server_down_during_a_burst(rig, capsys):
    """The server goes away for OUTAGE seconds while BURST files are written; all arrive afterwards."""
    rng = random.Random(7)
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        started = time.monotonic()
        for i in range(BURST):
            if i == BURST // 5:
                rig.proxy.outage(OUTAGE)
                outage_started = time.monotonic()
            write_file(rig.out / f"batch{i % 10}" / f"img_{i:05d}_.png", rng.randbytes(rng.randint(200, 4000)))
        assert rig.proxy.count("outage") == 1
        assert wait_for(lambda: rig.proxy.listening, OUTAGE + 10)
        restored = time.monotonic()
        assert watcher.wait_idle(120), watcher.stats()
        stats = watcher.stats()
    problems = rig.wait_converged(10)
    assert not problems, problems[:10]
    assert len(rig.objects()) == BURST
    assert stats.retries > 0, "the outage should have made uploads retry"
    with capsys.disabled():
        print(f"\n[faults] outage {OUTAGE:.0f}s during {BURST} files: all pushed {time.monotonic() - restored:.1f}s "
              f"after the server came back ({time.monotonic() - started:.1f}s total, "
              f"{outage_started - started:.1f}s before the outage; {stats.retries} retries)")


@pytest.fixture(params=["rclone", "moto"])
def any_rig(request, tmp_path):
    """Both servers: moto enforces If-None-Match, so the watcher sends conditional PUTs there."""
    server = request.getfixturevalue(f"{request.param}_s3")
    with FaultProxy(server.endpoint) as proxy:
        yield Rig(server, tmp_path, proxy)


def test_one_put_in_five_answered_503(any_rig):
    rig = any_rig
    rng = random.Random(11)
    rig.proxy.add(Rule("error", method="PUT", path=f"/{PREFIX}/", status=503, code="SlowDown", probability=0.2))
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        for i in range(300):
            write_file(rig.out / f"s{i % 7}" / f"f{i}.png", rng.randbytes(1000 + i))
        assert watcher.wait_idle(120), watcher.stats()
        stats = watcher.stats()
    assert rig.proxy.count("error") >= 20
    assert stats.retries >= rig.proxy.count("error") // 2
    problems = rig.differences()
    assert not problems, problems[:10]


@pytest.mark.slow
def test_connection_resets_mid_upload_of_large_files(rig):
    rig.proxy.add(Rule("reset", method="PUT", path=f"/{PREFIX}/", phase="request", fraction=0.5, times=2),
                  Rule("reset", method="PUT", path=f"/{PREFIX}/", phase="request", fraction=0.95, times=1),
                  Rule("reset", method="PUT", path=f"/{PREFIX}/", query="partNumber", phase="request", times=2))
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        for i in range(BIG_COUNT):
            write_file(rig.out / "video" / f"clip_{i}.mp4", os.urandom(BIG_MB * 1024 * 1024))
        write_file(rig.out / "small.png", b"small")
        assert watcher.wait_idle(240), watcher.stats()
    assert rig.proxy.count("reset") >= 2
    problems = rig.differences(full=True)
    assert not problems, problems


@pytest.mark.slow
def test_slowdown_and_5xx_are_retried_until_everything_lands(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        rig = Rig(rclone_s3, tmp_path, proxy, SYNCBRIDGE_HEARTBEAT_SECONDS="30")
        # the first six PUTs fail, in this order (the heartbeat may take some)
        for status, code, times in ((503, "SlowDown", 1), (429, "SlowDown", 1), (500, "InternalError", 1),
                                    (503, "SlowDown", 2), (500, "InternalError", 1)):
            proxy.add(Rule("error", method="PUT", status=status, code=code, times=times))
        with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
            for i in range(10):
                write_file(rig.out / f"f{i}.png", b"%d" % i * 100)
            assert watcher.wait_idle(60), watcher.stats()
            stats = watcher.stats()
        assert proxy.count("error") == 6
        assert stats.retries >= 4 and stats.failed == 0 and stats.uploaded == 10
        assert "SlowDown" in (stats.last_error or "") or "InternalError" in (stats.last_error or "")
        assert not rig.differences() and len(rig.objects()) == 10


@pytest.mark.slow
def test_sigterm_with_hung_uploads_exits_within_the_drain_deadline(rclone_s3, tmp_path):
    """A spot pod's 5 s: PUTs that never answer must not hold the process past the deadline."""
    with FaultProxy(rclone_s3.endpoint) as proxy:
        rig = Rig(rclone_s3, tmp_path, proxy, SYNCBRIDGE_DRAIN_SECONDS="1.5", SYNCBRIDGE_HEARTBEAT_SECONDS="30")
        proxy.add(Rule("stall", method="PUT", seconds=120))
        proc = rig.start_cli(tmp_path / "watch.log")
        try:
            assert wait_status(rig, lambda s: s.get("catch_up_done"), 60) and proc.poll() is None
            for i in range(20):
                write_file(rig.out / f"h{i}.png", b"%d" % i)
            # accepted, stuck in flight
            assert wait_status(rig, lambda s: proxy.count("stall") >= 2 and s.get("pending") == 20, 30)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            proc.wait(timeout=30)
            elapsed = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log = (tmp_path / "watch.log").read_text(errors="replace")
        assert elapsed < 1.5 + 2.5, f"exit took {elapsed:.1f}s after SIGTERM"
        assert proc.returncode == 1 and "NOT everything pushed" in log and "20 pending" in log, log[-2000:]
        assert _journal_pending(rig) == 20


def _journal_pending(rig: Rig) -> int:
    from syncbridge.watch.journal import read_summary

    summary = read_summary(watch.journal_path(rig.config.state_dir))
    return summary.pending if summary else 0


@pytest.mark.slow
@pytest.mark.parametrize("storm_ends", [False, True], ids=["storm-goes-on", "storm-ends-at-sigterm"])
def test_sigterm_during_a_retry_storm(rig, tmp_path, storm_ends):
    """SIGTERM while every upload fails: the process exits within the spot budget (5 s), and what it
    could not push is either pushed during the drain or journalled and pushed by the next start."""
    storm = Rule("error", path=f"/{PREFIX}/", status=503, code="SlowDown")
    rig.proxy.add(storm)
    proc = rig.start_cli(tmp_path / "watch.log")
    try:
        for i in range(40):
            write_file(rig.out / f"o{i % 4}" / f"img_{i}.png", os.urandom(2000))
        # the storm is on (uploads retrying with backoff, one probe at a time) and every file is known
        assert rig.proxy.wait_for(lambda: rig.proxy.count("error") >= 4, 60), "no retry storm"
        assert wait_for(lambda: (watch.read_status(rig.config.state_dir) or {}).get("pending", 0) >= 40, 30)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        if storm_ends:
            rig.proxy.remove(storm)
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "watch.log").read_text(errors="replace")
    assert took < 5.0, f"exit took {took:.1f}s after SIGTERM (spot pods are killed after 5 s)\n{log[-2000:]}"
    assert "Traceback" not in log
    pending = _journal_pending(rig)
    if code == 0:
        assert storm_ends, "nothing can be pushed while the storm goes on"
        assert pending == 0
        assert not rig.differences()
    else:
        assert code == 1, log[-2000:]
        assert "NOT everything pushed" in log
        assert pending > 0, "files not pushed must be journalled"
        assert pending + len(rig.objects()) >= 40
    rig.proxy.clear()
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        assert watcher.wait_idle(60), watcher.stats()
    assert not rig.differences()
    assert _journal_pending(rig) == 0


@pytest.mark.slow
def test_kill_9_at_random_moments_then_restart(rig, tmp_path, capsys):
    """KILL_RUNS runs of `syncbridge watch`, each killed with SIGKILL at a random moment while files are
    written (some rewritten); then one clean run: everything is in the bucket with the newest bytes."""
    rng = random.Random(20261129)
    # a few slow uploads widen the window in which a kill lands mid-upload
    rig.proxy.add(Rule("stall", method="PUT", path=f"/{PREFIX}/", seconds=0.4, probability=0.2))
    logs = tmp_path / "logs"
    logs.mkdir()
    written = 0
    for run in range(KILL_RUNS):
        proc = rig.start_cli(logs / f"run{run}.log")
        try:
            for _ in range(rng.randint(3, 8)):
                write_file(rig.out / f"r{run % 5}" / f"img_{written:05d}_.png", rng.randbytes(rng.randint(100, 20_000)))
                written += 1
            if written > 10 and rng.random() < 0.5:  # a rewrite: the newest content must win
                victim = rng.choice(sorted(rig.out.rglob("*.png")))
                write_file(victim, rng.randbytes(rng.randint(100, 5000)))
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    rig.proxy.clear()
    started = time.monotonic()
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        assert watcher.wait_idle(120), watcher.stats()
    problems = rig.differences()
    assert not problems, problems[:10]
    assert len(rig.objects()) == written
    for path in logs.iterdir():
        assert "Traceback" not in path.read_text(errors="replace"), path.read_text(errors="replace")[-3000:]
    with capsys.disabled():
        print(f"\n[faults] {KILL_RUNS} runs killed with SIGKILL, {written} files: the next start pushed the rest "
              f"in {time.monotonic() - started:.1f}s")
