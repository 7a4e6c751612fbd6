"""A loopback stand-in of ComfyUI's HTTP API, for the serverless worker's tests and benchmark.

ComfyUI is not on PyPI, so CI cannot run it. This server answers the endpoints the worker uses as
ComfyUI does (``POST /prompt`` with ``node_errors`` on a refused workflow, ``GET /history/{id}`` empty
until done, then ``outputs`` per node and ``status``; ``GET /view``; ``GET /object_info``; ``GET
/system_stats``; ``POST /interrupt``), and runs a queued prompt's nodes on a thread of its own,
writing into the output folder the way the real save nodes do (tests/watch/test_producers.py):

* ``SaveImage`` / ``SaveAnimatedWEBP``: PIL's save, the final name written in place;
* ``VHS_VideoCombine``: ffmpeg writing the final ``.mp4`` over ``seconds``, plus its metadata ``.png``,
  reported under ``gifs`` as VideoHelperSuite does;
* ``SaveAudio``: the audio writer's tempfile + ``os.replace`` onto the final ``.flac``;
* ``SaveLatent``: the same, ``.latent``;
* ``CheckpointLoaderSimple`` / ``LoraLoader``: at ``/prompt`` a model file missing from the models
  folder is refused (``Value not in list``), as ComfyUI validates against its folder listing;
* ``Fail``: an execution error at that node;
* ``SaveGLB``: a 3D file, reported under ``3d`` as ComfyUI's SaveGLB does;
* ``PreviewImage``: a PNG written into ComfyUI's temp folder (beside the output folder), reported with
  ``type: "temp"``;
* ``PreviewAny``: a text output (``{"text": ["..."]}``), no file;
* ``Report``: no file; its ``ui`` input is reported verbatim as the node's outputs (what a custom node may say).

Names follow ComfyUI's counter: ``<prefix>_<counter:05>_.<ext>``, the counter found by scanning the
folder. Each node's ``inputs`` may give ``size`` (bytes per file), ``count`` and ``seconds``; the bytes
are a deterministic function of the name so a test can compare what the bucket holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.watch.test_producers import ffmpeg_write, pil_save, save_latent

NODE_CLASSES = {
    "SaveImage": ("images", "png"),
    "SaveAnimatedWEBP": ("images", "webp"),
    "VHS_VideoCombine": ("gifs", "mp4"),
    "SaveAudio": ("audio", "flac"),
    "SaveLatent": ("latents", "latent"),
    "CheckpointLoaderSimple": None,
    "LoraLoader": None,
    "KSampler": None,
    "Fail": None,
    "SaveGLB": ("3d", "glb"),
    "PreviewImage": ("images", "png"),
    "PreviewAny": None,
    "Report": None,
}
MODEL_INPUTS = {"CheckpointLoaderSimple": ("ckpt_name", "checkpoints"), "LoraLoader": ("lora_name", "loras")}


def content_of(name: str, size: int) -> bytes:
    """The bytes a node writes for ``name``: deterministic, distinct per name (and fast for 50 MB)."""
    seed = hashlib.sha256(name.encode()).digest()
    block = hashlib.sha512(seed).digest() * 64  # 4 KB
    reps = size // len(block) + 1
    return (seed + block * reps)[:size]


def save_audio(path: Path, data: bytes) -> None:
    """ComfyUI's SaveAudio: the bytes go to a temp file first, then os.replace onto the final name."""
    save_latent(path, data)


