"""What ``start`` does with models beside the models step: the ones it did not wait for, pulled in the
background while the app runs; the profile of captured models; the capture itself.

The app first:

With ``SYNCBRIDGE_MODELS_WAIT=required`` the models step pulls only the required models (marked
``required = true``, and those ``SYNCBRIDGE_WORKFLOWS`` need), the app starts, and this pulls the rest
with the same verification; each file is renamed into place only when complete, so ComfyUI sees a
model only whole. A stop cancels it within the shutdown budget; its resumable temp files stay for
the next start.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config
from ..errors import CancelledError, SyncBridgeError

__all__ = ["BackgroundPull", "ModelsStatus", "manifests_for", "profile_manifest_of", "start_capture",
           "read_models_status"]

STATUS_NAME = "models.json"  # in <state>/start/: what `syncbridge status` shows of the background pull and capture


def read_models_status(state_dir: Path) -> dict[str, Any] | None:
    """The last ``start``'s background pull and capture, as :class:`ModelsStatus` wrote them (None: none)."""
    try:
        doc = json.loads((state_dir / "start" / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class ModelsStatus:
    """``<state>/start/models.json``: one section per activity, rewritten whole (atomically) on each change."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._doc: dict[str, Any] = {}
        self._lock = threading.Lock()

    def update(self, section: str, **fields: Any) -> None:
        from ..fsutil import atomic_write_bytes, private_state_dir

        with self._lock:
            self._doc.setdefault(section, {}).update(fields, updated_at=time.time())
            data = json.dumps(self._doc, sort_keys=True).encode("utf-8")
            try:
                atomic_write_bytes(private_state_dir(self.state_dir, "start") / STATUS_NAME, data)
            except OSError as exc:  # a status file must never stop a pull or a capture
                log.debug("models status: %s", exc, extra={"event": "start.models.status"})

log = logging.getLogger("syncbridge.start")


class BackgroundPull:
    """``pull_models`` of the models that are not required, in a thread; :meth:`stop` cancels and waits."""

    def __init__(self, config: Config, manifests: Sequence[Path], *, environ: Mapping[str, str], tier: str,
                 status: ModelsStatus | None = None, on_event: Any = None) -> None:
        self.status = status or ModelsStatus(config.state_dir)
        self.config = config
        self.manifests = list(manifests)
        self.environ = environ
        self.tier = tier
        self.on_event = on_event  # progress (ModelEvent), for the start's status file
        self.cancel = threading.Event()
        self.report: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="syncbridge-start-models-background", daemon=True)

    def start(self) -> "BackgroundPull":
        log.info("models: the rest are pulled in the background while the app runs", extra={"event":
                                                                                           "start.models.background"})
        self.status.update("background", state="pulling", started_at=time.time())
        self._thread.start()
        return self

    def _run(self) -> None:
        from ..models import pull_models

        try:
            self.report = pull_models(self.config, self.manifests, environ=self.environ, tier=self.tier,
                                      cancel=self.cancel, only=lambda model: not model.required,
                                      on_event=self.on_event)
        except CancelledError as exc:
            self.error = exc
            self.status.update("background", state="stopped")
            log.info("models (background): stopped with the app; partial downloads stay in temp files for the "
                     "next start", extra={"event": "start.models.background_stopped"})
            return
        except (SyncBridgeError, OSError) as exc:
            self.error = exc
            self.status.update("background", state="failed", error=str(exc))
            log.error("models (background): %s", exc, extra={"event": "start.models.background_failed"})
            return
        from .result import models_line

        results = self.report.results
        self.status.update("background", state="done" if self.report.ok else "failed", line=models_line(results),
                           pulled=sum(1 for r in results if r.status == "pulled"),
                           present=sum(1 for r in results if r.status == "present"),
                           failed=[r.name for r in results if r.status in ("failed", "optional_failed")])
        level = logging.INFO if self.report.ok else logging.ERROR
        log.log(level, "models (background): %s", models_line(self.report.results),
                extra={"event": "start.models.background_done"})

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def failed(self) -> bool:
        """Whether a model failed (a stop is not a failure: the next start goes on where it stopped)."""
        if isinstance(self.error, CancelledError):
            return False
        return self.error is not None or (self.report is not None and not self.report.ok)

    def stop(self, timeout: float) -> None:
        self.cancel.set()
        self._thread.join(max(0.0, timeout))

    def finish(self, timeout: float) -> bool:
        """Stop (the app has ended); True when a download did not stop in time (it must not hold the exit)."""
        self.stop(timeout)
        if self.done:
            return False
        log.info("models (background): stopped with the app; partial downloads stay in temp files for the next "
                 "start", extra={"event": "start.models.background_stopped"})
        return True


def manifests_for(config: Config) -> tuple[list[Path], SyncBridgeError | None]:
    """The manifests the models step pulls: SYNCBRIDGE_MODELS, the profile's (capture on), and what
    SYNCBRIDGE_WORKFLOWS need; and the problem of a workflow that cannot be read, if any."""
    manifests = list(config.models.manifests)
    if config.models.capture:  # the models captured on earlier pods of this profile
        profile = profile_manifest_of(config)
        if profile is not None:
            manifests.append(profile)
    if config.models.workflows:
        from ..models.fromworkflow import write_workflow_manifest

        try:
            manifests.append(write_workflow_manifest(config))
        except SyncBridgeError as exc:
            return manifests, exc
    return manifests, None


def profile_manifest_of(config: Config) -> Path | None:
    """The profile's models as a manifest for the models step (SYNCBRIDGE_MODELS_CAPTURE), or None."""
    from ..models.capture import profile_manifest
    from ..store import open_store

    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        return profile_manifest(config, store)
    except SyncBridgeError as exc:
        log.warning("models: the profile could not be read: %s", exc, extra={"event": "start.profile"})
        return None
    finally:
        store.close()


def start_capture(config: Config) -> Any:
    """SYNCBRIDGE_MODELS_CAPTURE: from now on, a model arriving in the models folder goes to the cache."""
    from ..models.capture import Capturer, profile_for
    from ..store import open_store

    store = open_store(config.remote, state_dir=config.state_dir)
    profile = profile_for(config, store)
    status = ModelsStatus(config.state_dir)
    status.update("capture", profile=profile.key, models_dir=str(profile.models_dir), captured=[])
    captured: list[str] = []

    def said(item: Any) -> None:
        captured.append(item.path)
        status.update("capture", captured=list(captured), last=item.path)

    from ..models.localstate import HashCache

    capturer = Capturer(store, profile, models_dir=profile.models_dir, cache_prefix=profile.cache_prefix,
                        quiet=config.watch.quiet_seconds, on_capture=said,
                        hashes=HashCache.of(config.state_dir)).start()
    log.info("capture: models arriving in %s go to the cache and the profile %s", profile.models_dir, profile.key,
             extra={"event": "start.capture"})
    return capturer
