"""GPU tier (a fake nvidia-smi on PATH), storage mode, free space."""

from __future__ import annotations

import os

import attrs
import pytest

from syncbridge.config import load_config
from syncbridge.system import detect_gpu_tier, detect_storage_mode, free_bytes, tier_for_vram


@pytest.mark.parametrize("mib, tier", [(0, "consumer"), (12288, "consumer"), (20479, "consumer"),
                                       (20480, "prosumer"), (24564, "prosumer"), (32607, "prosumer"),
                                       (40960, "datacenter"), (81559, "datacenter")])
def test_thresholds(mib, tier):
    assert tier_for_vram(mib) == tier


def _fake(tmp_path, body: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_auto_sums_every_gpu(local_env, tmp_path):
    config = load_config(local_env)
    assert config.gpu_tier == "auto"
    assert detect_gpu_tier(config, environ=_fake(tmp_path, 'echo 12288; echo 12288')) == "prosumer"
    assert detect_gpu_tier(config, environ=_fake(tmp_path, 'echo 81559')) == "datacenter"
    assert detect_gpu_tier(config, environ=_fake(tmp_path, 'echo 8192')) == "consumer"


def test_no_gpu_or_a_failing_nvidia_smi_is_consumer(local_env, tmp_path):
    config = load_config(local_env)
    assert detect_gpu_tier(config, environ={"PATH": str(tmp_path / "empty")}) == "consumer"
    env = _fake(tmp_path, 'echo "NVIDIA-SMI has failed" >&2; exit 9')
    assert detect_gpu_tier(config, environ=env) == "consumer"
    assert detect_gpu_tier(config, environ=_fake(tmp_path, "echo '[N/A]'")) == "consumer"


def test_gpu_tier_setting_wins(local_env, tmp_path):
    config = load_config({**local_env, "GPU_TIER": "datacenter"})
    assert detect_gpu_tier(config, environ=_fake(tmp_path, "echo 8192")) == "datacenter"


def test_storage_mode(local_env, tmp_path):
    config = load_config({**local_env, "STORAGE_MODE": "persistent"})
    assert detect_storage_mode(config) == "persistent"
    auto = attrs.evolve(load_config(local_env), storage_mode="auto", workspace=tmp_path)
    assert detect_storage_mode(auto, is_mount=lambda p: True) == "persistent"
    assert detect_storage_mode(auto, is_mount=lambda p: False) == "ephemeral"
    assert detect_storage_mode(attrs.evolve(auto, workspace=tmp_path / "missing"), is_mount=lambda p: True) \
        == "ephemeral"


def test_free_bytes_of_a_path_not_yet_created(tmp_path):
    st = os.statvfs(tmp_path)
    assert abs(free_bytes(tmp_path / "a/b/c") - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
