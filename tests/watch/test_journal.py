"""The watcher's SQLite journal: durable, private, compacted."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from syncbridge.watch.journal import DONE, FAILED, PENDING, Journal, read_summary


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_rows_survive_a_killed_process_and_files_are_private(tmp_path: Path) -> None:
    db = tmp_path / "state" / "watch" / "journal.sqlite3"
    # A child process writes and is killed with SIGKILL without closing anything.
    code = (
        "import os, sys\n"
        "from syncbridge.watch.journal import Journal\n"
        f"j = Journal({str(db)!r}, root='/out', template='outputs')\n"
        "j.mark_pending([('a.png', 1.0), ('b.png', 2.0)])\n"
        "j.mark_done('a.png', key='outputs/a.png', size=3, mtime_ns=5, ino=7, etag='e1')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert _mode(db) == 0o600 and _mode(db.parent) == 0o700
    for extra in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if extra.exists():
            assert _mode(extra) == 0o600
    journal = Journal(db, root="/out", template="outputs")
    rows = journal.rows()
    assert rows["a.png"].state == DONE and rows["a.png"].etag == "e1" and rows["a.png"].ino == 7
    assert rows["b.png"].state == PENDING and rows["b.png"].first_seen == 2.0
    # another folder or prefix template is a separate set of rows
    assert Journal(db, root="/other", template="outputs").rows() == {}
    assert Journal(db, root="/out", template="outputs/{pod_id}").rows() == {}
    journal.close()


def test_pending_keeps_ownership_and_first_seen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", root="/out", template="o")
    journal.mark_done("v.mp4", key="o/v.mp4", size=1, mtime_ns=1, ino=1, etag="abc")
    journal.mark_pending([("v.mp4", 10.0)])  # rewritten: pending again, still ours
    journal.mark_pending([("v.mp4", 20.0)])  # a second event does not reset the age
    row = journal.get("v.mp4")
    assert row is not None and row.state == PENDING and row.etag == "abc" and row.key == "o/v.mp4"
    assert row.first_seen == 10.0
    journal.note_error("v.mp4", key="o/v.mp4", error="403 AccessDenied", attempts=3, fatal=True)
    row = journal.get("v.mp4")
    assert row.state == FAILED and row.attempts == 3 and "AccessDenied" in row.last_error
    journal.mark_done("v.mp4", key="o/v.mp4", size=2, mtime_ns=2, ino=1, etag="def")
    row = journal.get("v.mp4")
    assert row.state == DONE and row.attempts == 0 and row.last_error is None and row.etag == "def"
    journal.close()


def test_compaction_drops_rows_of_missing_files_only(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", root="/out", template="o")
    for i in range(50):
        journal.mark_done(f"f{i}.png", key=f"o/f{i}.png", size=1, mtime_ns=1, ino=i, etag="e")
    journal.mark_pending([("gone-pending.png", 1.0)])
    scan_started = time.time()
    time.sleep(0.01)
    journal.mark_pending([("new-during-scan.png", 2.0)])  # appeared while the scan ran
    removed = journal.compact(seen={f"f{i}.png" for i in range(10)}, before=scan_started)
    assert removed == 41
    assert set(journal.rows()) == {*(f"f{i}.png" for i in range(10)), "new-during-scan.png"}
    journal.close()


def test_odd_names_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", root="/out", template="o")
    names = ["a b/it's \"quoted\".png", "$(touch PWNED).png", "new\nline.png", "caf\udce9.png", "\u65e5\u672c.png"]
    journal.mark_pending([(n, 1.0) for n in names])
    assert set(journal.rows()) == set(names)
    journal.forget(names[:2])
    assert set(journal.rows()) == set(names[2:])
    journal.close()


def test_unreadable_journal_is_moved_aside(tmp_path: Path, caplog) -> None:
    db = tmp_path / "j.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    journal = Journal(db, root="/out", template="o")
    journal.mark_pending([("x.png", 1.0)])
    assert journal.get("x.png") is not None
    assert list(tmp_path.glob("j.sqlite3.corrupt-*")), "the unreadable file is kept for inspection"
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    journal.close()


def test_read_summary_without_a_daemon(tmp_path: Path) -> None:
    db = tmp_path / "j.sqlite3"
    assert read_summary(db) is None
    journal = Journal(db, root="/out", template="o")
    journal.mark_pending([("a.png", 100.0), ("b.png", 50.0)])
    journal.mark_done("c.png", key="o/c.png", size=1, mtime_ns=1, ino=1, etag="e")
    journal.note_error("d.png", key="o/d.png", error="NoSuchBucket", attempts=1, fatal=True)
    summary = read_summary(db)  # while the writer still has it open
    assert (summary.pending, summary.done, summary.failed, summary.oldest_pending) == (2, 1, 1, 50.0)
    assert summary.failures == (("d.png", "o/d.png", "NoSuchBucket"),)
    journal.close()
    assert os.path.exists(db)
