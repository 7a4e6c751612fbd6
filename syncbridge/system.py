"""Facts about the machine a pod runs on: storage mode, GPU tier, free disk space.

GPU tier from total VRAM (all GPUs summed, as ``nvidia-smi`` reports them):

=============  ==================  ======================================
tier           total VRAM          typical cards
=============  ==================  ======================================
consumer       below 20 GiB        RTX 3060/4070/4080 (12-16 GB); no GPU
prosumer       20 GiB to < 40 GiB  RTX 3090/4090 (24 GB), 5090 (32 GB)
datacenter     40 GiB and more     A100 40/80 GB, L40S/A6000 48 GB, H100
=============  ==================  ======================================

No ``nvidia-smi``, or one that fails, means ``consumer``: the tier only ever
holds models back, so guessing low is the safe side.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import Config, is_mount_point

__all__ = ["trim_heap", "detect_gpu_tier", "detect_storage_mode", "tier_for_vram", "free_bytes", "CONSUMER_BELOW_GIB",
           "PROSUMER_BELOW_GIB"]

log = logging.getLogger(__name__)

CONSUMER_BELOW_GIB = 20
PROSUMER_BELOW_GIB = 40


def tier_for_vram(total_mib: float) -> str:
    """The tier for a total VRAM in MiB (see the module docstring for the thresholds)."""
    gib = total_mib / 1024
    if gib < CONSUMER_BELOW_GIB:
        return "consumer"
    if gib < PROSUMER_BELOW_GIB:
        return "prosumer"
    return "datacenter"


def detect_gpu_tier(config: Config, *, nvidia_smi: str = "nvidia-smi", environ: Mapping[str, str] | None = None,
                    timeout: float = 10.0) -> str:
    """``config.gpu_tier`` (``GPU_TIER``), or with ``auto`` the tier of the summed VRAM.

    Args:
        nvidia_smi: the binary (name looked up on ``environ["PATH"]``, or a path), so
            tests can put a fake one first on PATH.
        environ: where PATH comes from (default ``os.environ``).
    """
    if config.gpu_tier != "auto":
        return config.gpu_tier
    env = os.environ if environ is None else environ
    binary = shutil.which(nvidia_smi, path=env.get("PATH"))
    if binary is None:
        log.info("no nvidia-smi: GPU tier consumer", extra={"event": "system.gpu_tier", "tier": "consumer",
                                                             "reason": "no nvidia-smi"})
        return "consumer"
    argv = [binary, "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,  # noqa: S603
                              env=dict(env))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): GPU tier consumer", exc,
                    extra={"event": "system.gpu_tier", "tier": "consumer"})
        return "consumer"
    total = 0.0
    for line in proc.stdout.splitlines():
        try:
            total += float(line.strip())
        except ValueError:
            continue
    if proc.returncode != 0 or total <= 0:
        log.warning("nvidia-smi reported no GPU memory (exit %s): GPU tier consumer", proc.returncode,
                    extra={"event": "system.gpu_tier", "tier": "consumer"})
        return "consumer"
    tier = tier_for_vram(total)
    log.info("GPU tier %s (%.0f MiB VRAM)", tier, total, extra={"event": "system.gpu_tier", "tier": tier,
                                                                 "vram_mib": total})
    return tier


def detect_storage_mode(config: Config, *, is_mount: Callable[[str], bool] = is_mount_point) -> str:
    """``persistent`` or ``ephemeral``: the configured ``STORAGE_MODE``, else whether the workspace is a mount.

    :func:`syncbridge.config.load_config` already resolves ``auto`` this way;
    this re-checks a config whose ``storage_mode`` is still ``auto`` (built by hand).
    """
    mode = config.storage_mode
    if mode in ("persistent", "ephemeral"):
        return mode
    try:
        workspace = str(config.workspace)
        return "persistent" if os.path.isdir(workspace) and is_mount(workspace) else "ephemeral"
    except OSError:
        return "ephemeral"


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def trim_heap() -> None:
    """Give the heap freed after a burst back to the OS (glibc's malloc_trim; a no-op elsewhere).

    A long-lived watcher otherwise keeps its peak footprint forever.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None
