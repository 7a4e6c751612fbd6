"""The one cache-entry protocol (syncbridge.models.cacheentry) against the local bucket.

The same protocol against moto and R2 (conditional writes over HTTP) is in tests/test_fleet.py;
the pull's write-back through it in tests/models/test_models.py.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.models import cacheentry
from syncbridge.models.cacheentry import EXISTS, PUSHED, Outcome, WriteBack, combine
from syncbridge.models.manifest import SNAPSHOT_INDEX
from syncbridge.models.source import SourceError
from syncbridge.store import open_store


@pytest.fixture
def store(local_env):
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    yield store
    store.close()


def _file(path: Path, data: bytes) -> tuple[Path, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def test_publish_pushed_exists_conflict(store, tmp_path: Path) -> None:
    path, sha = _file(tmp_path / "m.bin", b"model" * 100)
    assert cacheentry.publish(store, "models/m.bin", path, sha) == PUSHED
    info = store.head("models/m.bin")
    assert info.metadata["sha256"] == sha and cacheentry.entry_sha256(info) == sha
    assert cacheentry.publish(store, "models/m.bin", path, sha) == EXISTS
    assert cacheentry.publish(store, "models/m.bin", path, None) == EXISTS  # no sha256 known here: size decides
    other, other_sha = _file(tmp_path / "o.bin", b"x" * 500)  # same size, other bytes
    clash = cacheentry.publish(store, "models/m.bin", other, other_sha)
    assert clash.outcome is Outcome.CONFLICT and clash.bad
    assert str(clash).startswith("conflict: models/m.bin holds another object (500 bytes, sha256 ")
    assert store.head("models/m.bin").metadata["sha256"] == sha  # left as it is
    assert cacheentry.publish(store, "models/d.json", None, None, data=b"{}") == PUSHED
    assert cacheentry.entry_sha256(store.head("models/d.json")) is None


def test_racing_publishers_one_pushes_the_rest_verify(store, tmp_path: Path) -> None:
    """Conditional puts from many threads at once: exactly one sends, the losers find the same bytes."""
    path, sha = _file(tmp_path / "race.bin", b"r" * 4096)
    barrier = threading.Barrier(8)
    outcomes: list[WriteBack] = []
    lock = threading.Lock()

    def publish() -> None:
        barrier.wait()
        result = cacheentry.publish(store, "models/race.bin", path, sha)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.outcome.value for o in outcomes) == ["exists"] * 7 + ["pushed"]


def test_combine_is_the_one_snapshot_rule() -> None:
    failed = WriteBack(Outcome.FAILED, "denied")
    conflict = WriteBack(Outcome.CONFLICT, "other")
    assert combine([EXISTS, EXISTS]) == EXISTS
    assert combine([EXISTS, PUSHED, EXISTS]) == PUSHED
    assert combine([PUSHED, conflict, failed]) == conflict  # the first bad one, whichever kind
    assert combine([PUSHED, failed]) == failed
    assert not WriteBack(Outcome.SKIPPED, "the cache is not answering").bad
    assert str(WriteBack(Outcome.SKIPPED, "why")) == "skipped: why" and str(PUSHED) == "pushed"


def test_publish_snapshot_files_then_index(store, tmp_path: Path) -> None:
    folder = tmp_path / "snap"
    files = {}
    for rel, data in (("a.json", b"{}"), ("sub/b.bin", b"bbbb")):
        _, sha = _file(folder / rel, data)
        files[rel] = {"size": len(data), "sha256": sha}
    (folder / SNAPSHOT_INDEX).write_text(json.dumps({"files": files}))
    key_of = lambda rel: f"models/snap/{rel}"  # noqa: E731
    assert cacheentry.publish_snapshot(store, key_of, folder) == PUSHED
    assert sorted(i.key for i in store.list("models/")) == ["models/snap/" + SNAPSHOT_INDEX, "models/snap/a.json",
                                                            "models/snap/sub/b.bin"]
    assert cacheentry.publish_snapshot(store, key_of, folder) == EXISTS
    (folder / "a.json").write_bytes(b"[]")  # same size, other bytes: its index entry still says the old sha
    files["a.json"]["sha256"] = hashlib.sha256(b"[]").hexdigest()
    (folder / SNAPSHOT_INDEX).write_text(json.dumps({"files": files}))
    assert cacheentry.publish_snapshot(store, key_of, folder).outcome is Outcome.CONFLICT


def test_verify_levels_and_mismatches() -> None:
    sha = "a" * 64
    assert cacheentry.verify(3, sha, want_size=3, want_sha256=sha, what="x", source="cache") == "sha256"
    assert cacheentry.verify(3, sha, want_size=3, want_sha256=None, what="x", source="cache") == "size"
    assert cacheentry.verify(3, sha, want_size=None, want_sha256=None, what="x", source="cache") == ""
    with pytest.raises(SourceError, match="got 3 bytes, expected 4") as caught:
        cacheentry.verify(3, sha, want_size=4, want_sha256=sha, what="x", source="hf")
    assert caught.value.source == "hf" and not caught.value.retryable
    with pytest.raises(SourceError, match="sha256 mismatch"):
        cacheentry.verify(3, sha, want_size=3, want_sha256="b" * 64, what="x", source="cache")


def test_fetch_verifies_then_renames(store, tmp_path: Path) -> None:
    path, sha = _file(tmp_path / "m.bin", b"m" * 1000)
    cacheentry.publish(store, "models/m.bin", path, sha)
    dest = tmp_path / "out" / "m.bin"
    info, level = cacheentry.fetch(store, "models/m.bin", dest)
    assert level == "sha256" and info.size == 1000 and dest.read_bytes() == path.read_bytes()
    with pytest.raises(SourceError):
        cacheentry.fetch(store, "models/m.bin", tmp_path / "out" / "n.bin", sha256="0" * 64)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.bin"]  # no temp left behind
