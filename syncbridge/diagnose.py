"""One table from what a store (R2 above all) or rclone answers to what the user reads: what failed,
which setting to fix, how, and whether trying again can help.

Every command and the library's errors go through :func:`diagnose` (a store's error code and HTTP
status) or :func:`diagnose_text` (rclone's log lines), so a wrong secret reads the same in
``doctor``, ``start``, ``watch``, ``push`` and ``models pull``:

=================================  ====================  ============================  =====
what the store answers             R2 (and others)       setting                       fatal
=================================  ====================  ============================  =====
unknown access key                 401 Unauthorized      R2_ACCESS_KEY                 yes
                                   (AWS/moto:
                                   InvalidAccessKeyId)
wrong secret                       403                   R2_SECRET_KEY                 yes
                                   SignatureDoesNotMatch
missing bucket                     404 NoSuchBucket      R2_BUCKET                     yes
no permission (read-only token,    403 AccessDenied      the token's permissions       yes
token for another bucket)
clock off by more than 15 min      403                   the machine's clock           yes
                                   RequestTimeTooSkewed
header R2 does not take            501 NotImplemented    none: a syncbridge bug        yes
expired presigned URL              403 ExpiredRequest    SYNCBRIDGE_PRESIGN_SECONDS    yes
untrusted TLS certificate          (handshake)           SYNCBRIDGE_CA_BUNDLE          yes
endpoint down / unreachable        (connect)             R2_ENDPOINT                   no
slow down, 5xx                     429, 500-504          none                          no
=================================  ====================  ============================  =====

R2 answers a HEAD without a body, so a HEAD's 401 or 403 carries no code: a 401 still names the
access key; a bare 403 is either a wrong secret or a token without access, and says both.
"""

from __future__ import annotations

import re
from typing import Iterable

import attrs

__all__ = ["Diagnosis", "diagnose", "diagnose_text", "FATAL_CODES"]


@attrs.frozen
class Diagnosis:
    """What a failure means to the user."""

    code: str  # the store's code this row stands for (Unauthorized, SignatureDoesNotMatch...)
    what: str  # what went wrong, in the user's words
    setting: str | None  # the variable (or thing) to fix, None when nothing the user set is at fault
    fix: str
    fatal: bool  # trying again cannot help: never labelled retry, never retried for minutes

    def text(self) -> str:
        """``what: fix`` for an error message."""
        return f"{self.what}: {self.fix}"


_ACCESS_KEY = Diagnosis(
    "Unauthorized", "the endpoint does not know this access key", "R2_ACCESS_KEY",
    "set R2_ACCESS_KEY to the API token's 'Access Key ID' (R2 > Manage API tokens), not the token value", True)
_SECRET = Diagnosis(
    "SignatureDoesNotMatch", "the secret does not match the access key", "R2_SECRET_KEY",
    "set R2_SECRET_KEY to the API token's 'Secret Access Key' (shown once when the token is made)", True)
_BUCKET = Diagnosis(
    "NoSuchBucket", "the bucket does not exist", "R2_BUCKET",
    "fix R2_BUCKET, or create the bucket (R2 dashboard > Create bucket; an 'Object Read & Write' token cannot "
    "create buckets)", True)
_DENIED = Diagnosis(
    "AccessDenied", "the token may not do this (read-only, or scoped to other buckets)", "R2_ACCESS_KEY",
    "give the API token behind R2_ACCESS_KEY 'Object Read & Write' on this bucket", True)
_BARE_403 = Diagnosis(
    "Forbidden", "access refused (a wrong secret, or a token without access to this bucket)", "R2_SECRET_KEY",
    "check R2_SECRET_KEY, and that the token behind R2_ACCESS_KEY has 'Object Read & Write' on the bucket", True)
_SKEW = Diagnosis(
    "RequestTimeTooSkewed", "this machine's clock is more than 15 minutes off", "the system clock",
    "sync the clock (NTP); S3 signatures are refused beyond 15 minutes", True)
_NOT_IMPLEMENTED = Diagnosis(
    "NotImplemented", "the endpoint refused a header syncbridge sent", None,
    "this is a bug in syncbridge, not in your settings: please report it with this message", True)
