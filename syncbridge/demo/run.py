"""``syncbridge demo``: the whole container path on this machine, with no credentials.

1. Start ``rclone serve s3`` on 127.0.0.1 over a temporary folder (the binary
   that came with syncbridge) and make a bucket.
2. Seed it: a small "model" at ``models/checkpoints/demo.safetensors`` (the R2
   model cache, with its sha256 in metadata) plus a manifest naming it, and a
   workflow under ``workflows/``.
3. Run ``syncbridge start`` in a child process, with the template's
   environment pointing at the server and a temporary workspace, and a
   stand-in app (:mod:`syncbridge.demo.app`) that writes images, a rewritten
   video and files in subfolders, like ComfyUI.
4. Show each output landing (HEAD answers with the file's MD5) and its
   latency from the app's ``close()``; edit a workflow in the pod.
5. Stop with SIGTERM, as a spot pod is stopped, and time the shutdown.
6. Compare every output the app wrote with the bucket's bytes and print a
   summary. ``ok`` only when nothing was lost.

Everything lives in one temporary folder, removed at the end with the server.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs

from ..config import load_config
from ..errors import StoreError
from ..hashing import sha256_file
from ..keys import join_key
from .localserver import serve_rclone_s3
from ..store import Store, open_store
from ..watch.status import percentile

__all__ = ["DemoResult", "run_demo"]

BUCKET = "demo"
POD_ID = "demo-pod"
OUTPUT_PREFIX = f"outputs/{POD_ID}"
MODEL_PATH = "checkpoints/demo.safetensors"
MODEL_SIZE = 4 * 1024 * 1024
POLL_SECONDS = 0.01


@attrs.frozen
class DemoResult:
    """What the demo saw. ``ok``: start exited 0 and every output is in the bucket with the same bytes."""

    ok: bool
    outputs: int
    lost: tuple[str, ...]
    latencies: tuple[float, ...]
    shutdown_seconds: float | None
    start_exit: int | None
    models: tuple[dict[str, Any], ...]
    root: Path
    problems: tuple[str, ...] = ()

    @property
    def p50(self) -> float | None:
        return percentile(list(self.latencies), 0.50) if self.latencies else None

    @property
    def p95(self) -> float | None:
        return percentile(list(self.latencies), 0.95) if self.latencies else None


class _Events:
    """Reads the stand-in app's JSON-lines record of finished files as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = ""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._offset)
                text = fh.read()
                self._offset = fh.tell()
        except FileNotFoundError:
            return []
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines if line.strip()]


def _short(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} KB"


