"""Real-time output push: every finished file in the output folder goes to the bucket at once.

:class:`OutputWatcher` runs in one process with a few threads:

* the **reader** blocks on inotify (:class:`~syncbridge.watch.inotify.TreeWatcher`)
  and only enqueues: a file is ready on ``IN_CLOSE_WRITE`` or ``IN_MOVED_TO``;
* the **scanner** walks the folder at start-up (catch-up), after an inotify
  overflow, for new subfolders, for subtrees that could not be watched, and
  periodically on network file systems (both: :mod:`~syncbridge.watch.intake`);
* the **dispatcher** hands due files to a bounded pool of **workers** that
  share one store client (one boto3 client, one connection pool); what is due
  when (batch deadline, backoff, settle, quiet, key spacing, the store gate) is
  the :class:`~syncbridge.watch.scheduler.Schedule`'s decision, taken under the
  watcher's one lock;
* each worker pushes one file at a time (:class:`~syncbridge.watch.upload.Uploader`:
  no clobbering, no half files);
* the **maintainer** publishes ``<state_dir>/watch/status.json`` about once a
  second for ``syncbridge status`` (:mod:`~syncbridge.watch.status`).

Every file's state is in the :class:`~syncbridge.watch.journal.Journal`, so after a
crash (``kill -9``) the next start pushes what was pending and skips what is
already in the bucket.

Retryable errors (connection refused, timeouts, 5xx, 429) back off
exponentially with jitter and retry without limit (while the store is failing,
one probe at a time); fatal ones (403, NoSuchBucket) are logged with the key,
journalled as failed and retried every few minutes, and the watcher keeps
running. :meth:`OutputWatcher.stop` stops accepting, pushes what is pending
until the drain deadline and records the rest.

The modules, from the bottom up:

* :mod:`~syncbridge.watch.events` (pure): the inotify ABI, what an event means, the deadline batcher;
* :mod:`~syncbridge.watch.scheduler` (pure): what is due when, with the clock passed in;
* :mod:`~syncbridge.watch.inotify`: recursive watches and the folder scan;
* :mod:`~syncbridge.watch.journal`: the durable journal (SQLite);
* :mod:`~syncbridge.watch.notify`: the pushed-output record, listeners and the webhook;
* :mod:`~syncbridge.watch.status`: the stats, ``status.json`` and the state-directory lock;
* :mod:`~syncbridge.watch.upload`: one no-clobber upload;
* :mod:`~syncbridge.watch.intake`: which files count, the reader and the scanner;
* :mod:`~syncbridge.watch.watcher`: :class:`OutputWatcher`, the wiring and the lifecycle.

Names are imported lazily (like :mod:`syncbridge`'s), so ``import syncbridge.watch.journal``
(``syncbridge status``) does not load the store client.
"""

from __future__ import annotations

from ..lazy import lazy_exports

# public name -> module (under syncbridge.watch) that defines it
_EXPORTS = {
    "OutputWatcher": "watcher",
    "WatchError": "watcher",  # defined in syncbridge.errors
    "run_watch": "watcher",
    "WatchStats": "status",
    "DrainResult": "status",
    "read_status": "status",
    "status_path": "status",
    "journal_path": "status",
    "STATUS_NAME": "status",
    "ORIGIN_META": "upload",
    "PushedOutput": "notify",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
