"""Terminal output for the CLI: logging set-up, progress display. The library never imports this."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, TextIO

from .fmt import human_bytes
from .rclonecmd import Progress
from .redact import redact

__all__ = ["setup_logging", "ProgressPrinter", "human_bytes"]

_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "event"}


class _Formatter(logging.Formatter):
    """``syncbridge: message key=value ...`` with every secret redacted."""

    def __init__(self, secrets: Iterable[str], prefix: str, *, fields: bool = False) -> None:
        super().__init__()
        self.secrets = tuple(secrets)
        self.prefix = prefix
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if self.fields:  # the structured fields are for -v (and log collectors): a person reads the sentence
            fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
            if fields:
                text += " " + " ".join(f"{k}={_quote(v)}" for k, v in fields.items())
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        return redact(f"{self.prefix}{level}{text}", self.secrets)


def _quote(value: object) -> str:
    """A field's value as written: quoted when it has spaces, never Python's repr (no doubled backslashes)."""
    text = str(value)
    if isinstance(value, str) and (not text or any(c.isspace() for c in text) or '"' in text):
        return '"' + text.replace('"', "'") + '"'
    return text


def setup_logging(level: str = "info", *, secrets: Iterable[str] = (), stream: TextIO | None = None,
                  prefix: str = "[syncbridge] ") -> None:
    """Configure the ``syncbridge`` logger for the CLI (the library itself never does)."""
    logger = logging.getLogger("syncbridge")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(secrets, prefix, fields=level.lower() == "debug"))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


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
            width = 24
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            eta = f" ETA {p.eta:.0f}s" if p.eta is not None else ""
            line = (f"\r{self.label} [{bar}] {frac * 100:5.1f}% {human_bytes(p.bytes)}/{human_bytes(p.total_bytes)} "
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
