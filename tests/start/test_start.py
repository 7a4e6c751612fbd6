"""syncbridge start: the container path end to end, through bin/syncbridge-start and the example start.sh.

Real parts: the loopback S3 servers, rclone, inotify, real child processes and signals.
The only fake is a loopback HTTP server that trickles a download, to have a SIGTERM
arrive while a model is still being pulled.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import signal
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from syncbridge.config import load_config
from syncbridge.keys import join_key
from syncbridge.demo.localserver import LocalS3
from syncbridge.start import StartOptions, exit_status, models_line
from syncbridge.store import Store, open_store

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
START_SH = ROOT / "examples" / "comfyui" / "start.sh"
MODEL_PATH = "checkpoints/e2e.safetensors"


# -- helpers ---------------------------------------------------------------------------------



def with_bin(env: dict[str, str]) -> dict[str, str]:
    """The template's PATH: bin/ scripts first, then the Python environment syncbridge is installed in."""
    out = dict(env)
    out["PATH"] = os.pathsep.join([str(BIN), str(Path(sys.executable).parent), env.get("PATH", "")])
    return out


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def latest_outputs(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for record in events:
        if "path" in record:
            latest[record["path"]] = record
    return latest


def client_store(env: dict[str, str], tmp_path: Path) -> Store:
    config = load_config({**env, "SYNCBRIDGE_STATE_DIR": str(tmp_path / "client-state")})
    return open_store(config.remote, state_dir=tmp_path / "client-state")


def seed_model(store: Store, tmp_path: Path, models_dir: Path, *, size: int = 1_500_000) -> tuple[Path, str]:
    data = random.Random(5).randbytes(size)
    sha = hashlib.sha256(data).hexdigest()
    store.put_bytes(f"models/{MODEL_PATH}", data, metadata={"sha256": sha})
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[settings]\nmodels_dir = "{models_dir}"\ncache_prefix = "models"\n\n'
                        f'[[model]]\nname = "e2e-checkpoint"\npath = "{MODEL_PATH}"\nsha256 = "{sha}"\n'
                        f"size = {size}\n")
    return manifest, sha


def landed(store: Store, prefix: str, outputs: dict[str, dict[str, Any]]) -> bool:
    for path, record in outputs.items():
        if not record["push"]:
            continue
        info = store.head(join_key(prefix, path))
        if info is None or info.etag != record["md5"]:
            return False
    return True


def wait_landed(store: Store, events: Path, log_path: Path, timeout: float = 20) -> None:
    """Every output the app wrote is in the bucket at its own key with its final bytes (else: say which, and the log)."""
    try:
        wait_for(lambda: landed(store, "outputs", latest_outputs(read_events(events))), timeout,
                 "every output in the bucket")
    except AssertionError as exc:
        missing = []
        for path, record in latest_outputs(read_events(events)).items():
            if record["push"]:
                info = store.head(join_key("outputs", path))
                if info is None or info.etag != record["md5"]:
                    missing.append((path, None if info is None else info.etag, record["md5"]))
        raise AssertionError(f"{exc}; missing or stale (path, bucket etag, local md5): {missing}\n"
                             f"{log_path.read_text()}") from None


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=timeout)
    return code, time.monotonic() - started


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; whatever is left is killed (with its process group)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def spawn(procs: list[subprocess.Popen], argv: list[str], env: dict[str, str], log: Path,
          cwd: Path | None = None) -> subprocess.Popen:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd)
    procs.append(proc)
    return proc


# -- pure parts ------------------------------------------------------------------------------


def test_exit_status_follows_the_shell_convention() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGTERM) == 143
    assert exit_status(-signal.SIGKILL) == 137


class _R:
    def __init__(self, name: str, status: str, source: str) -> None:
        self.name, self.status, self.source = name, status, source


