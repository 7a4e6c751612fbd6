"""The watcher's pure pieces: event classification, deadline batching, the latency percentile, and the
shared helpers it relies on (backoff, keys, mounts)."""

from __future__ import annotations

import random

import pytest

from syncbridge.watch import events as b
from syncbridge.watch.events import Action, DeadlineBatcher, classify
from syncbridge.watch.status import percentile
from syncbridge.fsutil import is_network_fs, mount_fstype
from syncbridge.keys import object_key, safe_text, sibling_key
from syncbridge.retry import backoff_delay
from syncbridge.errors import UnsafePathError


@pytest.mark.parametrize("mask, action", [
    (b.IN_CLOSE_WRITE, Action.READY),
    (b.IN_MOVED_TO, Action.READY),
    (b.IN_CREATE, Action.CREATED),
    (b.IN_DELETE, Action.GONE),
    (b.IN_MOVED_FROM, Action.GONE),
    (b.IN_CREATE | b.IN_ISDIR, Action.NEW_DIR),
    (b.IN_MOVED_TO | b.IN_ISDIR, Action.NEW_DIR),
    (b.IN_DELETE | b.IN_ISDIR, Action.DIR_GONE),
    (b.IN_MOVED_FROM | b.IN_ISDIR, Action.DIR_GONE),
    (b.IN_Q_OVERFLOW, Action.RESCAN),
    (b.IN_IGNORED, Action.FORGET_WD),
    (b.IN_DELETE_SELF, Action.SELF_GONE),
    (b.IN_MOVE_SELF, Action.SELF_GONE),
    (b.IN_MODIFY, Action.IGNORE),
    (b.IN_ATTRIB | b.IN_ISDIR, Action.IGNORE),
])
def test_classify(mask: int, action: Action) -> None:
    assert classify(mask) is action


def test_flag_values_match_the_kernel() -> None:
    import inotify_simple

    f = inotify_simple.flags
    assert (b.IN_CLOSE_WRITE, b.IN_MOVED_TO, b.IN_MOVED_FROM, b.IN_CREATE, b.IN_DELETE, b.IN_Q_OVERFLOW,
            b.IN_IGNORED, b.IN_ISDIR, b.IN_DONT_FOLLOW, b.IN_ONLYDIR, b.IN_EXCL_UNLINK) == (
        f.CLOSE_WRITE, f.MOVED_TO, f.MOVED_FROM, f.CREATE, f.DELETE, f.Q_OVERFLOW, f.IGNORED, f.ISDIR,
        f.DONT_FOLLOW, f.ONLYDIR, f.EXCL_UNLINK)


def test_deadline_is_fixed_at_the_first_event_not_restarted() -> None:
    batcher: DeadlineBatcher[str] = DeadlineBatcher(delay=1.0)
    batcher.add("a", now=10.0)
    # a job writing a file every 0.5 s: a restarting debounce would never fire
    for i, t in enumerate((10.5, 10.9)):
        batcher.add(f"f{i}", now=t)
        assert not batcher.due(now=t)
    assert batcher.deadline == 11.0
    assert batcher.due(now=11.0)
    assert batcher.take(now=11.0) == ["a", "f0", "f1"]
    assert batcher.deadline is None and not batcher.due(now=99)
    batcher.add("b", now=11.4)  # the next batch has its own deadline
    assert batcher.deadline == pytest.approx(12.4)


def test_batch_dedups_and_caps() -> None:
    batcher: DeadlineBatcher[str] = DeadlineBatcher(delay=5.0, max_items=3)
    batcher.add("a", now=0)
    batcher.add("a", now=1)
    assert len(batcher) == 1 and batcher.take(now=1) == []
    batcher.add("b", now=1)
    batcher.add("c", now=1)
    assert batcher.due(now=1)  # the cap flushes before the deadline
    assert batcher.take(now=1) == ["a", "b", "c"]


def test_zero_delay_is_due_at_once_and_max_delay_caps() -> None:
    batcher: DeadlineBatcher[str] = DeadlineBatcher(delay=0)
    batcher.add("x", now=3)
    assert batcher.take(now=3) == ["x"]
    capped: DeadlineBatcher[str] = DeadlineBatcher(delay=600, max_delay=2)
    capped.add("y", now=0)
    assert capped.due(now=2)
    with pytest.raises(ValueError):
        DeadlineBatcher(delay=-1)


def test_backoff_grows_is_capped_and_jittered() -> None:
    low = [backoff_delay(n, base=0.2, cap=5, rand=lambda: 0.0) for n in range(1, 10)]
    high = [backoff_delay(n, base=0.2, cap=5, rand=lambda: 0.999999) for n in range(1, 10)]
    assert low[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert high[0] == pytest.approx(0.2, abs=1e-5)
    assert max(high) <= 5 and high[-1] == pytest.approx(5, abs=1e-5)
    assert all(lo > 0 for lo in low)  # never zero: no hot retry loop
    rng = random.Random(7)
    spread = {round(backoff_delay(6, rand=rng.random), 3) for _ in range(20)}
    assert len(spread) > 10  # retries of many files do not move in lock step


def test_object_key_keeps_folders_and_encodes_like_rclone() -> None:
    assert object_key("outputs", "a/x.png") == "outputs/a/x.png"
    assert object_key("outputs", "b/x.png") != object_key("outputs", "a/x.png")
    assert object_key("outputs/pod1", "line\nbreak.png") == "outputs/pod1/line\u240abreak.png"
    assert object_key("", "x.png") == "x.png"
    bad = "caf\udce9.png"  # a Latin-1 byte in a file name, as os.fsdecode gives it
    assert object_key("o", bad) == "o/caf\u201bE9.png"  # rclone's InvalidUtf8 encoding, as `push` makes it
    assert safe_text("ok") == "ok"
    with pytest.raises(UnsafePathError):
        object_key("o", "x" * 1100)


@pytest.mark.parametrize("key, sibling", [
    ("outputs/a/ComfyUI_00001_.png", "outputs/a/ComfyUI_00001_.~ab12.png"),
    ("outputs/video.final.mp4", "outputs/video.final.~ab12.mp4"),
    ("outputs/README", "outputs/README.~ab12"),
    ("noprefix.png", "noprefix.~ab12.png"),
    ("outputs/.hidden", "outputs/.hidden.~ab12"),
])
def test_sibling_key(key: str, sibling: str) -> None:
    assert sibling_key(key, "ab12") == sibling


MOUNTS = """\
overlay / overlay rw,relatime 0 0
proc /proc proc rw 0 0
mfs#runpod /workspace fuse rw 0 0
server:/export /mnt/nfs nfs4 rw 0 0
/dev/sda1 /mnt/nfs/local ext4 rw 0 0
sshfs#x /mnt/with\\040space fuse.sshfs rw 0 0
"""


@pytest.mark.parametrize("path, fstype, network", [
    ("/root/out", "overlay", False),
    ("/workspace/ComfyUI/output", "fuse", True),
    ("/workspace", "fuse", True),
    ("/workspacex", "overlay", False),
    ("/mnt/nfs/a", "nfs4", True),
    ("/mnt/nfs/local/a", "ext4", False),
    ("/mnt/with space/x", "fuse.sshfs", True),
])
def test_mount_fstype(path: str, fstype: str, network: bool) -> None:
    assert mount_fstype(path, MOUNTS) == fstype
    assert is_network_fs(fstype) is network


def test_percentile() -> None:
    assert percentile([], 0.95) is None
    assert percentile([3.0], 0.95) == 3.0
    values = list(range(1, 101))
    assert percentile(values, 0.95) == 95
    assert percentile(values, 0.5) == 50
