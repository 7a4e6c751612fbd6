"""One pod does the work, the others wait for it: the bisync lease of a shared prefix, and
single-flight model cache fills (:class:`CacheFill`, :class:`ModelFillCoordinator`).

When several pods miss the same model at once, one takes the fill lease
``<fleet.prefix>/leases/models/<hash of the cache key>`` and downloads it upstream; the others
wait for its cache entry and copy it from the bucket. A filler that dies lets go by lease expiry,
and a waiter takes over. Cache entries themselves are published and verified by one protocol,
:mod:`syncbridge.models.cacheentry`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, TypeVar

import attrs

from ..config import Config
from ..errors import StoreError
from ..store import Store, open_store
from .lease import HeldLease, Lease, Leases, leases_enabled
from .rules import Verdict, lease_key, poll_delay

__all__ = ["bisync_lease", "FillResult", "CacheFill", "ModelFillCoordinator"]

log = logging.getLogger(__name__)

T = TypeVar("T")


# -- bisync of a shared prefix ----------------------------------------------------------------------


@contextlib.contextmanager
def bisync_lease(config: Config, prefix: str, *, cancel: threading.Event | None = None,
                 store: Store | None = None) -> Iterator[HeldLease | None]:
    """Hold the bucket lease of ``prefix`` around a bisync run, as ``bisync.lease`` says.

    Yields the :class:`~syncbridge.fleet.lease.HeldLease` (pass its ``cancel`` to
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
        from ..errors import CancelledError

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
            # The previous filler may have published between our last look and our lease. A lease we
            # created had no previous holder (a released lease stays as a record), so there is none:
            # one round trip less per cold model. (A pod publishing without the lease, a capture say,
            # costs at worst one duplicate download; the conditional put keeps its entry.)
            value = None if lease.created else try_cache()
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
        size = getattr(model, "size", None)
        if size is not None and size < self.config.fleet.fill_lease_min_bytes:
            # The lease costs about four round trips per model (and a store probe per run); a model this
            # small costs less to download twice than that, should another pod want it at the same time.
            return go_upstream()
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


