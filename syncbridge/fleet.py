"""Many pods, one bucket: heartbeats, fleet status, and single-flight cache fills.

Everything here goes through the bucket itself (no server of our own):

* **Heartbeats**: each watcher writes ``<fleet.prefix>/pods/<pod_id>.json``
  every ``fleet.heartbeat_seconds`` (pending count, uploaded, failed, last and
  p95 push latency, version). :func:`fleet_status` reads them back; a pod is
  *live* while its heartbeat is younger than three intervals, by the bucket's
  clock (its Last-Modified), so skewed pod clocks do not make pods look dead.
* **Single-flight fills** (:class:`CacheFill`): when several pods miss the same
  model at once, one takes the fill lease
  ``<fleet.prefix>/leases/models/<hash of the cache key>`` and downloads it
  upstream; the others wait for its cache entry and copy it from the bucket.
  A filler that dies lets go by lease expiry, and a waiter takes over. Cache
  entries themselves are published and verified by one protocol,
  :mod:`syncbridge.models.cacheentry`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import attrs

from . import __version__
from .config import Config
from .errors import StoreError
from .lease import (BucketClock, CLOCK_GRACE, HeldLease, Lease, Leases, Verdict, judge, lease_key, leases_enabled,
                    poll_delay)
from .store import Store, open_store

__all__ = [
    "PodStatus", "LeaseStatus", "Heartbeat", "CacheFill", "ModelFillCoordinator", "FillResult",
    "fleet_status", "lease_status", "prune", "heartbeat_key", "pod_key_name",
    "heartbeat_body", "pod_status_from", "bisync_lease",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
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


def _bucket_now(store: Store, prefix: str, owner: str) -> dt.datetime:
    """The bucket's clock; a store we may not write to falls back to this machine's clock."""
    key = f"{prefix.strip('/')}/clock/status-{pod_key_name(owner)}"
    try:
        return BucketClock(store, key).now()
    except StoreError as exc:
        log.warning("cannot read the bucket's clock (%s); ages use this machine's clock", exc,
                    extra={"event": "fleet.no_bucket_clock"})
        return dt.datetime.now(dt.timezone.utc)


def fleet_status(config: Config, *, store: Store | None = None) -> list[PodStatus]:
    """Every pod with a heartbeat in the bucket, live ones first, then by pod id."""
    own = store is None
    store = store or open_store(config.remote, state_dir=config.state_dir)
    try:
        prefix = f"{config.fleet.prefix.strip('/')}/pods/"
        infos = [i for i in store.list(prefix) if i.key.endswith(".json")]
        now = _bucket_now(store, config.fleet.prefix, config.pod_id)
        pods = []
        for info in infos:
            try:
                data, got = store.get_bytes(info.key)
                doc = json.loads(data.decode("utf-8"))
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
            except StoreError as exc:
                if exc.status == 404 or exc.code == "NoSuchKey":
                    continue  # deleted since the listing
                raise
            except (UnicodeDecodeError, ValueError) as exc:
                log.warning("heartbeat %s is unreadable: %s", info.key, exc, extra={"event": "fleet.bad_heartbeat"})
                continue
            pods.append(pod_status_from(doc, key=info.key, last_modified=got.last_modified, bucket_now=now))
        return sorted(pods, key=lambda p: (not p.live, p.pod_id))
    finally:
        if own:
            store.close()


def prune(config: Config, *, older_than: float, store: Store | None = None, dry_run: bool = False) -> list[str]:
    """Delete the heartbeats of pods not heard from for ``older_than`` seconds (by the bucket's clock).

    Leases are left alone: there is one per shared prefix or cached model, and a
    delete (unlike a compare-and-swap) could remove a lease another pod has just
    taken over. Returns the keys deleted (or that would be, with ``dry_run``).
    """
    own = store is None
    store = store or open_store(config.remote, state_dir=config.state_dir)
    try:
        now = _bucket_now(store, config.fleet.prefix, config.pod_id)
        gone = [info.key for info in store.list(f"{config.fleet.prefix.strip('/')}/pods/")
                if (now - info.last_modified).total_seconds() > older_than]
        if not dry_run:
            for key in gone:
                store.delete(key)
        return gone
    finally:
        if own:
            store.close()


@attrs.frozen
class LeaseStatus:
    key: str
    kind: str  # bisync, models, ...
    verdict: Verdict


def lease_status(config: Config, *, store: Store | None = None, include_free: bool = False) -> list[LeaseStatus]:
    """The leases in the bucket and who holds them (released ones only with ``include_free``)."""
    own = store is None
    store = store or open_store(config.remote, state_dir=config.state_dir)
    try:
        prefix = f"{config.fleet.prefix.strip('/')}/leases/"
        leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix,
                        bucket_clock=BucketClock(store, f"{config.fleet.prefix.strip('/')}/clock/status-"
                                                        f"{pod_key_name(config.pod_id)}"))
        out = []
        for info in store.list(prefix):
            view = leases.read(info.key)
            if view is None:
                continue
            verdict = judge(view, bucket_now=leases.bucket_clock.now(), default_ttl=config.fleet.lease_seconds)
            if verdict.state in ("released", "absent") and not include_free:
                continue
            kind = info.key[len(prefix):].split("/", 1)[0]
            out.append(LeaseStatus(info.key, kind, verdict))
        return out
    finally:
        if own:
            store.close()


# -- bisync of a shared prefix ----------------------------------------------------------------------


@contextlib.contextmanager
def bisync_lease(config: Config, prefix: str, *, cancel: threading.Event | None = None,
                 store: Store | None = None) -> Iterator[HeldLease | None]:
    """Hold the bucket lease of ``prefix`` around a bisync run, as ``bisync.lease`` says.

    Yields the :class:`~syncbridge.lease.HeldLease` (pass its ``cancel`` to
    rclone: it is set if the lease is lost), or ``None`` when no lease is used
    (``off``, or ``auto`` on a store without conditional writes, which is
    logged loudly). With ``bisync.on_busy = wait`` it waits while another pod
    holds the lease (taking it over once expired); with ``skip`` it raises.

    Raises:
        LeaseBusyError: another pod holds it and ``on_busy`` is ``skip``; the
            message names the pod.
        LeaseUnsupportedError: ``bisync.lease = on`` and the store ignores conditional writes.
        LeaseLostError: the lease was lost while bisync ran (it was cancelled).
    """
    mode = config.bisync.lease
    if mode == "off":
        yield None
        return
    own = store is None
    store = store or open_store(config.remote, state_dir=config.state_dir)
    subject = prefix.strip("/") or "/"
    try:
        if not leases_enabled(store, mode, prefix=config.fleet.prefix, what=f"bisync of {subject}"):
            yield None
            return
        leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix)
        key = lease_key(config.fleet.prefix, "bisync", subject)
        with leases.hold(key, purpose=f"bisync {subject}", ttl=config.fleet.lease_seconds, subject=subject,
                         wait=config.bisync.on_busy == "wait", cancel=cancel) as held:
            if held.stolen_from:
                log.warning("bisync of %s: took over the lease of pod %s, which stopped renewing it", subject,
                            held.stolen_from, extra={"event": "bisync.lease_takeover", "previous": held.stolen_from})
            yield held
    finally:
        if own:
            store.close()


@attrs.frozen
class FillResult:
    """How one pod got a cache entry.

    ``how``: ``filled`` (it held the fill lease and went upstream), ``cached``
    (it copied the entry another pod published), ``alone`` (the filler it
    waited for failed, so it went upstream without waiting any longer).
    """

    key: str
    how: str
    value: Any
    waited_seconds: float = 0.0
    took_over_from: str = ""


class CacheFill:
    """Single-flight of cache fills across the fleet.

    ``run(key, fill=..., try_cache=...)``: ``try_cache()`` returns the value
    when the entry is published (copying it), else ``None``. When it is not,
    one pod takes the fill lease and calls ``fill(held)`` (download upstream,
    verify, publish with :func:`syncbridge.models.cacheentry.publish`) while the lease is renewed in
    the background; the others keep calling ``try_cache`` (and looking at the
    lease, in case the filler died and it expired) until they get the entry
    or the lease.

    Args:
        store: the bucket (must enforce conditional writes: see :class:`Leases`).
        leases: this pod's :class:`Leases`.
        prefix: ``fleet.prefix``.
        ttl: ``fleet.lease_seconds``.
        max_poll: longest pause between two looks at a busy entry.
    """

    def __init__(self, store: Store, *, leases: Leases, prefix: str, ttl: float, max_poll: float = 1.0) -> None:
        self.store = store
        self.leases = leases
        self.prefix = prefix
        self.ttl = ttl
        self.max_poll = max_poll

    @classmethod
    def for_config(cls, config: Config, store: Store) -> "CacheFill":
        leases = Leases(store, owner=config.pod_id, prefix=config.fleet.prefix)
        return cls(store, leases=leases, prefix=config.fleet.prefix, ttl=config.fleet.lease_seconds)

    def lease_key(self, key: str) -> str:
        return lease_key(self.prefix, "models", key)

    def run(self, key: str, *, fill: Callable[[HeldLease | None], T], try_cache: Callable[[], T | None],
            cancel: threading.Event | None = None,
            on_wait: Callable[[Verdict], None] | None = None) -> FillResult:
        """Get cache entry ``key`` once for the whole fleet (see the class doc).

        When the filler we were waiting for gives up (its fill failed: it says so
        when it releases the lease), the waiting pods stop queueing behind each
        other and each tries upstream itself (``fill(None)``, how = ``alone``):
        a dead upstream then costs every pod one failure, not one failure per
        pod in turn.

        Raises:
            LeaseUnsupportedError: the store ignores conditional writes (callers
                then fill without coordination, as a single pod would).
            CancelledError: ``cancel`` was set while waiting.
        """
        from .errors import CancelledError

        mono = self.leases.monotonic
        started = mono()
        attempt = 0
        said = False
        lkey = self.lease_key(key)
        verdict: Verdict | None = None
        while True:
            if verdict is not None:
                # Waiting: look at the lease (a GET) and nothing else while it is held; the filler
                # publishes the entry before it releases, so the entry is worth a look only then.
                _, seen = self.leases.inspect(lkey, default_ttl=self.ttl)
                if seen.state == "released" and seen.outcome.startswith("failed"):
                    log.warning("%s: pod %s could not fill it (%s); trying upstream from here", key, seen.holder,
                                seen.outcome, extra={"event": "fleet.fill_failed_elsewhere", "key": key,
                                                     "holder": seen.holder})
                    return FillResult(key, "alone", fill(None), waited_seconds=mono() - started)
                verdict = seen
            if verdict is None or verdict.takeable:
                value = try_cache()
                if value is not None:
                    return FillResult(key, "cached", value, waited_seconds=mono() - started)
                got = self.leases.try_acquire(lkey, purpose=f"fill {key}", ttl=self.ttl, subject=key)
                if isinstance(got, Lease):
                    return self._fill(key, got, fill=fill, try_cache=try_cache, cancel=cancel,
                                      waited=mono() - started)
                verdict = got
            if not said:
                log.info("%s: pod %s is filling the cache; waiting for its entry", key, verdict.holder,
                         extra={"event": "fleet.fill_wait", "key": key, "holder": verdict.holder})
                said = True
            if on_wait is not None:
                on_wait(verdict)
            delay = min(self.max_poll, poll_delay(attempt, ttl=self.ttl))
            if verdict.state == "held":
                delay = min(delay, max(0.05, verdict.expires_in))
            attempt += 1
            if cancel is not None:
                if cancel.wait(delay):
                    raise CancelledError(f"{key}: cancelled while waiting for pod {verdict.holder} to fill it")
            else:
                self.leases.sleep(delay)

    def _fill(self, key: str, lease: Lease, *, fill: Callable[[HeldLease | None], T],
              try_cache: Callable[[], T | None], cancel: threading.Event | None, waited: float) -> FillResult:
        held = HeldLease(self.leases, lease, cancel=cancel)
        held.start()
        outcome = "failed: interrupted"
        try:
            # The previous filler may have published between our last look and our lease.
            value = try_cache()
            if value is not None:
                outcome = "done"
                return FillResult(key, "cached", value, waited_seconds=waited)
            if lease.stolen_from:
                log.warning("%s: pod %s stopped filling it (its lease expired); filling it here", key,
                            lease.stolen_from, extra={"event": "fleet.fill_takeover", "key": key,
                                                      "previous": lease.stolen_from})
            try:
                value = fill(held)
            except Exception as exc:
                outcome = f"failed: {type(exc).__name__}: {exc}"[:300]
                raise
            outcome = "done" if value is not None else "failed: no source could provide it"
            # A lease lost during a fill that nevertheless finished costs nothing but a duplicate
            # download elsewhere (the conditional put keeps the entry intact): keep the result.
            return FillResult(key, "filled", value, waited_seconds=waited, took_over_from=lease.stolen_from)
        finally:
            held.stop()
            if not held.lost.is_set():
                with contextlib.suppress(StoreError):
                    self.leases.release(held.lease, outcome=outcome)


class ModelFillCoordinator:
    """The fleet's answer to :class:`syncbridge.models.FillCoordinator`: one pod fills, the rest copy.

    ``pull_models(config, fill_coordinator=ModelFillCoordinator(config))``: when
    a model with ``write_back`` misses the cache, :meth:`fill` runs the
    models code's ``go_upstream`` on exactly one pod of the fleet (the holder
    of the model's fill lease); the others call ``try_cache`` until the entry
    appears. On a store without conditional writes it warns once and lets
    every pod go upstream, as a lone pod would.
    """

    def __init__(self, config: Config, *, store: Store | Callable[[], Store] | None = None,
                 cancel: threading.Event | None = None, max_poll: float = 1.0) -> None:
        self.config = config
        self.cancel = cancel
        self.max_poll = max_poll
        # A callable is called on the first miss only: a warm start opens no store.
        self._store_factory = store if callable(store) and not isinstance(store, Store) else None
        self._store = None if self._store_factory is not None else store
        self._own_store = store is None
        self._fill: CacheFill | None = None
        self._enabled: bool | None = None
        self._lock = threading.Lock()
        self.results: list[FillResult] = []

    def _setup(self) -> CacheFill | None:
        with self._lock:
            if self._enabled is None:
                if self._store is None and self._store_factory is not None:
                    self._store = self._store_factory()
                if self._store is None:
                    self._store = open_store(self.config.remote, state_dir=self.config.state_dir)
                try:
                    self._enabled = leases_enabled(self._store, "auto", prefix=self.config.fleet.prefix,
                                                   what="model cache fill",
                                                   silence="set write_back = false in the manifest")
                except StoreError as exc:  # a read-only token, say: the models still come, from upstream
                    log.warning("model cache fill: no lease (%s); this pod goes upstream on its own", exc,
                                extra={"event": "fleet.fill_no_lease"})
                    self._enabled = False
                if self._enabled:
                    self._fill = CacheFill(self._store, leases=Leases(self._store, owner=self.config.pod_id,
                                                                      prefix=self.config.fleet.prefix),
                                           prefix=self.config.fleet.prefix, ttl=self.config.fleet.lease_seconds,
                                           max_poll=self.max_poll)
            return self._fill

    def fill(self, model: Any, *, cache_key: str, go_upstream: Callable[[], Any],
             try_cache: Callable[[], Any]) -> Any:
        coordinated = self._setup()
        if coordinated is None:
            return go_upstream()
        went = []

        def upstream(held: Any) -> Any:
            went.append(True)
            return go_upstream()

        try:
            result = coordinated.run(cache_key, fill=upstream, try_cache=try_cache, cancel=self.cancel)
        except StoreError as exc:
            if went:
                raise
            # The lease could not be read or written: fetching the model matters more than sharing the work.
            log.warning("model cache fill of %s: the lease failed (%s); going upstream without it", cache_key, exc,
                        extra={"event": "fleet.fill_no_lease", "key": cache_key})
            return go_upstream()
        with self._lock:
            self.results.append(result)
        return result.value

    def close(self) -> None:
        if self._own_store and self._store is not None:
            self._store.close()
            self._store = None


def describe_pods(pods: Iterable[PodStatus]) -> list[str]:
    """Table lines for ``syncbridge fleet status``."""
    def f(v: float | None, unit: str = "s") -> str:
        return "-" if v is None else f"{v:.2f}{unit}"

    def i(v: int | None) -> str:
        return "-" if v is None else str(v)

    rows = [("pod", "status", "last beat", "pending", "uploaded", "failed", "last", "p95", "version", "host")]
    for p in pods:
        rows.append((p.pod_id, p.status, f"{p.age_seconds:.0f}s ago", i(p.pending), i(p.uploaded), i(p.failed),
                     f(p.last_latency), f(p.p95_latency), p.version, p.host))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