@contextlib.contextmanager
def _temp_root(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="syncbridge-demo-"))
    try:
        yield root
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _pump(stream: Any, out: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        out("  | " + raw.decode("utf-8", "replace").rstrip())


def run_demo(*, images: int = 6, interval: float = 0.25, keep: bool = False,
             out: Callable[[str], None] = print, verbose: bool = False, timeout: float = 45.0) -> DemoResult:
    """Run the demo; see the module docstring.

    Args:
        images: top-level images the stand-in app writes (plus the fixed set of
            subfolder, rewritten-video and rename cases).
        interval: seconds between its outputs.
        keep: keep the temporary folder.
        out: where the demo's lines go (the CLI passes its redacting printer).
        verbose: the start process logs at debug level.
        timeout: seconds to wait for the outputs before giving up.
    """
    with _temp_root(keep) as root:
        s3_log = root / "rclone-serve-s3.log"
        out(f"demo: working in {root}{' (kept)' if keep else ' (removed at the end)'}")
        with serve_rclone_s3(root / "s3", log_file=s3_log) as server:
            server.create_bucket(BUCKET)
            out(f"demo: S3 server (rclone serve s3) on {server.endpoint}, bucket {BUCKET!r}; no credentials of "
                f"yours are used")
            return _run(server, root, images=images, interval=interval, out=out, verbose=verbose,
                        timeout=timeout)


def _run(server: Any, root: Path, *, images: int, interval: float, out: Callable[[str], None], verbose: bool,
         timeout: float) -> DemoResult:
    workspace = root / "workspace"
    output_dir = workspace / "ComfyUI" / "output"
    models_dir = workspace / "ComfyUI" / "models"
    workflows = workspace / "ComfyUI" / "user" / "default" / "workflows"
    events_path = root / "app-events.jsonl"
    report_path = root / "start-report.json"
    client_env = {**server.environ(BUCKET), "SYNCBRIDGE_STATE_DIR": str(root / "demo-client"),
                  "SYNCBRIDGE_WORKSPACE": str(workspace), "HOME": str(root / "home")}
    store = open_store(load_config(client_env).remote, state_dir=root / "demo-client")
    problems: list[str] = []

    # -- seed the bucket: the model cache and a workflow ------------------------------
    model = random.Random(20261129).randbytes(MODEL_SIZE)
    model_sha = hashlib.sha256(model).hexdigest()
    store.put_bytes(f"models/{MODEL_PATH}", model, metadata={"sha256": model_sha})
    store.put_bytes("workflows/demo-workflow.json", json.dumps({"nodes": [], "demo": True}).encode())
    manifest = root / "models.toml"
    manifest.write_text(
        "[settings]\n"
        f"models_dir = {json.dumps(str(models_dir))}\n"
        'cache_prefix = "models"\n\n'
        "[[model]]\n"
        'name = "demo-checkpoint"\n'
        f'path = "{MODEL_PATH}"\n'
        f'sha256 = "{model_sha}"\n'
        f"size = {MODEL_SIZE}\n", encoding="utf-8")
    out(f"demo: seeded the model cache with models/{MODEL_PATH} ({_size(MODEL_SIZE)}, sha256 {model_sha[:12]}...) "
        f"and a workflow")

    env = {name: os.environ[name] for name in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYNCBRIDGE_RCLONE_BINARY")
           if name in os.environ}
    env.update(server.environ(BUCKET))
    env.update({
        "HOME": str(root / "home"),
        "PYTHONUNBUFFERED": "1",
        "SYNCBRIDGE_STATE_DIR": str(root / "pod-state"),
        "SYNCBRIDGE_WORKSPACE": str(workspace),
        "COMFYUI_OUTPUT_DIR": str(output_dir),
        "ENABLE_R2_SYNC": "true",
        "SYNCBRIDGE_POD_ID": POD_ID,
        "SYNCBRIDGE_WATCH_PREFIX": "outputs/{pod_id}",
        "SYNCBRIDGE_MODELS": str(manifest),
        "SYNCBRIDGE_FOLDERS": f"bisync:{workflows}=workflows",
        # One pod and a server that ignores If-None-Match: no lease to take, no probe to warn about.
        "SYNCBRIDGE_BISYNC_LEASE": "off",
        "SYNCBRIDGE_WATCH_CONDITIONAL": "off",
        "SYNCBRIDGE_DEMO_EVENTS": str(events_path),
        "SYNCBRIDGE_LOG_LEVEL": "debug" if verbose else "info",
    })
    app = [sys.executable, "-m", "syncbridge.demo.app", "--images", str(images), "--interval", str(interval)]
    argv = [sys.executable, "-m", "syncbridge", "start", "--report", str(report_path), "--", *app]
    out("demo: running  syncbridge start -- python -m syncbridge.demo.app   (its log, as a container shows it:)")
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc.stdout, out), name="demo-log", daemon=True)
    pump.start()
    events = _Events(events_path)
    expected: dict[str, dict[str, Any]] = {}  # path -> latest record
    landed: dict[str, float] = {}              # path -> latency of its latest content
    app_pid: int | None = None
    done = False
    shutdown: float | None = None
    start_exit: int | None = None
    try:
        deadline = started + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            for record in events.read():
                if record.get("done"):
                    done = True
                elif "path" in record:
                    expected[record["path"]] = record
                    landed.pop(record["path"], None)
                elif "pid" in record:
                    app_pid = record["pid"]
            _check_landed(store, expected, landed, out)
            if done and all(p in landed for p, r in expected.items() if r["push"]):
                break
            time.sleep(POLL_SECONDS)
        if proc.poll() is not None:
            problems.append(f"syncbridge start exited early with status {proc.returncode}")
        elif not done:
            problems.append(f"the stand-in app did not finish its outputs within {timeout:.0f}s")
        # A workflow edited in the pod: the final bisync at shutdown takes it to the bucket.
        if workflows.is_dir():
            (workflows / "edited-in-pod.json").write_text(json.dumps({"edited": True}), encoding="utf-8")
        if proc.poll() is None:
            out("demo: sending SIGTERM to syncbridge start (a spot pod being stopped; SIGKILL would follow in 5 s)")
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            try:
                start_exit = proc.wait(timeout=15)
                shutdown = time.monotonic() - t0
            except subprocess.TimeoutExpired:
                problems.append("syncbridge start did not exit within 15 s of SIGTERM")
        else:
            start_exit = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if app_pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(app_pid, signal.SIGKILL)
        pump.join(timeout=5)
    for record in events.read():
        if "path" in record:
            expected[record["path"]] = record
            landed.pop(record["path"], None)
    try:
        return _summarize(store, root, expected, landed, report_path, workflows, models_dir, model_sha,
                          shutdown=shutdown, start_exit=start_exit, problems=problems, out=out)
    finally:
        store.close()


