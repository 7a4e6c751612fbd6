"""What a running ``start`` is doing, for ``syncbridge status`` and the status page: ``<state>/start/status.json``.

:class:`StartStatus` records the steps as they finish, the app (running, its pid), the app's port while the
status page holds it, and each model's progress (bytes, total, rate, source) as :class:`ModelEvent` records
arrive from the pull. The file is rewritten whole and atomically: on each step, each model's start and end,
and at most once a second while bytes flow, so a 30 GB pull costs about one small write a second.
:func:`read_start_status` reads it back and says whether the ``start`` that wrote it still runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..fsutil import atomic_write_bytes, private_state_dir

__all__ = ["StartStatus", "read_start_status", "STATUS_NAME", "source_kind"]

log = logging.getLogger("syncbridge.start")

STATUS_NAME = "status.json"  # in <state>/start/
WRITE_EVERY = 1.0  # seconds between rewrites while only bytes arrive
STALE_SECONDS = 30.0  # a running start rewrites the file at least this often (see :meth:`StartStatus.beat`)


def source_kind(source: str) -> str:
    """``cache`` (the bucket's model cache), ``local`` (already here), or ``upstream`` (Hugging Face, CivitAI, a URL)."""
    if source in ("cache", "local"):
        return source
    return "upstream" if source else ""


class StartStatus:
    """The running ``start``'s status file; every method is cheap and safe from any thread."""

    def __init__(self, state_dir: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir) / "start" / STATUS_NAME
        self.state_dir = Path(state_dir)
        self.clock = clock
        self._lock = threading.Lock()
        self._doc: dict[str, Any] = {"pid": os.getpid(), "running": True, "started_at": clock(), "steps": [],
                                     "app": None, "app_port": None, "models": {}}
        self._last_write = 0.0
        self._stopped = threading.Event()

    # -- what start tells ---------------------------------------------------------------------
    def step(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._doc["steps"].append({k: record[k] for k in ("name", "status", "line", "seconds")})
        self.write()

    def app(self, **fields: Any) -> None:
        with self._lock:
            self._doc["app"] = {**(self._doc["app"] or {}), **fields}
        self.write()

    def app_port(self, **fields: Any) -> None:
        with self._lock:
            self._doc["app_port"] = {**(self._doc["app_port"] or {}), **fields}
        self.write()

    def finish(self, exit_code: int) -> None:
        with self._lock:
            self._doc["running"] = False
            self._doc["exit_code"] = exit_code
        self._stopped.set()
        self.write()

    def start_beating(self) -> "StartStatus":
        """Rewrite the file every few seconds until :meth:`finish` (its age tells a dead start from a quiet one)."""
        def run() -> None:
            while not self._stopped.wait(STALE_SECONDS / 6):
                if self.clock() - self._last_write >= STALE_SECONDS / 6:
                    self.write()

        threading.Thread(target=run, name="syncbridge-start-status", daemon=True).start()
        return self

    # -- model progress (a pull's ``on_event``) ---------------------------------------------------
    def on_model_event(self, event: Any) -> None:
        now = self.clock()
        with self._lock:
            models = self._doc["models"]
            entry = models.get(event.model)
            if entry is None:
                entry = models[event.model] = {"name": event.model, "state": "queued", "source": "", "from": "",
                                               "bytes": 0, "total": 0, "started_at": None, "done_at": None,
                                               "message": ""}
            kind = event.kind
            urgent = kind != "bytes"
            if kind == "plan":
                entry["total"] = event.total
            elif kind == "start":
                entry.update(state="downloading", source=event.source, total=event.total or entry["total"],
                             started_at=now, bytes=0, message="")
                entry["from"] = source_kind(event.source)
            elif kind == "bytes":
                entry["bytes"] += event.bytes
                entry["state"] = "downloading"
            elif kind == "attempt_failed":
                entry.update(state="retrying", message=event.message, bytes=0)
            elif kind == "waiting":
                entry.update(state="waiting", message=event.message)
            elif kind == "done":
                status = event.message or "done"
                entry.update(state="failed" if "failed" in status else "done", message=status, done_at=now)
                if event.source:
                    entry["source"] = event.source
                    entry["from"] = source_kind(event.source)
            if not urgent and now - self._last_write < WRITE_EVERY:
                return
        self.write()

    # -- the file ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            doc = json.loads(json.dumps(self._doc))
        doc["updated_at"] = self.clock()
        return doc

    def write(self) -> None:
        doc = self.snapshot()
        with self._lock:
            self._last_write = self.clock()
        try:
            private_state_dir(self.state_dir, "start")
            atomic_write_bytes(self.path, json.dumps(doc, sort_keys=True).encode("utf-8"))
        except OSError as exc:  # a status file must never stop start-up
            log.debug("start status: %s", exc, extra={"event": "start.status_file"})


def read_start_status(state_dir: Path, *, now: float | None = None) -> dict[str, Any] | None:
    """The last ``start``'s status (None: none); ``running`` is false when the start that wrote it is gone."""
    try:
        doc = json.loads((Path(state_dir) / "start" / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None
    alive = bool(doc.get("running"))
    pid = doc.get("pid")
    if alive and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
    now = time.time() if now is None else now
    if alive and now - float(doc.get("updated_at") or 0) > STALE_SECONDS:
        alive = False
    doc["running"] = alive
    return doc
