"""Security: secrets never leak, hostile keys never escape, the state directory is private.

The secrets are the distinctive values from ``tests/conftest.py`` (plus a distinctive
*wrong* secret for the failure paths); every output, error, file and command line is
scanned for each of them.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import threading
import time
import traceback
from pathlib import Path

import pytest

from syncbridge import cli
from syncbridge.bulk import bisync, pull, push
from syncbridge.config import load_config
from syncbridge.errors import RcloneError, StoreError, SyncBridgeError
from syncbridge.store import S3Store, open_store

from .conftest import CIVITAI_KEY, HF_TOKEN, SECRETS, new_bucket, run_cli, server_env
from .faultproxy import FaultProxy, Rule

WRONG_SECRET = "sbWRONGsecretVALUE-77d1c0ffee42"
ALL = (*SECRETS, WRONG_SECRET)
PKG = Path(cli.__file__).resolve().parent


def assert_clean(*texts: str | bytes, what: str = "output") -> None:
    for text in texts:
        data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        for secret in ALL:
            assert secret.encode() not in data, f"secret {secret[:6]}... leaked into {what}:\n" \
                                                f"{data[:3000].decode('utf-8', 'replace')}"


@pytest.fixture
def secret_env(rclone_s3, tmp_path):
    """A template's environment with all four secrets set (the server checks the S3 pair)."""
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    env["HF_TOKEN"] = HF_TOKEN
    env["CIVITAI_API_KEY"] = CIVITAI_KEY
    env["SYNCBRIDGE_LOG_LEVEL"] = "debug"
    return env


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


def test_help_of_every_command_is_clean(secret_env, monkeypatch, capsys):
    """Help texts must not show a default read from the environment (argparse would print it)."""
    for name, value in secret_env.items():
        monkeypatch.setenv(name, value)
    paths = _command_paths(cli.build_parser())
    assert len(paths) > 8
    for path in paths:
        with pytest.raises(SystemExit) as info:
            cli.main([*path, "--help"], environ=secret_env)
        assert info.value.code == 0
        out, err = capsys.readouterr()
        assert "usage:" in out
        assert_clean(out, err, what=f"syncbridge {' '.join(path)} --help")


@pytest.mark.parametrize("args", [["config"], ["doctor"], ["version"], ["status"], ["status", "--json"],
                                  ["fleet", "status"], ["models", "list"]])
def test_informational_commands_are_clean(secret_env, args):
    proc = run_cli([*args, "-v"], secret_env, timeout=120)
    assert_clean(proc.stdout, proc.stderr, what=f"syncbridge {' '.join(args)}")
    assert "Traceback" not in proc.stderr


def test_config_names_the_secrets_without_showing_them(secret_env):
    proc = run_cli(["config"], secret_env, check=True)
    assert "R2_SECRET_KEY" in proc.stdout and "HF_TOKEN" in proc.stdout
    assert_clean(proc.stdout, proc.stderr)


def test_failures_with_a_wrong_secret_are_clean(secret_env, tmp_path):
    env = dict(secret_env, R2_SECRET_KEY=WRONG_SECRET)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("a")
    for args in (["doctor"], ["push", str(tmp_path / "src"), "p"], ["pull", "p", str(tmp_path / "dst")],
                 ["bisync", str(tmp_path / "src"), "p"]):
        proc = run_cli([*args, "-v"], env, timeout=180)
        assert proc.returncode != 0, f"{args} should fail with a wrong secret"
        assert_clean(proc.stdout, proc.stderr, what=f"syncbridge {' '.join(args)} (wrong secret)")
        assert "Traceback" not in proc.stderr


def test_failure_messages_and_exceptions_are_clean(secret_env, tmp_path):
    config = load_config(dict(secret_env, R2_SECRET_KEY=WRONG_SECRET))
    assert_clean(repr(config), str(config), repr(config.remote), what="Config repr")
    store = S3Store(config.remote, max_attempts=1)
    with pytest.raises(StoreError) as info:
        store.put_bytes("x", b"1")
    exc = info.value
    assert_clean(str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc)),
                 what="StoreError")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("f")
    with pytest.raises(StoreError) as pinfo:  # push's pre-check names the setting before rclone runs
        push(config, src, "p")
    assert pinfo.value.setting == "R2_SECRET_KEY"
    assert_clean(str(pinfo.value), repr(pinfo.value), "".join(traceback.format_exception(pinfo.value)),
                 what="push's StoreError")
    from syncbridge.rclone import Rclone
    from syncbridge.rclone.argv import copy_argv, remote_path

    with pytest.raises(RcloneError) as rinfo:  # rclone itself, with the wrong secret in its environment
        Rclone(config).run(copy_argv(str(src), remote_path(config.remote, "p")), what="copy")
    assert rinfo.value.setting == "R2_SECRET_KEY" and rinfo.value.outcome == "fatal"
    rexc = rinfo.value
    assert rexc.returncode != 0
    assert_clean(str(rexc), repr(rexc), " ".join(rexc.argv), rexc.stderr_tail,
                 "".join(traceback.format_exception(rexc)), what="RcloneError")