def test_models_line_counts_statuses_and_sources() -> None:
    line = models_line([_R("a", "pulled", "cache"), _R("b", "present", "local"), _R("c", "present", "local"),
                        _R("d", "pulled", "cache")])
    assert line == "2 pulled from cache, 2 present"
    line = models_line([_R("a", "pulled", "cache"), _R("b", "pulled", "hf"), _R("v", "failed", ""),
                        _R("l", "optional_failed", "")])
    assert line == "2 pulled (1 from cache, 1 from hf), 1 failed (v), 1 optional_failed (l)"
    assert "nothing to pull" in models_line([])


def test_options_come_from_config_and_flags_override(local_env: dict[str, str]) -> None:
    config = load_config({**local_env, "ENABLE_R2_SYNC": "true", "SYNCBRIDGE_START_MODELS": "false",
                          "SYNCBRIDGE_MODELS_ON_FAILURE": "warn", "SYNCBRIDGE_STOP_SECONDS": "3"})
    options = StartOptions.from_config(config)
    assert (options.watch, options.models, options.models_on_failure, options.stop_seconds) == (True, False, "warn", 3)
    options = StartOptions.from_config(config, watch=False, models=True, stop_seconds=1.5)
    assert (options.watch, options.models, options.stop_seconds) == (False, True, 1.5)


# -- the app's exit status and signals (embedded bucket, no server needed) ---------------------


@pytest.mark.parametrize("code, expected", [
    ("import sys; sys.exit(7)", 7),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 137),
])
def test_start_exits_with_the_apps_status(local_env: dict[str, str], code: str, expected: int) -> None:
    proc = run_cli(["start", "--", sys.executable, "-c", code], local_env, timeout=60)
    assert proc.returncode == expected, proc.stderr
    assert "[syncbridge] app: started" in proc.stderr
    assert "[syncbridge] exit: %d" % expected in proc.stderr


def test_an_app_that_cannot_run_exits_127(local_env: dict[str, str]) -> None:
    proc = run_cli(["start", "--", "/nonexistent/app"], local_env, timeout=60)
    assert proc.returncode == 127
    assert "cannot run /nonexistent/app" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_app_gets_the_signal_and_the_detected_facts(local_env: dict[str, str], tmp_path: Path,
                                                    procs: list[subprocess.Popen]) -> None:
    out = tmp_path / "app.json"
    app = ("import json, os, signal, sys, time\n"
           "def term(signum, frame):\n"
           f"    json.dump({{'signal': signum, 'env': {{k: v for k, v in os.environ.items() if k.startswith('SYNCBRIDGE_')}}}}, open({str(out)!r}, 'w'))\n"
           "    sys.exit(0)\n"
           "signal.signal(signal.SIGTERM, term)\n"
           f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
           "while True: time.sleep(1)\n")
    # This machine has no GPU: a stand-in nvidia-smi reports an 80 GB card.
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 81559\n")
    (fake / "nvidia-smi").chmod(0o755)
    env = with_bin(local_env)
    env["PATH"] = f"{fake}:{env['PATH']}"
    proc = spawn(procs, [str(BIN / "syncbridge-start"), "--", sys.executable, "-c", app], env, tmp_path / "log")
    wait_for(lambda: (tmp_path / "ready").exists(), 30, "the app to start")
    code, seconds = stop(proc)
    assert code == 0, (tmp_path / "log").read_text()
    record = json.loads(out.read_text())
    assert record["signal"] == signal.SIGTERM
    assert record["env"]["SYNCBRIDGE_GPU_TIER"] == "datacenter"
    assert "GPU tier datacenter (detected)" in (tmp_path / "log").read_text()
    assert record["env"]["SYNCBRIDGE_STORAGE_MODE"] in ("persistent", "ephemeral")
    assert int(record["env"]["SYNCBRIDGE_START_PID"]) == proc.pid
    assert seconds < 5


