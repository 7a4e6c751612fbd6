"""The status page ``syncbridge start`` serves (SYNCBRIDGE_STATUS_PORT): /, /status.json, /metrics, /thumb.

:mod:`.report` builds what ``status --json`` prints (the page serves the same); :mod:`.page` makes it safe to
show and writes the Prometheus text; :mod:`.html` is the page; :mod:`.server` serves them from its own thread.
"""

from __future__ import annotations

from .report import status_report
from .server import StatusServer, resolve_bind

__all__ = ["StatusServer", "resolve_bind", "status_report"]