def test_logs_of_a_flaky_run_are_clean(secret_env, rclone_s3, tmp_path):
    """Debug logging through errors, retries and resets: every line is scanned."""
    with FaultProxy(rclone_s3.endpoint) as proxy:
        env = dict(secret_env, R2_ENDPOINT=proxy.endpoint)
        src = tmp_path / "src"
        for i in range(6):
            (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(30_000))
        proxy.add(Rule("error", method="PUT", status=503, code="SlowDown", times=2),
                  Rule("reset", method="PUT", phase="request", times=1),
                  Rule("error", method="GET", status=500, code="InternalError", times=1))
        outputs = []
        for args in (["push", str(src), "logs"], ["pull", "logs", str(tmp_path / "dst")],
                     ["bisync", str(tmp_path / "dst"), "logs"], ["doctor"]):
            proc = run_cli([*args, "-v"], env, timeout=180)
            outputs += [proc.stdout, proc.stderr]
        assert proxy.count("error") + proxy.count("reset") > 0
        assert any("[syncbridge]" in text for text in outputs), "expected log lines to scan"
        assert_clean(*outputs, what="debug logs")


def _cmdlines() -> dict[int, bytes]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                found[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_no_secret_in_any_process_argv_while_rclone_runs(secret_env, rclone_s3, tmp_path):
    """Scan every /proc/*/cmdline while rclone is slowed down mid-transfer (library and CLI)."""
    with FaultProxy(rclone_s3.endpoint) as proxy:
        env = dict(secret_env, R2_ENDPOINT=proxy.endpoint)
        config = load_config(env)
        src = tmp_path / "src"
        src.mkdir()
        for i in range(4):
            (src / f"f{i}.bin").write_bytes(os.urandom(50_000))
        proxy.add(Rule("stall", method="PUT", seconds=1.0), Rule("stall", method="GET", path="/slow/", seconds=1.0))
        done = threading.Event()
        seen: dict[int, bytes] = {}

        def scan() -> None:
            while not done.is_set():
                seen.update(_cmdlines())
                time.sleep(0.02)

        scanner = threading.Thread(target=scan, daemon=True)
        scanner.start()
        try:
            push(config, src, "slow")
            pull(config, "slow", tmp_path / "dst")
            proc = run_cli(["push", str(src), "slow2", "-v"], env, timeout=120)
            assert proc.returncode == 0, proc.stderr
        finally:
            done.set()
            scanner.join(5)
    rclones = {pid: argv for pid, argv in seen.items() if argv.split(b"\0")[0].endswith(b"rclone")}
    assert any(b"copy" in argv.split(b"\0") for argv in rclones.values()), "never saw rclone running"
    for pid, argv in seen.items():
        assert_clean(argv, what=f"/proc/{pid}/cmdline ({argv[:80]!r})")
    for argv in rclones.values():
        parts = argv.split(b"\0")
        assert b"rcd" not in parts and not any(p.startswith(b"--rc") for p in parts), \
            "rclone's remote control is running: it must listen on loopback/unix socket with auth (and be tested)"


def test_rclone_remote_control_is_not_used():
    """rc access is shell access. syncbridge runs one rclone per operation and never starts ``rcd``/``--rc``.

    If this fails, rc got used: it must listen on 127.0.0.1 or a unix socket with
    ``--rc-user``/``--rc-pass`` (through the environment) and get a test that an
    unauthenticated request is refused.
    """
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value
                if value == "rcd" or re.fullmatch(r"--rc(-[a-z-]+)?", value) and path.name != "redact.py":
                    offenders.append(f"{path.name}:{node.lineno}: {value!r}")
    assert not offenders, offenders


def _files_outside(root: Path, allowed: list[Path]) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not any(p == a or a in p.parents for a in allowed):
            out.append(p)
    return out


HOSTILE = ["x/../escape1.txt", "x/a/../../escape2.txt", "x/..\\..\\win.txt", "x//abs.txt", "x/./dot.txt",
           "x/sub/..", "x/back\\slash.txt", "x/../../../../tmp/escape3.txt"]
SAFE = {"ok.txt": b"ok", "sub/ok2.txt": b"ok2", "\u240a.txt": b"newline"}


def test_pull_refuses_keys_that_escape(moto_s3, tmp_path):
    """moto stores any key; rclone serve s3 cannot hold these. Library and CLI."""
    env = server_env(moto_s3, new_bucket(moto_s3), tmp_path / "e")
    config = load_config(env)
    store = S3Store(config.remote)
    for key in HOSTILE:
        store.put_bytes(key, b"evil")
    for rel, data in SAFE.items():
        store.put_bytes(f"x/{rel}", data)
    area = tmp_path / "area"
    dest = area / "deep" / "dest"
    summary = pull(config, "x", dest)
    assert summary.files == len(SAFE)
    assert len(summary.skipped) == len(HOSTILE)
    assert (dest / "ok.txt").read_bytes() == b"ok" and (dest / "sub" / "ok2.txt").read_bytes() == b"ok2"
    assert (dest / "\n.txt").read_bytes() == b"newline"
    assert not _files_outside(tmp_path, [dest, tmp_path / "e"]), "a hostile key landed outside the folder"
    assert not Path("/tmp/escape3.txt").exists()

    dest2 = area / "dest2"
    proc = run_cli(["pull", "x", str(dest2)], env)
    assert proc.returncode == 1, proc.stderr  # objects left behind: not a success
    assert proc.stdout.count("skipped unsafe key") == len(HOSTILE)
    assert sorted(p.relative_to(dest2).as_posix() for p in dest2.rglob("*") if p.is_file()) == sorted(
        ["ok.txt", "sub/ok2.txt", "\n.txt"])
    assert not _files_outside(tmp_path, [dest, dest2, tmp_path / "e"])


def test_local_bucket_refuses_escaping_keys(local_env, tmp_path):
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    for key in ("../evil", "a/../../evil", "/abs", "a\\b"):
        with pytest.raises(SyncBridgeError):
            store.put_bytes(key, b"evil")
        with pytest.raises(SyncBridgeError):
            store.get_bytes(key)
    assert not _files_outside(tmp_path, [config.state_dir])
    assert not (config.remote.local_bucket_dir.parent / "evil").exists()


def _check_private(state: Path) -> list[str]:
    bad = []
    for path in [state, *state.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        want = 0o700 if path.is_dir() else 0o600
        if mode & 0o077:
            bad.append(f"{path.relative_to(state.parent)} {oct(mode)} (want {oct(want)})")
    return bad


@pytest.mark.slow
def test_state_directory_is_private_and_holds_no_secret(secret_env, tmp_path):
    """After push, pull, bisync, doctor (and a watcher, when present), every file is 0600, every folder 0700."""
    env = secret_env
    config = load_config(env)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    push(config, src, "p")
    pull(config, "p", tmp_path / "dst")
    bisync(config, tmp_path / "dst", "p")
    bisync(config, tmp_path / "dst", "p")
    assert run_cli(["doctor"], env).returncode in (0, 1)
    try:
        from syncbridge.watch import OutputWatcher
    except ImportError:
        OutputWatcher = None  # noqa: N806
    if OutputWatcher is not None:
        out = tmp_path / "out"
        out.mkdir()
        with OutputWatcher(config, directory=out, prefix="w") as watcher:
            (out / "img.png").write_bytes(b"png")
            assert watcher.wait_idle(30)
    state = config.state_dir
    assert state.is_dir()
    bad = _check_private(state)
    assert not bad, "state directory entries readable by others:\n" + "\n".join(bad)
    for path in state.rglob("*"):
        if path.is_file():
            assert_clean(path.read_bytes(), what=f"state file {path}")


@pytest.mark.slow
def test_symlinks_in_a_watched_folder_are_not_followed_out(rclone_s3, tmp_path):
    """Links to files and folders outside (made before start and while running), and a file swapped for a
    link while its upload is held up: nothing from outside ever reaches the bucket."""
    watch = pytest.importorskip("syncbridge.watch")
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    secret = b"private key material, not an output"
    (outside / "id_rsa.png").write_bytes(secret)
    (outside / "sub" / "inner.png").write_bytes(secret)
    out = tmp_path / "out"
    out.mkdir()
    (out / "early_link.png").symlink_to(outside / "id_rsa.png")
    (out / "early_dir").symlink_to(outside)
    with FaultProxy(rclone_s3.endpoint) as proxy:
        env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
        direct = S3Store(load_config(env).remote)
        env["R2_ENDPOINT"] = proxy.endpoint
        config = load_config(env)
        with watch.OutputWatcher(config, directory=out, prefix="w") as watcher:
            (out / "late_link.png").symlink_to(outside / "id_rsa.png")
            (out / "late_dir").symlink_to(outside / "sub")
            (out / "real.png").write_bytes(b"a real output")
            # hold the next upload, and swap the file for a link while it waits
            proxy.add(Rule("stall", path="/w/swapped", seconds=1.0, times=2))
            (out / "swapped.png").write_bytes(b"first content")
            assert proxy.wait_for(lambda: proxy.count("stall") > 0, 20)
            os.replace(_make_link(tmp_path, outside / "id_rsa.png"), out / "swapped.png")
            assert watcher.wait_idle(30)
    keys = {info.key for info in direct.list("w/")}
    assert "w/real.png" in keys
    assert not any("link" in k or "dir" in k or "inner" in k or "id_rsa" in k for k in keys), keys
    for key in keys:
        data, _ = direct.get_bytes(key)
        assert data != secret, f"{key} holds the content of a file outside the watched folder"


def _make_link(tmp_path: Path, target: Path) -> Path:
    link = tmp_path / "swap_link"
    link.symlink_to(target)
    return link


def test_models_pull_with_tokens_is_clean(secret_env, tmp_path):
    """A model from a Hub that needs the token: debug output, errors and the state directory stay clean,
    and the token never goes to the CDN (another origin)."""
    pytest.importorskip("syncbridge.models")
    from .hfserver import serve_hf

    data = os.urandom(300_000)
    models_dir = tmp_path / "models"
    manifest = tmp_path / "m.toml"
    import hashlib

    with serve_hf() as hub:
        hub.token = HF_TOKEN
        hub.add("org/secret-repo", {"w.safetensors": data})
        manifest.write_text(f'[settings]\nmodels_dir = "{models_dir}"\n[[model]]\nname = "w"\n'
                            f'path = "ckpt/w.safetensors"\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n'
                            f'hf = {{ repo = "org/secret-repo", file = "w.safetensors" }}\n'
                            f'[[model]]\nname = "missing"\npath = "ckpt/missing.safetensors"\noptional = true\n'
                            f'hf = {{ repo = "org/secret-repo", file = "nope.safetensors" }}\n')
        env = dict(secret_env, HF_ENDPOINT=hub.url)
        proc = run_cli(["models", "pull", str(manifest), "-v"], env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert (models_dir / "ckpt" / "w.safetensors").read_bytes() == data
        assert_clean(proc.stdout, proc.stderr, what="models pull -v")
        cdn = [r for r in hub.cdn.requests]
        assert cdn, "expected the download to go through the CDN origin"
        for request in cdn:
            assert HF_TOKEN not in " ".join(request.headers.values()), "the HF token was sent to the CDN"
        wrong = run_cli(["models", "pull", str(manifest)], dict(env, HF_TOKEN="hf_sbWRONGtokenZZ9", R2_SECRET_KEY=WRONG_SECRET),
                        timeout=120)
        assert_clean(wrong.stdout, wrong.stderr, what="models pull (wrong token)")
        assert "hf_sbWRONGtokenZZ9" not in wrong.stdout + wrong.stderr
    state = load_config(env).state_dir
    for path in state.rglob("*"):
        if path.is_file():
            assert_clean(path.read_bytes(), what=f"state file {path}")
    assert not _check_private(state)


def test_bisync_leaves_out_keys_that_escape(moto_s3, tmp_path):
    """One hostile key used to make every bisync of the prefix abort (critical error, even --resync)."""
    env = server_env(moto_s3, new_bucket(moto_s3), tmp_path / "e")
    config = load_config(env)
    store = S3Store(config.remote)
    for key in HOSTILE:
        store.put_bytes(key, b"evil")
    store.put_bytes("x/ok.txt", b"ok")
    local = tmp_path / "area" / "local"
    first = bisync(config, local, "x")
    assert first.resync
    (local / "mine.txt").write_bytes(b"mine")
    bisync(config, local, "x")
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()) == ["mine.txt", "ok.txt"]
    assert store.get_bytes("x/mine.txt")[0] == b"mine"
    assert not _files_outside(tmp_path, [local, tmp_path / "e"])
