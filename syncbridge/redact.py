"""Keep secrets out of text: argv, stderr, log lines, error messages."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

MASK = "***"

# Flags whose value is a secret whatever it is (rclone and our own CLI).
_SECRET_FLAGS = ("--s3-secret-access-key", "--s3-access-key-id", "--rc-pass", "--rc-user", "--auth-key",
                 "--s3-session-token", "--password", "--token", "--pass")
_HEADER_RE = re.compile(r"(?i)(authorization:\s*(?:bearer|aws4-hmac-sha256)?\s*)\S.*")
_QUERY_RE = re.compile(r"(?i)([?&](?:token|api_?key|x-amz-signature|x-amz-credential|signature)=)[^&\s\"']+")


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (and obvious credentials) with ``***``."""
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _HEADER_RE.sub(lambda m: m.group(1) + MASK, text)
    text = _QUERY_RE.sub(lambda m: m.group(1) + MASK, text)
    return text


def redact_data(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string in it redacted."""
    secrets = list(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {redact(str(k), secrets): redact_data(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_data(v, secrets) for v in value]
    return value


def redact_argv(argv: Sequence[str], secrets: Iterable[str]) -> list[str]:
    """Redact an argv list: secret values and the value of any secret-bearing flag."""
    secrets = list(secrets)
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        if flag in _SECRET_FLAGS:
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact(arg, secrets))
    return out
