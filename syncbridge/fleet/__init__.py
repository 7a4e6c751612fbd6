"""Many pods, one bucket: heartbeats, fleet status, leases and single-flight cache fills.

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

from .heartbeat import Heartbeat, PodStatus, heartbeat_body, heartbeat_key, pod_key_name, pod_status_from
from .singleflight import CacheFill, FillResult, ModelFillCoordinator, bisync_lease
from .status import LeaseStatus, describe_pods, fleet_status, lease_status, prune

__all__ = [
    "PodStatus", "LeaseStatus", "Heartbeat", "CacheFill", "ModelFillCoordinator", "FillResult",
    "fleet_status", "lease_status", "prune", "heartbeat_key", "pod_key_name",
    "heartbeat_body", "pod_status_from", "bisync_lease", "describe_pods",
]
