"""bisync of a shared prefix takes a lease in the bucket: two pods never bisync it at once."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from syncbridge.bulk import bisync
from syncbridge.config import load_config
from syncbridge.fleet.lease import Lease, Leases, lease_key
from syncbridge.store import open_store

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env

HERE = Path(__file__).resolve().parent


@pytest.fixture
def moto_env(moto_s3, tmp_path: Path) -> dict[str, str]:
    env = server_env(moto_s3, new_bucket(moto_s3), tmp_path)
    env["SYNCBRIDGE_LEASE_SECONDS"] = "6"
    return env


def _pod(env: dict[str, str], tmp_path: Path, pod: str, **extra: str) -> dict[str, str]:
    return {**env, "SYNCBRIDGE_POD_ID": pod, "SYNCBRIDGE_STATE_DIR": str(tmp_path / f"state-{pod}"), **extra}


def _hold(env: dict[str, str], key: str, seconds: float) -> subprocess.Popen:
    """Pod ``env``'s lease holder in its own process; returns once it holds the lease."""
    proc = subprocess.Popen([sys.executable, str(HERE / "fleet_pod.py"), "hold", key, str(seconds),
                             "--purpose", "bisync workflows"], env={**env, "PYTHONPATH": str(HERE.parent)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert json.loads(line)["held"], proc.stderr.read()
    return proc


def test_busy_prefix_is_skipped_naming_the_holder(moto_env, tmp_path: Path) -> None:
    key = lease_key(".syncbridge", "bisync", "workflows")
    holder = _hold(_pod(moto_env, tmp_path, "pod-a"), key, 60)
    try:
        env_b = _pod(moto_env, tmp_path, "pod-b", SYNCBRIDGE_BISYNC_ON_BUSY="skip")
        local = tmp_path / "b-workflows"
        local.mkdir()
        (local / "b.json").write_text("{}")
        summary = bisync(load_config(env_b), local, "workflows")
        assert summary.held_by and "pod-a" in summary.held_by
        assert summary.line().startswith("bisync: skipped: ") and "pod pod-a holds the lease" in summary.line()
        # nothing was transferred while pod-a held it
        store = open_store(load_config(env_b).remote, state_dir=tmp_path / "s")
        assert store.head("workflows/b.json") is None
        # the CLI says the same and exits 0 (skipping is the configured outcome, not a failure)
        proc = run_cli(["bisync", str(local), "workflows"], env_b)
        assert proc.returncode == 0, proc.stderr
        assert "skipped" in proc.stdout and "pod-a" in proc.stdout
        assert_no_secret(proc.stdout, proc.stderr)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_busy_prefix_waits_for_release(moto_env, tmp_path: Path, caplog) -> None:
    key = lease_key(".syncbridge", "bisync", "workflows")
    holder = _hold(_pod(moto_env, tmp_path, "pod-a"), key, 3)
    env_b = _pod(moto_env, tmp_path, "pod-b")
    local = tmp_path / "b-workflows"
    local.mkdir()
    (local / "b.json").write_text("{}")
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="syncbridge.fleet.lease"):
        summary = bisync(load_config(env_b), local, "workflows")
    waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert not summary.held_by
    assert waited >= 1.0
    assert any("pod-a" in r.getMessage() and "waiting" in r.getMessage() for r in caplog.records)
    store = open_store(load_config(env_b).remote, state_dir=tmp_path / "s")
    assert store.head("workflows/b.json") is not None
    # and it released: the lease is free again
    leases = Leases(store, owner="pod-c", prefix=".syncbridge")
    assert isinstance(leases.try_acquire(key, purpose="check", ttl=5), Lease)


@pytest.mark.slow
def test_dead_holder_is_taken_over_after_expiry(moto_env, tmp_path: Path) -> None:
    key = lease_key(".syncbridge", "bisync", "workflows")
    holder = _hold(_pod(moto_env, tmp_path, "pod-dead"), key, 600)
    holder.kill()  # SIGKILL: no release, the lease must expire
    holder.wait()
    env_b = _pod(moto_env, tmp_path, "pod-b")
    local = tmp_path / "b-workflows"
    local.mkdir()
    (local / "b.json").write_text("{}")
    started = time.monotonic()
    summary = bisync(load_config(env_b), local, "workflows")
    assert not summary.held_by
    assert time.monotonic() - started >= 2.0  # it waited for the expiry (ttl 6 s, from the bucket's clock)


@pytest.mark.slow
def test_two_pods_bisync_one_prefix_at_once(moto_env, tmp_path: Path) -> None:
    """Both run (one after the other, by the lease) and the prefix ends with both pods' files."""
    configs = [load_config(_pod(moto_env, tmp_path, f"pod-{i}")) for i in range(2)]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        local = tmp_path / f"wf-{i}"
        local.mkdir()
        (local / f"pod-{i}.json").write_text(json.dumps({"pod": i}))
        try:
            results[i] = bisync(configs[i], local, "shared")
            results[i] = bisync(configs[i], local, "shared")  # second run pulls the other pod's file
        except Exception as exc:  # noqa: BLE001 - reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not isinstance(r, Exception) for r in results.values()), results
    store = open_store(configs[0].remote, state_dir=tmp_path / "s")
    assert {i.key for i in store.list("shared/")} == {"shared/pod-0.json", "shared/pod-1.json"}
    assert (tmp_path / "wf-0" / "pod-1.json").exists() or (tmp_path / "wf-1" / "pod-0.json").exists()


def test_lease_on_with_a_store_that_ignores_conditional_writes(rclone_s3, tmp_path: Path) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    local = tmp_path / "wf"
    local.mkdir()
    (local / "a.json").write_text("{}")
    proc = run_cli(["bisync", str(local), "workflows"], {**env, "SYNCBRIDGE_BISYNC_LEASE": "on"})
    assert proc.returncode == 2
    assert "does not enforce conditional writes" in proc.stderr and "Traceback" not in proc.stderr
    # auto: runs without a lease, and says so loudly
    proc = run_cli(["bisync", str(local), "workflows"], env)
    assert proc.returncode == 0, proc.stderr
    assert "WITHOUT a lease" in proc.stderr


def test_bisync_of_the_whole_bucket_leaves_the_fleet_objects_alone(moto_env, tmp_path: Path) -> None:
    config = load_config(_pod(moto_env, tmp_path, "pod-a", SYNCBRIDGE_HEARTBEAT_SECONDS="0"))
    store = open_store(config.remote, state_dir=tmp_path / "s")
    store.put_bytes(".syncbridge/pods/other.json", b"{}")
    store.put_bytes("shared/a.json", b"{}")
    local = tmp_path / "everything"
    local.mkdir()
    (local / "b.json").write_text("{}")
    bisync(config, local, "")
    (local / "c.json").write_text("{}")
    bisync(config, local, "")  # a second run, with the lease object rewritten meanwhile
    assert (local / "shared" / "a.json").exists() and store.head("c.json") is not None
    assert not (local / ".syncbridge").exists()
    assert store.head(".syncbridge/pods/other.json") is not None
