"""What the watcher tells about each pushed output: a record, listeners, and a webhook.

* :class:`PushedOutput` is the frozen record of one output in the bucket (key, size, md5,
  content type, latency, link).
* :class:`Notifier` hands records to listeners (``OutputWatcher(on_pushed=...)``) on its own
  thread, so a slow listener never slows an upload, and to the :class:`Webhook`.
* :class:`Webhook` POSTs them as JSON, batched (up to :data:`BATCH_MAX` per request), retried
  with backoff without limit while the watcher runs: at least once per output. An upload is
  never held back or lost because the webhook is down; what is still undelivered when the
  watcher stops is counted and said.

The webhook URL is treated as a secret (a Slack or Discord hook carries its token in the
path): it appears in no log line, only its host does. A payload carries keys, sizes, hashes
and links, never a credential; a presigned URL goes into it only when the user asked for them
(``SYNCBRIDGE_PRESIGN_SECONDS``).
"""

from __future__ import annotations

import collections
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs

from ..retry import backoff_delay

__all__ = ["PushedOutput", "Notifier", "Webhook", "BATCH_MAX"]

log = logging.getLogger(__name__)

BATCH_MAX = 100  # outputs per webhook POST
BATCH_LINGER = 0.05  # seconds a POST waits for more outputs after the first (a burst becomes one POST)
QUEUE_MAX = 100_000  # undelivered outputs kept in memory; the oldest are dropped (and counted) beyond
WEBHOOK_TIMEOUT = 10.0
WEBHOOK_BACKOFF_CAP = 10.0


@attrs.frozen
class PushedOutput:
    """One output that is now in the bucket."""

    path: str  # relative to the watched folder
    key: str
    size: int
    md5: str | None  # hex; None for a multipart object (its ETag is not an MD5)
    content_type: str
    latency: float  # seconds from the file's close (or discovery) to the object in the bucket
    pushed_at: float  # wall clock
    url: str | None = None  # public URL (SYNCBRIDGE_PUBLIC_URL), else None
    presigned_url: str | None = attrs.field(default=None, repr=False)  # a credential: never logged
    sha256: str | None = None  # hex, when the upload hashed the whole file (a growing file sent as written)

    def to_dict(self, *, with_presigned: bool = False) -> dict[str, Any]:
        data = attrs.asdict(self)
        presigned = data.pop("presigned_url")
        if with_presigned and presigned and not data["url"]:
            data["url"] = presigned
        data["latency"] = round(self.latency, 4)
        return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a POST is never replayed elsewhere
        return None