def test_an_app_ignoring_sigterm_is_killed_within_the_budget(local_env: dict[str, str], tmp_path: Path,
                                                             procs: list[subprocess.Popen]) -> None:
    ready = tmp_path / "ready"
    app = (f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(ready)!r}, 'w').close(); "
           "time.sleep(120)")
    env = with_bin({**local_env, "SYNCBRIDGE_STOP_SECONDS": "2"})
    proc = spawn(procs, [str(BIN / "syncbridge-start"), "--", sys.executable, "-c", app], env, tmp_path / "log")
    wait_for(ready.exists, 30, "the app to start")
    code, seconds = stop(proc)
    log = (tmp_path / "log").read_text()
    assert code == 137, log
    assert seconds < 3.5, f"shutdown took {seconds:.1f}s with a 2s budget\n{log}"
    assert "killing it so the drain fits the budget" in log


def test_no_time_left_skips_the_final_push_with_a_log_line(local_env: dict[str, str], tmp_path: Path,
                                                          procs: list[subprocess.Popen]) -> None:
    folder = tmp_path / "workspace" / "notes"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    ready = tmp_path / "ready"
    env = with_bin({**local_env, "SYNCBRIDGE_STOP_SECONDS": "0", "SYNCBRIDGE_FOLDERS": f"push:{folder}=notes"})
    app = f"import time; open({str(ready)!r}, 'w').close(); time.sleep(120)"
    proc = spawn(procs, [str(BIN / "syncbridge-start"), "--", sys.executable, "-c", app], env, tmp_path / "log")
    wait_for(ready.exists, 30, "the app to start")
    code, seconds = stop(proc)
    log = (tmp_path / "log").read_text()
    assert code in (137, 143), log
    assert "final push: skipped, no time left of the 0s shutdown budget" in log
    bucket = tmp_path / "state" / "buckets" / "runpod"
    assert not (bucket / "notes" / "a.txt").exists()


