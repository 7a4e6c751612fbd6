"""The status report: what ``syncbridge status --json`` prints and the status page serves as /status.json.

Built from the files the running processes publish under the state directory (the watcher's
``watch/status.json``, its journal, ``start/models.json`` and ``start/status.json``), so reading it
never disturbs the watcher or the pull, whichever process asks.
"""

from __future__ import annotations

import time
from typing import Any

from ..config import Config
from ..start.background import read_models_status
from ..start.live import read_start_status
from ..watch import journal_path, read_status
from ..watch.journal import read_summary

__all__ = ["status_report", "RUNNING_KEYS"]

# What a running watcher's report carries (from its status file).
RUNNING_KEYS = ("pid", "state", "directory", "prefix", "store", "pending", "in_flight", "oldest_pending_age",
                "uploaded", "skipped", "failed", "retries", "collisions", "bytes_uploaded", "last_latency",
                "p95_latency", "started_at", "updated_at", "watches", "unwatched", "catch_up_done", "last_error",
                "left_out", "left_out_examples", "recent", "waiting_to_finish", "p50_latency", "latency_counts",
                "latency_sum", "failures_total")
LAST_RUN_KEYS = ("directory", "prefix", "uploaded", "failed", "retries", "last_latency", "p95_latency", "started_at",
                 "updated_at", "left_out", "left_out_examples", "recent")


def status_report(config: Config, *, now: float | None = None) -> dict[str, Any]:
    """The watcher's state (running, or what its journal holds), the last start's steps, models and pulls."""
    status = read_status(config.state_dir)
    summary = read_summary(journal_path(config.state_dir))
    now = time.time() if now is None else now
    running = bool(status and status.get("running"))
    if running:
        assert status is not None
        report = {k: status.get(k) for k in RUNNING_KEYS}
        if report["oldest_pending_age"] is not None and status.get("updated_at"):
            report["oldest_pending_age"] += max(0.0, now - float(status["updated_at"]))
    else:
        oldest = summary.oldest_pending if summary else None
        report = {"pid": None, "state": "not running", "pending": summary.pending if summary else 0,
                  "failed": summary.failed if summary else 0,
                  "oldest_pending_age": None if oldest is None else max(0.0, now - oldest)}
        if status:  # the last run's figures
            report["last_run"] = {k: status.get(k) for k in LAST_RUN_KEYS}
    report["running"] = running
    models = read_models_status(config.state_dir)
    if models:
        report["models"] = models
    start = read_start_status(config.state_dir, now=now)
    if start:
        report["start"] = start
    report["journal"] = {"path": str(journal_path(config.state_dir)),
                         "pending": summary.pending if summary else 0, "failed": summary.failed if summary else 0,
                         "done": summary.done if summary else 0,
                         "failures": [{"path": p, "key": k, "error": e} for p, k, e in
                                      (summary.failures if summary else ())]}
    return report
