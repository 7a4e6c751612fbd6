"""push / pull / bisync through the real rclone against both loopback S3 servers and the local bucket."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncbridge.bulk import BisyncError, bisync, bisync_workdir, pull, push
from syncbridge.config import load_config
from syncbridge.store import make_s3_client, open_store

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "a.txt": b"hello",
        "sub/b.bin": os.urandom(200_000),
        "sub/deeper/c.json": b'{"x": 1}',
        "with space.png": b"png",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def test_push_pull_round_trip(env, tmp_path):
    config = load_config(env)
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _make_tree(src)
    summary = push(config, src, "data/set1")
    assert summary.files == len(files)
    # rclone's stats count the bytes of a retried upload again (seen once: 400016 for 200016, the
    # 200 kB file sent twice against the loopback server); every byte counted at least once.
    total = sum(len(v) for v in files.values())
    assert summary.bytes == total or total < summary.bytes <= total + len(files["sub/b.bin"]) * 2
    pulled = pull(config, "data/set1", dst)
    assert pulled.files == len(files)
    assert _tree(dst) == files


def test_round_trip_local_bucket(local_env, tmp_path):
    config = load_config(local_env)
    assert config.remote.is_local
    src, dst = tmp_path / "src", tmp_path / "dst"
    files = _make_tree(src)
    push(config, src, "data")
    assert _tree(config.remote.local_bucket_dir / "data") == files
    pull(config, "data", dst)
    assert _tree(dst) == files


def test_filters_and_dry_run(env, tmp_path):
    config = load_config(env)
    src, dst = tmp_path / "src", tmp_path / "dst"
    _make_tree(src)
    dry = push(config, src, "f", dry_run=True)
    assert dry.dry_run
    pull(config, "f", dst)
    assert _tree(dst) == {}, "dry-run must change nothing"
    push(config, src, "f", include=["*.txt", "*.json"], exclude=["sub/deeper/**"])
    pull(config, "f", dst)
    assert set(_tree(dst)) == {"a.txt"}


def test_single_file_push_and_pull(env, tmp_path):
    config = load_config(env)
    f = tmp_path / "one.safetensors"
    f.write_bytes(b"weights" * 1000)
    push(config, f, "models/")
    out = tmp_path / "out"
    out.mkdir()
    pull(config, "models/one.safetensors", out)
    assert (out / "one.safetensors").read_bytes() == f.read_bytes()


HOSTILE = ["sp ace.png", "quo'te\".png", "hash#1.png", "pct%20.png", "ünïcødé-图像.png", "$(touch PWNED).png",
           "new\nline.png", "back`tick`.png", "semi;colon&amp.png"]


def test_hostile_names_round_trip_and_run_nothing(env, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    expected = {}
    for i, name in enumerate(HOSTILE):
        (src / name).write_bytes(f"file {i}".encode())
        expected[name] = f"file {i}".encode()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_cli(["push", str(src), "hostile"], env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["pull", "hostile", str(dst)], env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert _tree(dst) == expected
    assert not list(tmp_path.rglob("PWNED")) and not (Path.cwd() / "PWNED").exists()


def test_invalid_utf8_name_round_trips_byte_for_byte(env, tmp_path):
    """rclone's InvalidUtf8 encoding stores b"\\xff\\xfe" as the key text "‛FF‛FE" and maps it back on
    download: the name round-trips exactly, and the rest of the run is unaffected."""
    config = load_config(env)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "good.txt").write_bytes(b"good")
    (src / "sub").mkdir()
    (src / "sub" / "also-good.png").write_bytes(b"png")
    bad = os.fsencode(src) + b"/bad-\xff\xfe.txt"
    with open(bad, "wb") as fh:
        fh.write(b"bad")
    pushed = push(config, src, "utf8")
    assert (pushed.files, pushed.errors, pushed.skipped) == (3, 0, ())
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        keys = sorted(o.key for o in store.list("utf8/"))
    finally:
        store.close()
    assert keys == ["utf8/bad-\u201bFF\u201bFE.txt", "utf8/good.txt", "utf8/sub/also-good.png"]
    pulled = pull(config, "utf8", dst)
    assert (pulled.files, pulled.errors, pulled.skipped) == (3, 0, ())
    assert sorted(os.listdir(os.fsencode(dst))) == [b"bad-\xff\xfe.txt", b"good.txt", b"sub"]
    with open(os.fsencode(dst) + b"/bad-\xff\xfe.txt", "rb") as fh:
        assert fh.read() == b"bad"
    assert (dst / "good.txt").read_bytes() == b"good" and (dst / "sub" / "also-good.png").read_bytes() == b"png"


def test_invalid_utf8_name_on_the_local_bucket(local_env, tmp_path):
    config = load_config(local_env)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "good.txt").write_bytes(b"good")
    with open(os.fsencode(src) + b"/bad-\xff.txt", "wb") as fh:
        fh.write(b"bad")
    push(config, src, "u")
    pull(config, "u", dst)
    assert sorted(os.listdir(os.fsencode(dst))) == [b"bad-\xff.txt", b"good.txt"]


@pytest.mark.slow
def test_bisync_first_run_changes_conflict_delete(env, tmp_path):
    config = load_config(env)
    local = tmp_path / "workflows"
    local.mkdir()
    (local / "keep.json").write_text("1")
    (local / "gone.json").write_text("2")
    (local / "both.json").write_text("local-version")
    first = bisync(config, local, "workflows")
    assert first.resync, "the first run must be a resync"

    # change on each side, a conflict, and a deletion
    other = tmp_path / "other"
    pull(config, "workflows", other)
    (other / "remote-new.json").write_text("from the bucket")
    (other / "both.json").write_text("remote-version-newer")
    push(config, other, "workflows")
    (local / "local-new.json").write_text("from local")
    (local / "both.json").write_text("local-version-edited")
    os.utime(local / "both.json", (1_600_000_000, 1_600_000_000))  # older: the bucket's copy wins the name
    (local / "gone.json").unlink()

    second = bisync(config, local, "workflows")
    assert not second.resync
    names = set(_tree(local))
    assert "remote-new.json" in names and "local-new.json" in names and "keep.json" in names
    assert "gone.json" not in names
    assert (local / "both.json").read_text() == "remote-version-newer"
    losers = [n for n in names if n.startswith("both.json") and n != "both.json"]
    assert losers, f"the conflict's loser must be kept renamed, got {names}"
    assert any((local / n).read_text() == "local-version-edited" for n in losers)
    check = tmp_path / "check"
    pull(config, "workflows", check)
    assert "gone.json" not in _tree(check)
    assert set(_tree(check)) == names


def test_cli_summary_and_no_secret(env, tmp_path):
    src = tmp_path / "src"
    _make_tree(src)
    proc = run_cli(["push", str(src), "cli"], env)
    assert proc.returncode == 0, proc.stderr
    assert "push: transferred 4 files" in proc.stdout
    assert "MB/s" in proc.stdout
    assert "using bucket" in proc.stderr
    assert_no_secret(proc.stdout, proc.stderr)


def test_pull_refuses_keys_escaping_local(moto_s3, tmp_path, caplog):
    """Keys made directly with boto3 (moto keeps them verbatim): nothing lands outside LOCAL, each
    skipped key is named, and every safe key (even a newline or glob characters) still arrives."""
    bucket = new_bucket(moto_s3)
    config = load_config(server_env(moto_s3, bucket, tmp_path))
    client = make_s3_client(config.remote)
    hostile = ["p/a/../../evil.txt", "p/../evil2.txt", "p//abs.txt", "p/b\\..\\..\\evil3.txt", "p/./dot.txt"]
    safe = {"ok.txt": "p/ok.txt", "new\nline.txt": "p/new\u240aline.txt", "star*[x]{y}?.txt": "p/star*[x]{y}?.txt",
            "sub/x.txt": "p/sub/x.txt"}
    for key in [*hostile, *safe.values()]:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    client.close()
    dest = tmp_path / "deep" / "inner"
    with caplog.at_level("WARNING", logger="syncbridge.bulk"):
        summary = pull(config, "p", dest, include=["*.txt"])
    assert sorted(summary.skipped) == sorted(hostile)
    assert summary.files == len(safe) and summary.errors == 0
    warned = sorted(r.key for r in caplog.records if getattr(r, "event", "") == "pull.unsafe_key")
    assert warned == sorted(hostile)
    assert all(f"skipped key {r.key!r}" in r.getMessage() for r in caplog.records if hasattr(r, "key"))
    assert _tree(dest) == {rel: key.encode() for rel, key in safe.items()}
    everything = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert not [p for p in everything if "evil" in p or "abs.txt" in p or "dot.txt" in p], everything
    # the CLI names them too
    proc = run_cli(["pull", "p", str(tmp_path / "cli")], server_env(moto_s3, bucket, tmp_path))
    assert proc.returncode == 1, proc.stderr  # objects left behind are not a success (it was exit 0)
    assert "error: 5 object(s) not pulled" in proc.stderr
    assert "skipped key 'p/a/../../evil.txt'" in proc.stderr
    assert "skipped unsafe key: 'p/a/../../evil.txt'" in proc.stdout
    assert "5 skipped (unsafe names)" in proc.stdout


def test_pull_dry_run_and_filters(env, tmp_path):
    config = load_config(env)
    src = tmp_path / "src"
    _make_tree(src)
    push(config, src, "d")
    dst = tmp_path / "dst"
    dry = pull(config, "d", dst, dry_run=True)
    assert dry.dry_run and dry.files == 4 and not dst.exists()
    assert dry.line().startswith("pull: would transfer 4 files")
    pull(config, "d", dst, exclude=["sub/**"])
    assert set(_tree(dst)) == {"a.txt", "with space.png"}


def test_summary_line_fields(local_env, tmp_path):
    config = load_config(local_env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.bin").write_bytes(os.urandom(2_500_000))
    summary = push(config, src, "s", transfers=2)
    assert (summary.files, summary.bytes) == (1, 2_500_000)
    assert summary.seconds > 0 and summary.mb_per_s == pytest.approx(2.5 / summary.seconds)
    line = summary.line()
    assert line.startswith("push: transferred 1 file, 2.5 MB in ") and line.endswith(" MB/s)")


# -- bisync: guard, critical error, state --------------------------------------------------------


def _ten_files(local: Path) -> None:
    local.mkdir()
    for i in range(10):
        (local / f"f{i}.json").write_text(str(i))


@pytest.mark.slow
def test_bisync_max_delete_guard_then_force(env, tmp_path):
    config = load_config(env)
    local = tmp_path / "wf"
    _ten_files(local)
    bisync(config, local, "guard")
    for i in range(8):
        (local / f"f{i}.json").unlink()
    with pytest.raises(BisyncError) as exc:
        bisync(config, local, "guard")
    text = str(exc.value)
    assert "more than 50% of the files would be deleted (bisync.max_delete guard); nothing was deleted" in text
    assert exc.value.recover == f"syncbridge bisync {local} guard --force"
    assert f"if the deletions are intended, run: syncbridge bisync {local} guard --force" in text
    assert f"to bring the deleted files back from the other side instead, run: syncbridge bisync {local} guard " \
           f"--resync" in text
    check = tmp_path / "check"
    pull(config, "guard", check)
    assert len(_tree(check)) == 10, "the guard deleted nothing in the bucket"
    forced = bisync(config, local, "guard", force=True)
    assert forced.deletes == 8 or forced.deletes == 0  # rclone counts deletes on path2 in its own stats
    check2 = tmp_path / "check2"
    pull(config, "guard", check2)
    assert set(_tree(check2)) == {"f8.json", "f9.json"}


def test_bisync_critical_error_names_the_recover_command(local_env, tmp_path):
    local = tmp_path / "my wf"
    _ten_files(local)
    config = load_config(local_env)
    bisync(config, local, "crit")
    workdir = bisync_workdir(config, local, "crit")
    listings = list(workdir.glob("*.lst"))
    assert listings
    for listing in listings:
        listing.write_text("this is not a listing\n")
    (local / "new.json").write_text("new")
    proc = run_cli(["bisync", str(local), "crit"], local_env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "critical error, bisync stopped to protect your files" in proc.stderr
    recover = f"syncbridge bisync '{local}' crit --resync"
    assert f"to recover, check both sides, then run: {recover}" in proc.stderr
    assert "\x1b[" not in proc.stderr  # rclone's colours are stripped
    proc = run_cli(["bisync", str(local), "crit", "--resync"], local_env)
    assert proc.returncode == 0, proc.stderr
    assert bisync(config, local, "crit").resync is False
    assert (config.remote.local_bucket_dir / "crit" / "new.json").read_text() == "new"


def test_bisync_state_is_private_under_the_state_dir(local_env, tmp_path):
    config = load_config(local_env)
    local = tmp_path / "wf"
    _ten_files(local)
    dry = bisync(config, local, "st", dry_run=True)
    assert dry.dry_run and not (config.remote.local_bucket_dir / "st" / "f0.json").exists()
    bisync(config, local, "st")
    workdir = bisync_workdir(config, local, "st")
    assert workdir.parent == config.state_dir / "bisync"
    assert workdir.stat().st_mode & 0o777 == 0o700 and config.state_dir.stat().st_mode & 0o777 == 0o700
    files = [p for p in workdir.iterdir() if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o600 for p in files)
    # bisync keeps nothing in ~/.cache/rclone
    assert not (Path(local_env["HOME"]) / ".cache" / "rclone").exists()


def test_bisync_all_files_changed_guard_then_force_keeps_both(local_env, tmp_path):
    config = load_config(local_env)
    local = tmp_path / "wf"
    local.mkdir()
    (local / "both.json").write_text("v0")
    bisync(config, local, "allchanged")
    (config.remote.local_bucket_dir / "allchanged" / "both.json").write_text("bucket-newer")
    (local / "both.json").write_text("local-older")
    os.utime(local / "both.json", (1_600_000_000, 1_600_000_000))
    with pytest.raises(BisyncError) as exc:
        bisync(config, local, "allchanged")
    assert "every file changed on one side since the last run" in str(exc.value)
    assert exc.value.recover == f"syncbridge bisync {local} allchanged --force"
    assert (local / "both.json").read_text() == "local-older"  # nothing changed
    bisync(config, local, "allchanged", force=True)
    # conflict policy (default newer / num): the newer copy keeps the name, the loser is kept as NAME.conflict1
    assert sorted(os.listdir(local)) == ["both.json", "both.json.conflict1"]
    assert (local / "both.json").read_text() == "bucket-newer"
    assert (local / "both.json.conflict1").read_text() == "local-older"
    assert sorted(os.listdir(config.remote.local_bucket_dir / "allchanged")) == ["both.json", "both.json.conflict1"]


def test_bisync_of_the_bucket_root_leaves_syncbridge_objects_alone(local_env, tmp_path):
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    store.put_bytes(".syncbridge/leases/x", b"lease")
    store.put_bytes("data/a.txt", b"a")
    local = tmp_path / "root"
    bisync(config, local, "")
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == ["data/a.txt"]
    store.put_bytes(".syncbridge/leases/x", b"renewed")
    (local / "b.txt").write_text("b")
    bisync(config, local, "/")
    assert store.get_bytes(".syncbridge/leases/x")[0] == b"renewed"
    assert store.get_bytes("b.txt")[0] == b"b"
    assert not (local / ".syncbridge").exists()


def test_pulling_the_whole_bucket_leaves_the_fleets_objects_out(env, tmp_path):
    """Leases and heartbeats under fleet.prefix (.syncbridge/) are no one's files: a pull of the whole
    bucket, or of a parent of fleet.prefix, does not copy them; a pull of that prefix itself still does."""
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    store.put_bytes("outputs/a.png", b"png")
    store.put_bytes(".syncbridge/leases/bisync.json", b"{}")
    store.put_bytes(".syncbridge/pods/pod1.json", b"{}")
    summary = pull(config, "", tmp_path / "all")
    assert _tree(tmp_path / "all") == {"outputs/a.png": b"png"}
    assert summary.files == 1
    pull(config, ".syncbridge", tmp_path / "fleet")
    assert sorted(_tree(tmp_path / "fleet")) == ["leases/bisync.json", "pods/pod1.json"]


def test_a_backslash_in_a_file_name_round_trips_through_push_the_watcher_and_pull(env, tmp_path):
    """`back\\slash.png` was pushed, then refused on pull with exit 0 and one warning: it is now stored
    with rclone's BackSlash encoding (U+FF3C in the key) by push and the watcher alike, and comes back
    under its own name."""
    from syncbridge.watch import OutputWatcher

    config = load_config(env)
    src = tmp_path / "src"
    src.mkdir()
    names = ["back\\slash.png", "two\\\\back.png", "full\uff3cwidth.png"]
    for name in names:
        (src / name).write_bytes(name.encode())
    push(config, src, "pushed")
    out = config.watch.dir
    out.mkdir(parents=True)
    with OutputWatcher(config, prefix="watched") as watcher:
        for name in names:
            (out / name).write_bytes(name.encode())
        assert watcher.wait_idle(30), watcher.stats()
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        pushed = sorted(o.key for o in store.list("pushed/"))
        watched = sorted(o.key for o in store.list("watched/"))
    finally:
        store.close()
    assert [k.split("/", 1)[1] for k in pushed] == [k.split("/", 1)[1] for k in watched]  # one key per name
    assert not any("\\" in k for k in pushed + watched)
    for prefix in ("pushed", "watched"):
        summary = pull(config, prefix, tmp_path / f"back-{prefix}")
        assert not summary.skipped
        assert _tree(tmp_path / f"back-{prefix}") == {name: name.encode() for name in names}


@pytest.mark.slow
def test_a_new_state_dir_does_not_quietly_resurrect_deleted_files(env, tmp_path):
    """Changing SYNCBRIDGE_STATE_DIR used to turn the next bisync into a resync silently: a file deleted in
    the bucket came back from the folder. Now that run is refused, naming the old state directory."""
    local = tmp_path / "wf"
    local.mkdir()
    (local / "keep.json").write_text("k")
    (local / "gone.json").write_text("g")
    first = load_config(env)
    bisync(first, local, "wf")
    store = open_store(first.remote, state_dir=first.state_dir)
    try:
        store.delete("wf/gone.json")  # deleted in the bucket (another pod, the dashboard)
    finally:
        store.close()
    moved = load_config({**env, "SYNCBRIDGE_STATE_DIR": str(tmp_path / "new-state")})
    with pytest.raises(BisyncError) as exc:
        bisync(moved, local, "wf")
    text = str(exc.value)
    assert f"this pod bisynced this folder before with its state in {first.state_dir}" in text
    assert f"set SYNCBRIDGE_STATE_DIR={first.state_dir} again" in text and "--resync" in text
    store = open_store(first.remote, state_dir=first.state_dir)
    try:
        assert store.head("wf/gone.json") is None  # nothing was brought back
    finally:
        store.close()
    # the old state directory still works: the deletion reaches the folder
    bisync(first, local, "wf")
    assert not (local / "gone.json").exists() and (local / "keep.json").exists()
    # another pod (new pod id) with its own folder resyncs on its first run, as before
    other = load_config({**env, "SYNCBRIDGE_STATE_DIR": str(tmp_path / "other"), "SYNCBRIDGE_POD_ID": "pod-2"})
    bisync(other, tmp_path / "wf2", "wf")
    assert (tmp_path / "wf2" / "keep.json").read_text() == "k"
