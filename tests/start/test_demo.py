"""`syncbridge demo` runs on a fresh machine with no credentials, in under a minute, and cleans up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncbridge.watch.status import percentile


def test_percentile_nearest_rank() -> None:
    assert percentile([3.0], 0.5) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("syncbridge.watch")
    pytest.importorskip("syncbridge.models")
    # A fresh machine: no R2 variables, no tokens, a new home.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "syncbridge", "demo"], env=env, capture_output=True, text=True,
                          timeout=90)
    seconds = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert seconds < 60, f"the demo took {seconds:.0f}s"
    assert "result    OK: nothing lost" in out
    assert re.search(r"latency   p50 \d+ ms, p95 \d+ ms", out), out
    assert re.search(r"model     demo-checkpoint: pulled from cache, .* sha256 verified", out), out
    assert "the image the app wrote while stopping: pushed" in out
    assert "[syncbridge] models: 1 pulled from cache" in out  # the container log is shown
    landed = re.findall(r"^demo: landed  (\S+)", out, re.M)
    assert "outputs/demo-pod/portraits/ComfyUI_00001_.png" in landed
    assert "outputs/demo-pod/ComfyUI_00001_.png" in landed
    assert not any("/temp/" in key for key in landed)
    root = re.search(r"demo: working in (\S+)", out).group(1)
    assert root.startswith(str(tmp_path))
    assert not Path(root).exists(), "the demo left its temporary folder behind"
    assert not _processes_mentioning(root), "the demo left a process running"