class StandIn:
    """The server; ``queued`` lists every prompt that reached the queue."""

    def __init__(self, output_dir: Path, models_dir: Path | None = None, *, port: int = 0) -> None:
        self.output_dir = Path(output_dir)
        self.temp_dir = self.output_dir.parent / "temp"  # ComfyUI's temp folder: PreviewImage writes there
        self.models_dir = Path(models_dir) if models_dir else None
        self.queued: list[dict[str, Any]] = []
        self.interrupts = 0
        self.history: dict[str, dict[str, Any]] = {}
        self.written_at: dict[str, float] = {}  # prompt id -> when its last output file was closed
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                if parts.path == "/system_stats":
                    self._send(200, {"system": {"comfyui_version": "stand-in"}, "devices": []})
                elif parts.path == "/object_info":
                    self._send(200, {name: {"name": name, "output_node": spec is not None}
                                     for name, spec in NODE_CLASSES.items()})
                elif parts.path.startswith("/history/"):
                    pid = parts.path[len("/history/"):]
                    with stand_in.lock:
                        entry = stand_in.history.get(pid)
                    self._send(200, {pid: entry} if entry else {})
                elif parts.path == "/view":
                    query = parse_qs(parts.query)
                    rel = "/".join(p for p in (query.get("subfolder", [""])[0], query.get("filename", [""])[0]) if p)
                    path = stand_in.output_dir / rel
                    if ".." in rel.split("/") or not path.is_file():
                        self._send(404, {"error": "not found"})
                        return
                    size = path.stat().st_size
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    with open(path, "rb") as fh:
                        while chunk := fh.read(1 << 20):
                            self.wfile.write(chunk)
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/prompt":
                    status, answer = stand_in.queue(body)
                    self._send(status, answer)
                elif self.path == "/interrupt":
                    stand_in.interrupts += 1
                    self._send(200, {})
                else:
                    self._send(404, {"error": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "StandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- ComfyUI's validation -------------------------------------------------------------------------

    def queue(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        prompt = body.get("prompt")
        if not isinstance(prompt, dict) or not prompt:
            return 400, {"error": {"type": "no_prompt", "message": "No prompt provided", "details": ""},
                         "node_errors": {}}
        node_errors: dict[str, Any] = {}
        for node_id, node in prompt.items():
            kind = node.get("class_type")
            if kind not in NODE_CLASSES:
                return 400, {"error": {"type": "invalid_prompt", "message":
                                       f"Cannot execute because node {kind} does not exist.", "details":
                                       f"Node ID '#{node_id}'"}, "node_errors": {}}
            if kind in MODEL_INPUTS:
                field, folder = MODEL_INPUTS[kind]
                name = node.get("inputs", {}).get(field)
                if self.models_dir is None or not (self.models_dir / folder / str(name)).is_file():
                    node_errors[node_id] = {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                                                        "details": f"{field}: '{name}' not in []"}],
                                            "dependent_outputs": [], "class_type": kind}
        if node_errors:
            return 400, {"error": {"type": "prompt_outputs_failed_validation",
                                   "message": "Prompt outputs failed validation", "details": ""},
                         "node_errors": node_errors}
        pid = str(uuid.uuid4())
        with self.lock:
            self.queued.append({"prompt_id": pid, "prompt": prompt})
        threading.Thread(target=self._execute, args=(pid, prompt), daemon=True).start()
        return 200, {"prompt_id": pid, "number": len(self.queued), "node_errors": {}}

    # -- execution -----------------------------------------------------------------------------------

    def _next_name(self, prefix: str, ext: str) -> tuple[str, str]:
        """(subfolder, filename) by ComfyUI's counter: one past the highest ``<prefix>_NNNNN_`` present."""
        subfolder, _, base = prefix.rpartition("/")
        folder = self.output_dir / subfolder
        highest = 0
        if folder.is_dir():
            for name in os.listdir(folder):
                match = re.fullmatch(re.escape(base) + r"_(\d{5})_?\..+", name)
                if match:
                    highest = max(highest, int(match.group(1)))
        return subfolder, f"{base}_{highest + 1:05}_.{ext}"

    def _execute(self, pid: str, prompt: dict[str, Any]) -> None:
        outputs: dict[str, Any] = {}
        messages: list[Any] = [["execution_start", {"prompt_id": pid}]]
        status = "success"
        for node_id in sorted(prompt, key=lambda k: int(k) if str(k).isdigit() else 0):
            node = prompt[node_id]
            kind, inputs = node["class_type"], node.get("inputs", {})
            if kind == "Fail":
                messages.append(["execution_error", {"prompt_id": pid, "node_id": node_id, "node_type": kind,
                                                     "exception_type": "RuntimeError",
                                                     "exception_message": str(inputs.get("message", "boom"))}])
                status = "error"
                break
            if kind == "PreviewAny":
                outputs[node_id] = {"text": [str(inputs.get("source", "hello"))]}
                continue
            if kind == "Report":
                outputs[node_id] = inputs.get("ui", {})
                continue
            spec = NODE_CLASSES.get(kind)
            if spec is None:
                continue
            list_name, ext = spec
            items = []
            for _ in range(int(inputs.get("count", 1))):
                temp = kind == "PreviewImage"
                if temp:
                    subfolder, filename = "", f"ComfyUI_temp_{uuid.uuid4().hex[:5]}_{len(items) + 1:05}_.png"
                    path = self.temp_dir / filename
                else:
                    subfolder, filename = self._next_name(str(inputs.get("filename_prefix", "ComfyUI")), ext)
                    path = self.output_dir / subfolder / filename
                data = content_of(f"{inputs.get('seed', '')}:{filename}", int(inputs.get("size", 50_000)))
                if kind == "VHS_VideoCombine":
                    ffmpeg_write(path, data, seconds=float(inputs.get("seconds", 1.0)))
                    meta = path.with_suffix(".png")
                    pil_save(meta, content_of(f"{inputs.get('seed', '')}:{meta.name}", 2000))
                    items.append({"filename": meta.name, "subfolder": subfolder, "type": "output"})
                elif kind in ("SaveAudio", "SaveLatent"):
                    (save_audio if kind == "SaveAudio" else save_latent)(path, data)
                else:
                    pil_save(path, data)
                items.append({"filename": filename, "subfolder": subfolder, "type": "temp" if temp else "output"})
            outputs[node_id] = {list_name: items}
            if kind == "SaveAnimatedWEBP":
                outputs[node_id]["animated"] = [True]
        with self.lock:
            self.written_at[pid] = time.monotonic()
            messages.append(["execution_success" if status == "success" else "execution_error_end", {}])
            self.history[pid] = {"prompt": [0, pid, prompt, {}, list(outputs)], "outputs": outputs,
                                 "status": {"status_str": status, "completed": status == "success",
                                            "messages": messages}}

