"""``syncbridge demo``: the whole container path on this machine, with no credentials.

:mod:`.run` runs it; :mod:`.app` is the stand-in for ComfyUI (``python -m syncbridge.demo.app``);
:mod:`.localserver` is the loopback S3 server (``rclone serve s3``) it, the tests and the benchmarks use.
"""

from __future__ import annotations

from .run import DemoResult, run_demo

__all__ = ["run_demo", "DemoResult"]
