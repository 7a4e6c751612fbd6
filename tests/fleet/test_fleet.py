"""Fleet: heartbeats and status, and single-flight cache fills across pods (moto: conditional writes)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.fleet import (CacheFill, Heartbeat, ModelFillCoordinator, fleet_status, heartbeat_body, heartbeat_key,
                              lease_status, pod_status_from)
from syncbridge.models import cacheentry
from syncbridge.models.cacheentry import Outcome
from syncbridge.models.sources import SourceError
from syncbridge.fleet.lease import Lease, Leases, lease_key
from syncbridge.store import open_store

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env, wait_for as _wait
from .fleet_pod import Upstream

HERE = Path(__file__).resolve().parent
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


# -- pure -----------------------------------------------------------------------------------------


def test_heartbeat_body_takes_the_watchers_counters() -> None:
    stats = {"pending": 3, "uploaded": 10, "failed": 1, "bytes_uploaded": 2048, "last_latency": 0.4,
             "p95_latency": 1.5, "state": "running", "directory": "/x"}
    body = heartbeat_body(pod_id="p1", stats=stats, interval=30, state="running", started=1.0, now=2.0)
    assert (body["pending"], body["uploaded"], body["failed"], body["bytes"]) == (3, 10, 1, 2048)
    assert (body["last_latency"], body["p95_latency"], body["heartbeat_seconds"]) == (0.4, 1.5, 30)
    assert body["version"]
    empty = heartbeat_body(pod_id="p1", stats={}, interval=30, state="running", started=1.0, now=2.0)
    assert empty["pending"] is None and empty["p95_latency"] is None


def test_pod_liveness_is_judged_by_the_bucket_clock() -> None:
    doc = {"pod_id": "p1", "heartbeat_seconds": 10, "state": "running", "written": 0.0}  # pod clock: 1970!
    live = pod_status_from(doc, key="k", last_modified=T0, bucket_now=T0 + dt.timedelta(seconds=25))
    assert live.live and live.status == "live" and live.age_seconds == 25
    silent = pod_status_from(doc, key="k", last_modified=T0, bucket_now=T0 + dt.timedelta(seconds=40))
    assert not silent.live and silent.status == "silent"
    stopped = pod_status_from({**doc, "state": "stopped"}, key="k", last_modified=T0, bucket_now=T0)
    assert stopped.status == "stopped"
    assert heartbeat_key(".syncbridge", "pod/../x y") == ".syncbridge/pods/pod_.._x_y.json"


# -- against moto -----------------------------------------------------------------------------------


@pytest.fixture(params=["moto", "r2"])
def cond_env(request, tmp_path: Path) -> dict[str, str]:
    """A bucket on each server that enforces conditional writes: moto, and R2's own emulator."""
    server = request.getfixturevalue(f"{request.param}_s3")
    env = server_env(server, new_bucket(server), tmp_path)
    env["SYNCBRIDGE_LEASE_SECONDS"] = "4"
    return env


def _pod_config(env: dict[str, str], tmp_path: Path, pod: str, **extra: str):
    return load_config({**env, "SYNCBRIDGE_POD_ID": pod, "SYNCBRIDGE_STATE_DIR": str(tmp_path / f"state-{pod}"),
                        **extra})



