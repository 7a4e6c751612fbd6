"""OutputWatcher end to end: real inotify, real S3 servers (rclone serve s3, moto) and the local bucket."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from syncbridge.keys import object_key
from syncbridge.config import Config, load_config
from syncbridge.watch.inotify import TreeWatcher
from syncbridge.watch.events import Action
from syncbridge.watch.journal import Journal, read_summary
from syncbridge.demo.localserver import free_port, serve_rclone_s3
from syncbridge.store import Store, open_store
from syncbridge.watch import OutputWatcher, WatchError, journal_path, read_status

from ..conftest import ACCESS_KEY, SECRET_KEY, new_bucket, server_env, wait_for as _wait_for


@pytest.fixture(params=["local", "rclone", "moto", "r2"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment of a template pointing at each kind of bucket."""
    if request.param == "local":
        return request.getfixturevalue("local_env")
    server = request.getfixturevalue(f"{request.param}_s3")
    return server_env(server, new_bucket(server), tmp_path)


def _config(env: dict[str, str], **overrides: object) -> Config:
    return load_config(env, overrides=overrides or None)


def _store(config: Config) -> Store:
    return open_store(config.remote, state_dir=config.state_dir)


def _objects(config: Config, prefix: str = "outputs/") -> dict[str, bytes]:
    store = _store(config)
    try:
        return {o.key: store.get_bytes(o.key)[0] for o in store.list(prefix)}
    finally:
        store.close()


def _etags(config: Config, prefix: str = "outputs/") -> dict[str, str]:
    store = _store(config)
    try:
        return {o.key: o.etag for o in store.list(prefix)}
    finally:
        store.close()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)



EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif", "avif", "mp4", "webm", "mov", "mkv", "wav", "mp3", "flac", "ogg",
              "json", "txt")
HOSTILE = ("with space.png", "quote'\"s.png", "$(touch PWNED).png", "new\nline.png", "\u65e5\u672c\u8a9e.png",
           "emoji \U0001f3a8.png", "semi;colon&amp.png", "-dash.png", "back`tick`.png", "tab\there.png",
           "percent%20.png", "plus+sign.png")


def test_every_file_lands_with_identical_bytes(backend: dict[str, str], tmp_path: Path) -> None:
    """Every type, nested folders made and filled at once, same names in two folders, temp-then-rename,
    hostile names, excluded files and a symlink to /etc: the bucket holds exactly the eligible files."""
    config = _config(backend)
    out = config.watch.dir
    rng = random.Random(1)
    expected: dict[str, bytes] = {}

    def put(rel: str, size: int = 2000) -> None:
        data = rng.randbytes(size)
        _write(out / rel, data)
        expected[rel] = data

    put("before-start.png")  # catch-up: there before the watcher
    (out / "etc-link").symlink_to("/etc")
    (out / "hostname.txt").symlink_to("/etc/hostname")
    with OutputWatcher(config) as watcher:
        for ext in EXTENSIONS:
            put(f"types/sample.{ext}", 3000 + len(ext))
        put("big/clip.mp4", 5 * 1024 * 1024 + 17)  # past the in-memory limit: streamed
        for d in range(4):  # nested folders created and filled in quick succession
            for f in range(8):
                put(f"batch/n{d}/deeper/x{d}/img_{f:03d}.png", 500)
        put("a/ComfyUI_00001_.png")
        put("b/ComfyUI_00001_.png")  # same base name, other folder: its own key
        for name in HOSTILE:
            put(f"hostile/{name}", 100)
        bad = os.fsdecode(b"latin1-\xe9.png")
        put(bad, 100)
        # temp-then-rename writers (hidden temp name, and a .partial name)
        _write(out / "renamed/.tmp-write", b"R1" * 500)
        os.replace(out / "renamed/.tmp-write", out / "renamed/final.png")
        expected["renamed/final.png"] = b"R1" * 500
        _write(out / "renamed/video.mp4.partial", b"V" * 700)
        os.replace(out / "renamed/video.mp4.partial", out / "renamed/video.mp4")
        expected["renamed/video.mp4"] = b"V" * 700
        put("notes.docx", 10)  # not an image, still an output: no extension allowlist
        put("no-extension", 10)
        # never pushed: can never be an output
        for rel in ("temp/preview.png", ".hidden.png", "sub/.also-hidden.png", ".cache/x.png", "sub/.cache/y.png",
                    "dl.png.partial", "model.incomplete", "a.safetensors.part", "b.bin.crdownload", "c.tmp",
                    "d.gguf.aria2", "e.mp4.download", "f.downloading"):
            _write(out / rel, b"no")
        (out / "batch" / "dirlink").symlink_to("/etc", target_is_directory=True)
        assert watcher.wait_idle(90), watcher.stats()
        stats = watcher.stats()
    assert stats.failed == 0 and stats.collisions == 0 and stats.left_out == 0
    # (a file the scan of a brand-new folder caught half-written is pushed again on its close)
    assert stats.uploaded >= len(expected), stats
    got = _objects(config)
    want = {object_key("outputs", rel): data for rel, data in expected.items()}
    assert set(got) == set(want), (set(got) ^ set(want))
    for key, data in want.items():
        assert got[key] == data, key
    assert "outputs/a/ComfyUI_00001_.png" in got and "outputs/b/ComfyUI_00001_.png" in got
    assert "outputs/hostile/new\u240aline.png" in got  # rclone's Ctl encoding
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    journal = Journal(journal_path(config.state_dir), root=str(out.resolve()), template="outputs")
    assert {r.state for r in journal.rows().values()} == {"done"}
    assert len(journal.rows()) == len(expected)
    journal.close()


