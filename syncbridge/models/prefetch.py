"""Many small cache objects in one rclone batch, in the background, while Python fetches the big ones.

One rclone process gives Go-speed concurrency on the other core; each model in the batch is put
in place as the batch delivers it (:meth:`~syncbridge.models.sources.CacheSource.fetch` waits for
its file), instead of waiting for a slot behind the large downloads.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import attrs

from ..config import Config
from .plan import BULK_MIN, PlanItem
from .sources import CacheSource

__all__ = ["Batch", "prefetch_small", "BATCH_MAX_SIZE"]

log = logging.getLogger(__name__)

BATCH_MAX_SIZE = 16 * 1024 * 1024


@attrs.frozen
class Batch:
    """A batch copy under way: its staging folder, the thread running it, the models in it."""

    staging: Path
    thread: threading.Thread
    names: frozenset[str]

    def close(self) -> None:
        """Wait for the batch and remove its staging folder (when the pull ends)."""
        self.thread.join()
        shutil.rmtree(self.staging, ignore_errors=True)


def prefetch_small(config: Config, cache: CacheSource | None, models_dir: Path, items: Sequence[PlanItem], *,
                   cancel: threading.Event) -> Batch | None:
    """Start copying the small cache objects of many missing models with one rclone batch.

    Returns the :class:`Batch` (closed by the caller when the pull ends), or None when there are too
    few such models to be worth a batch.
    """
    if cache is None:
        return None
    chosen = [item for item in items
              if item.chosen is not None and item.chosen.source == "cache" and not item.model.is_snapshot
              and (item.chosen.files[0].size or 0) < BATCH_MAX_SIZE]
    files = [item.chosen.files[0] for item in chosen]  # type: ignore[union-attr]
    if len(files) < BULK_MIN:
        return None
    from ..rclone import Rclone
    from ..rclone.argv import remote_path

    staging = models_dir / ".syncbridge" / f"batch-{os.getpid()}-{threading.get_ident()}"
    rc = Rclone(config)
    transfers = str(max(16, config.rclone.transfers))
    timeout = config.models.cache_timeout

    def run(extra: list[str], copied: Callable[[str], None]) -> None:
        def on_record(record) -> None:
            if record.object and record.msg.startswith("Copied"):
                copied(record.object)

        # --files-from lists each folder once, instead of a HEAD per file (--no-traverse).
        rc.run(["copy", remote_path(config.remote, cache.cache_prefix), str(staging), *extra,
                "--transfers", transfers, "--checkers", transfers, "--config", "/dev/null",
                "--ignore-checksum", "--use-json-log", "-v",
                # A cache that stops answering ends the batch within about three of its timeouts
                # (rclone's defaults wait 5 min per stalled read, 10 times, 3 runs); what the batch
                # did not deliver is then fetched one by one, and skipped once the cache is down.
                "--timeout", f"{timeout:g}s", "--contimeout", f"{min(timeout, 10.0):g}s",
                "--low-level-retries", "3", "--retries", "1"], with_common=False, cancel=cancel,
               on_record=on_record, what=f"copy {len(files)} small models from the cache")

    ready = threading.Event()

    def batch() -> None:
        started = time.monotonic()
        try:
            cache.prefetch(files, staging, run, registered=ready)
        finally:
            ready.set()
        log.info("batch copy of %d small models from the cache in %.1fs", len(files),
                 time.monotonic() - started, extra={"event": "models.batch", "files": len(files)})

    thread = threading.Thread(target=batch, name="models-batch", daemon=True)
    thread.start()
    ready.wait()
    return Batch(staging, thread, frozenset(item.model.name for item in chosen))
