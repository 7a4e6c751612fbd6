"""bisync interrupted mid-run (SIGKILL, cancel, a flaky network), then rerun: it recovers without a
manual ``--resync`` and nothing is lost on either side.

The run is slowed by the fault proxy (PUTs stall) so there is a "mid-run" to interrupt.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from syncbridge.bulk import bisync, bisync_workdir
from syncbridge.config import load_config
from syncbridge.errors import CancelledError, RcloneError
from syncbridge.store import S3Store

from ..conftest import new_bucket, server_env
from ..faultproxy import FaultProxy, Rule

PREFIX = "bi"


def SLOW_PUT() -> Rule:  # noqa: N802 - reads as a constant
    """Stall rclone's uploads into the synced prefix (not the lease object next to it)."""
    return Rule("stall", method="PUT", path=rf"^/[^/]+/{PREFIX}/", seconds=2)


def _bisync_pids(workdir: Path) -> list[int]:
    """rclone processes running bisync with this (test-private) workdir: only ours."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"bisync" in argv and str(workdir).encode() in argv:
            found.append(int(entry))
    return found


def _local_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def _bucket_tree(store: S3Store) -> dict[str, str]:
    out = {}
    for info in store.list(PREFIX + "/"):
        data, _ = store.get_bytes(info.key)
        out[info.key[len(PREFIX) + 1:]] = hashlib.sha256(data).hexdigest()
    return out


class Scene:
    """A synced pair, then changes on both sides that the interrupted run must carry over."""

    def __init__(self, server, tmp_path: Path, proxy: FaultProxy) -> None:
        env = server_env(server, new_bucket(server), tmp_path)
        env["R2_ENDPOINT"] = proxy.endpoint
        self.config = load_config(env)
        self.store = S3Store(self.config.remote)
        self.local = tmp_path / "local"
        self.local.mkdir()
        self.workdir = bisync_workdir(self.config, self.local, PREFIX)
        self.proxy = proxy

    def seed(self) -> None:
        for i in range(6):
            (self.local / "base").mkdir(exist_ok=True)
            (self.local / "base" / f"b{i}.txt").write_bytes(f"base {i}\n".encode())
        first = bisync(self.config, self.local, PREFIX)
        assert first.resync

    def change_both_sides(self) -> dict[str, bytes]:
        expected: dict[str, bytes] = {}
        for i in range(12):
            rel = f"new/local{i}.bin"
            data = os.urandom(40_000 + i)
            (self.local / "new").mkdir(exist_ok=True)
            (self.local / rel).write_bytes(data)
            expected[rel] = data
        for i in range(6):
            rel = f"remote/r{i}.txt"
            data = f"from another pod {i}\n".encode() * 50
            self.store.put_bytes(f"{PREFIX}/{rel}", data)
            expected[rel] = data
        edited = b"edited locally\n" * 100
        (self.local / "base" / "b0.txt").write_bytes(edited)
        os.utime(self.local / "base" / "b0.txt", (2e9, 2e9))  # clearly newer than the bucket's copy
        expected["base/b0.txt"] = edited
        for i in range(1, 6):
            expected[f"base/b{i}.txt"] = f"base {i}\n".encode()
        return expected

    def run_in_thread(self) -> tuple[threading.Thread, dict]:
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["summary"] = bisync(self.config, self.local, PREFIX, cancel=outcome.setdefault(
                    "cancel", threading.Event()))
            except Exception as exc:  # noqa: BLE001 - inspected by the test
                outcome["error"] = exc

        outcome["cancel"] = threading.Event()
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, outcome

    def assert_converged(self, expected: dict[str, bytes]) -> None:
        want = {rel: hashlib.sha256(data).hexdigest() for rel, data in expected.items()}
        local, remote = _local_tree(self.local), _bucket_tree(self.store)
        assert local == want, f"local side differs: missing {sorted(set(want) - set(local))}, " \
                              f"extra {sorted(set(local) - set(want))}"
        assert remote == want, f"bucket side differs: missing {sorted(set(want) - set(remote))}, " \
                               f"extra {sorted(set(remote) - set(want))}"


@pytest.fixture(params=["rclone", "moto"])
def scene(request, tmp_path):
    server = request.getfixturevalue(f"{request.param}_s3")
    with FaultProxy(server.endpoint) as proxy:
        yield Scene(server, tmp_path, proxy)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_recovers(scene):
    scene.seed()
    expected = scene.change_both_sides()
    scene.proxy.add(SLOW_PUT())
    thread, outcome = scene.run_in_thread()
    assert scene.proxy.wait_for(lambda: scene.proxy.count("stall") > 0, 60), "bisync never uploaded"
    pids = _bisync_pids(scene.workdir)
    assert pids, "no bisync rclone to kill"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(60)
    assert isinstance(outcome.get("error"), RcloneError) and outcome["error"].returncode == -9
    assert list(scene.workdir.glob("*.lck")), "the killed rclone should have left its lock behind"
    scene.proxy.clear()

    summary = bisync(scene.config, scene.local, PREFIX)
    assert not summary.resync, "recovery must not need --resync"
    scene.assert_converged(expected)
    # and the pair keeps working afterwards
    (scene.local / "after.txt").write_bytes(b"after")
    bisync(scene.config, scene.local, PREFIX)
    assert scene.store.get_bytes(f"{PREFIX}/after.txt")[0] == b"after"


@pytest.mark.slow
def test_cancel_mid_run_then_rerun_recovers(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy)
        scene.seed()
        expected = scene.change_both_sides()
        proxy.add(SLOW_PUT())
        thread, outcome = scene.run_in_thread()
        assert proxy.wait_for(lambda: proxy.count("stall") > 0, 60)
        outcome["cancel"].set()
        thread.join(60)
        assert isinstance(outcome.get("error"), CancelledError)
        assert not _bisync_pids(scene.workdir), "cancel must not leave rclone running"
        proxy.clear()
        summary = bisync(scene.config, scene.local, PREFIX)
        assert not summary.resync
        scene.assert_converged(expected)


def test_sigkill_during_first_resync_then_rerun(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy)
        expected = {}
        for i in range(8):
            data = os.urandom(10_000)
            (scene.local / f"f{i}.bin").write_bytes(data)
            expected[f"f{i}.bin"] = data
        for i in range(3):
            scene.store.put_bytes(f"{PREFIX}/remote{i}.txt", b"r" * i)
            expected[f"remote{i}.txt"] = b"r" * i
        proxy.add(SLOW_PUT())
        thread, outcome = scene.run_in_thread()
        assert proxy.wait_for(lambda: proxy.count("stall") > 0, 60)
        for pid in _bisync_pids(scene.workdir):
            os.kill(pid, signal.SIGKILL)
        thread.join(60)
        assert "error" in outcome
        proxy.clear()
        bisync(scene.config, scene.local, PREFIX)
        scene.assert_converged(expected)


@pytest.mark.slow
def test_flaky_network_run_then_rerun_converges(rclone_s3, tmp_path):
    """Resets mid-upload and SlowDown answers: the run may fail or succeed; the rerun converges."""
    with FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy)
        scene.seed()
        expected = scene.change_both_sides()
        # Capped, so rclone's own retries and pacer do not stretch the test: the point is the rerun.
        proxy.add(Rule("reset", method="PUT", path=rf"^/[^/]+/{PREFIX}/", phase="request", fraction=0.5,
                       probability=0.3, times=4),
                  Rule("error", method="GET", status=503, code="SlowDown", probability=0.3, times=2))
        try:
            bisync(scene.config, scene.local, PREFIX)
        except RcloneError:
            pass
        assert proxy.count("reset") + proxy.count("error") > 0, "no fault was injected"
        proxy.clear()
        bisync(scene.config, scene.local, PREFIX)
        scene.assert_converged(expected)


@pytest.mark.slow
def test_stale_lock_of_a_dead_process_is_cleared_but_a_live_one_is_kept(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy)
        scene.seed()
        lock = next(iter(scene.workdir.glob("*.path1.lst"))).name.replace(".path1.lst", ".lck")
        # a PID that runs something else (this very test process) does not hold a bisync lock
        (scene.workdir / lock).write_text(f'{{"Session":"x","PID":"{os.getpid()}"}}')
        bisync(scene.config, scene.local, PREFIX)
        assert not (scene.workdir / lock).exists()
        # a live process running bisync keeps its lock, and rclone refuses to run beside it
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "bisync"])
        try:
            (scene.workdir / lock).write_text(
                f'{{"Session":"x","PID":"{holder.pid}","TimeRenewed":"2026-01-01T00:00:00Z",'
                f'"TimeExpires":"2999-01-01T00:00:00Z"}}')
            with pytest.raises(RcloneError) as info:
                bisync(scene.config, scene.local, PREFIX)
            assert "lock" in str(info.value)
            assert (scene.workdir / lock).exists()
        finally:
            holder.kill()
            holder.wait()


@pytest.mark.slow
def test_state_files_are_private_after_bisync(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy)
        scene.seed()
        bisync(scene.config, scene.local, PREFIX)
        for path in scene.config.state_dir.rglob("*"):
            mode = path.stat().st_mode & 0o777
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path} is {oct(mode)}"
