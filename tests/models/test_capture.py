"""Capture: the models that arrive on a pod reach the cache and the profile; the next pod of that profile starts
with them. Partial downloads and files still being written are never captured."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from syncbridge.config import load_config
from syncbridge.models.capture import profile_key
from syncbridge.store import open_store

from ..conftest import run_cli


def _store(env):
    config = load_config(env)
    return open_store(config.remote, state_dir=config.state_dir)


def _env(local_env, tmp_path: Path, models: Path, **extra: str) -> dict[str, str]:
    return {**local_env, "SYNCBRIDGE_MODELS_DIR": str(models), "SYNCBRIDGE_WATCH_QUIET_SECONDS": "0.2", **extra}


def test_capture_once_takes_complete_files_only_and_forget_takes_one_back(local_env, tmp_path) -> None:
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    (models / "loras" / "ink.safetensors").write_bytes(b"ink" * 1000)
    (models / "loras" / "half.safetensors.incomplete").write_bytes(b"partial")  # a download in progress
    (models / "vae").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import sys; f = open(sys.argv[1], 'wb'); f.write(b'x'); "
                               "f.flush(); sys.stdin.read()", str(models / "vae" / "open.safetensors")],
                              stdin=subprocess.PIPE)
    env = _env(local_env, tmp_path, models)
    try:
        while not (models / "vae" / "open.safetensors").exists():
            pass
        import time
        time.sleep(0.3)  # quiet long enough: only the open file descriptor keeps it out
        dry = run_cli(["models", "capture", "-n"], env, check=True)
        assert dry.stdout.splitlines() == ["would capture loras/ink.safetensors (3.0 KB)"]
        done = run_cli(["models", "capture"], env, check=True)
    finally:
        writer.communicate(b"", timeout=10)
    assert "captured loras/ink.safetensors" in done.stdout and "open.safetensors" not in done.stdout
    hashes = json.loads((tmp_path / "state" / "models" / "hashes.json").read_text())  # not hashed again here
    assert hashes[str(models / "loras" / "ink.safetensors")][2:] == [hashlib.sha256(b"ink" * 1000).hexdigest(),
                                                                       "sha256"]
    store = _store(env)
    try:
        info = store.head("models/loras/ink.safetensors")
        assert info is not None and info.metadata.get("sha256") == hashlib.sha256(b"ink" * 1000).hexdigest()
        assert store.head("models/loras/half.safetensors.incomplete") is None
        profile = store.get_bytes(profile_key(".syncbridge", "default"))[0].decode()
        assert 'path = "loras/ink.safetensors"' in profile and "open.safetensors" not in profile
    finally:
        store.close()
    again = run_cli(["models", "capture"], env, check=True)  # the writer closed it: complete now
    assert again.stdout.count("captured ") == 1 and "captured vae/open.safetensors" in again.stdout  # not ink again
    run_cli(["models", "forget", "loras/ink.safetensors"], env, check=True)
    gone = run_cli(["models", "forget", "loras/ink.safetensors"], env)
    assert gone.returncode == 2 and "is not in the profile" in gone.stderr


APP = """
import os, sys, time
models, store_dir = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(models, "loras"), exist_ok=True)
part = os.path.join(models, "loras", "manager.safetensors.incomplete")
with open(part, "wb") as f:          # as ComfyUI-Manager downloads: a partial name, then a rename
    for _ in range(20):
        f.write(b"m" * 1000); f.flush(); time.sleep(0.02)
os.replace(part, os.path.join(models, "loras", "manager.safetensors"))
target = os.path.join(store_dir, "models", "loras", "manager.safetensors")
deadline = time.monotonic() + 30
while time.monotonic() < deadline and not os.path.exists(target):
    time.sleep(0.1)
half = open(os.path.join(models, "loras", "half.safetensors"), "wb")   # still being written at the stop
half.write(b"h" * 10); half.flush()
sys.exit(0 if os.path.exists(target) else 3)
"""


def test_a_model_downloaded_on_one_pod_is_pulled_on_the_next(local_env, tmp_path) -> None:
    models = tmp_path / "pod1" / "models"
    env = _env(local_env, tmp_path, models, SYNCBRIDGE_MODELS_CAPTURE="true")
    store_dir = Path(load_config(env).remote.local_bucket_dir)
    first = run_cli(["start", "--", sys.executable, "-c", APP, str(models), str(store_dir)], env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "capture: loras/manager.safetensors" in first.stderr
    status = run_cli(["status", "--json"], env, check=True)
    assert json.loads(status.stdout)["models"]["capture"]["captured"] == ["loras/manager.safetensors"]
    store = _store(env)
    try:
        assert store.head("models/loras/half.safetensors") is None  # open for writing: never captured
    finally:
        store.close()

    models2 = tmp_path / "pod2" / "models"  # a fresh pod, same bucket and profile
    env2 = {**_env(local_env, tmp_path, models2, SYNCBRIDGE_MODELS_CAPTURE="true")}
    second = run_cli(["start", "--", sys.executable, "-c", "pass"], env2)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (models2 / "loras" / "manager.safetensors").read_bytes() == b"m" * 20000
    assert "profile .syncbridge/profiles/default.toml: 1 model(s)" in second.stderr
