"""Pure mapping between local relative paths and object keys, plus glob filters.

A key from the bucket is untrusted input: on pull it becomes a path, so any
key that would escape the local folder (``..``, absolute, backslashes, NUL,
empty segments) is refused with :class:`~syncbridge.errors.UnsafePathError`.
"""

from __future__ import annotations

import datetime as dt
import re
from functools import lru_cache
from typing import Iterable, Sequence

from .errors import UnsafePathError

__all__ = ["safe_text", "object_key", "sibling_key", "public_url", "key_to_relpath", "relpath_to_key", "join_key", "encode_name", "decode_name", "render_prefix", "PathFilter", "glob_to_regex",
           "MAX_KEY_BYTES"]

MAX_KEY_BYTES = 1024  # R2 and S3 limit


_QUOTE = "\u201b"  # rclone's encoder quote character
_FULL_DOTS = ("\uff0e", "\uff0e\uff0e")  # what rclone's Dot encoding turns "." and ".." into
_FULL_BACKSLASH = "\uff3c"  # what rclone's BackSlash encoding turns "\\" into
_INVALID_BYTE_RE = re.compile(r"[89A-F][0-9A-F]")
_QUOTED_FULL_DOTS = tuple("".join(_QUOTE + ch for ch in dots) for dots in _FULL_DOTS)


def encode_name(name: str) -> str:
    """Map control characters to their Unicode control pictures, as rclone's ``Ctl`` encoding does.

    The S3 remote is configured with ``Slash,InvalidUtf8,Dot,Ctl,BackSlash`` (see
    :func:`syncbridge.rclone.argv.remote_env`), so a file named ``a\nb.png`` is the key
    ``a\u240ab.png`` whether rclone or syncbridge's own uploader put it there. A name
    that already contains a control picture is quoted with U+201B, so the mapping
    stays reversible. For rclone ``Ctl`` is 0x01-0x1F: NUL (which no file name can
    hold; key checks refuse it) and DEL (0x7F) stay as they are, and so does U+2400; a name that is exactly one or two full-width dots is quoted, as rclone's
    ``Dot`` encoding does (checked against the real binary in tests/test_properties.py).
    """
    if name in _FULL_DOTS:
        return "".join(_QUOTE + ch for ch in name)
    out = []
    for ch in name:
        code = ord(ch)
        if 0 < code < 0x20:
            out.append(chr(0x2400 + code))
        elif 0x2401 <= code <= 0x241F or ch == _FULL_BACKSLASH:
            out.append(_QUOTE + ch)
        elif ch == "\\":
            # a backslash is a path separator somewhere: the key holds the full-width one instead, as
            # rclone's BackSlash encoding writes it, and both directions map it back to the same file
            out.append(_FULL_BACKSLASH)
        elif 0xDC80 <= code <= 0xDCFF:
            # a byte that is not UTF-8 (os.fsdecode's surrogate escape): rclone's InvalidUtf8
            # encoding writes it as the quote and two hex digits, b"\xff" -> "\u201bFF"
            out.append(f"{_QUOTE}{code - 0xDC00:02X}")
        else:
            out.append(ch)
    return "".join(out)


def decode_name(name: str) -> str:
    """Inverse of :func:`encode_name`."""
    if name in _QUOTED_FULL_DOTS:
        return name.replace(_QUOTE, "")
    out = []
    i = 0
    while i < len(name):
        ch = name[i]
        nxt = ord(name[i + 1]) if i + 1 < len(name) else 0
        if ch == _QUOTE and (0x2401 <= nxt <= 0x241F or nxt == ord(_FULL_BACKSLASH)):
            out.append(name[i + 1])  # a quoted, literal control picture or full-width backslash
            i += 2
            continue
        if ch == _FULL_BACKSLASH:
            out.append("\\")
            i += 1
            continue
        if ch == _QUOTE and _INVALID_BYTE_RE.match(name, i + 1):
            out.append(chr(0xDC00 + int(name[i + 1:i + 3], 16)))  # back to os.fsdecode's surrogate escape
            i += 3
            continue
        code = ord(ch)
        if 0x2401 <= code <= 0x241F:
            out.append(chr(code - 0x2400))
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _check_segments(text: str, what: str) -> list[str]:
    if not text:
        raise UnsafePathError(f"empty {what}", path=text)
    if "\x00" in text:
        raise UnsafePathError(f"{what} {text!r} contains a NUL byte", path=text)
    if "\\" in text:
        raise UnsafePathError(f"{what} {text!r} contains a backslash", path=text)
    if text.startswith("/"):
        raise UnsafePathError(f"{what} {text!r} is absolute", path=text)
    if re.match(r"^[A-Za-z]:", text):
        raise UnsafePathError(f"{what} {text!r} starts with a drive letter", path=text)
    parts = text.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"{what} {text!r} has an empty, '.' or '..' segment", path=text)
    return parts


