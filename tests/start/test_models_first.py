"""SYNCBRIDGE_MODELS_WAIT=required: the app starts once the required models are in; the rest arrive while it
runs, each only when complete; a stop cancels them within the budget and keeps their temp files."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..conftest import run_cli, wait_for
from ..hfserver import serve_hf

APP = """
import os, sys, time
required, later, mark = sys.argv[1:4]
ok = os.path.exists(required) and not os.path.exists(later)
open(mark, "w").write("started %s\\n" % ok)
deadline = time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline and not os.path.exists(later):
    time.sleep(0.05)
sys.exit(0 if ok and os.path.exists(later) else 3)
"""


def _manifest(path: Path, models: Path) -> Path:
    path.write_text(f'[settings]\nmodels_dir = "{models}"\n'
                    '[[model]]\nname = "vae"\npath = "vae/small.safetensors"\nrequired = true\n'
                    'hf = { repo = "org/m", file = "small.safetensors" }\n'
                    '[[model]]\nname = "unet"\npath = "diffusion_models/big.safetensors"\n'
                    'hf = { repo = "org/m", file = "big.safetensors" }\n')
    return path


def _env(local_env, tmp_path: Path, hub) -> tuple[dict[str, str], Path]:
    models = tmp_path / "models"
    manifest = _manifest(tmp_path / "m.toml", models)
    return {**local_env, "HF_ENDPOINT": hub.url, "SYNCBRIDGE_MODELS": str(manifest),
            "SYNCBRIDGE_MODELS_WAIT": "required"}, models


def test_the_app_starts_before_the_models_it_does_not_need_first(local_env, tmp_path) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB, sent 64 KiB every 50 ms: ~1.6 s
    with serve_hf() as hub:
        hub.add("org/m", {"small.safetensors": b"vae" * 100, "big.safetensors": big})
        hub.trickle["big.safetensors"] = 0.05
        env, models = _env(local_env, tmp_path, hub)
        mark = tmp_path / "mark"
        proc = run_cli(["start", "--", sys.executable, "-c", APP, str(models / "vae/small.safetensors"),
                        str(models / "diffusion_models/big.safetensors"), str(mark), "60"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mark.read_text() == "started True\n"  # the required one was there, the other not yet
    assert hashlib.sha256((models / "diffusion_models/big.safetensors").read_bytes()).digest() == \
        hashlib.sha256(big).digest()
    assert "the rest follow in the background" in proc.stderr
    assert "models (background): 1 pulled" in proc.stderr, proc.stderr
    status = run_cli(["status", "--json"], env, check=True)
    background = json.loads(status.stdout)["models"]["background"]
    assert background["state"] == "done" and background["pulled"] == 1 and background["failed"] == []
    assert "models (background): done: 1 pulled" in run_cli(["status"], env, check=True).stdout


def test_a_stop_cancels_the_background_pull_and_keeps_its_temp_file(local_env, tmp_path) -> None:
    big = bytes(range(256)) * 16384  # 4 MiB at 64 KiB per 0.2 s: far longer than the test
    with serve_hf() as hub:
        hub.add("org/m", {"small.safetensors": b"vae" * 100, "big.safetensors": big})
        hub.trickle["big.safetensors"] = 0.2
        env, models = _env(local_env, tmp_path, hub)
        mark = tmp_path / "mark"
        proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "start", "--", sys.executable, "-c", APP,
                                 str(models / "vae/small.safetensors"),
                                 str(models / "diffusion_models/big.safetensors"), str(mark), "120"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(mark.exists, 30, "the app's start")
            wait_for(lambda: list((models / "diffusion_models").glob(".*")), 30, "a background download")
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            proc.kill()
    assert took < 5.0, took  # a spot pod's budget
    assert not (models / "diffusion_models/big.safetensors").exists()  # never a partial file at its name
    assert list((models / "diffusion_models").glob(".*")), "the resumable temp file was kept"
    assert "stopped with the app" in err, err
    background = json.loads(run_cli(["status", "--json"], env, check=True).stdout)["models"]["background"]
    assert background["state"] in ("pulling", "stopped")  # abandoned at the exit, or cancelled in time
