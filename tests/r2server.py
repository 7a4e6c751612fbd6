"""Cloudflare's own local R2 (npm ``miniflare``, pinned in tests/r2emu/package.json) as a test server.

Its S3 endpoint answers as R2 does, because miniflare's status codes, error bodies and header
screening were captured from a real R2 bucket: 401 ``Unauthorized`` for an unknown access key,
403 ``SignatureDoesNotMatch`` for a wrong secret, 404 ``NoSuchBucket``, ``PreconditionFailed`` for
conditional writes, 403 ``ExpiredRequest`` for an expired presigned URL, and a HEAD's errors with
no body at all.

What differs from the other two test servers, and from R2 itself:

* buckets exist only if declared at start (``CreateBucket`` answers ``NoSuchBucket``), so the
  session declares a pool and :meth:`R2Emulator.take_bucket` hands one out per test; each bucket
  has its own credentials, and a few have credentials of their own (``other_credentials``);
* it sends no ``Date`` header (doctor's clock check says "not checked");
* rclone cannot use it: the Workers runtime rewrites ``Accept-Encoding``, which rclone signs, so
  every rclone request gets ``SignatureDoesNotMatch`` (R2 itself serves rclone). rclone's paths
  (push, pull, bisync, the models batch) stay on rclone serve s3 and moto.

``scripts/test.sh`` installs it (``npm ci`` into tests/r2emu/node_modules); a missing Node or npm
is an error there, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Iterator

from syncbridge.demo.localserver import stop_server as _stop

HERE = Path(__file__).resolve().parent / "r2emu"
ENTRY = HERE / "server.mjs"
POOL = 160  # buckets declared at start (tests take one each)
OTHER = 8  # buckets with credentials of their own
ACCESS_KEY = "sbR2AKIDtest5e1d0c"
SECRET_KEY = "sbR2SECRETtest-91aa07c3d5e2f4b6"
OTHER_ACCESS_KEY = "sbR2AKIDother7a2b"
OTHER_SECRET_KEY = "sbR2SECRETother-0c9d8e7f6a5b4c3d"


class R2Emulator:
    """A running miniflare with a pool of R2 buckets; quacks like :class:`syncbridge.demo.localserver.LocalS3`."""

    kind = "r2"
    conditional_writes = True
    root = None

    def __init__(self, port: int, pid: int) -> None:
        self.port = port
        self.pid = pid
        self.endpoint = f"http://127.0.0.1:{port}/cdn-cgi/local/r2/s3"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self._next = 0
        self._next_other = 0
        self._lock = threading.Lock()

    def environ(self, bucket: str) -> dict[str, str]:
        if bucket.startswith("sb-r2-other-"):
            return {"R2_ENDPOINT": self.endpoint, "R2_ACCESS_KEY": OTHER_ACCESS_KEY,
                    "R2_SECRET_KEY": OTHER_SECRET_KEY, "R2_BUCKET": bucket}
        return {"R2_ENDPOINT": self.endpoint, "R2_ACCESS_KEY": self.access_key, "R2_SECRET_KEY": self.secret_key,
                "R2_BUCKET": bucket}

    def take_bucket(self, *, other_credentials: bool = False) -> str:
        """An unused bucket of the pool (R2's emulator cannot create buckets)."""
        with self._lock:
            if other_credentials:
                if self._next_other >= OTHER:
                    raise RuntimeError("the R2 emulator's pool of buckets with other credentials is used up")
                self._next_other += 1
                return f"sb-r2-other-{self._next_other - 1}"
            if self._next >= POOL:
                raise RuntimeError(f"the R2 emulator's pool of {POOL} buckets is used up: raise POOL in "
                                   f"tests/r2server.py")
            self._next += 1
            return f"sb-r2-{self._next - 1:03d}"

    def create_bucket(self, name: str) -> None:
        if not name.startswith("sb-r2-"):
            raise RuntimeError("the R2 emulator cannot create buckets: use take_bucket()")


def _buckets() -> list[dict[str, str]]:
    out = [{"name": f"sb-r2-{i:03d}", "accessKeyId": ACCESS_KEY, "secretAccessKey": SECRET_KEY} for i in range(POOL)]
    out += [{"name": f"sb-r2-other-{i}", "accessKeyId": OTHER_ACCESS_KEY, "secretAccessKey": OTHER_SECRET_KEY}
            for i in range(OTHER)]
    return out


@contextlib.contextmanager
def serve_r2(workdir: Path, *, log_file: Path | None = None) -> Iterator[R2Emulator]:
    """Run the emulator on a free loopback port until the block ends."""
    node = shutil.which("node")
    if node is None or not (HERE / "node_modules" / "miniflare").is_dir():
        raise RuntimeError("the R2 emulator needs Node.js and `npm ci` in tests/r2emu (scripts/test.sh does both)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "r2.json"
    config.write_text(json.dumps({"port": 0, "persist": str(workdir / "persist"), "buckets": _buckets()}))
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "SYNCBRIDGE_"))}
    proc = subprocess.Popen([node, str(ENTRY), str(config)], stdout=subprocess.PIPE, stderr=out, env=env,
                            cwd=HERE, start_new_session=True)
    try:
        assert proc.stdout is not None
        box: list[str] = []

        def read() -> None:
            box.append(proc.stdout.readline().decode(errors="replace"))  # type: ignore[union-attr]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        line = box[0] if box else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"the R2 emulator did not start (exit {proc.poll()}): {line!r}; see {log_file}")
        yield R2Emulator(int(line.split()[1]), proc.pid)
    finally:
        _stop(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]
