"""syncbridge.hashing: the one home for hashing a file (and bytes on their way to one)."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from syncbridge.hashing import READ_BLOCK, HashingWriter, md5_file, sha256_file


def test_sha256_file_reports_size_digest_and_progress(tmp_path: Path) -> None:
    data = os.urandom(READ_BLOCK + 12345)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(path, on_bytes=seen.append) == (len(data), hashlib.sha256(data).hexdigest())
    assert sum(seen) == len(data) and len(seen) == 2
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == (0, hashlib.sha256(b"").hexdigest())


def test_md5_file_is_the_single_part_etag(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello" * 1000)
    assert md5_file(path) == hashlib.md5(b"hello" * 1000).hexdigest()


def test_hashing_writer_hashes_what_passes() -> None:
    out = io.BytesIO()
    seen: list[int] = []
    writer = HashingWriter(out, on_bytes=seen.append)
    for chunk in (b"ab", memoryview(b"cd"), b""):
        writer.write(chunk)
    assert out.getvalue() == b"abcd" and writer.size == 4 and seen == [2, 2, 0]
    assert writer.hexdigest() == hashlib.sha256(b"abcd").hexdigest()
    md5 = HashingWriter(io.BytesIO(), "md5")
    md5.write(b"abcd")
    assert md5.hexdigest() == hashlib.md5(b"abcd").hexdigest()
