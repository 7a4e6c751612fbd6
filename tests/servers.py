"""moto's S3 server on loopback, for the test session and the benchmarks (test-only: moto is a test extra)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from syncbridge.demo.localserver import LocalS3, free_port, stop_server, wait_port

__all__ = ["serve_moto"]


@contextlib.contextmanager
def serve_moto(*, log_file: Path | None = None, port: int | None = None) -> Iterator[LocalS3]:
    """Run moto's S3 server (``moto[server]``) on 127.0.0.1 until the block ends."""
    port = port or free_port()
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    env = dict(os.environ)
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
    try:
        wait_port(port, proc, 30, log_file)
        yield LocalS3("moto", f"http://127.0.0.1:{port}", "sbmotoAKIDEXAMPLE", "sbmotoSECRETEXAMPLEKEY0123",
                      None, proc.pid, True)
    finally:
        stop_server(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]
