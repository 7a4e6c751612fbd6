"""Is the bucket usable? The checks ``doctor`` prints and ``start`` runs before anything else, one code
path: the endpoint answers (TCP, TLS, HTTP), the clock agrees with it, the credentials and the bucket
work (a listing), and a probe object can be put, read back and deleted under the fleet prefix.

Each check is a :class:`Check` with a fix in the user's words; a store's refusal is told through
:mod:`syncbridge.diagnose`, so it names the variable to fix (``R2_SECRET_KEY``, ``R2_BUCKET``...).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import attrs

from .config import Config
from .diagnose import diagnose
from .errors import StoreError, SyncBridgeError
from .store import S3Store, Store, check_endpoint, open_store

__all__ = ["Check", "bucket_checks", "endpoint_check", "clock_check", "first_failure", "describe_store_error"]

MAX_SKEW_SECONDS = 300  # S3 signatures are refused beyond 15 minutes; warn well before


@attrs.frozen
class Check:
    """One check's outcome: ``[ok  ] name: detail``, or ``[FAIL] name: detail`` and a fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False
    setting: str | None = None  # the variable a failure points at

    def line(self) -> str:
        mark = "FAIL" if not self.ok else ("warn" if self.warning else "ok  ")
        text = f"[{mark}] {self.name}: {self.detail}"
        if self.fix and not self.ok:
            text += f"\n       fix: {self.fix}"
        return text


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


def endpoint_check(endpoint: str, timeout: float = 3.0, ca_bundle: Path | None = None) -> Check:
    """TCP connect, TLS handshake and an HTTP answer, each failure with its fix."""
    parts = urlsplit(endpoint)
    host_port = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    try:
        seconds = check_endpoint(endpoint, timeout=timeout, ca_bundle=ca_bundle)
    except StoreError as exc:
        if exc.code in _ENDPOINT_FIXES:
            detail, cause_attr, fix = _ENDPOINT_FIXES[exc.code]
            why = (getattr(exc.__cause__, cause_attr, None) or exc.__cause__) if cause_attr else None
            setting = "SYNCBRIDGE_CA_BUNDLE" if exc.code == "CertificateUntrusted" else "R2_ENDPOINT"
            return Check("endpoint", False, f"{host_port}: {detail.format(why)}", fix, setting=setting)
        if exc.code == "NameResolution":
            cause = getattr(exc.__cause__, "strerror", None) or exc.__cause__
            return Check("endpoint", False, f"cannot resolve {parts.hostname}: {cause}",
                         "check R2_ENDPOINT's host name and this machine's DNS", setting="R2_ENDPOINT")
        reason = "connection refused" if exc.code == "ConnectionRefused" else str(exc.__cause__ or exc)
        return Check("endpoint", False, f"{host_port}: {reason}",
                     "check R2_ENDPOINT (scheme, host, port) and that the server is running and reachable from here",
                     setting="R2_ENDPOINT")
    return Check("endpoint", True, f"{host_port} reachable ({seconds * 1000:.0f} ms)")


def describe_store_error(exc: StoreError) -> tuple[str, str, str | None]:
    """(detail, fix, setting) for a store's refusal, from the one table in :mod:`syncbridge.diagnose`."""
    found = diagnose(exc.code, exc.status)
    if exc.fix:
        what = found.what if found is not None else str(exc)
        shown = exc.code or (str(exc.status) if exc.status else "")
        return f"{what} ({shown})" if shown else what, exc.fix, exc.setting
    if exc.retryable:
        return str(exc), "the endpoint did not answer properly; check R2_ENDPOINT and the network, then try again", \
            "R2_ENDPOINT"
    return str(exc), "check R2_ENDPOINT, R2_BUCKET and the token's permissions", None


def clock_check(store: S3Store) -> Check:
    """This machine's clock against the endpoint's ``Date`` header (R2 sends one; its emulator does not)."""
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
                     "sync the clock (NTP); S3 refuses requests signed more than 15 minutes off",
                     setting="the system clock")
    return Check("clock", True, f"skew {skew:+.1f}s")


def bucket_checks(config: Config, *, after_list: Callable[[], Check] | None = None) -> Iterator[Check]:
    """Endpoint, clock, bucket listing, a put/read/delete round trip, conditional writes; stops at the
    first failure that makes the rest meaningless. ``after_list`` adds a check once the bucket lists
    (doctor: rclone's own listing)."""
    if not config.remote.is_local:
        tcp = endpoint_check(config.remote.endpoint or "", ca_bundle=config.remote.ca_bundle)
        yield tcp
        if not tcp.ok:
            return
    store: Store | None = None
    try:
        store = open_store(config.remote, state_dir=config.state_dir, max_attempts=1)
        if isinstance(store, S3Store):
            yield clock_check(store)
        try:
            store.check_bucket()
            yield Check("bucket access", True, f"listed {config.remote.bucket!r}")
        except StoreError as exc:
            detail, fix, setting = describe_store_error(exc)
            yield Check("bucket access", False, f"listing {config.remote.bucket!r}: {detail}", fix, setting=setting)
            return
        if after_list is not None:
            yield after_list()
        key = f"{config.fleet.prefix}/probe/{config.pod_id}-{uuid.uuid4().hex[:8]}"
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
            detail, fix, setting = describe_store_error(exc)
            yield Check("read/write", False, f"probe object {key!r}: {detail}", fix, setting=setting)
            return
        finally:
            with contextlib.suppress(StoreError):
                store.delete(key)
        try:
            cond = store.conditional_writes(f"{config.fleet.prefix}/probe")
            yield Check("conditional writes", True, "supported (If-None-Match)" if cond else
                        "NOT enforced by this store: leases and fleet cache fills fall back to safe waits",
                        warning=not cond)
        except StoreError as exc:
            yield Check("conditional writes", True, f"could not be probed: {exc}", warning=True)
    except SyncBridgeError as exc:
        yield Check("bucket access", False, str(exc), "check the configuration")
    except OSError as exc:  # the local bucket's folder cannot be made or read
        yield Check("bucket access", False, f"{config.remote.describe()}: {exc.strerror or exc}",
                    "set SYNCBRIDGE_STATE_DIR (or SYNCBRIDGE_LOCAL_BUCKET_DIR) to a writable folder",
                    setting="SYNCBRIDGE_STATE_DIR")
    finally:
        if store is not None:
            store.close()


def first_failure(checks: Iterator[Check]) -> tuple[list[Check], Check | None]:
    """Run checks until one fails: (every check run, the failure or None)."""
    done: list[Check] = []
    for check in checks:
        done.append(check)
        if not check.ok:
            return done, check
    return done, None
