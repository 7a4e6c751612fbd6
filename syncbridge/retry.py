"""When to try again, and how long to wait first.

* :func:`backoff_delay`: exponential backoff with "equal jitter"; the random source is
  passed in, so tests are deterministic.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["backoff_delay"]


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
