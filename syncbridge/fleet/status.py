"""What the bucket says of the fleet: its pods (heartbeats) and its leases; pruning old heartbeats."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Iterable

import attrs

from ..config import Config
from ..errors import StoreError
from ..store import Store, open_store
from .lease import BucketClock, Leases
from .rules import Verdict, judge
from .heartbeat import PodStatus, pod_key_name, pod_status_from

__all__ = ["fleet_status", "prune", "LeaseStatus", "lease_status", "describe_pods"]

log = logging.getLogger(__name__)


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
