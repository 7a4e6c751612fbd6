"""One quiet voice: -q means warnings and errors only; a warning once per process; sentences, not reprs;
every warning that suggests a setting names it; the library prints nothing by itself."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ..conftest import new_bucket, run_cli, server_env


def test_quiet_push_prints_nothing_but_its_result(rclone_s3, tmp_path) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    loud = run_cli(["push", str(src), "p"], env)
    quiet = run_cli(["push", str(src), "q", "-q"], env)
    assert loud.returncode == quiet.returncode == 0
    assert "[syncbridge] using bucket" in loud.stderr
    assert quiet.stderr == "", quiet.stderr  # was: "[syncbridge] using bucket ..."


def test_start_on_a_store_without_conditional_writes_warns_once_naming_the_setting(rclone_s3, tmp_path) -> None:
    """rclone serve s3 ignores If-None-Match: the warning came up to three times per start, once as a bare
    event name; the lease warning said "set the lease to off" without naming SYNCBRIDGE_BISYNC_LEASE."""
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    work = tmp_path / "wf"
    work.mkdir()
    (work / "a.json").write_text("{}")
    env.update({"ENABLE_R2_SYNC": "true", "SYNCBRIDGE_FOLDERS": f"bisync:{work}=workflows"})
    proc = run_cli(["start", "--", sys.executable, "-c", "pass"], env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    no_cond = [line for line in lines if "does not enforce conditional writes (If-None-Match): the watcher" in line]
    assert len(no_cond) == 1, proc.stderr
    assert "store.no_conditional_writes" not in proc.stderr
    lease = [line for line in lines if "running WITHOUT a lease" in line]
    assert lease and all("SYNCBRIDGE_BISYNC_LEASE=off" in line for line in lease), proc.stderr
    assert not any(" event=" in line or "reason='" in line for line in lines), proc.stderr  # no fields at info
    assert "GPU tier consumer tier=consumer" not in proc.stderr


def test_the_library_prints_nothing_by_itself(rclone_s3, tmp_path) -> None:
    """A program that uses the library with no logging configured saw bare event names on stderr."""
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    script = textwrap.dedent('''
        import os
        from syncbridge.config import load_config
        from syncbridge.store import open_store
        config = load_config(os.environ)
        store = open_store(config.remote, state_dir=config.state_dir)
        print(store.conditional_writes())
        ''')
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    assert proc.stderr == "", proc.stderr


def test_failed_model_attempts_are_sentences_not_tuples(local_env, tmp_path) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n'
                        '[[model]]\nname = "small"\npath = "a.bin"\nurl = "http://127.0.0.1:9/nothing"\n')
    env = {**local_env, "SYNCBRIDGE_MODELS": str(manifest)}
    proc = run_cli(["start", "--", sys.executable, "-c", "pass"], env, timeout=120)
    assert proc.returncode == 1
    attempt_lines = [line for line in proc.stderr.splitlines() if line.strip().startswith("[syncbridge]")
                     and "small: " in line]
    assert attempt_lines, proc.stderr
    assert not any("('" in line or "\\\\\\\\" in line for line in proc.stderr.splitlines()), proc.stderr