def _check_landed(store: Store, expected: dict[str, dict[str, Any]], landed: dict[str, float],
                  out: Callable[[str], None]) -> None:
    for path, record in expected.items():
        if path in landed or not record["push"]:
            continue
        try:
            info = store.head(join_key(OUTPUT_PREFIX, path))
        except StoreError:
            continue
        if info is not None and info.etag == record["md5"]:
            latency = max(0.0, time.time() - record["closed"])
            landed[path] = latency
            out(f"demo: landed  {join_key(OUTPUT_PREFIX, path):<52} {_size(record['size']):>7}  "
                f"{_short(latency):>7} after close()")


def _summarize(store: Store, root: Path, expected: dict[str, dict[str, Any]], landed: dict[str, float],
               report_path: Path, workflows: Path, models_dir: Path, model_sha: str, *, shutdown: float | None,
               start_exit: int | None, problems: list[str], out: Callable[[str], None]) -> DemoResult:
    output_dir = root / "workspace" / "ComfyUI" / "output"
    lost: list[str] = []
    pushed = 0
    for path, record in sorted(expected.items()):
        key = join_key(OUTPUT_PREFIX, path)
        try:
            data, _info = store.get_bytes(key)
        except StoreError:
            data = None
        if not record["push"]:
            if data is not None:
                problems.append(f"{path} was pushed although temp/ is never synced")
            continue
        local = (output_dir / path).read_bytes() if (output_dir / path).exists() else None
        if data is None or local is None or data != local:
            lost.append(path)
        else:
            pushed += 1
    report: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(report_path.read_text(encoding="utf-8"))
    models: list[dict[str, Any]] = []
    for step in report.get("steps", []):
        if step.get("name") == "models":
            models = list(step.get("details") or [])
    model_file = models_dir / MODEL_PATH
    model_ok = model_file.exists() and sha256_file(model_file)[1] == model_sha
    if not model_ok:
        problems.append(f"the model is not at {model_file} with the seeded sha256")
    if not (workflows / "demo-workflow.json").exists():
        problems.append("the workflow was not pulled from the bucket at start")
    with contextlib.suppress(StoreError):
        if store.head("workflows/edited-in-pod.json") is None and shutdown is not None:
            problems.append("the workflow edited in the pod was not pushed by the final bisync")
    if start_exit not in (0, None):
        problems.append(f"syncbridge start exited with status {start_exit}")
    if start_exit is None:
        problems.append("syncbridge start did not exit cleanly")

    latencies = [landed[p] for p in sorted(landed) if p != "ComfyUI_final_.png"]
    result = DemoResult(ok=not lost and not problems and pushed > 0, outputs=pushed, lost=tuple(lost),
                        latencies=tuple(latencies), shutdown_seconds=shutdown, start_exit=start_exit,
                        models=tuple(models), root=root, problems=tuple(problems))
    out("")
    out("summary")
    for m in models:
        verified = "sha256 verified" if m.get("verified") else "not verified"
        size = f"{_size(int(m['size']))} " if m.get("size") else ""
        out(f"  model     {m.get('name')}: {m.get('status')} from {m.get('source') or '-'}, {size}{verified}, "
            f"{m.get('seconds') or 0:.2f} s")
    if not models:
        out(f"  model     {'present and verified' if model_ok else 'MISSING'} at {model_file}")
    out("  folders   workflows/demo-workflow.json pulled at start; edited-in-pod.json pushed by the final bisync")
    out(f"  outputs   {pushed} pushed as they were written (subfolders kept, the rewritten video's last "
        f"version, the renamed file); temp/ preview not pushed")
    if result.p50 is not None:
        out(f"  latency   p50 {_short(result.p50)}, p95 {_short(result.p95 or 0)} from the app's close() to HEAD "
            f"answering with the same MD5 ({len(latencies)} files)")
    if shutdown is not None:
        final = "pushed" if "ComfyUI_final_.png" in expected and "ComfyUI_final_.png" not in lost else "MISSING"
        out(f"  shutdown  SIGTERM -> exit {start_exit} in {shutdown:.2f} s (budget 4.5 s before a spot pod's "
            f"SIGKILL); the image the app wrote while stopping: {final}")
    for problem in problems:
        out(f"  problem   {problem}")
    if lost:
        out(f"  LOST      {len(lost)}: {', '.join(lost)}")
    out(f"  result    {'OK: nothing lost' if result.ok else 'FAILED'} ({pushed} of {pushed + len(lost)} outputs "
        f"match the bucket byte for byte)")
    return result
