"""The ``syncbridge`` command line.

Subcommands live in small modules; each exposes ``register(subparsers)`` that
adds its parser and sets ``func(args, ctx) -> int``. :data:`COMMAND_MODULES`
lists them in ``--help`` order.

Expected errors (:class:`~syncbridge.errors.SyncBridgeError`) print one clear
message and exit non-zero, without a traceback; secrets are redacted from
everything printed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from typing import Callable, Mapping, Sequence

from .. import __version__
from ..config import reference_markdown
from ..errors import SyncBridgeError
from ..redact import redact
from .common import Context, add_common
from .output import setup_logging

__all__ = ["main", "Context", "COMMAND_MODULES", "build_parser", "iter_subparsers", "add_common"]

log = logging.getLogger("syncbridge.cli")

# Each module has register(subparsers), with the commands it registers: a command line that
# names one of them imports only its module (a warm `models pull` does not load bulk, watch,
# fleet and doctor: about 25 ms of its 0.11 s); --help, `config`, `version` or an unknown word
# load them all. tests/cli/test_cli.py keeps this table true to what each module registers.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "syncbridge.cli.bulk": ("push", "pull", "bisync", "doctor"),
    "syncbridge.cli.watch": ("watch", "status"),
    "syncbridge.cli.models": ("models",),
    "syncbridge.cli.fleet": ("fleet",),
    "syncbridge.cli.start": ("start", "demo"),
}


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named on a command line (the first word that is not an option or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _version_cmd(args: argparse.Namespace, ctx: Context) -> int:
    ctx.out(f"syncbridge {__version__}")
    try:
        from ..rclone import Rclone

        rc = Rclone(ctx.config())
        ctx.out(f"rclone {'.'.join(map(str, rc.version()))} ({rc.binary})")
    except SyncBridgeError as exc:
        ctx.out(f"rclone: {exc}")
    return 0


def _config_cmd(args: argparse.Namespace, ctx: Context) -> int:
    if args.reference:
        sys.stdout.write(reference_markdown())
        return 0
    config = ctx.config()
    ctx.out(f"bucket:       {config.remote.describe()}")
    ctx.out(f"state dir:    {config.state_dir}")
    ctx.out(f"storage mode: {config.storage_mode} (workspace {config.workspace})")
    ctx.out(f"gpu tier:     {config.gpu_tier}")
    ctx.out(f"pod id:       {config.pod_id}")
    ctx.out(f"output dir:   {config.watch.dir} -> {config.watch.prefix}/ (watch {'on' if config.watch.enabled else 'off'})")
    ctx.out(f"manifests:    {', '.join(map(str, config.models.manifests)) or '(none)'}")
    for folder in config.folders:
        ctx.out(f"folder:       {folder.mode} {folder.local} <-> {folder.prefix}/")
    ctx.out(f"secrets set:  {', '.join(n for n, v in (('R2_ACCESS_KEY', config.remote.access_key), ('R2_SECRET_KEY', config.remote.secret_key), ('HF_TOKEN', config.models.hf_token), ('CIVITAI_API_KEY', config.models.civitai_api_key)) if v) or '(none)'}")
    return 0


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command-line parser, or (given ``argv`` naming a command) just what that command needs."""
    parser = argparse.ArgumentParser(
        prog="syncbridge",
        description="Keep GPU containers and an S3/R2 bucket in step: model warm-start, real-time output push, "
                    "bulk and two-way sync. With no R2_ENDPOINT set, the bucket is a local folder.",
        epilog="Configuration: environment variables (R2_ENDPOINT, R2_BUCKET, ...) and an optional TOML file; "
               "see `syncbridge config --reference`.",
    )
    parser.add_argument("--version", action="version", version=f"syncbridge {__version__}")
    add_common(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    word = _command_word(argv) if argv is not None else None
    modules = [m for m, commands in COMMAND_MODULES.items() if word in commands] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(name).register(sub)
    p = sub.add_parser("config", help="show the resolved configuration (or the reference)",
                       description="Show the resolved configuration, secrets hidden.")
    p.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    add_common(p)
    p.set_defaults(func=_config_cmd)
    p = sub.add_parser("version", help="show syncbridge's and rclone's versions",
                       description="Show syncbridge's and rclone's versions.")
    add_common(p)
    p.set_defaults(func=_version_cmd)
    for sub_parser in iter_subparsers(parser):
        if "--version" not in sub_parser._option_string_actions:
            sub_parser.add_argument("--version", action="version", version=f"syncbridge {__version__}")
    return parser


def iter_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (nested) subcommand parser below ``parser``, e.g. ``models``, ``models pull``."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                found.append(child)
                found += iter_subparsers(child)
    return found


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    ctx = Context(args, environ)
    setup_logging("debug" if args.verbose else ("warning" if args.quiet else "info"), secrets=ctx.secrets)
    func: Callable[[argparse.Namespace, Context], int] = args.func
    # SIGTERM unwinds like Ctrl-C, so a running rclone (in its own process group, which
    # a signal to ours does not reach) is terminated too. Commands with their own
    # handling (watch, start) replace this handler while they run.
    previous = _install_sigterm()
    try:
        return int(func(args, ctx) or 0)
    except _Terminated:
        print("syncbridge: terminated", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    except SyncBridgeError as exc:
        print(redact(f"syncbridge: error: {exc}", ctx.secrets), file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("syncbridge: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:  # a local file problem the command did not foresee: still no traceback
        print(redact(f"syncbridge: error: {exc}", ctx.secrets), file=sys.stderr, flush=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM (a BaseException, so cleanup blocks run but nothing swallows it)."""


def _install_sigterm():
    def handler(signum: int, frame: object) -> None:
        raise _Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (main() called from a library user's worker)
        return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# The bin/ scripts as console scripts, so `pip install syncbridge` brings them into any image's PATH
# (pyproject.toml [project.scripts]); bin/ keeps shell versions for images that copy files instead.
def start_entry() -> int:
    """``syncbridge-start ARGS`` = ``syncbridge start ARGS``."""
    return main(["start", *sys.argv[1:]])


def watch_entry() -> int:
    """``syncbridge-watch ARGS`` = ``syncbridge watch ARGS``."""
    return main(["watch", *sys.argv[1:]])


def pull_models_entry() -> int:
    """``syncbridge-pull-models ARGS`` = ``syncbridge models pull ARGS``."""
    return main(["models", "pull", *sys.argv[1:]])