@pytest.mark.slow
def test_rewritten_files_end_with_the_newest_content(backend: dict[str, str]) -> None:
    config = _config(backend)
    out = config.watch.dir
    with OutputWatcher(config) as watcher:
        _write(out / "v/clip.mp4", b"first version " * 5000)
        assert watcher.wait_idle(30)
        # ffmpeg's second run rewrites the same path in place: same size, other bytes
        _write(out / "v/clip.mp4", b"SECOND VERSION " * 5000)
        assert watcher.wait_idle(30)
        assert _objects(config)["outputs/v/clip.mp4"] == b"SECOND VERSION " * 5000
        # many rewrites in quick succession, some during uploads: the last one wins
        for i in range(25):
            _write(out / "v/fast.png", f"version {i} ".encode() * (2000 + i))
        # and a temp-then-rename rewrite of a pushed file
        _write(out / "v/.tmp", b"renamed newest")
        os.replace(out / "v/.tmp", out / "v/clip.mp4")
        assert watcher.wait_idle(30)
        stats = watcher.stats()
    got = _objects(config)
    assert got["outputs/v/fast.png"] == b"version 24 " * 2024
    assert got["outputs/v/clip.mp4"] == b"renamed newest"
    assert set(got) == {"outputs/v/clip.mp4", "outputs/v/fast.png"}  # a rewrite of our own object: no sibling
    assert stats.collisions == 0 and stats.failed == 0