@pytest.mark.slow
def test_heartbeats_and_fleet_status(cond_env, tmp_path: Path) -> None:
    counters = {"uploaded": 0}
    beats = []
    for pod in ("pod-a", "pod-b"):
        config = _pod_config(cond_env, tmp_path, pod, SYNCBRIDGE_HEARTBEAT_SECONDS="0.3")
        beat = Heartbeat.for_config(config, stats=lambda: {"pending": 2, **counters, "p95_latency": 0.25})
        beats.append(beat.start())
    config = _pod_config(cond_env, tmp_path, "viewer")
    _wait(lambda: len(fleet_status(config)) == 2, 20, "two heartbeats")
    counters["uploaded"] = 7
    _wait(lambda: all(p.uploaded == 7 for p in fleet_status(config)), 20, "updated counters")
    pods = fleet_status(config)
    assert [p.pod_id for p in pods] == ["pod-a", "pod-b"]
    assert all(p.live and p.pending == 2 and p.p95_latency == 0.25 for p in pods)
    beats[0].stop()
    pods = {p.pod_id: p for p in fleet_status(config)}
    assert pods["pod-a"].status == "stopped" and pods["pod-b"].status == "live"
    # the CLI: `syncbridge fleet status` (and --json)
    proc = run_cli(["fleet", "status"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    assert proc.returncode == 0, proc.stderr
    assert "pod-a" in proc.stdout and "pod-b" in proc.stdout and "stopped" in proc.stdout and "live" in proc.stdout
    proc = run_cli(["fleet", "status", "--json"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    doc = json.loads(proc.stdout)
    assert {p["pod_id"]: p["status"] for p in doc["pods"]} == {"pod-a": "stopped", "pod-b": "live"}
    proc = run_cli(["status", "--fleet"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    assert proc.returncode == 0, proc.stderr
    assert "2 pods (1 live)" in proc.stdout and "pod-a" in proc.stdout
    assert_no_secret(proc.stdout, proc.stderr)
    beats[1].stop()
    # prune: nothing is older than an hour; everything is older than 0 s
    proc = run_cli(["fleet", "prune", "--older-than", "1"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    assert proc.returncode == 0 and "deleted 0 heartbeats" in proc.stdout, proc.stderr
    time.sleep(1.1)
    proc = run_cli(["fleet", "prune", "--older-than", "0"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    assert "deleted 2 heartbeats" in proc.stdout, proc.stdout + proc.stderr
    assert fleet_status(config) == []
    assert Heartbeat.for_config(_pod_config(cond_env, tmp_path, "x", SYNCBRIDGE_HEARTBEAT_SECONDS="0")) is None


def test_status_lists_held_leases(cond_env, tmp_path: Path) -> None:
    config = _pod_config(cond_env, tmp_path, "viewer")
    store = open_store(config.remote, state_dir=config.state_dir)
    leases = Leases(store, owner="pod-a", prefix=".syncbridge")
    lease = leases.try_acquire(lease_key(".syncbridge", "bisync", "workflows"), purpose="bisync workflows",
                               ttl=60, subject="workflows")
    assert isinstance(lease, Lease)
    held = lease_status(config)
    assert [(s.kind, s.verdict.holder, s.verdict.subject) for s in held] == [("bisync", "pod-a", "workflows")]
    proc = run_cli(["fleet", "status"], {**cond_env, "SYNCBRIDGE_POD_ID": "viewer"})
    assert "lease bisync workflows: held by pod pod-a" in proc.stdout
    leases.release(lease)
    assert lease_status(config) == [] and len(lease_status(config, include_free=True)) == 1


def test_cache_entry_never_clobbers_and_fetch_verifies(cond_env, tmp_path: Path) -> None:
    """The one cache-entry protocol (syncbridge.models.cacheentry), against a store with conditional writes."""
    config = _pod_config(cond_env, tmp_path, "pod-a")
    store = open_store(config.remote, state_dir=config.state_dir)
    good = tmp_path / "good.bin"
    good.write_bytes(b"model" * 1000)
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    assert cacheentry.publish(store, "models/x.safetensors", good, sha).outcome is Outcome.PUSHED
    assert cacheentry.entry_sha256(store.head("models/x.safetensors")) == sha
    # the loser of the race: same content, fine
    assert cacheentry.publish(store, "models/x.safetensors", good, sha).outcome is Outcome.EXISTS
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    clash = cacheentry.publish(store, "models/x.safetensors", other, None)
    assert clash.outcome is Outcome.CONFLICT and clash.bad and "holds another object" in str(clash)
    assert store.head("models/x.safetensors").metadata["sha256"] == sha  # not overwritten
    dest = tmp_path / "out" / "x.safetensors"
    assert cacheentry.fetch(store, "models/x.safetensors", dest, sha256=sha)[1] == "sha256"
    assert dest.read_bytes() == good.read_bytes()
    # an object whose bytes do not match its recorded sha256 is refused, nothing left at the final path
    store.put_bytes("models/bad.bin", b"truncated", metadata={"sha256": sha})
    with pytest.raises(SourceError, match="sha256 mismatch"):
        cacheentry.fetch(store, "models/bad.bin", tmp_path / "out" / "bad.bin")
    assert not (tmp_path / "out" / "bad.bin").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.safetensors"]
    # no sha256 in metadata: the entry claims no checksum, so a copy of it is verified by its size only
    # (the production rule: the cache source offers such an object, and the manifest's sha256 decides)
    store.put_bytes("models/half.bin", b"x")
    assert cacheentry.entry_sha256(store.head("models/half.bin")) is None
    assert cacheentry.fetch(store, "models/half.bin", tmp_path / "out" / "half.bin")[1] == "size"
    with pytest.raises(SourceError):  # ... and the expected sha256, when the caller knows it
        cacheentry.fetch(store, "models/half.bin", tmp_path / "out" / "half2.bin", sha256=sha)


def _fill_in_threads(configs, store_for, key: str, url: str, sha: str, tmp_path: Path) -> list[dict]:
    from .fleet_pod import fill_model

    results: list[dict] = [{} for _ in configs]
    barrier = threading.Barrier(len(configs))

    def run(i: int) -> None:
        store = store_for(configs[i])
        barrier.wait()
        results[i] = fill_model(configs[i], store, key, url, sha, tmp_path / f"pod{i}" / "m.bin")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


@pytest.mark.slow
def test_single_flight_fill_threads(cond_env, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    configs = [_pod_config(cond_env, tmp_path, f"pod-{i}") for i in range(6)]
    with Upstream({"/m.bin": data}, chunk_delay=0.05) as up:
        results = _fill_in_threads(configs, lambda c: open_store(c.remote, state_dir=c.state_dir),
                                   "models/m.bin", f"{up.url}/m.bin", sha, tmp_path)
        assert up.bytes_served["/m.bin"] == len(data), "upstream served more than one copy"
    assert sorted(r["how"] for r in results) == ["cached"] * 5 + ["filled"]
    assert all(r["sha256_ok"] for r in results)


@pytest.mark.slow
def test_single_flight_fill_processes_and_dead_filler(cond_env, tmp_path: Path) -> None:
    """A filler killed with -9 mid-fill: a waiting pod takes the fill over after its lease expires."""
    data = os.urandom(1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    key = "models/dead.bin"
    with Upstream({"/dead.bin": data}) as up:
        env = {**cond_env, "SYNCBRIDGE_POD_ID": "pod-dead", "SYNCBRIDGE_STATE_DIR": str(tmp_path / "sd"),
               "PYTHONPATH": str(HERE.parent)}
        dead = subprocess.Popen([sys.executable, str(HERE / "fleet_pod.py"), "fill", key, f"{up.url}/dead.bin", sha,
                                 "--to", str(tmp_path / "dead" / "m.bin"), "--slow", "120"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        config = _pod_config(cond_env, tmp_path, "pod-live")
        store = open_store(config.remote, state_dir=config.state_dir)
        leases = Leases(store, owner="viewer", prefix=".syncbridge")
        lkey = lease_key(".syncbridge", "models", key)

        def dead_holds() -> bool:
            view = leases.read(lkey)
            return view is not None and view.record is not None and view.record.owner == "pod-dead" \
                and up.bytes_served["/dead.bin"] == len(data)

        _wait(dead_holds, 60, "the doomed filler to hold the lease and finish downloading")
        os.kill(dead.pid, signal.SIGKILL)
        dead.communicate()
        from .fleet_pod import fill_model

        result = fill_model(config, store, key, f"{up.url}/dead.bin", sha, tmp_path / "live" / "m.bin")
        assert result["how"] == "filled" and result["took_over_from"] == "pod-dead" and result["sha256_ok"]
        assert up.bytes_served["/dead.bin"] == 2 * len(data)
    assert cacheentry.entry_sha256(store.head(key)) == sha


@pytest.mark.parametrize("coordinator", ["explicit", "default"])
def test_model_fill_coordinator_with_pull_models(cond_env, tmp_path: Path, coordinator: str) -> None:
    """Four pods pull the same models with write-back: each model is downloaded upstream once.

    ``default``: pull_models with no coordinator given is fleet-aware by itself.
    """
    models = pytest.importorskip("syncbridge.models")
    data = {"/vae.safetensors": os.urandom(2 * 1024 * 1024), "/lora.safetensors": os.urandom(1024 * 1024)}
    with Upstream(data, chunk_delay=0.03) as up:
        manifest = tmp_path / "models.toml"
        lines = ['[settings]', 'cache_prefix = "models"', 'write_back = true', '']
        for path, blob in data.items():
            name = path.strip("/").split(".")[0]
            lines += ['[[model]]', f'name = "{name}"', f'path = "vae/{path.strip("/")}"',
                      f'sha256 = "{hashlib.sha256(blob).hexdigest()}"', f'url = "{up.url}{path}"', '']
        manifest.write_text("\n".join(lines))
        n = 4
        configs = [_pod_config(cond_env, tmp_path, f"pod-{i}", SYNCBRIDGE_MODELS=str(manifest),
                               SYNCBRIDGE_MODELS_DIR=str(tmp_path / f"models-{i}")) for i in range(n)]
        reports: list[object] = [None] * n
        coords = [ModelFillCoordinator(c, max_poll=0.3) for c in configs]
        barrier = threading.Barrier(n)

        def run(i: int) -> None:
            barrier.wait()
            try:
                reports[i] = models.pull_models(configs[i], environ={}, tier="datacenter",
                                                fill_coordinator=coords[i] if coordinator == "explicit" else None)
            except Exception as exc:  # noqa: BLE001 - reported below
                reports[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        for c in coords:
            c.close()
        for report in reports:
            assert not isinstance(report, Exception), report
            assert report.ok, report.table()
        for path, blob in data.items():
            assert up.bytes_served[path] == len(blob), f"{path} downloaded {up.bytes_served[path] / len(blob)}x"
    for i, report in enumerate(reports):
        assert not isinstance(report, Exception), report
        assert report.ok, report.table()
        for path, blob in data.items():
            assert (tmp_path / f"models-{i}" / "vae" / path.strip("/")).read_bytes() == blob
    if coordinator == "explicit":
        hows = [r.how for c in coords for r in c.results]
        assert hows.count("filled") == len(data)


def test_watcher_writes_heartbeats(cond_env, tmp_path: Path) -> None:
    watch = pytest.importorskip("syncbridge.watch")
    config = _pod_config(cond_env, tmp_path, "pod-w", SYNCBRIDGE_HEARTBEAT_SECONDS="0.3",
                         SYNCBRIDGE_WATCH_PREFIX="outputs/{pod_id}")
    out = tmp_path / "out"
    out.mkdir()
    viewer = _pod_config(cond_env, tmp_path, "viewer")
    with watch.OutputWatcher(config, directory=out) as watcher:
        for i in range(3):
            (out / f"img_{i:05d}_.png").write_bytes(b"png" * 100)
        assert watcher.wait_idle(30)
        _wait(lambda: any(p.pod_id == "pod-w" and p.uploaded == 3 for p in fleet_status(viewer)), 20,
              "a heartbeat with 3 uploads")
    pod = {p.pod_id: p for p in fleet_status(viewer)}["pod-w"]
    assert pod.status == "stopped" and pod.uploaded == 3 and pod.pending == 0 and pod.last_latency is not None
    # per-pod namespace: watch.prefix = outputs/{pod_id}
    store = open_store(viewer.remote, state_dir=viewer.state_dir)
    assert {i.key for i in store.list("outputs/")} == {f"outputs/pod-w/img_{i:05d}_.png" for i in range(3)}


def test_failed_filler_releases_waiters_to_try_themselves(cond_env, tmp_path: Path) -> None:
    """The filler's upstream fails: the waiters do not queue behind each other, each tries once itself."""
    config = _pod_config(cond_env, tmp_path, "pod-0")
    store = open_store(config.remote, state_dir=config.state_dir)
    n = 4
    fills = [CacheFill(store, leases=Leases(store, owner=f"pod-{i}", prefix=".syncbridge"), prefix=".syncbridge",
                       ttl=10, max_poll=0.3) for i in range(n)]
    cache_looks = [0] * n
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        def fill(held):
            if held is not None:
                time.sleep(2.0)  # a slow failure (an upstream timing out)
                return None
            return "fetched alone"

        def try_cache():
            cache_looks[i] += 1
            return None

        barrier.wait()
        results[i] = fills[i].run("models/broken.bin", fill=fill, try_cache=try_cache)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    elapsed = time.monotonic() - started
    hows = sorted(r.how for r in results)
    assert hows == ["alone"] * (n - 1) + ["filled"]
    assert [r.value for r in results if r.how == "filled"] == [None]
    assert elapsed < 2.0 * n, "the waiters queued behind each other"
    # while the lease was held, waiters looked at the lease, not at the cache entry
    assert max(cache_looks) <= 2, cache_looks
    view = fills[0].leases.read(fills[0].lease_key("models/broken.bin"))
    assert view.record.released and view.record.detail["outcome"].startswith("failed")


def test_start_without_a_watcher_still_writes_a_heartbeat(cond_env, tmp_path: Path) -> None:
    start = pytest.importorskip("syncbridge.start")
    config = _pod_config(cond_env, tmp_path, "pod-s", SYNCBRIDGE_HEARTBEAT_SECONDS="0.5")
    options = start.StartOptions(models=False, folders=False, watch=False, final_push=False)
    result = start.run_start(config, options=options, handle_signals=False)
    assert result.exit_code == 0
    pods = {p.pod_id: p for p in fleet_status(_pod_config(cond_env, tmp_path, "viewer"))}
    assert pods["pod-s"].role == "start" and pods["pod-s"].status == "stopped"
