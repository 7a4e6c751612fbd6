"""The command line as a user meets it: bad input gives one clear message naming the
variable or key, a non-zero exit, no traceback and no secret; --help and --version work
on every subcommand (found by walking the parser, so new ones are covered)."""

from __future__ import annotations

import os
import subprocess
import sys
import stat
import time
from pathlib import Path

import pytest

from syncbridge.cli import build_parser, iter_subparsers, main
from syncbridge.demo.localserver import free_port

from ..conftest import ACCESS_KEY, SECRET_KEY, assert_no_secret, run_cli

R2 = "https://0123456789abcdef.r2.cloudflarestorage.com"
# Commands that read the configuration, with harmless arguments.
CONFIG_COMMANDS = [["push", "{tmp}/src", "p"], ["pull", "p", "{tmp}/dst"], ["bisync", "{tmp}/src", "p"],
                   ["config"], ["doctor"]]


def _args(args: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp_path)) for a in args]


def assert_clean_failure(proc, *, code: int | None = None) -> str:
    """Non-zero exit, no traceback, no secret; returns stderr+stdout for more checks."""
    text = proc.stderr + proc.stdout
    assert proc.returncode != 0, text
    if code is not None:
        assert proc.returncode == code, text
    assert "Traceback" not in text, text
    assert_no_secret(proc.stdout, proc.stderr)
    return text