@pytest.mark.slow
def test_someone_elses_object_is_never_overwritten(backend: dict[str, str], caplog) -> None:
    config = _config(backend)
    out = config.watch.dir
    store = _store(config)
    store.put_bytes("outputs/ComfyUI_00001_.png", b"made by another pod")
    store.put_bytes("outputs/same.png", b"identical bytes")
    caplog.set_level(logging.WARNING, logger="syncbridge")
    with OutputWatcher(config) as watcher:
        _write(out / "ComfyUI_00001_.png", b"made by this pod")
        _write(out / "same.png", b"identical bytes")
        assert watcher.wait_idle(30)
        # Ours now, and rewritten: simply uploaded again (to the sibling it went to).
        _write(out / "ComfyUI_00001_.png", b"made by this pod, rewritten")
        assert watcher.wait_idle(30)
        # Deleted and made again (a pod restarted on an empty disk numbers from 1 again):
        # a new output, so the pushed one is kept.
        _write(out / "ComfyUI_00002_.png", b"first 2")
        assert watcher.wait_idle(30)
        (out / "ComfyUI_00002_.png").unlink()
        _write(out / "ComfyUI_00002_.png", b"second 2")
        assert watcher.wait_idle(30)
        # The identical object was found, not put, by us: rewriting our file must not replace it.
        _write(out / "same.png", b"identical bytes, then rewritten here")
        assert watcher.wait_idle(30)
        stats = watcher.stats()
    got = _objects(config)
    assert got["outputs/ComfyUI_00001_.png"] == b"made by another pod"
    assert got["outputs/same.png"] == b"identical bytes"
    assert [v for k, v in got.items() if k.startswith("outputs/same.~")] == [b"identical bytes, then rewritten here"]
    siblings = {k: v for k, v in got.items() if k.startswith("outputs/ComfyUI_00001_.~")}
    assert list(siblings.values()) == [b"made by this pod, rewritten"], got.keys()
    assert list(siblings)[0].endswith(".png")
    assert got["outputs/ComfyUI_00002_.png"] == b"first 2"
    assert [v for k, v in got.items() if k.startswith("outputs/ComfyUI_00002_.~")] == [b"second 2"]
    assert len(got) == 6, sorted(got)
    assert stats.collisions == 3 and stats.skipped >= 1
    assert any(getattr(r, "event", "") == "watch.collision" and "ComfyUI_00001_" in r.getMessage()
               for r in caplog.records)
    journal = Journal(journal_path(config.state_dir), root=str(out.resolve()), template="outputs")
    assert journal.get("ComfyUI_00001_.png").key == list(siblings)[0]
    journal.close()
    store.close()


@pytest.mark.slow
def test_burst_of_2000_files(rclone_s3, tmp_path: Path) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    config = _config(env)
    out = config.watch.dir
    payloads = {}
    errors: list[BaseException] = []
    stop_reading = threading.Event()

    def read_stats(watcher: OutputWatcher) -> None:  # e.g. a heartbeat thread
        try:
            while not stop_reading.is_set():
                watcher.stats()
                time.sleep(0.01)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with OutputWatcher(config) as watcher:
        reader = threading.Thread(target=read_stats, args=(watcher,))
        reader.start()
        threads_before = threading.active_count()
        for i in range(2000):
            rel = f"run{i % 10}/sub{i % 7}/img_{i:05d}.png"
            data = f"{i}".encode() * 100
            _write(out / rel, data)
            payloads[rel] = data
        assert watcher.wait_idle(150), watcher.stats()
        assert threading.active_count() <= threads_before + 1  # a fixed pool, no thread per file
        stop_reading.set()
        reader.join()
        stats = watcher.stats()
    assert not errors
    assert stats.uploaded >= 2000 and stats.failed == 0 and stats.p95_latency is not None
    etags = _etags(config)
    assert len(etags) == 2000
    for rel, data in payloads.items():
        assert etags[f"outputs/{rel}"] == hashlib.md5(data).hexdigest()


@pytest.mark.slow
def test_server_down_for_10s_mid_burst_loses_nothing(tmp_path: Path, caplog) -> None:
    port = free_port()
    root = tmp_path / "server"
    caplog.set_level(logging.INFO, logger="syncbridge")
    with serve_rclone_s3(root, access_key=ACCESS_KEY, secret_key=SECRET_KEY, port=port) as server:
        bucket = new_bucket(server)
        config = _config(server_env(server, bucket, tmp_path))
        out = config.watch.dir
        watcher = OutputWatcher(config)
        watcher.start()
        for i in range(150):
            _write(out / f"before/{i:04d}.png", b"b%d" % i * 50)
    # the server is gone, mid-burst: files keep being accepted
    try:
        for i in range(250):
            _write(out / f"during/{i % 5}/{i:04d}.png", b"d%d" % i * 50)
        _wait_for(lambda: watcher.stats().retries > 0, 20, "a failed attempt")
        time.sleep(10)
        stats = watcher.stats()
        assert stats.state == "running" and stats.pending > 0 and stats.failed == 0
        with serve_rclone_s3(root, access_key=ACCESS_KEY, secret_key=SECRET_KEY, port=port):
            for i in range(50):
                _write(out / f"after/{i:04d}.png", b"a%d" % i * 50)
            assert watcher.wait_idle(60), watcher.stats()
            etags = _etags(config)
    finally:
        result = watcher.stop(drain_seconds=1)
    expected = {f"outputs/before/{i:04d}.png": b"b%d" % i * 50 for i in range(150)}
    expected.update({f"outputs/during/{i % 5}/{i:04d}.png": b"d%d" % i * 50 for i in range(250)})
    expected.update({f"outputs/after/{i:04d}.png": b"a%d" % i * 50 for i in range(50)})
    assert set(etags) == set(expected), set(expected) - set(etags)
    assert all(etags[k] == hashlib.md5(v).hexdigest() for k, v in expected.items())
    assert result.ok
    assert any(getattr(r, "event", "") == "watch.retry" for r in caplog.records)
    assert any(getattr(r, "event", "") == "watch.store_back" for r in caplog.records)


