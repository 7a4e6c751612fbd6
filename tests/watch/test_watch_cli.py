"""`syncbridge watch` and `syncbridge status` as a user runs them: real processes, real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.watch.journal import read_summary
from syncbridge.demo.localserver import free_port
from syncbridge.store import open_store
from syncbridge.watch import journal_path, read_status

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "syncbridge", "watch", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited {proc.returncode} while waiting for {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _running(state_dir: Path, proc: subprocess.Popen) -> None:
    def ready() -> bool:
        status = read_status(state_dir)
        return bool(status and status["running"] and status["pid"] == proc.pid and status["catch_up_done"])

    _wait_for(ready, 60, "the watcher to run", proc)


def _settled(state_dir: Path, uploaded: int) -> bool:
    """At least ``uploaded`` uploads and nothing pending (a file a new folder's scan caught
    half-written is pushed twice, so counts are lower bounds)."""
    status = read_status(state_dir) or {}
    return status.get("uploaded", 0) >= uploaded and status.get("pending") == 0


def _status(env: dict[str, str]) -> dict:
    proc = run_cli(["status", "--json"], env, check=True)
    return json.loads(proc.stdout)


def _write_many(out: Path, prefix: str, n: int) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        rel = f"{prefix}/{i % 3}/img_{i:04d}.png"
        data = f"{prefix}-{i}".encode() * 300
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
        files[rel] = data
    return files


def _bucket(env: dict[str, str]) -> dict[str, bytes]:
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        return {o.key: store.get_bytes(o.key)[0] for o in store.list("outputs/")}
    finally:
        store.close()


def test_sigterm_drains_or_journals_never_loses(rclone_s3, tmp_path: Path) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    state = Path(env["SYNCBRIDGE_STATE_DIR"])
    proc = _start(env)
    _running(state, proc)
    files = _write_many(out, "burst", 300)
    proc.send_signal(signal.SIGTERM)  # at once: work is pending
    t0 = time.monotonic()
    stdout, stderr = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert elapsed < 4 + 3, f"drain took {elapsed:.1f}s"
    assert "watch stopped:" in stderr and "Traceback" not in stderr
    assert_no_secret(stdout, stderr)
    got = _bucket(env)
    summary = read_summary(journal_path(state))
    if proc.returncode == 0:
        assert "everything pushed" in stderr
        missing = sorted(rel for rel, data in files.items() if got.get(f"outputs/{rel}") != data)
        extra = sorted(set(got) - {f"outputs/{rel}" for rel in files})
        assert not missing, f"exit 0 but {len(missing)} not in the bucket: {missing[:5]}; other keys: {extra[:5]}" \
                            f"\n{stderr[-3000:]}"
    else:  # a loaded machine may not finish in 4 s: what is missing must be in the journal
        assert proc.returncode == 1 and "NOT everything pushed" in stderr
        missing = [rel for rel, data in files.items() if got.get(f"outputs/{rel}") != data]
        assert summary is not None and summary.pending >= len(missing)


@pytest.mark.slow
def test_sigterm_with_the_store_down_records_everything_then_the_next_start_pushes_it(
        rclone_s3, tmp_path: Path) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    down = dict(env, R2_ENDPOINT=f"http://127.0.0.1:{free_port()}", SYNCBRIDGE_DRAIN_SECONDS="1")
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    state = Path(env["SYNCBRIDGE_STATE_DIR"])
    proc = _start(down)
    _running(state, proc)
    files = _write_many(out, "pending", 40)
    _wait_for(lambda: (read_status(state) or {}).get("retries", 0) > 0, 30, "failed attempts", proc)
    running = _status(down)
    assert running["running"] is True and running["pending"] == 40 and running["uploaded"] == 0
    assert running["oldest_pending_age"] is not None
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 1 + 3
    assert proc.returncode == 1, stderr
    assert "NOT everything pushed" in stderr and "40 pending" in stderr
    # no daemon: status reads the journal
    stopped = _status(down)
    assert stopped["running"] is False and stopped["pending"] == 40
    human = run_cli(["status"], down, check=True).stdout
    assert "not running" in human and "40 pending" in human
    # the next start (store reachable again) pushes all of it
    proc = _start(env)
    try:
        _wait_for(lambda: _settled(state, 40), 60, "the pending files", proc)
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    got = _bucket(env)
    assert all(got[f"outputs/{rel}"] == data for rel, data in files.items())
    assert _status(env)["pending"] == 0


@pytest.mark.slow
def test_kill_9_and_restart_pushes_pending_and_reuploads_nothing(rclone_s3, tmp_path: Path) -> None:
    bucket = new_bucket(rclone_s3)
    env = server_env(rclone_s3, bucket, tmp_path)
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    state = Path(env["SYNCBRIDGE_STATE_DIR"])
    backing = rclone_s3.root / bucket / "outputs"  # the server's files: their mtimes count PUTs

    def server_mtimes() -> dict[str, int]:
        return {str(p.relative_to(backing)): p.stat().st_mtime_ns for p in backing.rglob("*") if p.is_file()}

    proc = _start(env)
    _running(state, proc)
    first = _write_many(out, "first", 30)
    _wait_for(lambda: _settled(state, 30), 60, "the first uploads", proc)
    before = server_mtimes()
    assert set(before) == set(first)
    second = _write_many(out, "second", 30)
    proc.kill()  # SIGKILL, mid-upload
    proc.wait(timeout=10)
    # while it is down: new files, one rewritten in place, one deleted
    third = _write_many(out, "third", 10)
    rewritten = "first/0/img_0000.png"
    (out / rewritten).write_bytes(b"rewritten while the watcher was down")
    (out / "first/1/img_0001.png").unlink()
    time.sleep(0.05)
    proc = _start(env)
    try:
        _running(state, proc)
        _wait_for(lambda: (read_status(state) or {}).get("pending") == 0, 60, "the catch-up", proc)
        status = _status(env)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    got = _bucket(env)
    for rel, data in {**first, **second, **third}.items():
        if rel != rewritten:
            assert got[f"outputs/{rel}"] == data, rel
    assert got[f"outputs/{rewritten}"] == b"rewritten while the watcher was down"
    after = server_mtimes()
    unchanged = [rel for rel in first if rel != rewritten]
    reuploaded = [rel for rel in unchanged if after[rel] != before[rel]]
    assert not reuploaded, f"uploaded again: {reuploaded}"
    assert after[rewritten] != before[rewritten]
    # after the restart only what was missing went up: some of `second`, all of `third`, the rewrite
    assert status["uploaded"] <= 30 + 10 + 1 and status["collisions"] == 0
    assert _status(env)["journal"]["done"] == 30 + 30 + 10 - 1  # the deleted file's row is compacted away


def test_status_of_a_running_watcher(tmp_path: Path, local_env: dict[str, str]) -> None:
    out = Path(local_env["COMFYUI_OUTPUT_DIR"])
    state = Path(local_env["SYNCBRIDGE_STATE_DIR"])
    proc = _start(local_env, "--prefix", "outputs")
    try:
        _running(state, proc)
        _write_many(out, "s", 12)
        _wait_for(lambda: (read_status(state) or {}).get("uploaded", 0) >= 12
                  and read_status(state).get("pending") == 0, 30, "uploads", proc)
        report = _status(local_env)
        human = run_cli(["status"], local_env, check=True).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert report["running"] is True and report["pid"] == proc.pid
    assert report["pending"] == 0 and report["uploaded"] >= 12 and report["failed"] == 0
    assert report["last_latency"] is not None and report["p95_latency"] >= 0
    assert "watcher running" in human and f"{report['uploaded']} uploaded" in human and "p95" in human
    assert proc.returncode == 0
    assert oct((state / "watch" / "status.json").stat().st_mode & 0o777) == "0o600"


def test_bad_directory_and_second_watcher_are_clear_errors(tmp_path: Path, local_env: dict[str, str]) -> None:
    missing = run_cli(["watch", str(tmp_path / "nope")], local_env)
    assert missing.returncode != 0 and "no such folder" in missing.stderr and "Traceback" not in missing.stderr
    state = Path(local_env["SYNCBRIDGE_STATE_DIR"])
    proc = _start(local_env)
    try:
        _running(state, proc)
        second = run_cli(["watch"], local_env, timeout=30)
        assert second.returncode != 0 and "another watcher" in second.stderr and str(proc.pid) in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


def _can_limit_watches() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Ur", "sh", "-c", "echo 5 > /proc/sys/user/max_inotify_watches"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_limit_watches(), reason="needs unshare -Ur to lower the inotify watch limit")
def test_watch_limit_is_loud_and_falls_back_to_rescans(tmp_path: Path, local_env: dict[str, str]) -> None:
    """A real ENOSPC from the kernel: the watcher runs in a user namespace whose watch limit is 3."""
    out = Path(local_env["COMFYUI_OUTPUT_DIR"])
    state = Path(local_env["SYNCBRIDGE_STATE_DIR"])
    for d in range(6):
        (out / f"d{d}" / "inner").mkdir(parents=True)
    script = f"echo 3 > /proc/sys/user/max_inotify_watches && exec {sys.executable} -m syncbridge watch"
    proc = subprocess.Popen(["unshare", "-Ur", "sh", "-c", script], env=local_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: bool((read_status(state) or {}).get("unwatched")), 60, "the watcher to run", proc)
        for d in range(6):
            (out / f"d{d}" / "inner" / "deep.png").write_bytes(b"deep %d" % d)
        _wait_for(lambda: _settled(state, 6), 30, "fallback rescans to push", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert "fs.inotify.max_user_watches" in stderr and "sysctl -w fs.inotify.max_user_watches=" in stderr
    assert proc.returncode == 0, stderr
    got = _bucket(local_env)
    assert all(got[f"outputs/d{d}/inner/deep.png"] == b"deep %d" % d for d in range(6))


def test_watch_help_names_the_behaviour() -> None:
    text = run_cli(["watch", "--help"], {"PATH": os.environ.get("PATH", "")}, check=True).stdout
    assert "SIGTERM" in text and "sibling" in text and "journal" in text
    text = run_cli(["status", "--help"], {"PATH": os.environ.get("PATH", "")}, check=True).stdout
    assert "--json" in text and "p95" in text