def _secret_env(local_env: dict[str, str]) -> dict[str, str]:
    return {**local_env, "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY}


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_malformed_toml(local_env, tmp_path, command):
    (tmp_path / "src").mkdir()
    toml = tmp_path / "bad.toml"
    toml.write_text("[remote]\nbucket = \"ok\"\nendpoint = \n")
    proc = run_cli([*_args(command, tmp_path), "--config", str(toml)], _secret_env(local_env))
    text = assert_clean_failure(proc)
    if command[0] == "doctor":
        assert proc.returncode == 1 and "[FAIL] configuration" in text
    else:
        assert proc.returncode == 2
    assert f"config file {toml}: is not valid TOML" in text and "line 3" in text


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_unknown_key(local_env, tmp_path, command):
    (tmp_path / "src").mkdir()
    toml = tmp_path / "sb.toml"
    toml.write_text("[remote]\nbucket = \"ok-bucket\"\n[rclone]\ntransfer = 4\n")
    proc = run_cli(_args(command, tmp_path), {**_secret_env(local_env), "SYNCBRIDGE_CONFIG": str(toml)})
    text = assert_clean_failure(proc)
    assert f"TOML key rclone.transfer ({toml}:4): unknown key; did you mean 'transfers'?" in text


def test_bad_boolean(local_env, tmp_path):
    (tmp_path / "src").mkdir()
    proc = run_cli(_args(["push", "{tmp}/src", "p"], tmp_path), {**_secret_env(local_env), "ENABLE_R2_SYNC": "maybe"})
    text = assert_clean_failure(proc, code=2)
    assert "environment variable ENABLE_R2_SYNC: expected a boolean (true/false/1/0/yes/no), got 'maybe'" in text


def test_every_problem_in_one_message(local_env, tmp_path):
    env = {**local_env, "R2_ENDPOINT": R2, "R2_ACCESS_KEY": ACCESS_KEY, "ENABLE_R2_SYNC": "on",
           "SYNCBRIDGE_TRANSFERS": "0"}
    proc = run_cli(["config"], env)
    text = assert_clean_failure(proc, code=2)
    assert "invalid configuration (3 problems)" in text
    for name in ("ENABLE_R2_SYNC", "SYNCBRIDGE_TRANSFERS", "R2_SECRET_KEY"):
        assert f"environment variable {name}" in text


@pytest.mark.parametrize("command", CONFIG_COMMANDS, ids=lambda c: c[0])
def test_missing_secret_with_an_endpoint(local_env, tmp_path, command):
    (tmp_path / "src").mkdir()
    env = {**local_env, "R2_ENDPOINT": R2, "R2_ACCESS_KEY": ACCESS_KEY, "HF_TOKEN": "hf_sbTESTtokenQx81Lm"}
    proc = run_cli(_args(command, tmp_path), env)
    text = assert_clean_failure(proc)
    assert "R2_SECRET_KEY" in text and "is required when an endpoint is set" in text
    assert ACCESS_KEY not in text


def test_unreachable_endpoint_push_fails_fast(local_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    port = free_port()  # bound then closed: nothing listens, connections are refused
    env = {**_secret_env(local_env), "R2_ENDPOINT": f"http://127.0.0.1:{port}"}
    started = time.monotonic()
    proc = run_cli(["push", str(src), "p"], env, timeout=60)
    elapsed = time.monotonic() - started
    text = assert_clean_failure(proc, code=1)
    assert f"cannot connect to the endpoint 127.0.0.1:{port}" in text and "connection refused" in text
    assert f"R2_ENDPOINT=http://127.0.0.1:{port}" in text
    # rclone alone retried for minutes; the pre-flight check answers at once
    assert elapsed < 30, elapsed


def test_unreachable_endpoint_doctor(local_env):
    port = free_port()
    proc = run_cli(["doctor"], {**_secret_env(local_env), "R2_ENDPOINT": f"http://127.0.0.1:{port}"}, timeout=60)
    text = assert_clean_failure(proc, code=1)
    assert f"[FAIL] endpoint: 127.0.0.1:{port}: connection refused" in text
    assert "fix: " in text


def test_unresolvable_endpoint(local_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    proc = run_cli(["push", str(src), "p"], {**_secret_env(local_env), "R2_ENDPOINT": "http://nosuchhost.invalid"},
                   timeout=60)
    text = assert_clean_failure(proc, code=1)
    assert "cannot resolve the endpoint's host 'nosuchhost.invalid'" in text


def test_missing_config_file_and_usage_errors(local_env, tmp_path):
    proc = run_cli(["config", "--config", str(tmp_path / "nope.toml")], local_env)
    assert "nope.toml: cannot be read" in assert_clean_failure(proc, code=2)
    proc = run_cli(["push", str(tmp_path), "p", "--transfers", "many"], local_env)
    assert "argument --transfers: invalid int value: 'many'" in assert_clean_failure(proc, code=2)
    proc = run_cli(["pull", "p", str(tmp_path), "--transfers", "0"], local_env)
    assert "argument --transfers: must be at least 1, got 0" in assert_clean_failure(proc, code=2)
    proc = run_cli(["frobnicate"], local_env)
    assert "invalid choice: 'frobnicate'" in assert_clean_failure(proc, code=2)
    proc = run_cli(["push", str(tmp_path / "missing"), "p"], local_env)
    assert "does not exist" in assert_clean_failure(proc, code=1)


# -- help, version, start-up line -----------------------------------------------------------------


def _command_paths() -> list[list[str]]:
    parser = build_parser()
    paths = []
    for sub in iter_subparsers(parser):
        paths.append(sub.prog.split()[1:])
    return paths


def test_command_table_matches_what_each_module_registers():
    import argparse
    import importlib

    from syncbridge.cli import COMMAND_MODULES

    for module, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert set(sub.choices) == set(commands), module


def test_a_command_imports_only_its_own_modules():
    code = ("import sys; from syncbridge.cli import build_parser; "
            "build_parser(sys.argv[1:]).parse_args(sys.argv[1:]); "
            "print(' '.join(m for m in sys.modules if m.startswith('syncbridge.')))")
    run = [sys.executable, "-c", code, "-q", "--config", "x.toml", "models", "pull", "m.toml"]
    loaded = set(subprocess.run(run, capture_output=True, text=True, check=True).stdout.split())
    assert "syncbridge.cli.models" in loaded
    assert not loaded & {"syncbridge.bulk", "syncbridge.watch", "syncbridge.fleet", "syncbridge.doctor"}, loaded
    every = subprocess.run([sys.executable, "-c", code, "push", "a", "b"], capture_output=True, text=True, check=True)
    assert "syncbridge.bulk" in every.stdout.split()


def test_every_subcommand_is_found():
    paths = [" ".join(p) for p in _command_paths()]
    for name in ("push", "pull", "bisync", "doctor", "config", "version"):
        assert name in paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p))
def test_help_and_version_on_every_subcommand(path, capsys):
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as exc:
            main([*path, flag], environ={})
        assert exc.value.code == 0, (path, flag)
        out = capsys.readouterr().out
        if flag == "--help":
            assert out.startswith("usage: syncbridge " + " ".join(path)), out
        else:
            assert out.startswith("syncbridge "), out


def test_top_level_help_and_version_as_a_process(local_env):
    from syncbridge import __version__

    proc = run_cli(["--version"], local_env, check=True)
    assert proc.stdout.strip() == f"syncbridge {__version__}"
    proc = run_cli(["--help"], local_env, check=True)
    for name in ("push", "pull", "bisync", "doctor"):
        assert name in proc.stdout
    proc = run_cli(["version"], local_env, check=True)
    assert "rclone 1.75.2" in proc.stdout


def test_bulk_commands_say_which_bucket_at_start_up(local_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    state = Path(local_env["SYNCBRIDGE_STATE_DIR"])
    want = f"using local bucket 'runpod' in {state / 'buckets' / 'runpod'} (no endpoint set)"
    for args in (["push", str(src), "p"], ["pull", "p", str(tmp_path / "dst")], ["bisync", str(src), "b"]):
        proc = run_cli(args, local_env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines()[0] == f"[syncbridge] {want}", proc.stderr
    assert (tmp_path / "dst" / "a.txt").read_text() == "a"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    proc = run_cli(["doctor"], local_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok  ] configuration: local bucket 'runpod'" in proc.stdout
    assert "all checks passed" in proc.stdout


def test_config_command_hides_secrets(local_env):
    env = {**local_env, "R2_ENDPOINT": R2, "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY}
    proc = run_cli(["config"], env, check=True)
    assert f"bucket 'runpod' at {R2} (Cloudflare)" in proc.stdout
    assert "secrets set:  R2_ACCESS_KEY, R2_SECRET_KEY" in proc.stdout
    assert_no_secret(proc.stdout, proc.stderr)


@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_stops_the_command_and_its_rclone(local_env, tmp_path, sig, code):
    import signal
    import subprocess
    import sys

    from syncbridge.rclone import find_rclone

    slow = tmp_path / "slow-rclone"
    slow.write_text(f'#!/bin/sh\nexec {find_rclone()} "$@" --bwlimit 200k\n')
    slow.chmod(0o755)
    src = tmp_path / f"src-{sig}"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * 3_000_000)
    env = {**local_env, "SYNCBRIDGE_RCLONE_BINARY": str(slow)}
    # The child starts with SIGINT at its default, whatever this test inherited: a suite run as a
    # background job of a non-interactive shell inherits SIGINT ignored, and a process started with a
    # signal ignored keeps it ignored (by design: nohup, `cmd &`).
    proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "push", str(src), "p"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    marker = str(src).encode()

    def rclone_pids() -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != proc.pid:
                try:
                    if marker in Path(f"/proc/{entry}/cmdline").read_bytes():
                        pids.append(int(entry))
                except OSError:
                    pass
        return pids

    deadline = time.monotonic() + 30
    while not rclone_pids():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10
    while rclone_pids():
        assert time.monotonic() < deadline, "rclone outlived syncbridge"
        time.sleep(0.05)


def _slow_rclone(tmp_path: Path, rate: str = "1M") -> Path:
    from syncbridge.rclone import find_rclone

    slow = tmp_path / "slow-rclone"
    slow.write_text(f'#!/bin/sh\nexec {find_rclone()} "$@" --bwlimit {rate}\n')
    slow.chmod(0o755)
    return slow


@pytest.mark.slow
def test_progress_bar_on_a_tty_and_log_lines_otherwise(local_env, tmp_path):
    import pty
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(b"x" * 2_500_000)
    env = {**local_env, "SYNCBRIDGE_RCLONE_BINARY": str(_slow_rclone(tmp_path))}
    # not a terminal: periodic log lines
    proc = run_cli(["push", str(src), "plain"], env)
    assert proc.returncode == 0, proc.stderr
    assert "[syncbridge] push: " in proc.stderr and "\r" not in proc.stderr
    assert "files 0/1" in proc.stderr or "files 1/1" in proc.stderr
    # a terminal on stderr: a bar redrawn in place
    main_fd, child_fd = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "syncbridge", "push", str(src), "tty"], env=env,
                             stdout=subprocess.PIPE, stderr=child_fd, stdin=subprocess.DEVNULL)
    os.close(child_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    out, _ = child.communicate(timeout=60)
    os.close(main_fd)
    shown = b"".join(chunks).decode(errors="replace")
    assert child.returncode == 0, shown
    assert "\rpush [" in shown and "%" in shown, shown
    assert b"push: transferred 1 file, 2.5 MB" in out


@pytest.mark.parametrize("args", [
    ["push", "{tmp}/src", "p/../../other"], ["push", "{tmp}/src", "/../etc"], ["pull", "../x", "{tmp}/dst"],
    ["bisync", "{tmp}/src", "a//b"], ["bisync", "{tmp}/src", "./a"],
], ids=lambda a: f"{a[0]} {a[-1] if a[0] == 'pull' else a[-1]}")
def test_unsafe_prefix_is_refused(local_env, tmp_path, args):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    proc = run_cli(_args(args, tmp_path), local_env)
    text = assert_clean_failure(proc, code=2)
    assert "is not a safe key prefix" in text and "PREFIX" in text
    buckets = Path(local_env["SYNCBRIDGE_STATE_DIR"]) / "buckets"
    assert sorted(p.name for p in buckets.iterdir()) == ["runpod"], "nothing written beside the bucket"
    assert [p for p in (buckets / "runpod").rglob("*") if p.is_file()] == []


def test_local_path_problems_are_clear(local_env, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    run_cli(["push", str(afile), "p/"], local_env, check=True)
    proc = run_cli(["pull", "p", str(afile / "x")], local_env)
    assert f"pull: cannot create the folder {afile / 'x'}: Not a directory" in assert_clean_failure(proc, code=1)
    proc = run_cli(["bisync", str(afile), "p"], local_env)
    assert f"bisync: LOCAL {afile} is not a folder" in assert_clean_failure(proc, code=1)