@pytest.mark.slow
def test_fatal_errors_are_loud_kept_and_the_watcher_keeps_running(rclone_s3, tmp_path: Path, caplog) -> None:
    bucket = f"sb-missing-{os.getpid()}-{int(time.time() * 1000) % 100000}"
    config = _config(server_env(rclone_s3, bucket, tmp_path))
    out = config.watch.dir
    caplog.set_level(logging.WARNING, logger="syncbridge")
    with pytest.raises(WatchError) as refused:  # at start, a missing bucket stops it, naming the setting
        OutputWatcher(config).start()
    assert refused.value.setting == "R2_BUCKET" and "the bucket does not exist" in str(refused.value)
    watcher = OutputWatcher(config, check_bucket=False)  # as if the bucket went away while it runs
    watcher.fatal_retry_seconds = 6.0
    watcher.start()
    try:
        _write(out / "lost.png", b"x")
        _wait_for(lambda: watcher.stats().failed == 1, 30, "the fatal failure")
        _write(out / "second.png", b"y")  # still accepting
        _wait_for(lambda: watcher.stats().failed == 2, 30, "the second failure")
        assert watcher.stats().state == "running"
        assert not watcher.wait_idle(0.5)
        summary = read_summary(journal_path(config.state_dir))  # kept in the journal, with the error
        assert summary.failed == 2 and all("NoSuchBucket" in (error or "") for _, _, error in summary.failures)
        rclone_s3.create_bucket(bucket)
        _write(out / "lost.png", b"x again")  # a new event retries at once
        _wait_for(lambda: watcher.stats().uploaded == 1, 30, "the retry to succeed")
        assert watcher.stats().failed == 1
        # second.png has no new event: its timed retry pushes it
        assert watcher.wait_idle(30), "the timed retry of a fatal failure"
    finally:
        result = watcher.stop(drain_seconds=1)
    assert result.ok and result.failed == 0, result
    fatal = [r for r in caplog.records if getattr(r, "event", "") == "watch.fatal"]
    assert fatal and "outputs/lost.png" in fatal[0].getMessage() and "NoSuchBucket" in fatal[0].getMessage()
    got = _objects(config)
    assert got == {"outputs/lost.png": b"x again", "outputs/second.png": b"y"}


def test_context_manager_drains_on_exit(tmp_path: Path, local_env: dict[str, str]) -> None:
    config = _config(local_env)
    out = config.watch.dir
    with OutputWatcher(config):
        for i in range(200):
            _write(out / f"d{i % 4}/{i}.png", b"%d" % i)
    got = _objects(config)
    assert len(got) == 200
    status = read_status(config.state_dir)
    assert status is not None and status["running"] is False and status["uploaded"] == 200
    assert oct(os.stat(config.state_dir / "watch" / "status.json").st_mode & 0o777) == "0o600"


def test_a_file_in_a_new_folder_just_before_the_stop_is_pushed(tmp_path: Path, local_env: dict[str, str]) -> None:
    """The last files of a job often go into a folder made for them a moment before the block ends; the
    watcher finds them by a scan (no close event seen) and used to end its drain without them, leaving
    them in the journal (a spot pod's last outputs lost until a next start that may never come)."""
    config = _config(local_env)
    out = config.watch.dir
    for round_ in range(5):
        watcher = OutputWatcher(config)
        watcher.start()
        _write(out / f"job{round_}/deep/er/last.png", b"png %d" % round_)
        _write(out / f"job{round_}/top.png", b"top %d" % round_)
        result = watcher.stop()
        assert result.ok and result.pending == 0, result
        got = _objects(config)
        assert got.get(f"outputs/job{round_}/deep/er/last.png") == b"png %d" % round_, sorted(got)
        assert got.get(f"outputs/job{round_}/top.png") == b"top %d" % round_


