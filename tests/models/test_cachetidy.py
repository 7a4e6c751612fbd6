"""`models cache ls | prune | verify` on a real S3 server (moto: conditional writes, so real fill leases), with
another process holding the fill lease of an entry prune would otherwise delete."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from syncbridge.config import load_config
from syncbridge.fleet.rules import lease_key
from syncbridge.store import open_store

from ..conftest import new_bucket, run_cli, server_env

FLEET = Path(__file__).resolve().parents[1] / "fleet"


def _seed(env: dict[str, str], objects: dict[str, bytes], *, wrong_sha: str = "") -> None:
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        for key, data in objects.items():
            sha = hashlib.sha256(data).hexdigest() if key != wrong_sha else "0" * 64
            store.put_bytes(key, data, metadata={"sha256": sha})
    finally:
        store.close()


def _manifest(path: Path, models: dict[str, bytes]) -> Path:
    lines = ['[settings]\nmodels_dir = "/workspace/ComfyUI/models"\ncache_prefix = "models"\n']
    for rel, data in models.items():
        lines += ["[[model]]", f'name = "{Path(rel).name}"', f'path = "{rel}"',
                  f'sha256 = "{hashlib.sha256(data).hexdigest()}"', f"size = {len(data)}", ""]
    path.write_text("\n".join(lines))
    return path


def test_ls_prune_and_verify(moto_s3, tmp_path) -> None:
    env = server_env(moto_s3, new_bucket(moto_s3), tmp_path)
    used = {"checkpoints/a.safetensors": b"a" * 3000, "loras/b.safetensors": b"b" * 2000}
    unused = {"loras/old.safetensors": b"o" * 5000, "vae/filling.safetensors": b"f" * 100}
    _seed(env, {f"models/{k}": v for k, v in {**used, **unused}.items()}, wrong_sha="models/loras/b.safetensors")
    manifest = _manifest(tmp_path / "team.toml", {**used, "vae/missing.safetensors": b"m"})
    env["SYNCBRIDGE_MODELS"] = str(manifest)

    ls = run_cli(["models", "cache", "ls", "--json"], env, check=True)
    rows = {json.loads(line)["key"]: json.loads(line) for line in ls.stdout.splitlines()}
    assert rows["models/checkpoints/a.safetensors"]["used_by"] == ["team.toml: a.safetensors"]
    assert rows["models/loras/old.safetensors"]["used_by"] == [] and rows["models/loras/old.safetensors"]["size"] == 5000
    assert "4 entries, 10.1 KB" in ls.stderr and "unused: 5.1 KB" in ls.stderr and "/GB-month" in ls.stderr

    # another pod is filling vae/filling.safetensors: it holds that entry's fill lease
    holder = subprocess.Popen([sys.executable, str(FLEET / "fleet_pod.py"), "hold",
                               lease_key(".syncbridge", "models", "models/vae/filling.safetensors"), "60",
                               "--purpose", "fill"],
                              env={**env, "SYNCBRIDGE_POD_ID": "pod-b", "SYNCBRIDGE_STATE_DIR": str(tmp_path / "b"),
                                   "PYTHONPATH": str(FLEET.parents[1])},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(holder.stdout.readline())["held"], holder.stderr.read()
        dry = run_cli(["models", "cache", "prune"], env, check=True)
        assert "would delete loras/old" not in dry.stdout  # keys are printed whole
        assert "would delete models/loras/old.safetensors" in dry.stdout
        assert "kept         models/vae/filling.safetensors  (pod pod-b is filling it)" in dry.stdout
        assert "a dry run" in dry.stderr
        applied = run_cli(["models", "cache", "prune", "--apply"], env, check=True)
        assert "deleted      models/loras/old.safetensors" in applied.stdout
    finally:
        holder.kill()
        holder.wait()
    keys = {json.loads(line)["key"] for line in run_cli(["models", "cache", "ls", "--json"], env,
                                                         check=True).stdout.splitlines()}
    assert keys == {"models/checkpoints/a.safetensors", "models/loras/b.safetensors", "models/vae/filling.safetensors"}

    verify = run_cli(["models", "cache", "verify"], env)
    assert verify.returncode == 1
    assert "ok         models/checkpoints/a.safetensors" in verify.stdout
    assert "sha256     models/loras/b.safetensors" in verify.stdout  # its metadata says another sha256
    assert "missing    models/vae/missing.safetensors" in verify.stdout
    deep = run_cli(["models", "cache", "verify", "--deep"], env)
    assert "its bytes hash to" in deep.stdout and deep.returncode == 1


def test_prune_with_no_manifest_removes_nothing(local_env, tmp_path) -> None:
    _seed(local_env, {"models/x.safetensors": b"x"})
    proc = run_cli(["models", "cache", "prune", "--apply"], local_env)
    assert proc.returncode == 2 and "SYNCBRIDGE_MODELS: names no manifest" in proc.stderr
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    assert store.head("models/x.safetensors") is not None
    store.close()
