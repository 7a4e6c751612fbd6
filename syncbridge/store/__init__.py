"""Object-store adapters: the bucket as syncbridge's in-process code sees it.

Two implementations of one small interface:

* :class:`S3Store`: boto3 against any S3-compatible endpoint (R2, AWS, MinIO,
  ``rclone serve s3``, moto). Every client has checksums set to
  ``when_required``: botocore >= 1.36 sends CRC32 headers by default, which R2
  and other S3-compatible stores reject (boto/boto3#4392).
* :class:`LocalStore`: the embedded default, a folder standing for the bucket
  (the same folder rclone's local backend uses), with real conditional writes
  (``os.link`` of a complete temp file is create-if-absent; If-Match holds a
  lock while it compares), so every command works without credentials.

Conditional writes (``If-None-Match: *``, ``If-Match: <etag>``) are what lets
many pods share a bucket without a coordinator. Some stores accept the header
and ignore it (``rclone serve s3``); :meth:`Store.conditional_writes` probes
once and remembers, so callers can refuse to pretend.
"""

from __future__ import annotations

from pathlib import Path

from ..config.model import RemoteConfig
from ..fsutil import private_state_dir
from ..retry import RETRYABLE_CODES
from .base import ObjectInfo, PutHeaders, Store
from .endpoint import check_endpoint
from .local import LocalStore
from .s3 import EXPECT_CONTINUE_MIN, S3Store, make_s3_client

__all__ = ["ObjectInfo", "PutHeaders", "Store", "S3Store", "LocalStore", "open_store", "make_s3_client",
           "RETRYABLE_CODES", "check_endpoint", "EXPECT_CONTINUE_MIN"]


def open_store(remote: RemoteConfig, *, state_dir: Path, max_pool_connections: int = 10,
               max_attempts: int = 3, read_timeout: float = 60.0) -> Store:
    """The store for ``remote``: S3 when an endpoint is set, else the local bucket folder.

    ``read_timeout``: how long a request may wait for the next bytes of an answer before it is retried.
    """
    if remote.is_local:
        private_state_dir(state_dir)  # before the bucket folder inside it, so it is 0700
        return LocalStore(remote.local_bucket_dir, lock_dir=state_dir / "locks")
    return S3Store(remote, max_pool_connections=max_pool_connections, max_attempts=max_attempts,
                   read_timeout=read_timeout)