def test_hard_links_whose_temp_name_is_gone_at_the_event_are_pushed(tmp_path: Path, local_env: dict[str, str]) -> None:
    """os.link(tmp, final) then os.unlink(tmp): the final name gets a creation event and no close. By the
    time the event is read the link count may be 1 again; such a file used to be dropped without a word."""
    config = _config(local_env)
    out = config.watch.dir
    (out / "links").mkdir(parents=True)
    with OutputWatcher(config) as watcher:
        _wait_for(lambda: watcher.stats().catch_up_done, 10, "the start-up scan")
        for i in range(30):
            tmp = out / "links" / f".{i}.tmp"
            tmp.write_bytes(b"linked %d" % i)
            os.link(tmp, out / "links" / f"{i}.png")
            os.unlink(tmp)
        _wait_for(lambda: len(_objects(config)) == 30, 20, "every linked file in the bucket")
    assert _objects(config) == {f"outputs/links/{i}.png": b"linked %d" % i for i in range(30)}


def test_a_file_a_process_still_writes_at_the_stop_stays_in_the_journal(tmp_path: Path,
                                                                         local_env: dict[str, str]) -> None:
    """The other side of that rule: a file another process still has open is not pushed as a prefix of
    itself at the stop; it stays pending in the journal, and the next start pushes it whole."""
    config = _config(local_env)
    out = config.watch.dir
    target = out / "new" / "video.mp4"
    target.parent.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "f = open(sys.argv[1], 'wb'); f.write(b'head'); f.flush()\n"
                               "sys.stdin.readline(); f.write(b'tail'); f.close()", str(target)],
                              stdin=subprocess.PIPE)
    try:
        _wait_for(lambda: target.exists() and target.stat().st_size == 4, 10, "the first bytes")
        watcher = OutputWatcher(config)
        watcher.start()  # its start-up scan finds the file, with no close event to say it is finished
        result = watcher.stop()
        assert "outputs/new/video.mp4" not in _objects(config)
        assert result.pending == 1 and not result.ok
    finally:
        writer.communicate(b"\n", timeout=10)
    with OutputWatcher(config):
        pass
    assert _objects(config)["outputs/new/video.mp4"] == b"headtail"


def test_batch_delay_is_a_deadline_not_a_debounce(tmp_path: Path, local_env: dict[str, str]) -> None:
    config = _config(local_env, **{"watch.batch_delay": 0.5})
    out = config.watch.dir
    with OutputWatcher(config) as watcher:
        for i in range(15):  # a file every 0.1 s for 1.5 s: a restarting debounce would wait until the end
            _write(out / f"{i}.png", b"%d" % i)
            time.sleep(0.1)
        assert watcher.stats().uploaded >= 1, "nothing pushed while the writes went on"
        assert watcher.wait_idle(10)
        stats = watcher.stats()
    assert stats.uploaded == 15 and stats.p95_latency < 2.0