_EXPIRED = Diagnosis(
    "ExpiredRequest", "a presigned URL expired before it was used", "SYNCBRIDGE_PRESIGN_SECONDS",
    "give presigned URLs a longer lifetime (SYNCBRIDGE_PRESIGN_SECONDS), or check the machine's clock", True)
_TLS = Diagnosis(
    "CertificateUntrusted", "the endpoint's TLS certificate is not trusted", "SYNCBRIDGE_CA_BUNDLE",
    "for a private CA, set SYNCBRIDGE_CA_BUNDLE to its PEM file; otherwise check R2_ENDPOINT", True)
_INVALID_BUCKET = Diagnosis(
    "InvalidBucketName", "the bucket name is not valid", "R2_BUCKET",
    "use 3-63 characters: a-z, 0-9, '.', '-'", True)
_UNREACHABLE = Diagnosis(
    "EndpointUnreachable", "the endpoint cannot be reached", "R2_ENDPOINT",
    "check R2_ENDPOINT (scheme, host, port) and the network; retried", False)
_PREFIX_IS_FILE = Diagnosis(
    "IsFile", "rclone took the prefix for a file: its HEAD of the prefix was refused without a reason (a wrong "
    "secret, a token without access, or a proxy that alters rclone's signed headers), or an object has the "
    "prefix's exact name", "R2_SECRET_KEY",
    "run `syncbridge doctor`: it checks the keys, the bucket and rclone's own access one by one", True)
_BUSY = Diagnosis(
    "SlowDown", "the store is busy or failing for a moment", None, "retried with backoff", False)

_BY_CODE = {
    "Unauthorized": _ACCESS_KEY,
    "InvalidAccessKeyId": _ACCESS_KEY,
    "SignatureDoesNotMatch": _SECRET,
    "NoSuchBucket": _BUCKET,
    "AccessDenied": _DENIED,
    "AllAccessDisabled": _DENIED,
    "RequestTimeTooSkewed": _SKEW,
    "NotImplemented": _NOT_IMPLEMENTED,
    "ExpiredRequest": _EXPIRED,
    "CertificateUntrusted": _TLS,
    "InvalidBucketName": _INVALID_BUCKET,
    "EndpointConnectionError": _UNREACHABLE,
    "ConnectionRefused": _UNREACHABLE,
    "NameResolution": _UNREACHABLE,
    "ConnectTimeoutError": _UNREACHABLE,
    "SlowDown": _BUSY,
    "ServiceUnavailable": _BUSY,
    "InternalError": _BUSY,
    "TooManyRequests": _BUSY,
}
FATAL_CODES = frozenset(code for code, d in _BY_CODE.items() if d.fatal)


def diagnose(code: str | None, status: int | None = None) -> Diagnosis | None:
    """The row for a store's error ``code`` (and HTTP ``status``); ``None`` when the table has none."""
    row = _BY_CODE.get(code or "")
    if row is not None:
        return row
    if status == 401 or code == "401":
        return _ACCESS_KEY
    if status == 403 or code == "403":
        return _BARE_403
    if status is not None and (status >= 500 or status == 429):
        return _BUSY
    return None


# rclone's log lines name the S3 code ("api error SignatureDoesNotMatch: ...", "StatusCode: 403,
# ... InvalidAccessKeyId"); the first code found in the last lines decides.
_TEXT_CODES = re.compile(r"\b(" + "|".join(sorted((c for c, d in _BY_CODE.items() if d.fatal), key=len,
                                                   reverse=True)) + r")\b")
_TEXT_STATUS = re.compile(r"(?:StatusCode|status code)[:=]\s*(401|403)\b")


def diagnose_text(lines: Iterable[str]) -> Diagnosis | None:
    """The row for rclone's stderr (a fatal store answer in its log lines), else ``None``."""
    text = "\n".join(lines)
    match = _TEXT_CODES.search(text)
    if match:
        return _BY_CODE[match.group(1)]
    if "x509: certificate" in text or "certificate signed by unknown authority" in text:
        return _TLS
    if "is a file not a directory" in text:  # rclone's NewFs after a bare 403 on its HEAD of the prefix
        return _PREFIX_IS_FILE
    match = _TEXT_STATUS.search(text)
    if match:
        return diagnose(None, int(match.group(1)))
    return None
