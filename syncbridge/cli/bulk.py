"""CLI: push, pull, bisync, doctor."""

from __future__ import annotations

import argparse
import sys

from .common import add_common
from ..bulk import bisync, pull, push
from ..doctor import run_doctor, summarize


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files matching GLOB (repeatable; rclone filter syntax)")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip files matching GLOB "
                   "(repeatable; excludes are applied before includes)")
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would be transferred, change nothing")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:

    p = sub.add_parser("push", help="copy a local folder or file to <bucket>/PREFIX",
                       description="Copy a local folder (or one file) to <bucket>/PREFIX. Nothing in the bucket "
                                   "is deleted. A file goes to PREFIX itself, or PREFIX/NAME when PREFIX ends with /.")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("prefix", metavar="PREFIX")
    _filters(p)
    p.add_argument("--transfers", type=_positive, metavar="N", help="parallel transfers (default: rclone.transfers)")
    add_common(p)
    p.set_defaults(func=_push)

    p = sub.add_parser("pull", help="copy <bucket>/PREFIX to a local folder",
                       description="Copy <bucket>/PREFIX (a folder, or one object) to LOCAL. Keys that would "
                                   "land outside LOCAL are skipped with a warning.")
    p.add_argument("prefix", metavar="PREFIX")
    p.add_argument("local", metavar="LOCAL")
    _filters(p)
    p.add_argument("--transfers", type=_positive, metavar="N", help="parallel transfers (default: rclone.transfers)")
    add_common(p)
    p.set_defaults(func=_pull)

    p = sub.add_parser("bisync", help="two-way sync of a local folder with <bucket>/PREFIX",
                       description="Two-way sync of LOCAL with <bucket>/PREFIX. The first run is a resync (only "
                                   "adds); later runs propagate changes and deletions both ways, with the "
                                   "configured conflict policy (default: newer keeps the name, the other copy "
                                   "is kept renamed).")
    p.add_argument("local", metavar="LOCAL")
    p.add_argument("prefix", metavar="PREFIX")
    _filters(p)
    p.add_argument("--resync", action="store_true", help="rebuild bisync's state (after a critical error); only "
                   "adds files, so files deleted on one side come back from the other")
    p.add_argument("--force", action="store_true", help="allow this run to delete more than bisync.max_delete "
                   "percent of the files (after the guard stopped a run whose deletions were intended)")
    add_common(p)
    p.set_defaults(func=_bisync)

    p = sub.add_parser("doctor", help="check binary, configuration, endpoint, credentials and bucket",
                       description="Check the rclone binary, the configuration, endpoint reachability, "
                                   "credentials and bucket access (list; put, read back and delete a probe "
                                   "object). One line per check, with a fix for each failure; exit 1 when any "
                                   "check fails.")
    add_common(p)
    p.set_defaults(func=_doctor)


def _announce(ctx) -> None:
    config = ctx.config()
    ctx.say(f"using {config.remote.describe()}")


def _run(ctx, label, fn, *args, **kwargs) -> int:
    _announce(ctx)
    progress = ctx.progress(label)
    try:
        summary = fn(ctx.config(), *args, on_progress=progress, **kwargs)
    finally:
        if progress:
            progress.close()
    ctx.out(summary.line())
    for name in summary.skipped:
        ctx.out(f"skipped unsafe key: {name!r}")
    if summary.skipped:
        # Objects left in the bucket that no file here will hold: not a success, whatever rclone says.
        print(f"[syncbridge] error: {len(summary.skipped)} object(s) not pulled: their keys cannot be a path below "
              f"the folder ('..', '.', absolute, a raw backslash or an empty segment); rename them in the bucket",
              file=sys.stderr, flush=True)
        return 1
    return 0


def _push(args, ctx) -> int:
    return _run(ctx, "push", push, args.local, args.prefix, include=args.include, exclude=args.exclude,
                dry_run=args.dry_run, transfers=args.transfers)


def _pull(args, ctx) -> int:
    return _run(ctx, "pull", pull, args.prefix, args.local, include=args.include, exclude=args.exclude,
                dry_run=args.dry_run, transfers=args.transfers)


def _bisync(args, ctx) -> int:
    return _run(ctx, "bisync", bisync, args.local, args.prefix, include=args.include, exclude=args.exclude,
                dry_run=args.dry_run, resync=args.resync, force=args.force)


def _doctor(args, ctx) -> int:
    checks = []
    for check in run_doctor(ctx.environ, config_file=args.config):
        checks.append(check)
        ctx.out(check.line())
    code, text = summarize(checks)
    ctx.out(text)
    return code