def test_inotify_overflow_makes_a_rescan(tmp_path: Path) -> None:
    """The kernel's event queue really overflows (the reader is not reading); the next read says RESCAN."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events={limit} is too large to overflow quickly")
    root = tmp_path / "out"
    root.mkdir()
    tree = TreeWatcher(root, dir_selected=lambda rel: True)
    try:
        tree.watch_tree("")
        for i in range(limit + 200):  # one IN_CLOSE_WRITE each (alternating names: not merged)
            (root / f"f{i % 2}").write_bytes(b"")
        changes = tree.read(timeout=1)
        assert any(c.action is Action.RESCAN for c in changes)
    finally:
        tree.close()


def test_events_dropped_by_an_overflow_are_found_by_the_rescan(tmp_path: Path, local_env: dict[str, str],
                                                               caplog) -> None:
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.skip(f"max_queued_events={limit} is too large to overflow quickly")
    caplog.set_level(logging.WARNING, logger="syncbridge")
    config = _config(local_env)
    out = config.watch.dir
    with OutputWatcher(config) as watcher:
        assert watcher.wait_idle(10)
        # Stall the watcher (its reader blocks on its lock at the first event) while the
        # kernel queue fills up and then drops the events of the files that matter.
        with watcher._lock:
            _write(out / "first.png", b"1")  # the reader takes this event and waits for the lock
            time.sleep(0.2)
            for i in range(limit + 200):
                (out / f".churn{i % 2}").write_bytes(b"")
            for i in range(30):
                _write(out / f"lost-events/{i}.png", b"%d" % i)
        assert watcher.wait_idle(60), watcher.stats()
    assert any(getattr(r, "event", "") == "watch.overflow" for r in caplog.records)
    got = _objects(config)
    assert {f"outputs/lost-events/{i}.png" for i in range(30)} <= set(got)


def test_prefix_template_with_pod_id_and_date(tmp_path: Path, local_env: dict[str, str]) -> None:
    import datetime as dt

    config = _config(local_env, **{"watch.prefix": "outputs/{pod_id}/{date:%Y}"})
    out = config.watch.dir
    with OutputWatcher(config) as watcher:
        _write(out / "sub/x.png", b"x")
        assert watcher.wait_idle(10)
    year = dt.datetime.now().strftime("%Y")
    assert _objects(config, prefix="outputs/") == {f"outputs/testpod/{year}/sub/x.png": b"x"}


def test_folders_moved_in_and_a_recreated_root_are_watched(tmp_path: Path, local_env: dict[str, str]) -> None:
    config = _config(local_env)
    out = config.watch.dir
    outside = tmp_path / "elsewhere" / "album"
    for i in range(5):
        _write(outside / "deep" / f"{i}.png", b"%d" % i)
    with OutputWatcher(config) as watcher:
        os.rename(outside, out / "album")  # a whole folder moved in: no close events for its files
        assert watcher.wait_idle(10)
        _write(out / "album" / "deep" / "later.png", b"later")  # and it is watched from then on
        assert watcher.wait_idle(10)
        # the output folder itself deleted and made again (a job wiping its outputs)
        shutil.rmtree(out)
        out.mkdir()
        _write(out / "again.png", b"again")  # found by the scan that follows re-watching the folder
        _wait_for(lambda: "outputs/again.png" in _objects(config), 15, "a file in the recreated folder")
        assert watcher.wait_idle(10)
    got = _objects(config)
    assert {f"outputs/album/deep/{i}.png" for i in range(5)} | {"outputs/album/deep/later.png",
                                                                 "outputs/again.png"} <= set(got)


def test_a_file_still_being_written_at_start_ends_complete(tmp_path: Path, local_env: dict[str, str]) -> None:
    """The catch-up scan may push a file a job is still writing; its close pushes the whole file."""
    config = _config(local_env)
    out = config.watch.dir
    out.mkdir(parents=True)
    chunks = [os.urandom(64 * 1024) for _ in range(20)]
    with open(out / "render.mp4", "wb") as fh:
        fh.write(chunks[0])
        fh.flush()
        with OutputWatcher(config) as watcher:
            for chunk in chunks[1:]:
                time.sleep(0.03)
                fh.write(chunk)
                fh.flush()
            fh.close()
            assert watcher.wait_idle(30)
            uploads = watcher.stats().uploaded
    assert _objects(config)["outputs/render.mp4"] == b"".join(chunks)
    assert uploads <= 8  # not re-sent in a loop while it grew


def test_a_file_rewritten_many_times_a_second_is_not_hammered(tmp_path: Path, local_env: dict[str, str]) -> None:
    """R2 takes about one write per second per key: rapid rewrites coalesce, the last one still lands."""
    config = _config(local_env)
    out = config.watch.dir
    with OutputWatcher(config) as watcher:
        t0 = time.monotonic()
        for i in range(40):  # 40 rewrites in about 0.8 s
            _write(out / "progress.json", b'{"step": %d}' % i)
            time.sleep(0.02)
        assert watcher.wait_idle(15)
        elapsed = time.monotonic() - t0
        stats = watcher.stats()
    assert _objects(config)["outputs/progress.json"] == b'{"step": 39}'
    assert stats.uploaded <= 2 + int(elapsed / 1.0) + 1, (stats.uploaded, elapsed)
