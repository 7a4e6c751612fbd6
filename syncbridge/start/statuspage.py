"""``start``'s status page (SYNCBRIDGE_STATUS_PORT), and the app's port held until the app starts
(SYNCBRIDGE_STATUS_ON_APP_PORT): serving them, releasing the app's port just before the app is started,
and saying plainly when that port could not be released or the app never listened on it."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Mapping, Sequence

from ..config import Config

__all__ = ["serve_status_page", "release_app_port", "watch_app_port", "DEFAULT_APP_PORT", "APP_LISTEN_WAIT"]

log = logging.getLogger("syncbridge.start")

DEFAULT_APP_PORT = 8188  # ComfyUI's
APP_LISTEN_WAIT = 600.0  # how long after its start the app may take to listen before we say it does not


def serve_status_page(config: Config, app: Sequence[str], environ: Mapping[str, str], status: Any
                      ) -> tuple[Any, Any]:
    """Start the page's server when ``start.status_port`` is set: ``(server, app-port listener)``, either None.

    A port that cannot be bound is logged and start-up goes on without it (the page is a convenience, the
    pod's work is not).
    """
    port = config.start.status_port
    on_app = config.start.status_on_app_port
    if port is None and not on_app:
        return None, None
    from ..statuspage import StatusServer, resolve_bind
    from ..statuspage.page import app_port_of

    bind = resolve_bind(config.start.status_bind, environ)
    server = StatusServer(config)
    if port is not None:
        try:
            listener = server.listen(port, bind)
            log.info("status page: http://%s:%d/ (/status.json, /metrics)%s", bind, listener.port,
                     ", token required" if config.start.status_token else "", extra={"event": "start.status_page"})
        except OSError as exc:
            log.warning("status page: cannot listen on %s:%d: %s; going on without it (SYNCBRIDGE_STATUS_PORT)",
                        bind, port, exc.strerror or exc, extra={"event": "start.status_page_failed"})
    app_listener = None
    if on_app and app:
        app_port = config.start.app_port or app_port_of(app) or DEFAULT_APP_PORT
        if app_port == port:
            log.warning("status page: the app's port %d is the status port; not serving it twice", app_port,
                        extra={"event": "start.app_port"})
        else:
            try:
                app_listener = server.listen(app_port, bind, name="app-port")
                status.app_port(state="serving", port=app_port,
                                message=f"the status page answers on the app's port {app_port} until the app starts")
                log.info("status page: also on the app's port %d until the app starts", app_port,
                         extra={"event": "start.app_port"})
            except OSError as exc:
                status.app_port(state="failed", port=app_port, message=f"cannot listen on it: {exc.strerror or exc}")
                log.warning("status page: cannot listen on the app's port %d: %s; going on without it", app_port,
                            exc.strerror or exc, extra={"event": "start.app_port_failed"})
    return server, app_listener


def release_app_port(listener: Any, status: Any) -> bool:
    """Stop serving the page on the app's port (just before the app starts); False, said plainly, if still held."""
    started = time.monotonic()
    free = listener.close(timeout=2.0)
    took = time.monotonic() - started
    if free:
        status.app_port(state="released", message=f"released for the app in {took:.2f}s")
        log.info("status page: released the app's port %d for the app (%.2fs)", listener.port, took,
                 extra={"event": "start.app_port_released"})
    else:
        status.app_port(state="failed", message=f"port {listener.port} was still held {took:.1f}s after release; "
                                                "the app may fail to listen on it")
        log.error("status page: the app's port %d could NOT be released in time (still held after %.1fs); the app "
                  "may fail to listen on it", listener.port, took, extra={"event": "start.app_port_held"})
    return free


def _answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def watch_app_port(proc: Any, port: int, status: Any, *, wait: float = APP_LISTEN_WAIT) -> threading.Thread:
    """Say when the app listens on ``port``, or plainly that it did not (it exited first, or never did)."""
    def run() -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _answers(port):
                status.app_port(state="app", message=f"the app listens on port {port}")
                log.info("app: listening on port %d", port, extra={"event": "start.app_listening"})
                return
            if proc.poll() is not None:
                status.app_port(state="failed", message=f"the app exited without listening on port {port}")
                log.error("app: exited (status %s) without ever listening on port %d: did it fail to bind it?",
                          proc.returncode, port, extra={"event": "start.app_not_listening"})
                return
            time.sleep(0.25)
        status.app_port(state="failed", message=f"nothing answers on port {port} {wait:.0f}s after the app started")
        log.warning("app: nothing answers on port %d %.0fs after the app started", port, wait,
                    extra={"event": "start.app_not_listening"})

    thread = threading.Thread(target=run, name="syncbridge-start-app-port", daemon=True)
    thread.start()
    return thread