def test_a_nested_start_runs_the_app_directly(local_env: dict[str, str], tmp_path: Path) -> None:
    """An image whose entrypoint is `syncbridge start --` running a start.sh that calls syncbridge-start."""
    marker = tmp_path / "runs"
    app = f"open({str(marker)!r}, 'a').write('x'); raise SystemExit(5)"
    env = with_bin(local_env)
    proc = subprocess.run([str(BIN / "syncbridge-start"), "--", str(BIN / "syncbridge-start"), "--", sys.executable,
                           "-c", app], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 5, proc.stderr
    assert marker.read_text() == "x"
    assert "already running under syncbridge start" in proc.stderr
    assert proc.stderr.count("system: storage") == 1


def test_report_records_every_step(local_env: dict[str, str], tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = run_cli(["start", "--report", str(report), "--", sys.executable, "-c", "pass"], local_env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert [s["name"] for s in data["steps"]] == ["system", "bucket", "models", "folders", "watch", "app", "final_push"]
    assert data["exit_code"] == 0 and data["app_returncode"] == 0
    for step in data["steps"]:
        assert f"[syncbridge] {step['line']}" in proc.stderr or f"warning: {step['line']}" in proc.stderr


# -- models: failure policy and SIGTERM during a pull ------------------------------------------


def _unreachable_manifest(tmp_path: Path) -> Path:
    manifest = tmp_path / "bad.toml"
    manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n\n'
                        '[[model]]\nname = "missing-vae"\npath = "vae/missing.safetensors"\n'
                        'url = "http://127.0.0.1:9/missing.safetensors"\n')
    return manifest


@pytest.mark.parametrize("policy", ["stop", "warn"])
def test_a_failed_model_stops_or_warns(local_env: dict[str, str], tmp_path: Path, policy: str) -> None:
    pytest.importorskip("syncbridge.models")
    marker = tmp_path / "app-ran"
    env = {**local_env, "SYNCBRIDGE_MODELS": str(_unreachable_manifest(tmp_path)),
           "SYNCBRIDGE_MODELS_ON_FAILURE": policy}
    proc = run_cli(["start", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"], env, timeout=120)
    assert "models: 1 failed (missing-vae)" in proc.stderr
    assert "Traceback" not in proc.stderr
    if policy == "stop":
        assert proc.returncode == 1, proc.stderr
        assert not marker.exists()
        assert "not starting the app (models.on_failure = stop)" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert marker.exists()
        assert "continuing (models.on_failure = warn)" in proc.stderr


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Sends a model one small piece at a time: a download that is still running when SIGTERM comes."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        try:
            for _ in range(600):
                self.wfile.write(b"\0" * 1000)
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_HEAD = do_GET

    def log_message(self, *args: Any) -> None:
        pass


def test_sigterm_during_the_model_pull_stops_start_up(local_env: dict[str, str], tmp_path: Path,
                                                      procs: list[subprocess.Popen]) -> None:
    pytest.importorskip("syncbridge.models")
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = tmp_path / "slow.toml"
        manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n\n[[model]]\nname = "big"\n'
                            f'path = "checkpoints/big.safetensors"\n'
                            f'url = "http://127.0.0.1:{server.server_address[1]}/big.safetensors"\n')
        marker = tmp_path / "app-ran"
        env = with_bin({**local_env, "SYNCBRIDGE_MODELS": str(manifest)})
        proc = spawn(procs, [str(BIN / "syncbridge-start"), "--", sys.executable, "-c",
                             f"open({str(marker)!r}, 'w').close()"], env, tmp_path / "log")
        models_dir = tmp_path / "models" / "checkpoints"
        wait_for(lambda: models_dir.exists() and any(models_dir.iterdir()), 30, "the download to begin")
        code, seconds = stop(proc)
        log = (tmp_path / "log").read_text()
        assert code == 143, log
        assert seconds < 5, log
        assert not marker.exists()
        assert "models: interrupted by SIGTERM" in log
        assert not (models_dir / "big.safetensors").exists()
    finally:
        server.shutdown()
        server.server_close()


# -- end to end on a loopback S3 server ----------------------------------------------------------


def _template_env(server: LocalS3, tmp_path: Path) -> tuple[dict[str, str], Store, Path, str]:
    bucket = new_bucket(server)
    env = server_env(server, bucket, tmp_path)
    store = client_store(env, tmp_path)
    models_dir = tmp_path / "workspace" / "ComfyUI" / "models"
    manifest, sha = seed_model(store, tmp_path, models_dir)
    store.put_bytes("workflows/shared.json", b'{"nodes": []}')
    workflows = tmp_path / "workspace" / "ComfyUI" / "user" / "default" / "workflows"
    notes = tmp_path / "workspace" / "notes"
    notes.mkdir(parents=True)
    (notes / "before.txt").write_text("written before start")
    env.update({
        "ENABLE_R2_SYNC": "true",
        "SYNCBRIDGE_MODELS": str(manifest),
        "SYNCBRIDGE_FOLDERS": f"pull:{workflows}=workflows;push:{notes}=notes",
        "SYNCBRIDGE_DEMO_EVENTS": str(tmp_path / "events.jsonl"),
        "SYNCBRIDGE_DEMO_IMAGES": "3",
        "SYNCBRIDGE_DEMO_INTERVAL": "0.02",
    })
    return env, store, models_dir, sha


def _check_pod(tmp_path: Path, env: dict[str, str], store: Store, models_dir: Path, sha: str, log: str) -> None:
    """Everything the template promises, after the start process exited."""
    model = models_dir / MODEL_PATH
    assert hashlib.sha256(model.read_bytes()).hexdigest() == sha
    assert (tmp_path / "workspace" / "ComfyUI" / "user" / "default" / "workflows" / "shared.json").exists()
    assert store.get_bytes("notes/before.txt")[0] == b"written before start"
    assert store.get_bytes("notes/during.txt")[0] == b"written while the app ran"
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    outputs = latest_outputs(read_events(Path(env["SYNCBRIDGE_DEMO_EVENTS"])))
    assert "ComfyUI_final_.png" in outputs, "the app did not write its image on SIGTERM"
    for path, record in outputs.items():
        key = join_key("outputs", path)
        if record["push"]:
            assert store.get_bytes(key)[0] == (output / path).read_bytes(), f"{key} differs from the local file"
        else:
            assert store.head(key) is None, f"{key} was pushed although temp/ never is"
    for step in ("system:", "models: 1 pulled from cache", "folders: pull", "watch: pushing", "app: started",
                 "drain:", "final push: push", "exit: 0"):
        assert f"[syncbridge] {step}" in log, f"no '{step}' line in the log:\n{log}"
    assert_no_secret(log)


@pytest.mark.slow
def test_bin_start_end_to_end(s3: LocalS3, tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    """bin/syncbridge-start with the template's env: models, folders, live outputs, SIGTERM drains in time."""
    pytest.importorskip("syncbridge.watch")
    pytest.importorskip("syncbridge.models")
    env, store, models_dir, sha = _template_env(s3, tmp_path)
    log_path = tmp_path / "start.log"
    proc = spawn(procs, [str(BIN / "syncbridge-start"), "--", sys.executable, "-m", "syncbridge.demo.app"],
                 with_bin(env), log_path)
    events = Path(env["SYNCBRIDGE_DEMO_EVENTS"])
    wait_for(lambda: any(r.get("done") for r in read_events(events)), 60, "the stand-in app's outputs")
    wait_landed(store, events, log_path)
    (tmp_path / "workspace" / "notes" / "during.txt").write_text("written while the app ran")
    code, seconds = stop(proc)
    log = log_path.read_text()
    assert code == 0, log
    assert seconds < 5, f"SIGTERM to exit took {seconds:.2f}s (a spot pod is killed after 5 s)\n{log}"
    _check_pod(tmp_path, env, store, models_dir, sha, log)


def test_example_start_sh_end_to_end(rclone_s3: LocalS3, tmp_path: Path, procs: list[subprocess.Popen]) -> None:
    """examples/comfyui/start.sh in a temporary root, with a stand-in for ComfyUI's main.py."""
    pytest.importorskip("syncbridge.watch")
    pytest.importorskip("syncbridge.models")
    env, store, models_dir, sha = _template_env(rclone_s3, tmp_path)
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text("import sys\nfrom syncbridge.demo.app import main\nsys.exit(main())\n")
    env.update({"COMFYUI_DIR": str(comfy), "PYTHON": sys.executable, "COMFYUI_ARGS": "--lowvram"})
    log_path = tmp_path / "start.log"
    proc = spawn(procs, ["bash", str(START_SH)], with_bin(env), log_path)
    events = Path(env["SYNCBRIDGE_DEMO_EVENTS"])
    wait_for(lambda: any(r.get("done") for r in read_events(events)), 60, "the stand-in app's outputs")
    wait_landed(store, events, log_path)
    (tmp_path / "workspace" / "notes" / "during.txt").write_text("written while the app ran")
    code, seconds = stop(proc)
    log = log_path.read_text()
    assert code == 0, log
    assert seconds < 5, log
    assert "--output-directory" in log and "--lowvram" in log  # ComfyUI's command line, as start.sh built it
    _check_pod(tmp_path, env, store, models_dir, sha, log)


def test_no_app_runs_the_watcher_in_the_foreground(rclone_s3: LocalS3, tmp_path: Path,
                                                   procs: list[subprocess.Popen]) -> None:
    pytest.importorskip("syncbridge.watch")
    bucket = new_bucket(rclone_s3)
    env = {**server_env(rclone_s3, bucket, tmp_path), "ENABLE_R2_SYNC": "true"}
    store = client_store(env, tmp_path)
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    log_path = tmp_path / "start.log"
    proc = spawn(procs, [str(BIN / "syncbridge-start")], with_bin(env), log_path)
    wait_for(lambda: "watch: pushing" in log_path.read_text(), 30, "the watcher to start")
    assert f"created the output folder {output}" in log_path.read_text()
    (output / "sub").mkdir(parents=True, exist_ok=True)
    (output / "sub" / "x.png").write_bytes(b"png bytes")
    wait_for(lambda: store.head("outputs/sub/x.png") is not None, 20, "the file in the bucket")
    code, seconds = stop(proc)
    log = log_path.read_text()
    assert code == 0, log
    assert seconds < 5, log
    assert "running in the foreground" in log
    assert store.get_bytes("outputs/sub/x.png")[0] == b"png bytes"


def test_bin_watch_is_the_drop_in_for_r2_sync(rclone_s3: LocalS3, tmp_path: Path,
                                              procs: list[subprocess.Popen]) -> None:
    """The old `/r2_sync.sh &` variables, unchanged; and a start whose watcher cannot run still runs its app."""
    pytest.importorskip("syncbridge.watch")
    bucket = new_bucket(rclone_s3)
    env = server_env(rclone_s3, bucket, tmp_path)  # R2_ENDPOINT, R2_ACCESS_KEY, R2_SECRET_KEY, R2_BUCKET, COMFYUI_OUTPUT_DIR
    store = client_store(env, tmp_path)
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    output.mkdir(parents=True)
    log_path = tmp_path / "watch.log"
    watch = spawn(procs, [str(BIN / "syncbridge-watch")], with_bin(env), log_path)
    (output / "a" / "ComfyUI_00001_.png").parent.mkdir()
    (output / "a" / "ComfyUI_00001_.png").write_bytes(b"a")
    (output / "b").mkdir()
    (output / "b" / "ComfyUI_00001_.png").write_bytes(b"b")  # same base name: no collision
    wait_for(lambda: store.head("outputs/a/ComfyUI_00001_.png") and store.head("outputs/b/ComfyUI_00001_.png"), 30,
             "both files in the bucket")
    # A second watcher on the same state directory is refused; start says so loudly and runs the app anyway.
    proc = run_cli(["start", "--watch", "--", sys.executable, "-c", "raise SystemExit(4)"], env, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "watch: could not start" in proc.stderr and "outputs will NOT be pushed" in proc.stderr
    code, seconds = stop(watch)
    assert code == 0, log_path.read_text()
    assert seconds < 5
    assert store.get_bytes("outputs/b/ComfyUI_00001_.png")[0] == b"b"
    assert_no_secret(log_path.read_text(), proc.stderr)


def test_bin_pull_models(rclone_s3: LocalS3, tmp_path: Path) -> None:
    pytest.importorskip("syncbridge.models")
    bucket = new_bucket(rclone_s3)
    env = server_env(rclone_s3, bucket, tmp_path)
    store = client_store(env, tmp_path)
    models_dir = tmp_path / "models"
    manifest, sha = seed_model(store, tmp_path, models_dir, size=200_000)
    proc = subprocess.run([str(BIN / "syncbridge-pull-models"), str(manifest)], env=with_bin(env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert hashlib.sha256((models_dir / MODEL_PATH).read_bytes()).hexdigest() == sha
    assert_no_secret(proc.stdout, proc.stderr)


def test_bad_configuration_exits_2_before_anything_runs(local_env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "app-ran"
    env = {**local_env, "R2_ENDPOINT": "https://example.r2.cloudflarestorage.com", "ENABLE_R2_SYNC": "maybe"}
    proc = run_cli(["start", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"], env, timeout=60)
    assert proc.returncode == 2
    for name in ("R2_ACCESS_KEY", "R2_SECRET_KEY", "ENABLE_R2_SYNC"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()
    proc = run_cli(["start", "--stop-seconds", "-1", "--", "true"], local_env, timeout=60)
    assert proc.returncode == 2 and "--stop-seconds" in proc.stderr


def test_start_outside_a_pod_makes_no_folder_and_says_which_setting(local_env: dict[str, str], tmp_path: Path) -> None:
    """On a laptop, the default /workspace/ComfyUI/output was created by the library; now nothing is made
    outside the workspace, and the watch step names COMFYUI_OUTPUT_DIR (the app still runs)."""
    env = {**local_env, "ENABLE_R2_SYNC": "true", "COMFYUI_OUTPUT_DIR": str(tmp_path / "nowhere" / "output")}
    proc = run_cli(["start", "--", sys.executable, "-c", "pass"], env, timeout=60)
    assert "watch: could not start: cannot watch" in proc.stderr and "COMFYUI_OUTPUT_DIR" in proc.stderr, proc.stderr
    assert not (tmp_path / "nowhere").exists()
    assert "app: exited with status 0" in proc.stderr
