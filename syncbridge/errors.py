"""The error tree of syncbridge.

One root, :class:`SyncBridgeError`. Each subclass also inherits the builtin it
resembles (so ``except FileNotFoundError`` keeps working for library users) and
carries the data a caller needs to act on it, not only a message.

Messages never contain a secret: anything that might (argv, stderr) is redacted
by the code that builds the error.
"""

from __future__ import annotations

from typing import Sequence

__all__ = [
    "SyncBridgeError",
    "ConfigError",
    "Problem",
    "RcloneError",
    "RcloneNotFoundError",
    "StoreError",
    "PreconditionFailedError",
    "SourceChangedError",
    "UnsafePathError",
    "CancelledError",
    "WatchError",
    "JobError",
]


class SyncBridgeError(Exception):
    """Root of every error syncbridge raises on purpose.

    The CLI prints ``str(error)`` for these (no traceback) and exits with
    :attr:`exit_code`.
    """

    exit_code: int = 1


class Problem:
    """One invalid or missing setting: where it came from and what is wrong."""

    __slots__ = ("where", "message")

    def __init__(self, where: str, message: str) -> None:
        self.where = where
        self.message = message

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"

    def __repr__(self) -> str:
        return f"Problem({self.where!r}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Problem) and (self.where, self.message) == (other.where, other.message)

    def __hash__(self) -> int:
        return hash((self.where, self.message))


class ConfigError(SyncBridgeError, ValueError):
    """Every problem found in the configuration, reported together.

    Attributes:
        problems: one entry per bad or missing setting, each naming the
            environment variable or TOML key (and line) it came from.
    """

    exit_code = 2

    def __init__(self, problems: Sequence[Problem], *, title: str = "invalid configuration") -> None:
        self.problems = list(problems)
        self.title = title
        lines = [f"{title} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class RcloneNotFoundError(SyncBridgeError, FileNotFoundError):
    """No usable rclone binary (or one of the wrong version)."""

    exit_code = 2


class RcloneError(SyncBridgeError, RuntimeError):
    """rclone exited with a non-zero status.

    Attributes:
        returncode: rclone's exit status (negative: killed by that signal).
        outcome: ``"retry"`` or ``"fatal"`` from the exit-code table.
        argv: the command line with every secret replaced by ``***``.
        stderr_tail: the last lines rclone wrote, redacted.
    """

    def __init__(self, message: str, *, returncode: int, outcome: str, argv: Sequence[str], stderr_tail: str,
                 setting: str | None = None, fix: str | None = None) -> None:
        self.returncode = returncode
        self.outcome = outcome
        self.argv = list(argv)
        self.stderr_tail = stderr_tail
        self.setting = setting
        self.fix = fix
        text = f"{message} (rclone exit {returncode}, {outcome})"
        if stderr_tail:
            text += "\n" + "\n".join("  | " + line for line in stderr_tail.splitlines())
        super().__init__(text)

    @property
    def retryable(self) -> bool:
        return self.outcome == "retry"


class StoreError(SyncBridgeError, OSError):
    """An object-store request failed.

    Attributes:
        key: the object key (or ``None`` for bucket-level calls).
        code: the S3 error code (``NoSuchBucket``, ``SlowDown``...) or an
            exception class name for transport errors.
        status: the HTTP status, when there was a response.
        retryable: whether trying again later may help.
        setting: the variable to fix (``R2_SECRET_KEY``...), when a setting is at fault.
        fix: what to do about it, in the user's words (``syncbridge.diagnose``).
        mid_body: the request was answered and its body broke off while being read (a stall or a
            reset): the client's own retries never see that, so a caller may try again itself.
    """

    def __init__(self, message: str, *, key: str | None = None, code: str = "", status: int | None = None,
                 retryable: bool = False, setting: str | None = None, fix: str | None = None,
                 mid_body: bool = False) -> None:
        self.mid_body = mid_body
        self.key = key
        self.code = code
        self.status = status
        self.retryable = retryable
        self.setting = setting
        self.fix = fix
        super().__init__(message)


class PreconditionFailedError(StoreError):
    """A conditional write lost: the key exists (If-None-Match) or changed (If-Match)."""


class SourceChangedError(StoreError):
    """An upload was abandoned because its source file changed while it was read (still being written)."""


class UnsafePathError(SyncBridgeError, ValueError):
    """A key or path would escape the folder it belongs in."""

    exit_code = 2

    def __init__(self, message: str, *, path: str) -> None:
        self.path = path
        super().__init__(message)


class CancelledError(SyncBridgeError):
    """A long-running operation was cancelled (signal or caller)."""

    exit_code = 130


class WatchError(SyncBridgeError, RuntimeError):
    """The watcher cannot start (folder missing, another watcher running, the bucket refuses us, ...).

    ``setting`` names the variable to fix when one is at fault (``R2_SECRET_KEY``...).
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        self.setting = setting
        super().__init__(message)


class JobError(SyncBridgeError, RuntimeError):
    """A serverless job failed; the message is what its caller reads (no traceback, no secret).

    Attributes:
        kind: what went wrong, stable for clients: ``input``, ``bucket``, ``models``, ``unreachable``,
            ``refused`` (ComfyUI's ``node_errors``), ``execution``, ``timeout``, ``not_pushed``.
        details: data to act on (the outputs not pushed, the nodes refused, the models missing...).
    """

    def __init__(self, message: str, *, kind: str, details: object = None) -> None:
        self.kind = kind
        self.details = details
        super().__init__(message)
