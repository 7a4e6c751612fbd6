"""The lease's record and the pure decisions about it: when it is live, when to renew, when to give up.

Times are passed in (the bucket's clock as the lease objects show it, this pod's monotonic clock),
so every rule is tested without a bucket or a sleep. :mod:`.lease` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from typing import Any, Callable, Mapping

import attrs

from ..errors import SyncBridgeError

__all__ = [
    "LeaseRecord", "LeaseView", "Verdict", "LeaseError", "LeaseBusyError", "LeaseLostError", "LeaseUnsupportedError",
    "judge", "renew_interval", "holder_must_give_up", "poll_delay", "lease_key", "CLOCK_GRACE", "FORMAT",
]

FORMAT = 1
# S3 Last-Modified has one-second resolution and the probe that reads the bucket's
# clock takes a round trip: two seconds covers both, on top of the lease's ttl.
CLOCK_GRACE = 2.0


# -- errors ----------------------------------------------------------------------------


class LeaseError(SyncBridgeError):
    """Base of the lease errors."""


class LeaseBusyError(LeaseError, BlockingIOError):
    """Another pod holds the lease (and it has not expired).

    Attributes:
        key: the lease object's key.
        holder: the pod id that holds it (``"?"`` when its record is unreadable).
        purpose: what the holder said it is doing.
        expires_in: seconds (bucket clock) until it may be taken over if not renewed.
    """

    def __init__(self, message: str, *, key: str, holder: str, purpose: str = "", expires_in: float = 0.0) -> None:
        self.key = key
        self.holder = holder
        self.purpose = purpose
        self.expires_in = expires_in
        super().__init__(message)


class LeaseLostError(LeaseError, RuntimeError):
    """We held a lease and no longer do (another pod took it over, or we could not renew in time)."""

    def __init__(self, message: str, *, key: str) -> None:
        self.key = key
        super().__init__(message)


class LeaseUnsupportedError(LeaseError, NotImplementedError):
    """The store does not enforce conditional writes, so a lease there would exclude nobody."""

    exit_code = 2


# -- the record and the pure decisions ------------------------------------------------------


@attrs.frozen
class LeaseRecord:
    """The JSON body of a lease object.

    ``acquired`` and ``renewed`` are the holder's local wall clock, for people
    reading the object; expiry is never judged from them (see :func:`judge`).
    """

    owner: str
    purpose: str
    acquired: float
    renewed: float
    ttl_seconds: float
    token: str
    subject: str = ""
    host: str = ""
    released: bool = False
    detail: Mapping[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> bytes:
        doc = {"format": FORMAT, "owner": self.owner, "purpose": self.purpose, "subject": self.subject,
               "acquired": round(self.acquired, 3), "renewed": round(self.renewed, 3),
               "ttl_seconds": self.ttl_seconds, "token": self.token, "host": self.host, "released": self.released}
        if self.detail:
            doc["detail"] = dict(self.detail)
        return (json.dumps(doc, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> "LeaseRecord":
        """Parse a lease body.

        Raises:
            ValueError: not a lease record (malformed JSON, missing or mistyped fields).
        """
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        try:
            ttl = float(doc["ttl_seconds"])
            if not ttl > 0:
                raise ValueError("ttl_seconds must be positive")
            detail = doc.get("detail") or {}
            return cls(owner=str(doc["owner"]), purpose=str(doc.get("purpose", "")),
                       acquired=float(doc.get("acquired", 0)), renewed=float(doc.get("renewed", 0)),
                       ttl_seconds=ttl, token=str(doc.get("token", "")), subject=str(doc.get("subject", "")),
                       host=str(doc.get("host", "")), released=bool(doc.get("released", False)),
                       detail=detail if isinstance(detail, dict) else {})
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a lease record: {exc}") from exc


@attrs.frozen
class LeaseView:
    """A lease object as read from the bucket.

    ``record`` is ``None`` when the body is not a valid lease (then it expires
    ``default ttl`` after its ``last_modified``).
    """

    key: str
    record: LeaseRecord | None
    etag: str
    last_modified: dt.datetime


@attrs.frozen
class Verdict:
    """What :func:`judge` decided about a lease object.

    ``state`` is one of ``absent`` (no object: create it), ``released`` (the
    holder let go: take it over now), ``expired`` (not renewed in time: take it
    over), ``held`` (someone holds it: wait or give up).
    """

    state: str
    holder: str = ""
    purpose: str = ""
    subject: str = ""
    age: float = 0.0  # bucket seconds since the object was last written
    expires_in: float = 0.0  # bucket seconds until it may be taken over (0 unless held)
    outcome: str = ""  # released: what the holder said of its work (``done``, ``failed: ...``)

    @property
    def takeable(self) -> bool:
        return self.state != "held"

    def describe(self) -> str:
        if self.state == "held":
            what = f" ({self.purpose})" if self.purpose else ""
            return (f"held by pod {self.holder}{what}, renewed {self.age:.0f}s ago, "
                    f"may be taken over in {self.expires_in:.0f}s if not renewed")
        if self.state == "expired":
            return f"expired (pod {self.holder} last renewed it {self.age:.0f}s ago)"
        return self.state


def judge(view: LeaseView | None, *, bucket_now: dt.datetime, default_ttl: float,
          grace: float = CLOCK_GRACE) -> Verdict:
    """Decide whether a lease object may be taken, from the bucket's clock only.

    Args:
        view: the lease object as read (``None``: there is none).
        bucket_now: the bucket's current time (see :class:`BucketClock`).
        default_ttl: lifetime assumed for an unreadable object.
        grace: slack for Last-Modified's one-second resolution and the clock probe.
    """
    if view is None:
        return Verdict("absent")
    age = (bucket_now - view.last_modified).total_seconds()
    record = view.record
    if record is None:
        ttl, holder, purpose, subject = default_ttl, "?", "", ""
    else:
        if record.released:
            return Verdict("released", holder=record.owner, purpose=record.purpose, subject=record.subject,
                           age=age, outcome=str(record.detail.get("outcome", "")))
        ttl, holder, purpose, subject = record.ttl_seconds, record.owner, record.purpose, record.subject
    left = ttl + grace - age
    if left <= 0:
        return Verdict("expired", holder=holder, purpose=purpose, subject=subject, age=age)
    return Verdict("held", holder=holder, purpose=purpose, subject=subject, age=age, expires_in=left)


def renew_interval(ttl: float) -> float:
    """How often a holder renews: three chances before the lease could expire."""
    return max(0.2, ttl / 3.0)


def holder_must_give_up(*, since_renew_sent: float, ttl: float, grace: float = CLOCK_GRACE) -> bool:
    """Whether a holder must consider its lease lost.

    ``since_renew_sent`` is measured on the holder's monotonic clock from the
    moment it *sent* its last successful write; the bucket stamped that write
    later, so others cannot steal before ``ttl + grace`` from here. Giving up at
    ``ttl - grace`` leaves a margin on both sides.
    """
    return since_renew_sent >= max(ttl - grace, ttl / 2)


def poll_delay(attempt: int, *, ttl: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait before looking at a busy lease again: grows to ``ttl/4``, with jitter.

    Jitter keeps twenty waiting pods from probing the bucket in lock step.
    """
    base = min(max(0.25, ttl / 4.0), 0.25 * (2 ** min(attempt, 6)))
    return max(0.05, base * (0.75 + 0.5 * rng()))


def lease_key(prefix: str, kind: str, subject: str) -> str:
    """The key of the lease guarding ``subject`` (a prefix, a cache key...): a hash, so any subject fits."""
    digest = hashlib.sha256(subject.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f"{prefix.strip('/')}/leases/{kind}/{digest}"
