"""Heartbeats: each pod's ``<fleet.prefix>/pods/<pod_id>.json``, written every ``fleet.heartbeat_seconds``.

The body carries the watcher's counters (pending, uploaded, failed, last and p95 push latency,
version); :func:`pod_status_from` reads one back, judged live by the bucket's clock.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
from typing import Any, Callable, Mapping

import attrs

from .. import __version__
from ..config import Config
from ..errors import StoreError
from ..store import Store, open_store
from .rules import CLOCK_GRACE

__all__ = ["Heartbeat", "PodStatus", "heartbeat_key", "pod_key_name", "heartbeat_body", "pod_status_from",
           "LIVE_INTERVALS"]

log = logging.getLogger(__name__)

LIVE_INTERVALS = 3  # a pod is live while its heartbeat is younger than this many intervals


# -- heartbeats -------------------------------------------------------------------------------


def pod_key_name(pod_id: str) -> str:
    """A pod id as one safe key segment (ids come from host names and env vars)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", pod_id).strip(".") or "_"
    return name[:200]


def heartbeat_key(prefix: str, pod_id: str) -> str:
    return f"{prefix.strip('/')}/pods/{pod_key_name(pod_id)}.json"


def _num(stats: Mapping[str, Any], *names: str) -> float | None:
    for name in names:
        value = stats.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def heartbeat_body(*, pod_id: str, stats: Mapping[str, Any], interval: float, state: str, started: float,
                   now: float, role: str = "watch", host: str = "", pid: int = 0) -> dict[str, Any]:
    """The heartbeat document (pure): known counters picked from ``stats`` under their usual names."""
    def count(*names: str) -> int | None:
        value = _num(stats, *names)
        return None if value is None else int(value)

    return {
        "format": 1, "pod_id": pod_id, "role": role, "state": state, "version": __version__, "host": host,
        "pid": pid, "started": round(started, 3), "written": round(now, 3), "heartbeat_seconds": interval,
        "pending": count("pending", "queued", "pending_count"),
        "uploaded": count("uploaded", "uploads", "done", "pushed"),
        "failed": count("failed", "errors", "failures"),
        "bytes": count("bytes", "bytes_uploaded", "uploaded_bytes"),
        "last_latency": _num(stats, "last_latency", "latency_last", "last_latency_seconds"),
        "p95_latency": _num(stats, "p95_latency", "latency_p95", "p95_latency_seconds"),
    }


