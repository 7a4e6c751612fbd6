"""The app first: the models ``start`` did not wait for, pulled in the background while the app runs.

With ``SYNCBRIDGE_MODELS_WAIT=required`` the models step pulls only the required models (marked
``required = true``, and those ``SYNCBRIDGE_WORKFLOWS`` need), the app starts, and this pulls the rest
with the same verification; each file is renamed into place only when complete, so ComfyUI sees a
model only whole. A stop cancels it within the shutdown budget; its resumable temp files stay for
the next start.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config
from ..errors import CancelledError, SyncBridgeError

__all__ = ["BackgroundPull"]

log = logging.getLogger("syncbridge.start")


class BackgroundPull:
    """``pull_models`` of the models that are not required, in a thread; :meth:`stop` cancels and waits."""

    def __init__(self, config: Config, manifests: Sequence[Path], *, environ: Mapping[str, str], tier: str) -> None:
        self.config = config
        self.manifests = list(manifests)
        self.environ = environ
        self.tier = tier
        self.cancel = threading.Event()
        self.report: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="syncbridge-start-models-background", daemon=True)

    def start(self) -> "BackgroundPull":
        log.info("models: the rest are pulled in the background while the app runs", extra={"event":
                                                                                           "start.models.background"})
        self._thread.start()
        return self

    def _run(self) -> None:
        from ..models import pull_models

        try:
            self.report = pull_models(self.config, self.manifests, environ=self.environ, tier=self.tier,
                                      cancel=self.cancel, only=lambda model: not model.required)
        except CancelledError as exc:
            self.error = exc
            log.info("models (background): stopped with the app; partial downloads stay in temp files for the "
                     "next start", extra={"event": "start.models.background_stopped"})
            return
        except (SyncBridgeError, OSError) as exc:
            self.error = exc
            log.error("models (background): %s", exc, extra={"event": "start.models.background_failed"})
            return
        from .result import models_line

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
