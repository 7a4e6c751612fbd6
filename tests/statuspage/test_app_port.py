"""SYNCBRIDGE_STATUS_ON_APP_PORT: while start-up pulls models the app's port answers with the status page;
it is released just before the app starts and the app then listens on it; an app that never listens is
said plainly in the log."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from pathlib import Path

from ..conftest import wait_for
from ..hfserver import serve_hf
from .pod import free_port, get, start_pod

# A stand-in app: serves "app here" on --port until a stop file appears.
WEB_APP = r"""
import http.server, os, sys, threading, time
port, stop = int(sys.argv[sys.argv.index("--port") + 1]), sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "8"); self.end_headers(); self.wfile.write(b"app here")
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while not os.path.exists(stop): time.sleep(0.05)
"""


def _slow_model_env(local_env, tmp_path: Path, hub) -> dict[str, str]:
    model = bytes(range(256)) * 8192  # 2 MiB at 64 KiB per 0.1 s: about 3 s of start-up
    hub.add("org/m", {"m.safetensors": model})
    hub.trickle["m.safetensors"] = 0.1
    manifest = tmp_path / "models.toml"
    manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n[[model]]\nname = "m"\n'
                        f'path = "checkpoints/m.safetensors"\nurl = "{hub.url}/org/m/resolve/main/m.safetensors"\n'
                        f'sha256 = "{hashlib.sha256(model).hexdigest()}"\n')
    return {**local_env, "SYNCBRIDGE_MODELS": str(manifest), "SYNCBRIDGE_STATUS_ON_APP_PORT": "true",
            "SYNCBRIDGE_STATUS_BIND": "127.0.0.1"}


def _body(port: int) -> bytes | None:
    try:
        status, _h, body = get(port, "/status.json")
        return body if status == 200 else None
    except OSError:
        return None


def test_the_app_port_shows_the_page_until_the_app_takes_it(local_env, tmp_path) -> None:
    app_port = free_port()
    stop = tmp_path / "stop"
    with serve_hf() as hub:
        env = _slow_model_env(local_env, tmp_path, hub)
        proc = start_pod(env, [sys.executable, "-c", WEB_APP, str(stop), "--listen", "127.0.0.1", "--port",
                               str(app_port)], tmp_path / "start.log")
        try:
            body = wait_for(lambda: _body(app_port), 20, "the page on the app's port")
            doc = json.loads(body)  # the status page, while the model is pulled
            assert doc["start"]["app"] is None and doc["start"]["app_port"]["state"] == "serving", doc["start"]
            wait_for(lambda: _body(app_port) == b"app here", 30, "the app on its port")
            wait_for(lambda: "app: listening on port" in (tmp_path / "start.log").read_text(), 10, "the log line")
        finally:
            stop.write_text("stop")
            code = proc.wait(timeout=30)
    log = (tmp_path / "start.log").read_text()
    assert code == 0, log
    assert f"status page: also on the app's port {app_port} until the app starts" in log
    assert f"released the app's port {app_port} for the app" in log
    assert log.index("released the app's port") < log.index("app: started")


def test_an_app_that_never_listens_is_said_plainly(local_env, tmp_path) -> None:
    app_port = free_port()
    with serve_hf() as hub:
        env = _slow_model_env(local_env, tmp_path, hub)
        proc = start_pod(env, [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)", "--port",
                               str(app_port)], tmp_path / "start.log")
        wait_for(lambda: _body(app_port), 20, "the page on the app's port")
        code = proc.wait(timeout=30)
    log = (tmp_path / "start.log").read_text()
    assert code == 3, log
    assert f"without ever listening on port {app_port}" in log, log


def test_an_app_port_already_taken_is_said_and_start_goes_on(local_env, tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        env = {**local_env, "SYNCBRIDGE_STATUS_ON_APP_PORT": "true", "SYNCBRIDGE_STATUS_BIND": "127.0.0.1",
               "SYNCBRIDGE_APP_PORT": str(port)}
        proc = start_pod(env, [sys.executable, "-c", "pass"], tmp_path / "start.log")
        code = proc.wait(timeout=30)
    log = (tmp_path / "start.log").read_text()
    assert code == 0, log
    assert f"cannot listen on the app's port {port}" in log, log
