"""Log lines for the CLI: ``[syncbridge] message``, secrets redacted, fields only with ``-v``. The library never imports this."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TextIO

from ..redact import redact

__all__ = ["setup_logging"]

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
