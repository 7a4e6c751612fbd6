"""Progress on the terminal: rclone runs (:class:`ProgressPrinter`) and model pulls (:class:`ModelsProgress`).

Both draw the same bar and say the same ETA (``ETA 45s``, ``ETA 3m05s``): a bar on a TTY, a log
line every few seconds otherwise.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from ..fmt import human_bytes

if TYPE_CHECKING:  # types only: drawing progress loads neither the models nor the rclone code
    from ..models import ModelEvent
    from ..rclone.argv import Progress

__all__ = ["ProgressPrinter", "ModelsProgress", "eta_text", "bar"]

_human = human_bytes
BAR_WIDTH = 24


def eta_text(seconds: float | None) -> str:
    """`` ETA 45s`` / `` ETA 3m05s`` (empty when unknown)."""
    if seconds is None or seconds < 0:
        return ""
    left = int(seconds + 0.5)
    return f" ETA {left // 60}m{left % 60:02d}s" if left >= 60 else f" ETA {left}s"


def bar(fraction: float) -> str:
    """``[######------...]`` for ``fraction`` in 0..1."""
    filled = int(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]"


class ProgressPrinter:
    """Progress of an rclone run: a bar on a TTY, a log line every ``interval`` seconds otherwise."""

    def __init__(self, label: str, *, stream: TextIO | None = None, interval: float = 5.0,
                 tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self._last: float | None = None  # the first event always prints
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if self.tty:
            frac = p.fraction or 0.0
            eta = eta_text(p.eta)
            line = (f"\r{self.label} {bar(frac)} {frac * 100:5.1f}% {human_bytes(p.bytes)}/{human_bytes(p.total_bytes)} "
                    f"{human_bytes(p.speed)}/s files {p.transfers}/{p.total_transfers}{eta}   ")
            self.stream.write(line)
            self.stream.flush()
            self._drawn = True
        elif self._last is None or now - self._last >= self.interval:
            self._last = now
            pct = f"{p.fraction * 100:.0f}%" if p.fraction is not None else "-"
            self.stream.write(f"[syncbridge] {self.label}: {pct} {human_bytes(p.bytes)}/{human_bytes(p.total_bytes)}"
                              f" {human_bytes(p.speed)}/s files {p.transfers}/{p.total_transfers}\n")
            self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


_TTY_REDRAW = 0.2
_LOG_EVERY = 5.0


def _eta(got: int, total: int, speed: float) -> str:
    """`` ETA 1m05s`` at the average speed so far (empty when unknown or done)."""
    if not total or got >= total or speed <= 0:
        return ""
    return eta_text((total - got) / speed)


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
        speed = got / elapsed if elapsed > 0 else 0.0
        label = f"{name[:28]:<28}" + (f" {source:<7}" if source else " " * 8)
        return (f"{label} {bar(frac)} {frac * 100:5.1f}% "
                f"{_human(got)}/{_human(total)} {_human(speed)}/s{_eta(got, total, speed)}")

    def close(self) -> None:
        with self.lock:
            self._clear()
            self.stream.flush()
