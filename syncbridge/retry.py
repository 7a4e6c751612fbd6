"""When to try again, and how long to wait first: the one table and the one backoff.

Every "is this worth another try?" in syncbridge is answered here, so the store, the cache source and
the HTTP sources cannot drift apart again (they used to disagree on 408 and on how often to retry):

* :func:`retryable_status`: an HTTP status. 408 (Request Timeout), 429 (Too Many Requests) and every
  5xx are worth another try; everything else (4xx: refused, missing, wrong) is not. 408 is
  retryable everywhere: the server gave up waiting for our request, which a new request cures
  (S3 says the same with its ``RequestTimeout`` code behind a 400).
* :func:`retryable_code`: an S3 error code (``SlowDown``...), a status as a string (moto and R2 put
  ``"503"`` in the code), or the name of a transport exception (``ReadTimeoutError``...).
* :func:`unreachable`: whether an error says the other end did not answer at all (a timeout, a
  refused or lost connection), as opposed to answering with an error.
* :func:`retry_by_hand`: whether *our* loop may try again after a client that retries requests on
  its own (botocore, ``total_max_attempts``) gave up. Only a body cut short qualifies (broken off,
  or stalled past the read timeout while it was read): botocore retried the request, but it cannot
  see a body that breaks after the response began. A hand loop
  around any other failure would multiply the client's attempts (3 x 3 back-to-back requests).
* :func:`backoff_delay` and :func:`pause`: exponential backoff with "equal jitter" between two tries
  of our own; the random source is passed in, so tests are deterministic.

Pure: no clocks of its own beyond the ``sleep`` the caller may pass, no threads, no I/O.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Callable

__all__ = [
    "ATTEMPTS",
    "RETRYABLE_CODES",
    "UNREACHABLE_CODES",
    "BODY_CODES",
    "retryable_status",
    "retryable_code",
    "retryable",
    "unreachable",
    "retry_by_hand",
    "backoff_delay",
    "pause",
]

# How many tries one operation gets in all, whoever makes them (botocore's total_max_attempts, our
# own loops around what botocore cannot retry, a resumed HTTP download).
ATTEMPTS = 3

# S3 error codes that mean "busy or briefly broken: ask again" (and statuses some stores put in the code).
RETRYABLE_CODES = frozenset({
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "TooManyRequests", "ConditionalRequestConflict", "OperationAborted", "RequestLimitExceeded",
    "503", "500", "502", "504", "429", "408",
})

# Transport failures (botocore's exception names, or Python's): the other end did not answer.
UNREACHABLE_CODES = frozenset({
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ProxyConnectionError", "ConnectionError", "TimeoutError", "timeout", "ConnectionRefusedError",
    "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "RemoteDisconnected",
})

# A response began and its body was cut short (a reset mid-body, fewer bytes than announced).
BODY_CODES = frozenset({"ShortRead", "ResponseStreamingError", "IncompleteReadError", "IncompleteRead",
                        "ProtocolError"})

def retryable_status(status: int | None) -> bool:
    """Whether an HTTP status is worth another request: 408, 429 and every 5xx. ``None`` (no answer) is
    not a status: see :func:`unreachable`."""
    if status is None:
        return False
    return status in (408, 429) or status >= 500


def retryable_code(code: str) -> bool:
    """Whether an error code (S3's, a status as text, or a transport exception's name) is worth another try."""
    if code in RETRYABLE_CODES or code in UNREACHABLE_CODES or code in BODY_CODES:
        return True
    return code.isdigit() and retryable_status(int(code))


def retryable(*, code: str = "", status: int | None = None) -> bool:
    """The table in one call: the code or the status says "try again"."""
    return retryable_code(code) or retryable_status(status)


def unreachable(*, code: str = "", status: int | None = None) -> bool:
    """Whether the error says nobody answered (no status, a transport failure), not that somebody refused."""
    return status is None and code in UNREACHABLE_CODES


def retry_by_hand(*, code: str = "", status: int | None = None, mid_body: bool = False) -> bool:
    """Whether our own loop may retry after a client that already retried the request itself (botocore).

    Only a body cut short: the request was retried by the client, the body was not. That is a
    body-error code, or (``mid_body``) a stall or a lost connection while the body was being read:
    botocore raises its ``ReadTimeoutError`` there too, and never retries it.
    """
    return code in BODY_CODES or (mid_body and code in UNREACHABLE_CODES)


def backoff_delay(attempt: int, *, base: float = 0.2, cap: float = 5.0, rand: Callable[[], float]) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential, capped, with "equal jitter".

    Half of the exponential step is fixed and half is random, so retries from
    many files spread out but never collapse to zero.

    Args:
        attempt: how many attempts have failed so far (>= 1).
        base: the first step.
        cap: the largest step.
        rand: a source of floats in ``[0, 1)`` (``random.random`` in production).
    """
    step = min(cap, base * math.pow(2, max(0, attempt - 1)))
    return step / 2 + rand() * step / 2


def pause(attempt: int, *, cancel: Any = None, base: float = 0.2, cap: float = 5.0,
          rand: Callable[[], float] = random.random, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Wait :func:`backoff_delay` before retry number ``attempt``; False when ``cancel`` (an object with
    ``wait(seconds) -> bool``, such as a ``threading.Event``) was set meanwhile."""
    delay = backoff_delay(attempt, base=base, cap=cap, rand=rand)
    if cancel is not None:
        return not cancel.wait(delay)
    sleep(delay)
    return True
