"""CLI: start (a container's start-up, app and shutdown), demo (the whole path on loopback)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import add_common
from ..fsutil import atomic_write_bytes
from ..start import StartOptions, outer_start_pid, run_start

START_DESCRIPTION = """\
A container's start-up as one command, in order: detect storage mode and GPU tier; check the
bucket (the checks `syncbridge doctor` runs: endpoint, credentials, bucket, a put/read/delete
probe) and stop naming the setting to fix when it is not usable, unless
SYNCBRIDGE_ON_BUCKET_FAILURE=warn; pull models (SYNCBRIDGE_MODELS); pull or bisync the configured folders (SYNCBRIDGE_FOLDERS or [[folder]]);
start the output watcher in the background when ENABLE_R2_SYNC is true; run APP as a child,
forwarding SIGTERM/SIGINT to it. When APP exits, or on SIGTERM, the watcher drains within
watch.drain_seconds and the push/bisync folders are pushed once more with what is left of the
start.stop_seconds budget (a spot pod is killed 5 s after SIGTERM). Exits with APP's status
(128+N when a signal N killed it). Without APP, the watcher runs in the foreground until SIGTERM.
Each step logs one line, prefixed [syncbridge], with its outcome and duration."""

START_EPILOG = """\
examples:
  syncbridge start -- python main.py --listen 0.0.0.0 --port 8188
  syncbridge start --no-models --watch              # only the watcher, in the foreground
  SYNCBRIDGE_FOLDERS='bisync:/workspace/ComfyUI/user/default/workflows=workflows' syncbridge start -- ...
exit status: APP's; 1 when the bucket is not usable (SYNCBRIDGE_ON_BUCKET_FAILURE=stop), when a
model failed and models.on_failure is stop, or when APP exited 0 but outputs were not pushed
(the bucket refused them, or SYNCBRIDGE_ON_BUCKET_FAILURE=warn let start-up go on without it);
2 bad configuration; 128+N when signal N stopped start-up before APP ran."""

DEMO_DESCRIPTION = """\
The whole path on this machine, with no credentials: starts a loopback S3 server (rclone serve
s3, in a temporary folder), seeds a small model in its cache and a workflow in the bucket, runs
`syncbridge start` with a stand-in app that writes images, a rewritten video and files in
subfolders, shows each output landing with its latency, stops the app with SIGTERM, and prints
a summary (models and their source, outputs pushed, p50/p95 latency, shutdown time, nothing
lost). Cleans up after itself. Exit status 0 only when every output is in the bucket with the
same bytes."""


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("start", help="container start-up: models, folders, watcher, then run APP and drain",
                       description=START_DESCRIPTION, epilog=START_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    toggle = argparse.BooleanOptionalAction
    p.add_argument("--models", action=toggle, default=None,
                   help="pull models from the manifests (default: start.models, true)")
    p.add_argument("--folders", action=toggle, default=None,
                   help="pull/bisync the configured folders before APP (default: start.folders, true)")
    p.add_argument("--watch", action=toggle, default=None,
                   help="run the output watcher (default: ENABLE_R2_SYNC, false)")
    p.add_argument("--final-push", action=toggle, default=None,
                   help="push/bisync the folders once more after APP (default: start.final_push, true)")
    p.add_argument("--models-on-failure", choices=("stop", "warn"), default=None,
                   help="a model that cannot be pulled stops start-up or only warns (default: models.on_failure)")
    p.add_argument("--stop-seconds", type=float, default=None, metavar="S",
                   help="shutdown budget after SIGTERM (default: start.stop_seconds, 4.5)")
    p.add_argument("--report", metavar="PATH", default=None,
                   help="write what each step did as JSON to PATH when start exits")
    add_common(p)
    p.add_argument("app", nargs=argparse.REMAINDER, metavar="-- APP [ARGS...]",
                   help="the application to run (everything after --)")
    p.set_defaults(func=_start)

    p = sub.add_parser("demo", help="try the whole path locally: loopback S3, model cache, live output push",
                       description=DEMO_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=6, metavar="N", help="images the stand-in app writes (default 6)")
    p.add_argument("--interval", type=float, default=0.25, metavar="S",
                   help="seconds between the stand-in app's outputs (default 0.25)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    add_common(p)
    p.set_defaults(func=_demo)


def _app_argv(app: list[str]) -> list[str]:
    return app[1:] if app and app[0] == "--" else app


def _exec_directly(app: list[str], outer: int, environ) -> int:
    print(f"[syncbridge] start: already running under syncbridge start (pid {outer}); running the app directly",
          file=sys.stderr, flush=True)
    if not app:
        return 0
    try:
        os.execvpe(app[0], app, dict(environ))
    except OSError as exc:
        print(f"syncbridge start: error: cannot run {app[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    return 0  # pragma: no cover - execvpe does not return


def _start(args: argparse.Namespace, ctx) -> int:
    outer = outer_start_pid(ctx.environ)
    if outer is not None:
        return _exec_directly(_app_argv(args.app), outer, ctx.environ)
    if args.stop_seconds is not None and args.stop_seconds < 0:
        print("syncbridge start: error: --stop-seconds must be at least 0", file=sys.stderr)
        return 2
    config = ctx.config()
    ctx.say(f"using {config.remote.describe()}")
    options = StartOptions.from_config(config, models=args.models, folders=args.folders, watch=args.watch,
                                       final_push=args.final_push, models_on_failure=args.models_on_failure,
                                       stop_seconds=args.stop_seconds)
    result = run_start(config, _app_argv(args.app), options=options, environ=ctx.environ)
    if args.report:
        atomic_write_bytes(Path(args.report), (json.dumps(result.as_dict(), indent=2) + "\n").encode(), mode=0o644)
    if result.abandoned:
        # A worker that ignored its cancel (a download stuck in a read) would keep the
        # interpreter alive past the spot pod's deadline: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    return result.exit_code


def _demo(args: argparse.Namespace, ctx) -> int:
    from ..demo import run_demo

    if args.images < 1 or args.interval < 0:
        print("syncbridge demo: error: --images must be at least 1 and --interval at least 0", file=sys.stderr)
        return 2
    result = run_demo(images=args.images, interval=args.interval, keep=args.keep, out=ctx.out,
                      verbose=bool(getattr(args, "verbose", False)))
    return 0 if result.ok else 1
