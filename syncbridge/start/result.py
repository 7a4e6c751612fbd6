"""What ``syncbridge start`` is asked to do and what it reports: options, steps, the result and its lines."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

from ..bulk import TransferSummary
from ..config import Config, Folder
from ..fmt import human_bytes as _human

log = logging.getLogger("syncbridge.start")

__all__ = ["Step", "StartOptions", "StartResult", "ModelsVerdict", "exit_status", "models_line", "outer_start_pid",
           "signal_name", "judge_models", "log_failed_attempts", "START_PID_ENV"]

# Set in the app's environment: a `syncbridge start` inside it (a template's start.sh run by
# an image whose entrypoint is already `syncbridge start --`) runs its app directly instead
# of pulling, syncing and watching a second time.
START_PID_ENV = "SYNCBRIDGE_START_PID"


def outer_start_pid(environ: Mapping[str, str]) -> int | None:
    """The pid of a running ``syncbridge start`` this process runs under, if any."""
    try:
        pid = int(environ.get(START_PID_ENV, ""))
    except ValueError:
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return pid


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: ``128 + N`` when killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@attrs.frozen
class Step:
    """The outcome of one step, as logged.

    Attributes:
        name: ``system``, ``models``, ``folders``, ``watch``, ``app``,
            ``drain``, ``final_push``.
        status: ``ok``, ``warn`` (failed, start-up went on), ``failed``,
            ``skipped``.
        line: the one log line (without the ``[syncbridge]`` prefix).
        seconds: how long the step took.
        details: per-item records (models: one per model).
    """

    name: str
    status: str
    line: str
    seconds: float
    details: tuple[Mapping[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "line": self.line, "seconds": round(self.seconds, 3),
                "details": [dict(d) for d in self.details]}


@attrs.frozen
class StartOptions:
    """Which steps run, and the shutdown budget. Build with :meth:`from_config`."""

    models: bool = True
    folders: bool = True
    watch: bool = False
    final_push: bool = True
    models_on_failure: str = "stop"
    stop_seconds: float = 4.5
    drain_seconds: float = 4.0
    on_bucket_failure: str = "stop"
    check_bucket: bool = True

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        models: bool | None = None,
        folders: bool | None = None,
        watch: bool | None = None,
        final_push: bool | None = None,
        models_on_failure: str | None = None,
        stop_seconds: float | None = None,
    ) -> StartOptions:
        """The configured options; each keyword that is not ``None`` overrides its setting (CLI flags)."""

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return cls(
            models=pick(models, config.start.models),
            folders=pick(folders, config.start.folders),
            watch=pick(watch, config.watch.enabled),
            final_push=pick(final_push, config.start.final_push),
            models_on_failure=pick(models_on_failure, config.models.on_failure),
            stop_seconds=pick(stop_seconds, config.start.stop_seconds),
            drain_seconds=config.watch.drain_seconds,
            on_bucket_failure=config.start.on_bucket_failure,
        )


@attrs.frozen
class StartResult:
    """What a start run did.

    Attributes:
        exit_code: what ``syncbridge start`` exits with: the app's status
            (``128 + N`` when killed by signal N); with no app, 0 when every
            step succeeded and the watcher drained everything, else 1;
            ``128 + N`` when signal N stopped start-up before the app ran;
            1 when a model failed and ``models.on_failure`` is ``stop``.
        steps: every step, in order.
        app_returncode: the app's raw return code (``None``: no app ran).
        stop_signal: the first stop signal received, if any.
        shutdown_seconds: from that signal to the end of the run.
        abandoned: a step did not stop when asked (by the deadline) and its
            worker thread is still running: a caller that is about to exit
            should exit at once (``os._exit``) rather than wait for it.
    """

    exit_code: int
    steps: tuple[Step, ...]
    app_returncode: int | None = None
    stop_signal: int | None = None
    shutdown_seconds: float | None = None
    abandoned: bool = False

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "app_returncode": self.app_returncode,
            "stop_signal": signal_name(self.stop_signal) if self.stop_signal else None,
            "shutdown_seconds": None if self.shutdown_seconds is None else round(self.shutdown_seconds, 3),
            "steps": [s.as_dict() for s in self.steps],
        }


def _model_record(result: Any) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name in ("name", "path", "source", "size", "seconds", "verified", "status"):
        value = getattr(result, name, None)
        record[name] = str(value) if isinstance(value, Path) else value
    attempts = getattr(result, "attempts", ()) or ()
    record["attempts"] = [f"{source}: {str(error).removeprefix(f'{source}: ')}" for source, error in attempts]
    return record


def models_line(results: Sequence[Any]) -> str:
    """``1 pulled from cache, 2 present, 1 failed (sdxl-vae)`` from per-model results.

    Each result needs ``name``, ``status`` and ``source``; statuses are shown in
    the order they first appear, with the sources of models that were fetched.
    """
    if not results:
        return "nothing to pull (no model enabled for this pod)"
    groups: dict[str, list[Any]] = {}
    for result in results:
        groups.setdefault(str(result.status), []).append(result)
    parts = []
    for status, members in groups.items():
        text = f"{len(members)} {status}"
        if status in ("failed", "optional_failed"):
            text += " (" + ", ".join(str(m.name) for m in members) + ")"
        elif status not in ("present", "skipped", "planned"):
            sources: dict[str, int] = {}
            for member in members:
                if member.source:
                    sources[str(member.source)] = sources.get(str(member.source), 0) + 1
            if len(sources) == 1 and sum(sources.values()) == len(members):
                text += f" from {next(iter(sources))}"
            elif sources:
                text += " (" + ", ".join(f"{n} from {s}" for s, n in sources.items()) + ")"
        parts.append(text)
    return ", ".join(parts)


def _summary_part(folder: Folder, op: str, summary: TransferSummary) -> str:
    arrow = {"pull": "<-", "push": "->", "bisync": "<->"}[op]
    text = f"{op} {folder.local} {arrow} {folder.prefix or '/'}/: {summary.files} file{'s' if summary.files != 1 else ''}"
    if summary.bytes:
        text += f", {_human(summary.bytes)}"
    if summary.skipped:
        text += f", {len(summary.skipped)} unsafe skipped"
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@attrs.frozen
class ModelsVerdict:
    """What the models step's pull means for start-up: the step's record, and whether to go on."""

    status: str  # ok, warn, failed
    text: str
    details: tuple[dict[str, Any], ...]
    go_on: bool


def judge_models(report: Any, *, background: bool, models_on_failure: str, on_bucket_failure: str) -> ModelsVerdict:
    """The models step's verdict on a :class:`~syncbridge.models.PullReport` (``background``: the models that
    are not required follow while the app runs)."""
    results = list(getattr(report, "results", ()))
    details = tuple(_model_record(r) for r in results)
    text = models_line(results) + ("; the rest follow in the background" if background else "")
    cache_error = getattr(report, "cache_error", None)
    if cache_error and getattr(report, "ok", True):
        stop = on_bucket_failure == "stop"
        return ModelsVerdict("failed" if stop else "warn",
                             f"{text}; but the bucket cache refused access: {cache_error}; "
                             + ("not starting the app (SYNCBRIDGE_ON_BUCKET_FAILURE=stop)" if stop
                                else "continuing (SYNCBRIDGE_ON_BUCKET_FAILURE=warn)"), details, not stop)
    if getattr(report, "ok", True):
        return ModelsVerdict("ok", text, details, True)
    stop = models_on_failure == "stop"
    consequence = ("not starting the app (models.on_failure = stop)" if stop
                   else "continuing (models.on_failure = warn)")
    return ModelsVerdict("failed" if stop else "warn", f"{text}; {consequence}", details, not stop)


def log_failed_attempts(report: Any) -> None:
    """Each failed model's attempts, a line per source, under the step's line."""
    for result in getattr(report, "results", ()):
        if str(result.status) in ("failed", "optional_failed"):
            for source, error in getattr(result, "attempts", ()) or ():
                log.warning("  %s: %s: %s", result.name, source, str(error).removeprefix(f"{source}: "),
                            extra={"event": "start.models.attempt"})
