"""Pure formatting shared by summaries, tables and progress lines, and the one "say it once" rule."""

from __future__ import annotations

import logging
from typing import Any, Hashable

__all__ = ["human_bytes", "warn_once"]

_SAID: set[Hashable] = set()


def warn_once(log: logging.Logger, key: Hashable, message: str, *args: Any, event: str) -> None:
    """Log a warning the first time ``key`` comes up in this process only: a CLI may load the
    configuration, probe a store or resolve a lease more than once per run."""
    if key in _SAID:
        return
    _SAID.add(key)
    log.warning(message, *args, extra={"event": event})


def human_bytes(n: float) -> str:
    """``512 B``, ``12.3 KB``, ``4.5 GB`` (decimal units, as transfer rates are quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
