"""``syncbridge start``: a container's start-up and shutdown as one supervised run.

In the order a template needs:

1. **system**: storage mode (persistent when the workspace is a mount point)
   and GPU tier;
   **bucket**: the checks ``doctor`` runs (endpoint, credentials, bucket, a
   put/read/delete probe); when the bucket is not usable start-up stops with
   the check's message naming the setting, unless ``start.on_bucket_failure``
   is ``warn`` (then the app runs, outputs wait in the watcher's journal, and
   the exit status is 1 even when the app exits 0);
2. **models**: pull the configured manifests (a failure stops start-up or
   only warns, per ``models.on_failure``);
3. **folders**: pull or bisync the configured folders (workflows, inputs);
4. **watch**: start the output watcher in this process when
   ``ENABLE_R2_SYNC`` is true;
5. **app**: run the application given after ``--`` as a child in its own
   process group, forwarding SIGTERM/SIGINT to that group;
6. **drain**: when the app exits (or on SIGTERM), stop the watcher, pushing
   what is pending within the deadline;
7. **final push**: push (or bisync) the configured folders once more with
   whatever time is left.

Each step logs one line with its outcome and duration (``models: 1 pulled
from cache, 2 present (12.4s)``). With no app the watcher runs in the
foreground until SIGTERM.

The spot-pod budget: a spot pod gets SIGTERM and SIGKILL 5 seconds later.
The first stop signal fixes a deadline ``start.stop_seconds`` (4.5 s) ahead;
the app gets the signal at once and may use the time up to shortly before
that deadline to exit (the watcher keeps pushing meanwhile), the watcher
drains for at most ``watch.drain_seconds`` of what is left, and the final
folder push gets the rest, or is skipped with a log line when nothing is
left. Whatever the watcher could not push stays in its journal for the next
start.

Signals: :class:`Starter` never installs handlers by itself; the caller wraps
the run in :func:`forward_signals` (the CLI does), or calls
:meth:`Starter.request_stop` from its own handler. The handler only records
the signal and forwards it to the app's process group; everything else
happens in the main loop, which polls, so no lock is ever taken inside a
signal handler.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..bulk import TransferSummary, sync_folder
from ..config import Config, Folder
from ..errors import SyncBridgeError
from ..fsutil import make_output_dir
from ..keys import render_prefix
from ..system import detect_gpu_tier, detect_storage_mode
from .supervise import POLL_SECONDS, forward_signals, run_cancellable
from .result import (START_PID_ENV, Step, StartOptions, StartResult, _first_line, _summary_part, exit_status,
                     judge_models, log_failed_attempts, signal_name)

__all__ = ["Starter", "forward_signals", "run_start"]

log = logging.getLogger("syncbridge.start")

# A setup step that was asked to stop gets this long to clean up (rclone is
# terminated by its runner) before start-up gives up on it.
SETUP_CANCEL_GRACE = 1.0
# Below this much time left, the final push is not even started.
MIN_FINAL_PUSH_SECONDS = 0.25
class Starter:
    """One supervised start-up, app run and shutdown. Use once: ``Starter(config, app).run()``.

    Args:
        config: the resolved configuration.
        app: the application's argv (empty: run the watcher in the foreground
            until a stop signal, or just the set-up steps when the watcher is off).
        options: which steps run (default: :meth:`StartOptions.from_config`).
        environ: the app's base environment (default ``os.environ``); the
            detected ``SYNCBRIDGE_STORAGE_MODE`` and ``SYNCBRIDGE_GPU_TIER`` are
            added to it.
        clock: a monotonic clock (tests pass their own).
    """

    def __init__(self, config: Config, app: Sequence[str] = (), *, options: StartOptions | None = None,
                 environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.app = list(app)
        self.options = options or StartOptions.from_config(config)
        self.environ = dict(os.environ if environ is None else environ)
        self.clock = clock
        self.steps: list[Step] = []
        self.storage_mode = config.storage_mode
        self.gpu_tier = config.gpu_tier
        # Written by the signal handler (plain attribute stores only, see module docstring).
        self._stop_signal: int | None = None
        self._stop_at: float | None = None
        self._app_pgid: int | None = None
        self._app_done = False
        self._watcher: Any = None
        self._heartbeat: Any = None  # fleet heartbeat when no watcher writes one
        self._app_returncode: int | None = None
        self._abandoned = False
        self._bucket_failure: Any = None  # the failed check, when on_bucket_failure = warn let start-up go on
        self._drain_result: Any = None
        self._later: list[Path] | None = None  # manifests whose other models are pulled with the app running
        self._background: Any = None
        self._capture: Any = None
        from .live import StartStatus

        self.status = StartStatus(config.state_dir)  # for `syncbridge status` and the status page
        self._page: Any = None  # the status page's server (SYNCBRIDGE_STATUS_PORT)
        self._app_port_listener: Any = None  # the page on the app's port until the app starts
        self._app_port: int | None = None

    # -- signals --------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask the run to stop (safe to call from a signal handler).

        The first call fixes the shutdown deadline; every call forwards the
        signal to the app's process group while the app runs.
        """
        if self._stop_signal is None:
            self._stop_at = self.clock()
            self._stop_signal = signum
        pgid = self._app_pgid
        if pgid is not None and not self._app_done:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signum)

    @property
    def stop_requested(self) -> bool:
        return self._stop_signal is not None

    def _deadline(self) -> float | None:
        return None if self._stop_at is None else self._stop_at + self.options.stop_seconds

    def _remaining(self) -> float | None:
        deadline = self._deadline()
        return None if deadline is None else deadline - self.clock()

    # -- helpers --------------------------------------------------------------------
    def _record(self, name: str, status: str, text: str, started: float, *,
                details: Sequence[Mapping[str, Any]] = (), show_seconds: bool = True) -> Step:
        seconds = self.clock() - started
        line = f"{name.replace('_', ' ')}: {text}" + (f" ({seconds:.1f}s)" if show_seconds else "")
        step = Step(name, status, line, seconds, tuple(details))
        self.steps.append(step)
        self.status.step(step.as_dict())
        level = {"failed": logging.ERROR, "warn": logging.WARNING}.get(status, logging.INFO)
        log.log(level, line, extra={"event": f"start.{name}"})
        return step

    def _in_thread(self, what: str, fn: Callable[[threading.Event], Any], *, stop_when: Callable[[], bool],
                   grace: float) -> tuple[Any, BaseException | None, bool]:
        value, error, abandoned = run_cancellable(what, fn, stop_when=stop_when, grace=grace, clock=self.clock)
        self._abandoned = self._abandoned or abandoned
        return value, error, abandoned

    # -- steps ----------------------------------------------------------------------
    def _system(self) -> None:
        started = self.clock()
        self.storage_mode = detect_storage_mode(self.config)
        self.gpu_tier = detect_gpu_tier(self.config, environ=self.environ)
        mode_note = "" if self.config.storage_mode == self.storage_mode else f" (configured {self.config.storage_mode})"
        tier_note = " (detected)" if self.config.gpu_tier == "auto" else ""
        self._record("system", "ok", f"storage {self.storage_mode}{mode_note}, workspace {self.config.workspace}, "
                                     f"GPU tier {self.gpu_tier}{tier_note}", started)

    def _bucket(self) -> bool:
        """The bucket checks doctor runs; False when start-up must stop."""
        started = self.clock()
        if not self.options.check_bucket:
            self._record("bucket", "skipped", "not checked", started, show_seconds=False)
            return True
        from ..probe import bucket_checks, first_failure

        done, failed = first_failure(bucket_checks(self.config))
        if failed is None:
            notes = [c.detail for c in done if c.warning]
            self._record("bucket", "ok", f"{self.config.remote.describe()}: credentials, listing and a put/read/"
                                         f"delete probe work" + "".join(f"; {n}" for n in notes), started)
            return True
        stop = self.options.on_bucket_failure == "stop"
        consequence = ("not starting anything (SYNCBRIDGE_ON_BUCKET_FAILURE=stop; set it to warn to run without "
                       "the bucket)" if stop else
                       "going on without it (SYNCBRIDGE_ON_BUCKET_FAILURE=warn): outputs wait in the journal and the "
                       "exit status will be 1")
        self._record("bucket", "failed" if stop else "warn", f"{failed.name}: {failed.detail}; fix: {failed.fix}; "
                                                             f"{consequence}", started)
        if not stop:
            self._bucket_failure = failed
        return not stop

    def _models(self) -> bool:
        """Pull models; False when start-up must stop."""
        started = self.clock()
        if not self.options.models:
            self._record("models", "skipped", "off (--no-models or SYNCBRIDGE_START_MODELS=false)", started,
                         show_seconds=False)
            return True
        if not (self.config.models.manifests or self.config.models.workflows or self.config.models.capture):
            self._record("models", "skipped", "no manifest or workflow configured (SYNCBRIDGE_MODELS, "
                                              "SYNCBRIDGE_WORKFLOWS)", started, show_seconds=False)
            return True
        from ..models import pull_models
        from .background import manifests_for

        manifests, problem = manifests_for(self.config)
        if problem is not None:  # a workflow that cannot be read: as a failed pull
            stop = self.options.models_on_failure == "stop"
            self._record("models", "failed" if stop else "warn", f"{_first_line(problem)}; " + (
                "not starting the app (models.on_failure = stop)" if stop else "continuing without the "
                "workflows' models (models.on_failure = warn)"), started)
            if stop:
                return False
        if not manifests:
            self._record("models", "skipped", "nothing to pull yet (no manifest; the profile of captured models "
                                              "is empty)", started, show_seconds=False)
            return True

        first = self.config.start.models_wait == "required"  # the rest: in the background, with the app

        def fn(cancel: threading.Event) -> Any:
            return pull_models(self.config, manifests, environ=self.environ, tier=self.gpu_tier, cancel=cancel,
                               only=(lambda model: model.required) if first else None,
                               on_event=self.status.on_model_event)

        if first:
            self._later = manifests

        value, error, abandoned = self._in_thread("models", fn, stop_when=lambda: self.stop_requested,
                                                  grace=SETUP_CANCEL_GRACE)
        stop = self.options.models_on_failure == "stop"
        consequence = ("not starting the app (models.on_failure = stop)" if stop
                       else "continuing (models.on_failure = warn)")
        if abandoned or (error is not None and self.stop_requested):
            self._record("models", "failed", f"interrupted by {signal_name(self._stop_signal or 15)}; partial "
                                             f"downloads stay in temp files beside their targets", started)
            return False
        if error is not None:
            if not isinstance(error, (SyncBridgeError, OSError)):
                raise error
            self._record("models", "failed" if stop else "warn", f"{_first_line(error)}; {consequence}", started)
            for extra in str(error).splitlines()[1:]:
                log.warning("  %s", extra.strip(), extra={"event": "start.models.detail"})
            return not stop
        verdict = judge_models(value, background=first, models_on_failure=self.options.models_on_failure,
                               on_bucket_failure=self.options.on_bucket_failure)
        self._record("models", verdict.status, verdict.text, started, details=verdict.details)
        if verdict.status != "ok":
            log_failed_attempts(value)
        return verdict.go_on

    def _start_capture(self) -> None:
        if self.config.models.capture:
            from .background import start_capture

            self._capture = start_capture(self.config)

    def _start_background_pull(self) -> None:
        if self._later is not None:
            from .background import BackgroundPull

            self._background = BackgroundPull(self.config, self._later, environ=self.environ,
                                              tier=self.gpu_tier, on_event=self.status.on_model_event).start()

    def _sync_folders(self, name: str, modes: Sequence[str], *, stop_when: Callable[[], bool],
                      grace: float) -> Step:
        started = self.clock()
        folders = [f for f in self.config.folders if f.mode in modes]
        if not folders:
            which = " or ".join(modes)
            return self._record(name, "skipped", f"no {which} folder configured (SYNCBRIDGE_FOLDERS or [[folder]])",
                                started, show_seconds=False)
        parts: list[str] = []
        failed = False
        for index, folder in enumerate(folders):
            if stop_when():
                parts.append(f"stopped before {len(folders) - index} more")
                failed = True
                break
            op = folder.mode

            def fn(cancel: threading.Event, f: Folder = folder) -> TransferSummary:
                return sync_folder(self.config, f, cancel=cancel)
            if op == "push" and not folder.local.exists():
                parts.append(f"push {folder.local}: nothing there")
                continue
            value, error, abandoned = self._in_thread(f"{name}-{index}", fn, stop_when=stop_when, grace=grace)
            if abandoned:
                parts.append(f"{op} {folder.local}: stopped at the deadline")
                failed = True
                break
            if error is not None:
                if not isinstance(error, (SyncBridgeError, OSError)):
                    raise error
                parts.append(f"{op} {folder.local} FAILED: {_first_line(error)}")
                failed = True
                for extra in str(error).splitlines()[1:]:
                    log.warning("  %s", extra.rstrip(), extra={"event": f"start.{name}.detail"})
                continue
            parts.append(_summary_part(folder, op, value))
        return self._record(name, "warn" if failed else "ok", "; ".join(parts), started)

    def _start_watcher(self) -> None:
        started = self.clock()
        if not self.options.watch:
            self._record("watch", "skipped", "off (ENABLE_R2_SYNC is not true)", started, show_seconds=False)
            # Still listed by `syncbridge fleet status` (the watcher's heartbeat carries its counters).
            from ..fleet import Heartbeat

            self._heartbeat = Heartbeat.for_config(self.config, role="start")
            if self._heartbeat is not None:
                self._heartbeat.start()
            return
        from ..watch import OutputWatcher

        watch = self.config.watch
        try:
            prefix = render_prefix(watch.prefix, pod_id=self.config.pod_id, now=dt.datetime.now(dt.timezone.utc))
        except SyncBridgeError:
            prefix = watch.prefix
        out = Path(watch.dir)
        if not out.exists() and make_output_dir(out, Path(self.config.workspace)):
            log.info("created the output folder %s", out, extra={"event": "start.output_dir"})
        try:
            # The bucket step checked the bucket (or the user chose to run without it): no second check.
            watcher = OutputWatcher(self.config, check_bucket=False)
            watcher.start()
        except (SyncBridgeError, OSError) as exc:
            # The app still runs (a pod that cannot push is better than one that does not start),
            # but loudly: outputs are only on the local disk.
            self._record("watch", "failed", f"could not start: {_first_line(exc)}; outputs will NOT be pushed",
                         started)
            return
        self._watcher = watcher
        self._record("watch", "ok", f"pushing {watch.dir} -> {prefix or '/'}/ as files are written", started)

    def _run_app(self) -> int:
        started = self.clock()
        env = dict(self.environ)
        env["SYNCBRIDGE_STORAGE_MODE"] = self.storage_mode
        env["SYNCBRIDGE_GPU_TIER"] = self.gpu_tier
        env[START_PID_ENV] = str(os.getpid())
        shown = shlex.join(self.app)
        self._release_app_port()
        try:
            # Own session and process group: signals reach the app (and its children) only
            # through us, once each, and a terminal's Ctrl-C is not delivered twice.
            proc = subprocess.Popen(self.app, env=env, start_new_session=True)  # noqa: S603 - argv list
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self._record("app", "failed", f"cannot run {shown}: {exc.strerror or exc}; exit {code}", started)
            return code
        self._app_pgid = proc.pid
        log.info("app: started %s (pid %d)", shown, proc.pid, extra={"event": "start.app.started"})
        self.status.app(state="running", pid=proc.pid, started_at=time.time())
        if self._app_port is not None:
            from .statuspage import watch_app_port

            port_watch = watch_app_port(proc, self._app_port, self.status)
        else:
            port_watch = None
        if self._stop_signal is not None:
            # A signal that arrived between the check in run() and the pgid store.
            self.request_stop(self._stop_signal)
        reported_stop = False
        killed = False
        while True:
            if self._stop_signal is not None and not reported_stop:
                reported_stop = True
                log.info("stop: %s received, forwarded to the app (pid %d); shutdown budget %gs",
                         signal_name(self._stop_signal), proc.pid, self.options.stop_seconds,
                         extra={"event": "start.stop"})
            try:
                returncode = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            remaining = self._remaining()
            if remaining is not None and not killed and remaining <= self._after_app_reserve():
                # The app used its share of the budget: kill it so the drain still fits.
                killed = True
                log.warning("app: still running %.1fs after %s; killing it so the drain fits the budget",
                            self.clock() - (self._stop_at or 0), signal_name(self._stop_signal or 15),
                            extra={"event": "start.app.kill"})
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self._app_done = True
        self.status.app(state="exited", returncode=returncode)
        if port_watch is not None:  # its verdict (listened, or exited without) before the drain's lines
            port_watch.join(1.0)
        if self._stop_signal is not None and not reported_stop:
            log.info("stop: %s received, forwarded to the app (pid %d); shutdown budget %gs",
                     signal_name(self._stop_signal), proc.pid, self.options.stop_seconds,
                     extra={"event": "start.stop"})
        code = exit_status(returncode)
        how = (f"killed by {signal_name(-returncode)}" if returncode < 0 else f"exited with status {returncode}")
        self._record("app", "ok" if returncode == 0 or self.stop_requested else "warn",
                     f"{how} after {self.clock() - started:.1f}s", started, show_seconds=False)
        self._app_returncode = returncode
        return code

    def _after_app_reserve(self) -> float:
        """Time kept back from the app for the drain and the final push."""
        return min(1.0, self.options.stop_seconds / 4)

    def _drain(self) -> bool:
        started = self.clock()
        watcher = self._watcher
        if watcher is None:
            return True
        remaining = self._remaining()
        budget = self.options.drain_seconds if remaining is None else max(0.0, min(self.options.drain_seconds,
                                                                                  remaining))
        try:
            result = watcher.stop(drain_seconds=budget)
        except (SyncBridgeError, OSError) as exc:
            self._record("drain", "failed", f"watcher stopped with an error: {_first_line(exc)}", started)
            return False
        finally:
            self._watcher = None
        self._drain_result = result
        pushed, pending, failed = (getattr(result, name, 0) for name in ("pushed", "pending", "failed"))
        text = f"{pushed} pushed, {pending} pending, {failed} failed"
        if pending or failed:
            text += "; the rest is in the journal and is pushed on the next start"
        ok = bool(getattr(result, "ok", not (pending or failed)))
        self._record("drain", "ok" if ok else "warn", f"{text} ({self.clock() - started:.1f}s of {budget:.1f}s)",
                     started, show_seconds=False)
        return ok

    def _final_push(self, setup_done: bool) -> bool:
        started = self.clock()
        if not self.options.final_push:
            self._record("final_push", "skipped", "off (--no-final-push or SYNCBRIDGE_START_FINAL_PUSH=false)",
                         started, show_seconds=False)
            return True
        if not any(f.mode in ("push", "bisync") for f in self.config.folders):
            self._record("final_push", "skipped", "no push or bisync folder configured", started,
                         show_seconds=False)
            return True
        if not setup_done:
            self._record("final_push", "skipped", "start-up did not finish, folders left as they are", started,
                         show_seconds=False)
            return True
        remaining = self._remaining()
        if remaining is not None and remaining < MIN_FINAL_PUSH_SECONDS:
            self._record("final_push", "warn", f"skipped, no time left of the {self.options.stop_seconds:g}s "
                                               f"shutdown budget (SYNCBRIDGE_STOP_SECONDS)", started)
            return False

        def past_deadline() -> bool:
            left = self._remaining()
            return left is not None and left <= 0

        step = self._sync_folders("final_push", ("push", "bisync"), stop_when=past_deadline, grace=0.0)
        return step.status == "ok"

    def _foreground(self) -> None:
        log.info("watch: running in the foreground until SIGTERM or SIGINT", extra={"event": "start.foreground"})
        while not self.stop_requested:
            time.sleep(POLL_SECONDS)
        log.info("stop: %s received; draining (budget %.1fs)", signal_name(self._stop_signal or 15),
                 self.options.stop_seconds, extra={"event": "start.stop"})

    # -- the status page --------------------------------------------------------------
    def _serve_status_page(self) -> None:
        from .statuspage import serve_status_page

        self._page, self._app_port_listener = serve_status_page(self.config, self.app, self.environ, self.status)
        self._app_port = None if self._app_port_listener is None else self._app_port_listener.port

    def _release_app_port(self) -> None:
        listener, self._app_port_listener = self._app_port_listener, None
        if listener is not None:
            from .statuspage import release_app_port

            release_app_port(listener, self.status)

    # -- the run --------------------------------------------------------------------
    def run(self) -> StartResult:
        """Run every step; see the module docstring. A step's :class:`SyncBridgeError` is logged, not raised."""
        exit_code = 0
        setup_done = False
        self.status.start_beating()
        self._serve_status_page()
        try:
            self._system()
            if not self._bucket():
                exit_code = 1
            elif not self._models():
                exit_code = 128 + self._stop_signal if self._stop_signal else 1
            else:
                folders_ok = True
                if self.options.folders:
                    step = self._sync_folders("folders", ("pull", "bisync"), stop_when=lambda: self.stop_requested,
                                              grace=SETUP_CANCEL_GRACE)
                    folders_ok = step.status in ("ok", "skipped")
                else:
                    self._record("folders", "skipped", "off (--no-folders or SYNCBRIDGE_START_FOLDERS=false)",
                                 self.clock(), show_seconds=False)
                if not self.stop_requested:
                    self._start_watcher()
                    self._start_capture()
                setup_done = not self.stop_requested
                if not setup_done:
                    exit_code = 128 + (self._stop_signal or signal.SIGTERM)
                    log.warning("stop: %s during start-up; the app was not started",
                                signal_name(self._stop_signal or 15), extra={"event": "start.stop"})
                elif self.app:
                    self._start_background_pull()
                    exit_code = self._run_app()
                else:
                    self._start_background_pull()
                    watch_failed = self.options.watch and self._watcher is None
                    if self._watcher is not None:
                        self._foreground()
                    if not folders_ok or watch_failed:
                        exit_code = 1
            if self._capture is not None:  # a file still being written is never captured, at the stop or before
                self._capture.stop(timeout=0.5)
            if self._background is not None:  # a stop cancels it: its temp files stay for the next start
                self._abandoned |= self._background.finish(min(1.0, self._remaining() or 1.0))
                if exit_code == 0 and self._background.failed and self.options.models_on_failure == "stop":
                    log.error("exit 1: a model pulled in the background failed (models.on_failure = stop)",
                              extra={"event": "start.models.background_failed"})
                    exit_code = 1
            drained = self._drain()
            pushed = self._final_push(setup_done)
            if not self.app and exit_code == 0 and not (drained and pushed):
                exit_code = 1
            if exit_code == 0 and self._bucket_failure is not None:
                log.error("exit 1: the bucket was not usable (%s: %s), so outputs were not pushed; they are in the "
                          "watcher's journal for the next start", self._bucket_failure.name,
                          self._bucket_failure.detail, extra={"event": "start.not_pushed"})
                exit_code = 1
            elif exit_code == 0 and self._drain_result is not None and self._drain_result.failed:
                log.error("exit 1: the app exited 0, but %d outputs failed to push (kept in the journal; `syncbridge "
                          "status` names them)", self._drain_result.failed, extra={"event": "start.not_pushed"})
                exit_code = 1
        finally:
            if self._watcher is not None:  # an unexpected error: still leave the journal consistent
                with contextlib.suppress(Exception):
                    self._watcher.stop(drain_seconds=0)
            if self._heartbeat is not None:
                self._heartbeat.stop(timeout=0.5)
            self._release_app_port()
            if self._page is not None:
                self._page.close()
        self.status.finish(exit_code)
        shutdown = None if self._stop_at is None else self.clock() - self._stop_at
        tail = f" (shutdown took {shutdown:.1f}s of {self.options.stop_seconds:g}s)" if shutdown is not None else ""
        log.info("exit: %d%s", exit_code, tail, extra={"event": "start.exit"})
        return StartResult(exit_code, tuple(self.steps), self._app_returncode, self._stop_signal, shutdown,
                           self._abandoned)


def run_start(config: Config, app: Sequence[str] = (), *, options: StartOptions | None = None,
              environ: Mapping[str, str] | None = None, handle_signals: bool = True) -> StartResult:
    """Run :class:`Starter` for ``config`` and ``app``; with ``handle_signals``, SIGTERM/SIGINT/SIGHUP stop it."""
    starter = Starter(config, app, options=options, environ=environ)
    if not handle_signals:
        return starter.run()
    with forward_signals(starter):
        return starter.run()