def key_to_relpath(key: str) -> str:
    """A key (below some prefix) as a relative POSIX path that stays inside its folder.

    Raises:
        UnsafePathError: the key would escape the folder or cannot be a path.
    """
    return "/".join(_check_segments(key, "key"))


def relpath_to_key(rel: str) -> str:
    """A relative local path (with ``/`` separators) as a key segment; refuses anything that escapes."""
    return "/".join(_check_segments(rel, "path"))


def join_key(prefix: str, rel: str) -> str:
    """``<prefix>/<rel>`` with a checked ``rel``; keys over 1,024 bytes are refused."""
    rel = relpath_to_key(rel)
    prefix = prefix.strip("/")
    key = f"{prefix}/{rel}" if prefix else rel
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise UnsafePathError(f"key for {rel!r} is longer than {MAX_KEY_BYTES} bytes", path=rel)
    return key


_FIELD_RE = re.compile(r"\{(pod_id|date|hostname)(?::([^{}]*))?\}")


def render_prefix(template: str, *, pod_id: str, now: dt.datetime, hostname: str = "") -> str:
    """Fill ``{pod_id}``, ``{hostname}`` and ``{date}`` / ``{date:%Y/%m}`` into a key prefix."""

    def fill(match: re.Match[str]) -> str:
        name, fmt = match.group(1), match.group(2)
        if name == "pod_id":
            value = pod_id
        elif name == "hostname":
            value = hostname or pod_id
        else:
            value = now.strftime(fmt or "%Y-%m-%d")
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", value) if name != "date" else value

    out = _FIELD_RE.sub(fill, template).strip("/")
    if out:
        _check_segments(out, "prefix")
    return out


@lru_cache(maxsize=512)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """rclone-style glob: ``*`` and ``?`` stay within a segment, ``**`` crosses them.

    A pattern without ``/`` matches the base name anywhere; one with ``/`` is
    anchored at the folder root.
    """
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.lstrip("/")
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        elif c == "{":
            end = pattern.find("}", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                alts = pattern[i + 1:end].split(",")
                out.append("(?:" + "|".join(re.escape(a) for a in alts) + ")")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    body = "".join(out)
    if anchored:
        return re.compile(rf"^{body}$")
    return re.compile(rf"^(?:.*/)?{body}$")


class PathFilter:
    """Include/exclude globs over relative paths. Excludes win; no include list means everything."""

    def __init__(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> None:
        self.include: Sequence[str] = tuple(include)
        self.exclude: Sequence[str] = tuple(exclude)
        self._inc = [glob_to_regex(p) for p in self.include]
        self._exc = [glob_to_regex(p) for p in self.exclude]

    def excluded(self, rel: str) -> bool:
        return any(rx.match(rel) for rx in self._exc)

    def __call__(self, rel: str) -> bool:
        """Whether the file at relative path ``rel`` is selected."""
        if self.excluded(rel):
            return False
        if not self._inc:
            return True
        return any(rx.match(rel) for rx in self._inc)

    def dir_excluded(self, rel_dir: str) -> bool:
        """Whether a whole folder is excluded (so it need not be watched or scanned)."""
        probe = rel_dir.rstrip("/") + "/\x00probe"
        return any(rx.match(probe) for rx in self._exc) or any(rx.match(rel_dir) for rx in self._exc)


def public_url(template: str, key: str) -> str:
    """The public URL of ``key`` from ``SYNCBRIDGE_PUBLIC_URL``: ``{key}`` is replaced by the key,
    percent-encoded per segment (spaces, ``#``, ``?``, non-ASCII); a template without ``{key}`` gets
    ``/<key>`` appended."""
    from urllib.parse import quote

    quoted = quote(key.encode("utf-8", "surrogateescape"), safe="/~")
    if "{key}" in template:
        return template.replace("{key}", quoted)
    return template.rstrip("/") + "/" + quoted


def safe_text(rel: str) -> str:
    """``rel`` with bytes that are not UTF-8 (surrogate escapes from ``os.fsdecode``) as U+FFFD.

    Object keys must be UTF-8. Two names differing only in such bytes map to
    the same key; the collision check then keeps both (a sibling key).
    """
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def object_key(prefix: str, rel: str) -> str:
    """``<prefix>/<rel>`` with each segment through :func:`keys.encode_name` (rclone's Ctl encoding).

    Raises:
        UnsafePathError: the path cannot be a key (empty segment, too long...).
    """
    # Bytes that are not UTF-8 are encoded as rclone does ("\u201bFF"), not replaced by U+FFFD:
    # the same file pushed by rclone (push, bisync) must land on the same key.
    return join_key(prefix, "/".join(encode_name(part) for part in rel.split("/")))


def sibling_key(key: str, token: str) -> str:
    """A key next to ``key`` for a file that must not overwrite it: ``a/x_00001_.png`` -> ``a/x_00001_.~token.png``.

    The token goes before the last extension so the object keeps its type.
    """
    head, sep, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dot file
        new = f"{name}.~{token}"
    else:
        new = f"{stem}.~{token}.{ext}"
    return f"{head}{sep}{new}"