class Heartbeat:
    """Writes this pod's heartbeat object every ``interval`` seconds from a daemon thread.

    Use as a context manager (or :meth:`start` / :meth:`stop`); the last beat
    says ``stopped``, so ``fleet status`` tells a pod that shut down from one
    that vanished. A failing write is logged and retried at the next beat: a
    heartbeat must never stop the work it reports on.

    Args:
        store: the bucket.
        pod_id: this pod.
        prefix: ``fleet.prefix``.
        interval: seconds between beats (``fleet.heartbeat_seconds``).
        stats: returns the counters to publish (a watcher's thread-safe ``stats()``).
        role: what this process is (``watch``, ``start``...).
    """

    def __init__(self, store: Store | Callable[[], Store], *, pod_id: str, prefix: str, interval: float,
                 stats: Callable[[], Mapping[str, Any]] = dict, role: str = "watch",
                 clock: Callable[[], float] = time.time) -> None:
        # A callable is called from the heartbeat thread: opening a store never delays the caller.
        self._store_factory = store if callable(store) and not isinstance(store, Store) else None
        self._store: Store | None = None if self._store_factory is not None else store  # type: ignore[assignment]
        self.pod_id = pod_id
        self.key = heartbeat_key(prefix, pod_id)
        self.interval = interval
        self.stats = stats
        self.role = role
        self.clock = clock
        self.started = clock()
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._host = socket.gethostname()

    def beat(self, state: str = "running") -> None:
        try:
            stats = self.stats() or {}
        except Exception as exc:  # noqa: BLE001 - a stats bug must not kill the heartbeat
            log.warning("heartbeat: stats() failed: %s", exc, extra={"event": "fleet.stats_failed"})
            stats = {}
        body = heartbeat_body(pod_id=self.pod_id, stats=stats, interval=self.interval, state=state,
                              started=self.started, now=self.clock(), role=self.role, host=self._host,
                              pid=os.getpid())
        try:
            if self._store is None:
                self._store = self._store_factory()  # type: ignore[misc]
            self._store.put_bytes(self.key, (json.dumps(body, sort_keys=True) + "\n").encode())
            self.beats += 1
        except StoreError as exc:
            log.warning("heartbeat %s not written: %s", self.key, exc,
                        extra={"event": "fleet.heartbeat_failed", "key": self.key})

    @classmethod
    def for_config(cls, config: Config, *, stats: Callable[[], Mapping[str, Any]] = dict,
                   role: str = "watch") -> "Heartbeat | None":
        """This pod's heartbeat with its own store connection, or ``None`` when ``fleet.heartbeat_seconds`` is 0."""
        if config.fleet.heartbeat_seconds <= 0:
            return None
        # Short timeouts: a heartbeat must never hold up a drain in a spot pod's 5 s.
        beat = cls(lambda: open_store(config.remote, state_dir=config.state_dir, max_pool_connections=2,
                                      max_attempts=2),
                   pod_id=config.pod_id, prefix=config.fleet.prefix, interval=config.fleet.heartbeat_seconds,
                   stats=stats, role=role)
        beat._own_store = True
        return beat

    _own_store = False

    def _run(self) -> None:
        self.beat()
        while not self._stop.wait(self.interval):
            self.beat()

    def start(self) -> "Heartbeat":
        """Start beating (the first beat is written from the thread, so a slow bucket never delays the caller)."""
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.pod_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, final_state: str = "stopped", timeout: float = 2.0) -> None:
        """Stop and write a last beat saying ``final_state`` (with the final counters).

        Waits at most ``timeout`` seconds for it (a pod being killed has better
        things to do); a beat not written in time is simply missing, and the
        pod shows as silent once its heartbeat ages.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        thread.join(timeout=timeout)
        last = threading.Thread(target=self._last_beat, args=(final_state,), name=f"heartbeat-last-{self.pod_id}",
                                daemon=True)
        last.start()
        last.join(timeout=max(0.1, deadline - time.monotonic()))

    def _last_beat(self, state: str) -> None:
        self.beat(state)
        if self._own_store and self._store is not None:
            self._store.close()

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@attrs.frozen
class PodStatus:
    """One pod as its heartbeat shows it."""

    pod_id: str
    state: str  # running / stopped (what the pod last said)
    live: bool  # heartbeat younger than LIVE_INTERVALS intervals, by the bucket's clock
    age_seconds: float  # since the last heartbeat, bucket clock
    version: str = ""
    host: str = ""
    role: str = ""
    heartbeat_seconds: float = 0.0
    pending: int | None = None
    uploaded: int | None = None
    failed: int | None = None
    bytes: int | None = None
    last_latency: float | None = None
    p95_latency: float | None = None
    key: str = ""

    @property
    def status(self) -> str:
        if self.state == "stopped":
            return "stopped"
        return "live" if self.live else "silent"


def pod_status_from(doc: Mapping[str, Any], *, key: str, last_modified: dt.datetime,
                    bucket_now: dt.datetime) -> PodStatus:
    """A :class:`PodStatus` from a heartbeat document (pure)."""
    age = max(0.0, (bucket_now - last_modified).total_seconds())
    interval = float(doc.get("heartbeat_seconds") or 30.0)
    state = str(doc.get("state") or "running")

    def opt_int(name: str) -> int | None:
        v = doc.get(name)
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    def opt_float(name: str) -> float | None:
        v = doc.get(name)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return PodStatus(
        pod_id=str(doc.get("pod_id") or key.rsplit("/", 1)[-1].removesuffix(".json")), state=state,
        live=state != "stopped" and age <= LIVE_INTERVALS * interval + CLOCK_GRACE, age_seconds=age,
        version=str(doc.get("version") or ""), host=str(doc.get("host") or ""), role=str(doc.get("role") or ""),
        heartbeat_seconds=interval, pending=opt_int("pending"), uploaded=opt_int("uploaded"),
        failed=opt_int("failed"), bytes=opt_int("bytes"), last_latency=opt_float("last_latency"),
        p95_latency=opt_float("p95_latency"), key=key)