class Webhook:
    """POSTs pushed outputs to a URL from its own thread; at least once each while it runs."""

    def __init__(self, url: str, *, pod_id: str = "", timeout: float = WEBHOOK_TIMEOUT,
                 backoff_cap: float = WEBHOOK_BACKOFF_CAP, rand: Callable[[], float] = random.random) -> None:
        self._url = url
        self.host = urlsplit(url).hostname or "?"
        self._pod_id = pod_id
        self._timeout = timeout
        self._backoff_cap = backoff_cap
        self._rand = rand
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.delivered = 0
        self.failures = 0
        self.dropped = 0
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="syncbridge-webhook", daemon=True)
        self._thread.start()

    def submit(self, output: PushedOutput) -> None:
        with self._cond:
            if len(self._queue) >= QUEUE_MAX:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(output.to_dict(with_presigned=True))
            self._cond.notify()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._in_flight

    def _post(self, batch: list[dict[str, Any]]) -> str | None:
        """Send one batch; ``None`` when the receiver took it (2xx), else why not. Never raises."""
        try:
            return self._send(batch)
        except Exception as exc:  # noqa: BLE001 - an odd answer must not end the thread (at-least-once)
            return f"{type(exc).__name__}: {exc}"

    def _send(self, batch: list[dict[str, Any]]) -> str | None:
        # ASCII JSON: a file name that is not UTF-8 (a surrogate escape) cannot stop the encoding
        body = json.dumps({"event": "outputs.pushed", "pod_id": self._pod_id, "outputs": batch},
                          ensure_ascii=True).encode()
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "syncbridge-webhook"})
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read(65536)
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:  # refused, reset, timeout, DNS
            reason = getattr(exc, "reason", exc)
            return f"{type(reason).__name__}: {getattr(reason, 'strerror', None) or reason}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                # Gather a burst into one POST: a deadline fixed at the first output, never a debounce.
                deadline = time.monotonic() + BATCH_LINGER
                while len(self._queue) < BATCH_MAX and not self._closing and time.monotonic() < deadline:
                    self._cond.wait(timeout=max(0.0, deadline - time.monotonic()))
                batch = [self._queue.popleft() for _ in range(min(BATCH_MAX, len(self._queue)))]
                self._in_flight = len(batch)
            why = self._post(batch)
            with self._cond:
                self._in_flight = 0
                if why is None:
                    self.delivered += len(batch)
                    self._cond.notify_all()
                    if attempt:
                        log.info("webhook %s answers again; delivered %d outputs", self.host, len(batch),
                                 extra={"event": "webhook.back"})
                    attempt = 0
                    continue
                self._queue.extendleft(reversed(batch))  # in order, first in line again
                self.failures += 1
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("webhook %s did not take %d outputs (%s); retrying with backoff, uploads go on",
                                self.host, len(self._queue), why, extra={"event": "webhook.retry"})
                delay = backoff_delay(attempt, base=0.5, cap=self._backoff_cap, rand=self._rand)
                if self._deadline is not None:
                    delay = min(delay, max(0.0, self._deadline - time.monotonic()))
                    if delay <= 0:
                        return
                # The whole backoff: new outputs do not cut it short (a burst would retry per output);
                # close() does, to deliver what it can within its deadline.
                until = time.monotonic() + delay
                closing = self._closing
                while time.monotonic() < until and self._closing == closing:
                    self._cond.wait(timeout=until - time.monotonic())

    def close(self, timeout: float) -> int:
        """Deliver what is queued for up to ``timeout`` seconds; return how many outputs were not."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout=max(0.0, timeout) + 0.1)
        left = self.pending
        if left or self.dropped:
            log.warning("webhook %s: %d outputs not delivered before the stop%s", self.host, left + self.dropped,
                        f" ({self.dropped} dropped from a full queue)" if self.dropped else "",
                        extra={"event": "webhook.undelivered"})
        return left + self.dropped


class Notifier:
    """Calls listeners for each pushed output on its own thread, in order; feeds the webhook."""

    def __init__(self, listeners: list[Callable[[PushedOutput], Any]], webhook: Webhook | None) -> None:
        self._listeners = listeners
        self.webhook = webhook
        self._queue: collections.deque[PushedOutput | None] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if listeners:
            self._thread = threading.Thread(target=self._run, name="syncbridge-notify", daemon=True)
            self._thread.start()

    def __call__(self, output: PushedOutput) -> None:
        if self.webhook is not None:
            self.webhook.submit(output)
        if self._thread is not None:
            with self._cond:
                self._queue.append(output)
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                output = self._queue.popleft()
            if output is None:
                return
            for listener in self._listeners:
                try:
                    listener(output)
                except Exception:  # noqa: BLE001 - a listener's bug must not stop the others
                    log.exception("an on_pushed listener failed for %s", output.key,
                                  extra={"event": "watch.listener_failed", "key": output.key})

    def close(self, timeout: float) -> int:
        """Let listeners see what is queued and the webhook deliver, for up to ``timeout`` seconds in all.
        Returns how many outputs the webhook did not deliver."""
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            with self._cond:
                self._queue.append(None)
                self._cond.notify()
            self._thread.join(timeout=max(0.0, timeout))
        if self.webhook is not None:
            return self.webhook.close(max(0.0, deadline - time.monotonic()))
        return 0
