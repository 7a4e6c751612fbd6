"""The serverless example's files: lint-clean, wired to the library, installable with the extra."""

from __future__ import annotations

import subprocess
import sys

from ..start.test_container import _tool
from .test_worker import HANDLER, ROOT

EXAMPLE = HANDLER.parent


def test_dockerfile_and_script_are_lint_clean() -> None:
    proc = subprocess.run([_tool("hadolint"), "--failure-threshold", "style", str(EXAMPLE / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([_tool("shellcheck"), "--severity=style", str(EXAMPLE / "start.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_image_installs_the_extra_and_runs_the_handler() -> None:
    dockerfile = (EXAMPLE / "Dockerfile").read_text()
    assert '"/opt/syncbridge[runpod]"' in dockerfile and "handler.py" in dockerfile
    assert 'runpod = ["runpod>=1.7"]' in (ROOT / "pyproject.toml").read_text()
    assert "exec python -u /worker/handler.py" in (EXAMPLE / "start.sh").read_text()


def test_a_bad_setting_stops_the_worker_with_a_message(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SYNCBRIDGE_STATE_DIR": str(tmp_path / "state"),
           "COMFYUI_OUTPUT_DIR": str(tmp_path / "out"), "SYNCBRIDGE_JOB_KEY": "no-job-id-here"}
    proc = subprocess.run([sys.executable, str(HANDLER), "--test_input", '{"input": {}}'], env=env,
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "SYNCBRIDGE_JOB_KEY" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_shipped_test_input_is_a_valid_job() -> None:
    import json

    from syncbridge.jobs.request import parse_input

    job = json.loads((EXAMPLE / "test_input.json").read_text())
    request = parse_input(job["input"], allow_urls=False, max_bytes=1000)
    assert {n["class_type"] for n in request.workflow.values()} >= {"SaveImage", "SaveAnimatedWEBP", "SaveLatent"}
