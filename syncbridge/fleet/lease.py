"""Leases in the bucket: mutual exclusion between pods with no coordinator.

A lease is one small JSON object (``<fleet.prefix>/leases/<kind>/<hash>``)
holding ``{owner, purpose, subject, acquired, renewed, ttl_seconds, token}``.
The only coordination is what the bucket offers (R2 is strongly consistent and
supports conditional writes):

* **acquire**: ``PutObject`` with ``If-None-Match: *`` (create only if absent);
* **renew**: ``PutObject`` with ``If-Match: <etag we wrote last>`` (compare and
  swap), every ``ttl/3``;
* **release**: compare-and-swap to a *released* record (``If-Match`` again), so
  a release can never remove a lease someone else took meanwhile; the next
  acquirer swaps over it at once. (A plain DELETE after a re-check has a window
  in which it would delete a fresh lease of another pod; R2's conditional
  DELETE is not something every S3 store offers.)
* **steal**: only once the lease has expired, again with ``If-Match`` on the
  expired object's etag, so of several pods racing to take it over exactly one
  wins.

Expiry is judged from the bucket's own clock: the lease object's
``Last-Modified`` against the bucket's current time, read from a tiny probe
object this pod writes (:class:`BucketClock`). Pods' local clocks are never
compared with each other, so a pod whose clock is ten minutes off neither
steals a live lease nor holds on to a dead one. The holder, for its part, gives
the lease up (and stops its work) when it has not managed to renew for
``ttl - grace`` seconds of its own monotonic clock: that is before anyone may
steal it, whatever the wall clocks say.

A store that accepts ``If-None-Match`` and ignores it (``rclone serve s3``)
cannot host a lease: :class:`Leases` detects that
(:meth:`~syncbridge.store.Store.conditional_writes`) and raises
:class:`LeaseUnsupportedError` rather than pretend.

The decision logic (:func:`~.rules.judge`, :func:`~.rules.renew_interval`,
:func:`~.rules.holder_must_give_up`, :func:`~.rules.poll_delay`) is pure and lives in
:mod:`.rules`; :class:`Leases` does the I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Mapping

import attrs

from ..errors import PreconditionFailedError, StoreError
from ..fmt import warn_once
from ..store import Store
from .rules import (CLOCK_GRACE, LeaseBusyError, LeaseError, LeaseLostError, LeaseRecord, LeaseUnsupportedError,
                    LeaseView, Verdict, holder_must_give_up, judge, lease_key, poll_delay, renew_interval)

__all__ = [
    "LeaseRecord", "LeaseView", "Verdict", "Lease", "HeldLease", "Leases", "BucketClock",
    "LeaseError", "LeaseBusyError", "LeaseLostError", "LeaseUnsupportedError",
    "judge", "renew_interval", "holder_must_give_up", "poll_delay", "lease_key", "leases_enabled",
    "CLOCK_GRACE",
]

log = logging.getLogger(__name__)


class BucketClock:
    """The bucket's current time, read from the Last-Modified of a probe object this pod writes.

    One put and one head every ``refresh`` seconds; in between, the reading is
    carried forward on the local monotonic clock (rates agree to parts per
    million; offsets between machines do not matter). The estimate errs late
    (Last-Modified is truncated to the second), which only makes a steal later.
    """

    def __init__(self, store: Store, key: str, *, refresh: float = 15.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.key = key
        self.refresh = refresh
        self.monotonic = monotonic
        self._reading: tuple[dt.datetime, float] | None = None
        self._lock = threading.Lock()

    def now(self, *, fresh: bool = False) -> dt.datetime:
        with self._lock:
            mono = self.monotonic()
            if fresh or self._reading is None or mono - self._reading[1] >= self.refresh:
                self.store.put_bytes(self.key, b"clock probe\n")
                info = self.store.head(self.key)
                if info is None:  # pragma: no cover - strongly consistent stores never do this
                    raise StoreError(f"clock probe {self.key!r} vanished right after it was written", key=self.key)
                self._reading = (info.last_modified, self.monotonic())
            stamp, at = self._reading
            return stamp + dt.timedelta(seconds=max(0.0, self.monotonic() - at))


@attrs.frozen
class Lease:
    """A lease we hold: the record we wrote and its etag (for the next compare-and-swap)."""

    key: str
    record: LeaseRecord
    etag: str
    sent_at: float  # our monotonic clock when the last successful write was sent
    stolen_from: str = ""
    created: bool = False  # no lease object was there: nobody has held this lease before us


def _not_found(exc: StoreError) -> bool:
    return exc.status == 404 or exc.code in ("NoSuchKey", "404", "NotFound")


class Leases:
    """Acquire, renew, release and take over leases in one bucket, as pod ``owner``.

    Args:
        store: the bucket.
        owner: this pod's id (written in the lease, shown to waiting pods).
        prefix: ``fleet.prefix``; the clock probe lives under it.
        clock: local wall clock, only for the informational timestamps in the record.
        monotonic: local monotonic clock, for the holder's own renew schedule.
        sleep: how to wait (tests may pass something faster).
        bucket_clock: how to read the bucket's time (default: a probe object per owner).
    """

    def __init__(self, store: Store, *, owner: str, prefix: str = ".syncbridge",
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, bucket_clock: BucketClock | None = None,
                 host: str | None = None) -> None:
        self.store = store
        self.owner = owner
        self.prefix = prefix.strip("/")
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.host = host if host is not None else socket.gethostname()
        # One probe object per pod (not per process or run), so they never pile up.
        probe = f"{self.prefix}/clock/{hashlib.sha256(owner.encode()).hexdigest()[:16]}"
        self.bucket_clock = bucket_clock or BucketClock(store, probe, monotonic=monotonic)

    # -- reading --------------------------------------------------------------------------

    def check_store(self) -> None:
        """Refuse a store that does not enforce conditional writes.

        Raises:
            LeaseUnsupportedError: naming the store.
        """
        if not self.store.conditional_writes(f"{self.prefix}/probe"):
            raise LeaseUnsupportedError(
                f"{self.store.description} does not enforce conditional writes (If-None-Match / If-Match): a lease "
                f"there would not keep two pods apart. Use a store that does (Cloudflare R2, AWS S3, MinIO), or "
                f"turn the lease off (bisync.lease = off) if only one pod uses this bucket.")

    def read(self, key: str) -> LeaseView | None:
        """The lease object at ``key`` as it is now, or ``None``."""
        try:
            data, info = self.store.get_bytes(key)
        except StoreError as exc:
            if _not_found(exc):
                return None
            raise
        try:
            record: LeaseRecord | None = LeaseRecord.from_json(data)
        except ValueError as exc:
            log.warning("lease.unreadable", extra={"event": "lease.unreadable", "key": key, "reason": str(exc)})
            record = None
        return LeaseView(key, record, info.etag, info.last_modified)

    def inspect(self, key: str, *, default_ttl: float) -> tuple[LeaseView | None, Verdict]:
        view = self.read(key)
        if view is None:
            return None, Verdict("absent")
        return view, judge(view, bucket_now=self.bucket_clock.now(), default_ttl=default_ttl)

    # -- writing --------------------------------------------------------------------------

    def _record(self, *, purpose: str, subject: str, ttl: float, token: str, acquired: float | None = None,
                released: bool = False, detail: Mapping[str, Any] | None = None) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(owner=self.owner, purpose=purpose, acquired=now if acquired is None else acquired,
                           renewed=now, ttl_seconds=ttl, token=token, subject=subject, host=self.host,
                           released=released, detail=dict(detail or {}))

    def try_acquire(self, key: str, *, purpose: str, ttl: float, subject: str = "") -> Lease | Verdict:
        """One attempt: the :class:`Lease` when we got it, else the :class:`Verdict` on the holder.

        Raises:
            LeaseUnsupportedError: the store ignores conditional writes.
        """
        self.check_store()
        record = self._record(purpose=purpose, subject=subject, ttl=ttl, token=uuid.uuid4().hex)
        sent = self.monotonic()
        try:
            info = self.store.put_bytes(key, record.to_json(), if_none_match=True)
        except PreconditionFailedError:
            pass
        else:
            log.info("lease.acquired", extra={"event": "lease.acquired", "key": key, "owner": self.owner,
                                              "purpose": purpose})
            return Lease(key, record, info.etag, sent, created=True)
        view, verdict = self.inspect(key, default_ttl=ttl)
        if view is None:
            # Released by deletion between our create and our read: next attempt creates it.
            return verdict
        if not verdict.takeable:
            return verdict
        sent = self.monotonic()
        try:
            info = self.store.put_bytes(key, record.to_json(), if_match=view.etag)
        except PreconditionFailedError:
            # Another pod took it over (or the holder renewed) between our read and our write.
            _, verdict = self.inspect(key, default_ttl=ttl)
            return verdict if verdict.state == "held" else Verdict("held", holder="?", expires_in=ttl)
        stolen = verdict.holder if verdict.state == "expired" else ""
        if stolen:
            log.warning("lease %s: took over from pod %s, whose lease expired (last renewed %.0fs ago)", key, stolen,
                        verdict.age, extra={"event": "lease.taken_over", "key": key, "owner": self.owner,
                                            "previous": stolen})
        else:
            log.info("lease.acquired", extra={"event": "lease.acquired", "key": key, "owner": self.owner,
                                              "purpose": purpose})
        return Lease(key, record, info.etag, sent, stolen_from=stolen)

    def acquire(self, key: str, *, purpose: str, ttl: float, subject: str = "", wait: bool = True,
                timeout: float | None = None, cancel: threading.Event | None = None,
                on_wait: Callable[[Verdict], None] | None = None) -> Lease:
        """Take the lease, waiting for it when ``wait`` (until ``timeout``, if given).

        Raises:
            LeaseBusyError: another pod holds it and we are not waiting (or the wait timed out).
            LeaseUnsupportedError: the store ignores conditional writes.
            CancelledError: ``cancel`` was set while waiting.
        """
        from ..errors import CancelledError

        started = self.monotonic()
        attempt = 0
        verdict: Verdict | None = None
        while True:
            if verdict is not None:
                # Look before writing again: a GET is cheaper than a failed conditional PUT
                # (R2 bills writes as class A operations), and twenty waiting pods add up.
                _, verdict = self.inspect(key, default_ttl=ttl)
            if verdict is None or verdict.takeable:
                got = self.try_acquire(key, purpose=purpose, ttl=ttl, subject=subject)
                if isinstance(got, Lease):
                    return got
                verdict = got
            waited = self.monotonic() - started
            if not wait or (timeout is not None and waited >= timeout):
                what = f" ({verdict.purpose})" if verdict.purpose else ""
                raise LeaseBusyError(
                    f"{subject or key}: pod {verdict.holder} holds the lease{what}; it may be taken over in "
                    f"{verdict.expires_in:.0f}s if not renewed" + (f" (waited {waited:.0f}s)" if wait else ""),
                    key=key, holder=verdict.holder, purpose=verdict.purpose, expires_in=verdict.expires_in)
            if attempt == 0 or on_wait is not None:
                if attempt == 0:
                    log.info("%s: waiting, %s", subject or key, verdict.describe(),
                             extra={"event": "lease.waiting", "key": key, "holder": verdict.holder})
                if on_wait is not None:
                    on_wait(verdict)
            delay = poll_delay(attempt, ttl=ttl)
            if verdict.state == "held":
                delay = min(delay, max(0.05, verdict.expires_in))
            if timeout is not None:
                delay = min(delay, max(0.05, timeout - waited))
            attempt += 1
            if cancel is not None:
                if cancel.wait(delay):
                    raise CancelledError(f"{subject or key}: cancelled while waiting for pod {verdict.holder}")
            else:
                self.sleep(delay)

    def renew(self, lease: Lease, *, detail: Mapping[str, Any] | None = None) -> Lease:
        """Compare-and-swap a fresh record over ours.

        Raises:
            LeaseLostError: the object is no longer the one we wrote.
            StoreError: the bucket could not be reached (retryable: try again).
        """
        old = lease.record
        record = self._record(purpose=old.purpose, subject=old.subject, ttl=old.ttl_seconds, token=old.token,
                              acquired=old.acquired, detail=detail if detail is not None else old.detail)
        sent = self.monotonic()
        try:
            info = self.store.put_bytes(lease.key, record.to_json(), if_match=lease.etag)
        except PreconditionFailedError as exc:
            holder = ""
            with contextlib.suppress(StoreError):
                view = self.read(lease.key)
                holder = view.record.owner if view and view.record else ""
            raise LeaseLostError(f"lease {lease.key}: lost" + (f" to pod {holder}" if holder else "") +
                                 " (it changed since we last renewed it)", key=lease.key) from exc
        return attrs.evolve(lease, record=record, etag=info.etag, sent_at=sent)

    def release(self, lease: Lease, *, outcome: str = "") -> bool:
        """Let go: swap a *released* record over ours. False when it was no longer ours.

        ``outcome`` (``done``, ``failed: ...``) is kept in the released record for
        the pods that were waiting.
        """
        record = self._record(purpose=lease.record.purpose, subject=lease.record.subject,
                              ttl=lease.record.ttl_seconds, token=lease.record.token,
                              acquired=lease.record.acquired, released=True,
                              detail={"outcome": outcome} if outcome else None)
        try:
            self.store.put_bytes(lease.key, record.to_json(), if_match=lease.etag)
        except PreconditionFailedError:
            log.warning("lease %s was no longer ours at release", lease.key,
                        extra={"event": "lease.release_lost", "key": lease.key})
            return False
        log.info("lease.released", extra={"event": "lease.released", "key": lease.key, "owner": self.owner})
        return True

    @contextlib.contextmanager
    def hold(self, key: str, *, purpose: str, ttl: float, subject: str = "", wait: bool = True,
             timeout: float | None = None, cancel: threading.Event | None = None,
             on_wait: Callable[[Verdict], None] | None = None) -> Iterator["HeldLease"]:
        """Acquire, keep renewing in a background thread, release on exit.

        The yielded :class:`HeldLease` has a ``cancel`` event that is set when
        the caller's ``cancel`` is set or the lease is lost: pass it to the work
        the lease protects so it stops. On exit, raises :class:`LeaseLostError`
        if the lease was lost while the block ran (unless the block raised).
        """
        lease = self.acquire(key, purpose=purpose, ttl=ttl, subject=subject, wait=wait, timeout=timeout,
                             cancel=cancel, on_wait=on_wait)
        held = HeldLease(self, lease, cancel=cancel)
        held.start()
        try:
            yield held
        except BaseException as exc:
            held.stop()
            if held.lost.is_set():
                # The work most likely stopped because we cancelled it: say why.
                raise LeaseLostError(f"{subject or key}: lease lost while working ({held.lost_reason})",
                                     key=key) from exc
            with contextlib.suppress(StoreError):
                self.release(held.lease)
            raise
        held.stop()
        if held.lost.is_set():
            raise LeaseLostError(f"{subject or key}: lease lost while working ({held.lost_reason})", key=key)
        with contextlib.suppress(StoreError):
            self.release(held.lease)


class HeldLease:
    """A lease kept alive by background threads until :meth:`stop`.

    A renewer compare-and-swaps a fresh record every ``ttl/3``; a watchdog
    declares the lease lost once no renewal has succeeded for
    ``ttl - grace`` seconds (:func:`holder_must_give_up`), even while a renew
    request is still hanging on a dead connection, so the work is stopped
    before any other pod may take the lease over.

    Attributes:
        lease: the latest :class:`Lease` (its etag changes at each renewal).
        lost: set when the lease was lost (taken over, or not renewed in time).
        cancel: set when ``lost`` is, or when the caller's cancel event is.
    """

    def __init__(self, leases: Leases, lease: Lease, *, cancel: threading.Event | None = None) -> None:
        self.leases = leases
        self.lease = lease
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self.lost_reason = ""
        self._outer = cancel
        self._stop = threading.Event()
        self._lose_lock = threading.Lock()
        name = f"lease-{lease.key[-8:]}"
        self._threads = [threading.Thread(target=self._renew_loop, name=f"{name}-renew", daemon=True),
                         threading.Thread(target=self._watch_loop, name=f"{name}-watchdog", daemon=True)]

    @property
    def stolen_from(self) -> str:
        return self.lease.stolen_from

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, *, timeout: float = 2.0) -> None:
        """Stop renewing (waiting at most ``timeout`` for a renew request in flight)."""
        self._stop.set()
        deadline = self.leases.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - self.leases.monotonic()))

    def check(self) -> None:
        """Raise :class:`LeaseLostError` when the lease is gone."""
        if self.lost.is_set():
            raise LeaseLostError(f"lease {self.lease.key} lost: {self.lost_reason}", key=self.lease.key)

    def _lose(self, reason: str) -> None:
        with self._lose_lock:
            if self.lost.is_set():
                return
            self.lost_reason = reason
            self.lost.set()
            self.cancel.set()
        log.error("lease %s lost: %s; stopping the work it protects", self.lease.key, reason,
                  extra={"event": "lease.lost", "key": self.lease.key, "reason": reason})

    def _watch_loop(self) -> None:
        ttl = self.lease.record.ttl_seconds
        while not self._stop.wait(0.2):
            if self._outer is not None and self._outer.is_set():
                self.cancel.set()
            since = self.leases.monotonic() - self.lease.sent_at
            if holder_must_give_up(since_renew_sent=since, ttl=ttl):
                self._lose(f"not renewed for {since:.0f}s (the bucket could not be reached in time)")
                return

    def _renew_loop(self) -> None:
        leases = self.leases
        interval = renew_interval(self.lease.record.ttl_seconds)
        due = leases.monotonic() + interval
        while not self._stop.is_set() and not self.lost.is_set():
            now = leases.monotonic()
            if now < due:
                self._stop.wait(min(0.5, due - now))
                continue
            try:
                renewed = leases.renew(self.lease)
            except LeaseLostError as exc:
                self._lose(str(exc))
                return
            except StoreError as exc:
                log.warning("lease %s: renew failed, retrying: %s", self.lease.key, exc,
                            extra={"event": "lease.renew_failed", "key": self.lease.key})
                due = leases.monotonic() + min(interval / 4, 2.0)
                continue
            if self.lost.is_set():
                return  # the watchdog gave up while this request hung: the work is stopped already
            self.lease = renewed
            due = leases.monotonic() + interval


def leases_enabled(store: Store, mode: str, *, prefix: str, what: str,
                   setting: str = "SYNCBRIDGE_BISYNC_LEASE", silence: str | None = None) -> bool:
    """Resolve a lease setting (``auto``/``on``/``off``) against the store.

    ``auto`` uses a lease when the store enforces conditional writes and
    otherwise warns loudly that nothing keeps pods apart.

    Raises:
        LeaseUnsupportedError: ``on`` with a store that ignores conditional writes.
    """
    if mode == "off":
        return False
    if store.conditional_writes(f"{prefix.strip('/')}/probe"):
        return True
    if mode == "on":
        raise LeaseUnsupportedError(
            f"{what}: a lease is required (lease = on), but {store.description} does not enforce conditional "
            f"writes (If-None-Match), so a lease there would not keep two pods apart. Use a store that does "
            f"(Cloudflare R2, AWS S3, MinIO) or set {setting} to auto or off.")
    warn_once(log, ("no lease", what, store.description),
              "%s: running WITHOUT a lease: %s does not enforce conditional writes, so nothing stops another pod "
              "from doing the same at the same time (%s to silence this, or use R2)",
              what, store.description, silence or f"set {setting}=off", event="lease.unavailable")
    return False
