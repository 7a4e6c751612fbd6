"""Another template embedding syncbridge as a library: pull models, then push outputs in-process.

A template whose worker is Python (a queue worker, a Gradio or FastAPI app) needs no shell
wiring: it pulls its models before it loads them, and runs the output watcher in its own
process while it works. Everything comes from the same environment variables as the
ComfyUI template (R2_ENDPOINT, R2_BUCKET, R2_ACCESS_KEY, R2_SECRET_KEY, SYNCBRIDGE_MODELS,
COMFYUI_OUTPUT_DIR, ...); with R2_ENDPOINT unset the bucket is a local folder, so this runs
as is:

    python examples/library/embed.py --jobs 3

syncbridge logs through ``logging`` and never configures it: the application does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from syncbridge import SyncBridgeError, load_config
from syncbridge.models import pull_models
from syncbridge.watch import OutputWatcher


def render(target: Path, job: int) -> None:
    """The application's own work: here, a file appearing the way a generator writes it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(f"result of job {job}\n".encode() * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")

    try:
        config = load_config(os.environ)  # read once, from the mapping passed in
        print(f"bucket: {config.remote.describe()}")

        # 1. Models first: from the bucket's cache, else upstream; verified before use.
        if config.models.manifests:
            report = pull_models(config)
            print(report.table())
            if not report.ok:
                return 1

        # 2. Work with the watcher running in this process: every finished file is pushed as it
        #    appears; leaving the block drains what is pending (watch.drain_seconds).
        with OutputWatcher(config) as watcher:
            for job in range(1, args.jobs + 1):
                render(config.watch.dir / "jobs" / f"job_{job:05d}.txt", job)
                time.sleep(0.1)
            watcher.wait_idle(timeout=30)
            stats = watcher.stats()
            print(f"pushed {stats.uploaded} files to {stats.store}/{stats.prefix}, "
                  f"p95 latency {stats.p95_latency or 0:.3f}s, pending {stats.pending}")
    except SyncBridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
