"""Hashes of files and of bytes as they are written: the one home for reading a file to hash it.

* :func:`sha256_file`: ``(size, sha256)`` of a file, with an ``on_bytes`` progress callback.
* :func:`md5_file`: the MD5 of a file (an S3 ETag of a single-part upload).
* :class:`HashingWriter`: a file-like ``write`` that hashes what passes through it, so a download
  is verified without a second pass over the file.

Files are read in large blocks with an unbuffered file: hashlib releases the GIL on large
buffers, so other threads keep receiving meanwhile.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, BinaryIO, Callable

__all__ = ["READ_BLOCK", "sha256_file", "md5_file", "hash_file", "file_digest", "new_digest", "HashingWriter"]

READ_BLOCK = 8 * 1024 * 1024

OnBytes = Callable[[int], None]


def new_digest(algorithm: str = "sha256") -> Any:
    """A fresh hashlib object (md5 marked as not for security: it is S3's ETag, not a defence)."""
    return hashlib.new(algorithm, usedforsecurity=False) if algorithm == "md5" else hashlib.new(algorithm)


def hash_file(path: str | os.PathLike[str], algorithm: str = "sha256", *,
              on_bytes: OnBytes | None = None) -> tuple[int, str]:
    """(size, hex digest) of a file with ``algorithm`` (a hashlib name)."""
    size, digest = file_digest(path, algorithm, on_bytes=on_bytes)
    return size, digest.hexdigest()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", *,
                on_bytes: OnBytes | None = None) -> tuple[int, Any]:
    """(size, the hashlib object fed with the file), to go on hashing what is appended to it."""
    digest = new_digest(algorithm)
    size = 0
    with open(path, "rb", buffering=0) as fh:
        while True:
            block = fh.read(READ_BLOCK)
            if not block:
                break
            digest.update(block)
            size += len(block)
            if on_bytes:
                on_bytes(len(block))
    return size, digest


def sha256_file(path: str | os.PathLike[str], *, on_bytes: OnBytes | None = None) -> tuple[int, str]:
    """(size, sha256 hex) of a file; ``on_bytes(n)`` after each block read."""
    return hash_file(path, "sha256", on_bytes=on_bytes)


def md5_file(path: str | os.PathLike[str]) -> str:
    """The MD5 hex of a file (what an S3 store answers as the ETag of a single-part object)."""
    return hash_file(path, "md5")[1]


class HashingWriter:
    """Writes to ``fh`` and hashes every byte on the way (``digest``, ``size``).

    ``on_bytes(n)`` is called after each write; it may raise to stop the transfer (a cancel).
    """

    def __init__(self, fh: BinaryIO, algorithm: str = "sha256", *, on_bytes: OnBytes | None = None) -> None:
        self.fh = fh
        self.digest = new_digest(algorithm)
        self.size = 0
        self.on_bytes = on_bytes

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.digest.update(data)
        self.size += len(data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))
        return len(data)

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
