"""CLI: ``syncbridge watch`` (real-time output push) and ``syncbridge status``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from typing import Any

from .common import add_common
from ..watch import run_watch


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser(
        "watch", help="push every finished file in a folder to the bucket as it appears",
        description="Watch DIR (default: the configured output folder, COMFYUI_OUTPUT_DIR) with inotify and push "
                    "every finished file (closed after writing, or renamed into place; a file found by a scan once "
                    "no process writes it, or it has been quiet) to <bucket>/<prefix>/<path below DIR> a moment "
                    "later, with the Content-Type rclone gives its name. Every file is pushed except temp/, hidden "
                    "names and partial downloads; SYNCBRIDGE_WATCH_INCLUDE narrows it, and what the filters leave "
                    "out is counted in `syncbridge status`. The bucket is listed once at start: a wrong key or a "
                    "missing bucket stops it, naming the setting. Files already there at start that are not in the bucket (or "
                    "changed) are pushed first. An object already in the bucket with other content that this "
                    "watcher did not put there is never overwritten: the file goes to a sibling key "
                    "(name.~<hash>.ext). State is journalled under <state_dir>/watch/, so after a crash or restart "
                    "whatever was pending is pushed and nothing unchanged is uploaded twice. On SIGTERM or SIGINT "
                    "it stops accepting, pushes what is pending for up to watch.drain_seconds (default 4) and exits "
                    "0 if everything was pushed, 1 if some files are left in the journal for the next start.",
        epilog="Settings: SYNCBRIDGE_WATCH_PREFIX, SYNCBRIDGE_WATCH_INCLUDE/EXCLUDE, SYNCBRIDGE_WATCH_CONCURRENCY, "
               "SYNCBRIDGE_DRAIN_SECONDS, SYNCBRIDGE_RESCAN_SECONDS, SYNCBRIDGE_BATCH_DELAY, "
               "SYNCBRIDGE_WATCH_CONDITIONAL, SYNCBRIDGE_WATCH_QUIET_SECONDS, SYNCBRIDGE_WATCH_CACHE_CONTROL, "
               "SYNCBRIDGE_PUBLIC_URL, SYNCBRIDGE_WEBHOOK_URL, SYNCBRIDGE_PRESIGN_SECONDS (see `syncbridge config "
               "--reference`).")
    p.add_argument("dir", metavar="DIR", nargs="?", help="folder to watch (default: watch.dir)")
    p.add_argument("--prefix", metavar="PREFIX",
                   help="key prefix (default: watch.prefix, 'outputs'; may contain {pod_id} and {date})")
    p.add_argument("--drain-seconds", type=float, metavar="S",
                   help="on SIGTERM/SIGINT, push pending files for up to S seconds (default: watch.drain_seconds)")
    add_common(p)
    p.set_defaults(func=_watch)

    p = sub.add_parser(
        "status", help="show the output watcher's state: pending, oldest pending, uploads, failures, latency",
        description="Show the running watcher's state as it publishes it (<state_dir>/watch/status.json, about "
                    "once a second; reading it does not disturb the watcher): files pending and the oldest pending "
                    "age, uploads and failures since start, last and p95 push latency. With no watcher running, "
                    "shows what its journal holds (files pending or failed, pushed at the next start).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--fleet", action="store_true",
                   help="instead, every pod seen in the bucket (heartbeats) and the leases held: "
                        "the same as `syncbridge fleet status`")
    add_common(p)
    p.set_defaults(func=_status)


def _watch(args: argparse.Namespace, ctx) -> int:
    overrides: dict[str, Any] = {}
    if args.drain_seconds is not None:
        overrides["watch.drain_seconds"] = args.drain_seconds
    config = ctx.config(overrides or None)
    ctx.say(f"using {config.remote.describe()}")
    _limit_malloc_arenas()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_watch(config, directory=args.dir, stop_event=stop, prefix=args.prefix)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of one per thread: the daemon's upload threads otherwise
    each keep their own partly-used heap (tens of MB of RSS for no speed on small uploads)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _left_out_line(ctx, report: dict) -> None:
    if report.get("left_out"):
        examples = ", ".join(report.get("left_out_examples") or [])
        ctx.out(f"left out:     {report['left_out']} files by watch.include / watch.exclude "
                f"(SYNCBRIDGE_WATCH_INCLUDE / _EXCLUDE){': ' + examples if examples else ''}")


def _status(args: argparse.Namespace, ctx) -> int:
    if getattr(args, "fleet", False):
        from .fleet import status_command

        return status_command(args, ctx)
    config = ctx.config()
    from ..statuspage.report import status_report

    report = status_report(config)
    running = report["running"]
    if args.json:
        ctx.out(json.dumps(report, sort_keys=True))
        return 0
    if running:
        ctx.out(f"watcher running (pid {report['pid']}, {report['state']}): {report['directory']} -> "
                f"{report['prefix']}/ on {report['store']}")
        ctx.out(f"pending:      {report['pending']} (oldest {_age(report['oldest_pending_age'])}, "
                f"{report['in_flight']} uploading)")
        ctx.out(f"since start:  {report['uploaded']} uploaded, {report['failed']} failing, {report['retries']} retried "
                f"errors, {report['collisions']} sent to sibling keys, {report['skipped']} already there")
        ctx.out(f"latency:      last {_ms(report['last_latency'])}, p95 {_ms(report['p95_latency'])}")
        if report.get("waiting_to_finish"):
            ctx.out(f"being written: {report['waiting_to_finish']} found by a scan, pushed once closed or quiet")
        _left_out_line(ctx, report)
        for output in (report.get("recent") or [])[-5:]:
            ctx.out(f"pushed:       {output['key']} ({output['size']} bytes, {output['content_type']})"
                    + (f" {output['url']}" if output.get("url") else ""))
        if report.get("unwatched"):
            ctx.out(f"not watched (rescanned instead): {', '.join(report['unwatched'])}")
        if report.get("last_error"):
            ctx.out(f"last error:   {report['last_error']}")
    else:
        ctx.out("watcher not running")
        ctx.out(f"journal:      {report['pending']} pending (oldest {_age(report['oldest_pending_age'])}), "
                f"{report['failed']} failed; pushed at the next `syncbridge watch`")
        last = report.get("last_run")
        if last:
            ctx.out(f"last run:     {last['uploaded']} uploaded, {last['failed']} failing, latency last "
                    f"{_ms(last['last_latency'])}, p95 {_ms(last['p95_latency'])}")
            _left_out_line(ctx, last)
    for failure in report["journal"]["failures"][:5]:
        ctx.out(f"failed:       {failure['path']} -> {failure['key']}: {failure['error']}")
    _models_lines(ctx, report.get("models") or {})
    return 0


def _models_lines(ctx, models: dict) -> None:
    """The last start's background pull (SYNCBRIDGE_MODELS_WAIT=required) and capture."""
    background = models.get("background")
    if background:
        state = background.get("state")
        what = background.get("line") or ""
        if state == "pulling":
            what = f"pulling for {_age(time.time() - float(background.get('started_at') or time.time()))}"
        elif state == "stopped":
            what = "stopped with the app; the next start goes on where it stopped"
        elif state == "failed" and background.get("error"):
            what = background["error"]
        ctx.out(f"models (background): {state}" + (f": {what}" if what else ""))
    capture = models.get("capture")
    if capture:
        captured = capture.get("captured") or []
        ctx.out(f"capture:      {len(captured)} model(s) into {capture.get('profile')}"
                + (f" (last {capture['last']})" if capture.get("last") else ""))
