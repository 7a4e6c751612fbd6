"""A fleet in miniature: 8 pods (separate processes, folders, state dirs, pod ids), one moto bucket.

Each pod, at the same moment: pulls the same models with write-back (upstream: a loopback
HTTP server counting what it serves), watches its output folder (pushing to
``outputs/<pod_id>``, heartbeats on), and in rounds writes an output, edits its own file in
a shared workflows folder and bisyncs that folder with one shared prefix. One pod takes the
shared prefix's lease and is killed with -9 while holding it.

At the end: every output of every pod is in the bucket under its own namespace, each model
was downloaded upstream once and its cache entry is complete and verified, the shared prefix
holds every pod's last edit, and the dead pod's lease was taken over after it expired.

The CI run is short (about a minute); ``SYNCBRIDGE_FLEET_SIM_SECONDS=600`` runs longer.
"""

from __future__ import annotations

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
from syncbridge.fleet import fleet_status
from syncbridge.fleet.lease import judge, lease_key, Leases
from syncbridge.store import open_store

from ..conftest import new_bucket, server_env
from .fleet_pod import Upstream

HERE = Path(__file__).resolve().parent
PODS = 8
VICTIM = f"pod-{PODS - 1}"


@pytest.mark.slow
def test_fleet_simulation(moto_s3, tmp_path: Path) -> None:
    pytest.importorskip("syncbridge.models")
    pytest.importorskip("syncbridge.watch")
    seconds = float(os.environ.get("SYNCBRIDGE_FLEET_SIM_SECONDS", "12"))
    bucket = new_bucket(moto_s3)
    base = server_env(moto_s3, bucket, tmp_path)
    blobs = {"/vae.safetensors": os.urandom(3 * 1024 * 1024), "/lora.safetensors": os.urandom(1024 * 1024)}
    with Upstream(blobs, chunk_delay=0.02) as up:
        manifest = tmp_path / "models.toml"
        lines = ["[settings]", 'cache_prefix = "models"', "write_back = true", ""]
        for path, blob in blobs.items():
            lines += ["[[model]]", f'name = "{path.strip("/").split(".")[0]}"', f'path = "loras{path}"',
                      f'sha256 = "{hashlib.sha256(blob).hexdigest()}"', f'url = "{up.url}{path}"', ""]
        manifest.write_text("\n".join(lines))
        # The shared folder already holds the team's workflows. (With a pod's own file as the only
        # file, bisync's "all files changed" safety abort would stop every run: see the report.)
        seed = open_store(load_config({**base, "SYNCBRIDGE_POD_ID": "seed"}).remote, state_dir=tmp_path / "seed")
        for name in ("team-default.json", "upscale.json", "inpaint.json"):
            seed.put_bytes(f"workflows/{name}", json.dumps({"shared": name}).encode())
        seed.close()
        start_at = time.time() + 6.0
        procs: dict[str, subprocess.Popen] = {}
        for i in range(PODS):
            pod = f"pod-{i}"
            work = tmp_path / pod
            work.mkdir()
            spec = {"work": str(work), "seconds": seconds, "workflows_prefix": "workflows", "min_rounds": 2,
                    "die_holding": pod == VICTIM, "until": str(tmp_path / "victim-dead")}
            (work / "spec.json").write_text(json.dumps(spec))
            env = {**base, "SYNCBRIDGE_POD_ID": pod, "SYNCBRIDGE_STATE_DIR": str(work / "state"),
                   "SYNCBRIDGE_WORKSPACE": str(work), "COMFYUI_OUTPUT_DIR": str(work / "output"),
                   "SYNCBRIDGE_WATCH_PREFIX": "outputs/{pod_id}", "SYNCBRIDGE_HEARTBEAT_SECONDS": "1",
                   "SYNCBRIDGE_LEASE_SECONDS": "5", "SYNCBRIDGE_MODELS": str(manifest),
                   "SYNCBRIDGE_MODELS_DIR": str(work / "models"), "FLEET_START_AT": str(start_at),
                   "PYTHONPATH": str(HERE.parent)}
            procs[pod] = subprocess.Popen([sys.executable, str(HERE / "fleet_pod.py"), "pod", str(work / "spec.json")],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # kill -9 the victim while it holds the shared prefix's lease
        victim = procs[VICTIM]
        holding = threading.Event()
        victim_lines: list[str] = []

        def read_victim() -> None:
            for line in victim.stdout:  # type: ignore[union-attr]
                victim_lines.append(line)
                if line.strip() == "HOLDING":
                    holding.set()

        reader = threading.Thread(target=read_victim, daemon=True)
        reader.start()
        assert holding.wait(120 + seconds), f"the victim never took the lease: {victim_lines} " \
                                             f"{victim.stderr.read() if victim.poll() is not None else ''}"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        (tmp_path / "victim-dead").touch()
        reports: dict[str, dict] = {}
        errors: dict[str, str] = {}
        for pod, proc in procs.items():
            if pod == VICTIM:
                continue
            out, err = proc.communicate(timeout=300 + 4 * seconds)
            errors[pod] = err
            assert proc.returncode == 0, f"{pod} exited {proc.returncode}:\n{err[-3000:]}"
            reports[pod] = json.loads(out.strip().splitlines()[-1])
        served = dict(up.bytes_served)

    config = load_config({**base, "SYNCBRIDGE_POD_ID": "checker", "SYNCBRIDGE_STATE_DIR": str(tmp_path / "chk")})
    store = open_store(config.remote, state_dir=config.state_dir)
    keys = {i.key for i in store.list("")}

    # models: one upstream download per model for the whole fleet; every pod has them, verified
    for path, blob in blobs.items():
        assert served[path] == len(blob), f"{path}: upstream served {served[path] / len(blob):.1f}x"
        info = store.head(f"models/loras{path}")
        assert info is not None and info.size == len(blob)
        assert info.metadata.get("sha256") == hashlib.sha256(blob).hexdigest()
        assert hashlib.sha256(store.get_bytes(f"models/loras{path}")[0]).hexdigest() == info.metadata["sha256"]
    for pod, report in reports.items():
        assert report["done"] and report["models_ok"], (pod, report)
        for path, blob in blobs.items():
            assert (tmp_path / pod / "models" / f"loras{path}").read_bytes() == blob
    sources = [m["source"] for r in reports.values() for m in r["models"]]
    assert sources.count("url") <= len(blobs) and sources.count("cache") >= len(sources) - len(blobs)

    # outputs: every output of every pod under its own namespace
    for pod, report in reports.items():
        assert report["idle"] and report["left_pending"] == 0, (pod, report)
        for name in report["outputs"]:
            assert f"outputs/{pod}/{name}" in keys, f"{pod}: {name} missing"
        assert len(report["outputs"]) >= 2
    assert f"outputs/{VICTIM}/img_00000_.png" in keys  # pushed before it died

    # the shared prefix: every surviving pod's last edit, and the victim's first
    for pod, report in reports.items():
        doc = json.loads(store.get_bytes(f"workflows/{pod}.json")[0])
        assert doc == {"pod": pod, "edit": report["last_edit"]}, pod
    assert json.loads(store.get_bytes(f"workflows/{VICTIM}.json")[0])["edit"] == 0
    assert not [k for k in keys if k.startswith("workflows/") and "conflict" in k], "bisyncs overlapped"

    # the dead pod's lease was taken over after it expired
    took_over = [pod for pod, err in errors.items() if f"took over the lease of pod {VICTIM}" in err]
    assert took_over, "nobody took over the dead pod's lease"
    leases = Leases(store, owner="checker", prefix=config.fleet.prefix)
    view = leases.read(lease_key(config.fleet.prefix, "bisync", "workflows"))
    assert view is not None and view.record is not None and view.record.owner != VICTIM
    assert judge(view, bucket_now=leases.bucket_clock.now(), default_ttl=5).state in ("released", "expired")

    # heartbeats: the survivors said goodbye, the victim went silent
    pods = {p.pod_id: p for p in fleet_status(config)}
    assert set(pods) == {f"pod-{i}" for i in range(PODS)}
    assert all(pods[p].status == "stopped" for p in reports)
    assert pods[VICTIM].state == "running"
