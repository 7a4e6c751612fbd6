"""What every subcommand module shares: the :class:`Context` and the options all commands accept.

Subcommand modules import from here, never from the package ``__init__`` (which imports them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Mapping

from ..config import Config, load_config, secret_values
from ..redact import redact
from .output import setup_logging
from .progress import ProgressPrinter

__all__ = ["Context", "add_common"]


class Context:
    """What a subcommand needs: the environment, and the configuration read once on first use."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args = args
        self.environ = environ
        self._config: Config | None = None
        self.secrets: tuple[str, ...] = secret_values(environ)

    def config(self, overrides: Mapping[str, Any] | None = None) -> Config:
        if self._config is None:
            self._config = load_config(self.environ, config_file=self.args.config, overrides=overrides)
            self.secrets = tuple({*self.secrets, *self._config.secrets})
            setup_logging("debug" if self.args.verbose else ("warning" if self.args.quiet else
                                                             self._config.log_level), secrets=self.secrets)
        return self._config

    def progress(self, label: str) -> ProgressPrinter | None:
        if self.args.quiet:
            return None
        return ProgressPrinter(label)

    def out(self, text: str) -> None:
        print(redact(text, self.secrets), flush=True)

    def say(self, text: str) -> None:
        """A line for the person at the terminal (stderr), kept back by ``-q``: only warnings and errors then."""
        if not self.args.quiet:
            print(redact(f"[syncbridge] {text}", self.secrets), file=sys.stderr, flush=True)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every (sub)command accepts, before or after its name."""
    default = argparse.SUPPRESS if parser.prog != "syncbridge" else None
    parser.add_argument("--config", metavar="PATH", default=default,
                        help="TOML configuration file (default: $SYNCBRIDGE_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS if default else False,
                        help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS if default else False,
                        help="warnings and errors only")
