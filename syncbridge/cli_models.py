"""CLI: ``syncbridge models pull | list | cache push``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import TextIO

from .fmt import human_bytes as _human
from .models import ModelEvent, PullReport, list_models, pull_models, push_cache
from .system import free_bytes

_TTY_REDRAW = 0.2
_LOG_EVERY = 5.0


def _eta(got: int, total: int, speed: float) -> str:
    """`` ETA 1m05s`` at the average speed so far (empty when unknown or done)."""
    if not total or got >= total or speed <= 0:
        return ""
    left = int((total - got) / speed + 0.5)
    return f" ETA {left // 60}m{left % 60:02d}s" if left >= 60 else f" ETA {left}s"


class ModelsProgress:
    """A bar per active model and a total on a TTY; otherwise a log line per active model every few seconds."""

    def __init__(self, *, stream: TextIO | None = None, tty: bool | None = None, interval: float = _LOG_EVERY) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self.lock = threading.Lock()
        self.active: dict[str, list] = {}  # name -> [source, bytes, total, started]
        self.total = 0
        self.done_bytes = 0
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_log: dict[str, float] = {}
        self._drawn_lines = 0

    def __call__(self, event: ModelEvent) -> None:
        with self.lock:
            now = time.monotonic()
            if event.kind == "plan":
                self.total += event.total
            elif event.kind == "start":
                entry = self.active.setdefault(event.model, [event.source, 0, event.total, now])
                entry[0], entry[1], entry[2] = event.source, 0, event.total
            elif event.kind == "bytes":
                entry = self.active.get(event.model)
                if entry is not None:
                    entry[1] += event.bytes
                self.done_bytes += event.bytes
            elif event.kind == "attempt_failed":
                entry = self.active.pop(event.model, None)
                if entry is not None:
                    self.done_bytes -= entry[1]
                self._print(f"[syncbridge] {event.model}: {event.source} failed: "
                            f"{event.message.removeprefix(event.source + ': ')}")
            elif event.kind == "waiting":
                self._print(f"[syncbridge] {event.model}: waiting, {event.message}")
            elif event.kind == "done":
                self.active.pop(event.model, None)
            self._render(now, force=event.kind in ("start", "done"))

    def _print(self, line: str) -> None:
        self._clear()
        self.stream.write(line + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")
            self._drawn_lines = 0

    def _render(self, now: float, *, force: bool) -> None:
        if self.tty:
            if not force and now - self._last_draw < _TTY_REDRAW:
                return
            self._last_draw = now
            self._clear()
            lines = [self._bar(name, *entry[:3], now - entry[3]) for name, entry in sorted(self.active.items())]
            if self.total:
                lines.append(self._bar("total", "", self.done_bytes, self.total, now - self.started))
            if lines:
                self.stream.write("\n".join(lines) + "\n")
                self._drawn_lines = len(lines)
            self.stream.flush()
            return
        for name, (source, got, total, began) in self.active.items():
            if now - self._last_log.get(name, began) >= self.interval:
                self._last_log[name] = now
                pct = f"{got * 100 / total:.0f}%" if total else "-"
                speed = got / max(now - began, 1e-6)
                self.stream.write(f"[syncbridge] {name}: {source} {pct} {_human(got)}/{_human(total)} "
                                  f"{_human(speed)}/s{_eta(got, total, speed)}\n")
                self.stream.flush()

    @staticmethod
    def _bar(name: str, source: str, got: int, total: int, elapsed: float) -> str:
        frac = min(1.0, got / total) if total else 0.0
        width = 24
        filled = int(frac * width)
        speed = got / elapsed if elapsed > 0 else 0.0
        label = f"{name[:28]:<28}" + (f" {source:<7}" if source else " " * 8)
        return (f"{label} [{'#' * filled}{'-' * (width - filled)}] {frac * 100:5.1f}% "
                f"{_human(got)}/{_human(total)} {_human(speed)}/s{_eta(got, total, speed)}")

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.stream.flush()


def register(sub: argparse._SubParsersAction) -> None:
    from .cli import add_common

    p = sub.add_parser("models", help="pull models (cache first, then Hugging Face, CivitAI, URL), list them, "
                                      "fill the cache",
                       description="Model warm-start from manifests (TOML). See the README's Models section for "
                                   "every manifest key.")
    add_common(p)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    msub.required = True

    q = msub.add_parser("pull", help="put every enabled model in place, verified",
                        description="For each enabled model: skip it when present and verified; else copy it "
                                    "from the R2 cache (<cache_prefix>/<path>), else Hugging Face, CivitAI, URL. "
                                    "Downloads are verified (size, sha256) and renamed into place only when "
                                    "complete. Exit 1 when a required model fails; optional ones only warn.")
    q.add_argument("manifests", nargs="*", metavar="MANIFEST",
                   help="manifest files (default: SYNCBRIDGE_MODELS, several separated by ':')")
    q.add_argument("-n", "--dry-run", action="store_true",
                   help="print the plan (which source each model would come from); download nothing")
    q.add_argument("--parallel", type=int, metavar="N", help="models fetched at once (default: the manifest's, "
                                                             "else 3)")
    add_common(q)
    q.set_defaults(func=_pull)

    q = msub.add_parser("list", help="show each model's local state (no network)",
                        description="Show each model's state without any network request: present (verified), "
                                    "planned (missing or not verifying) or skipped (enabled_by / min_tier).")
    q.add_argument("manifests", nargs="*", metavar="MANIFEST")
    add_common(q)
    q.set_defaults(func=_list)

    q = msub.add_parser("cache", help="fill the R2 cache from local models",
                        description="Manage the models cache in the bucket.")
    add_common(q)
    csub = q.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    r = csub.add_parser("push", help="push every present, verified model to <cache_prefix>/<path>",
                        description="Push every enabled model that is present and verified locally to the cache "
                                    "(<cache_prefix>/<path>, sha256 in metadata) with conditional puts "
                                    "(If-None-Match: *): an object already there is verified, never overwritten.")
    r.add_argument("manifests", nargs="*", metavar="MANIFEST")
    add_common(r)
    r.set_defaults(func=_cache_push)


def _finish(ctx, report: PullReport) -> int:
    ctx.out(report.table())
    for result in report.results:
        if result.status == "optional_failed":
            print(f"[syncbridge] warning: optional model {result.name} is missing", file=sys.stderr, flush=True)
    if not report.ok:
        failed = [r.name for r in report.results if r.status == "failed"]
        print(f"[syncbridge] error: {len(failed)} required model(s) failed: {', '.join(failed)}", file=sys.stderr,
              flush=True)
        return 1
    if report.cache_error:
        # The models are in place (from upstream), but the cache never fills and the next pod pays again.
        stop = ctx.config().start.on_bucket_failure == "stop"
        what = ("the bucket cache refused writes (a read-only token?), so nothing was written back" if
                report.cache_write_only else "the bucket cache refused access, so nothing came from it and nothing "
                                             "was written back")
        print(f"[syncbridge] {'error' if stop else 'warning'}: {what}: {report.cache_error}"
              + ("" if not stop else " (SYNCBRIDGE_ON_BUCKET_FAILURE=warn lets this pass with exit 0)"),
              file=sys.stderr, flush=True)
        return 1 if stop else 0
    return 0


def _no_attempt_records(record: logging.LogRecord) -> bool:
    return getattr(record, "event", None) != "models.attempt_failed"


def _pull(args, ctx) -> int:
    overrides = {"models.parallel": args.parallel} if args.parallel else None
    config = ctx.config(overrides)
    ctx.say(f"models: cache in {config.remote.describe()}")
    progress = None if (args.quiet or args.dry_run) else ModelsProgress()
    # The progress display prints each failed attempt itself: its log record would say it twice.
    logger = logging.getLogger("syncbridge.models.puller")  # where the attempt records are logged
    if progress is not None:
        logger.addFilter(_no_attempt_records)
    try:
        report = pull_models(config, args.manifests or None, dry_run=args.dry_run, on_event=progress,
                             environ=ctx.environ)
    finally:
        logger.removeFilter(_no_attempt_records)
        if progress is not None:
            progress.close()
    if args.dry_run:
        ctx.out("plan (nothing downloaded):")
        code = _finish(ctx, report)
        planned = sum(r.size for r in report.results if r.status == "planned")
        if report.models_dir is not None:
            ctx.out(f"would download {_human(planned)}; {_human(free_bytes(report.models_dir))} free in "
                    f"{report.models_dir}")
        return code
    return _finish(ctx, report)


def _list(args, ctx) -> int:
    report = list_models(ctx.config(), args.manifests or None, environ=ctx.environ)
    for r in report.results:
        ctx.out(f"{r.status:<8} {r.name}  {r.path}" + (f"  ({r.message})" if r.message else ""))
    return 0


def _cache_push(args, ctx) -> int:
    config = ctx.config()
    ctx.say(f"models cache: {config.remote.describe()}")
    report = push_cache(config, args.manifests or None, environ=ctx.environ)
    rows = [("model", "outcome", "size")]
    for r in report.results:
        rows.append((r.name, r.write_back or f"{r.status}: {r.message}", _human(r.size) if r.size else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        ctx.out("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0 if report.ok else 1
