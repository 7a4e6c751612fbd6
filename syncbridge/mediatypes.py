"""Content-Type from a file name: the same answer rclone gives, so an output looks the same in the
bucket whichever path took it there (the watcher's PUT, ``push``, ``bisync``).

rclone names a type with Go's ``mime.TypeByExtension`` and falls back to
``application/octet-stream``. Go's table is a built-in list, then the system's
shared-mime-info database (``globs2``; its first entry per extension wins and never
replaces a built-in one) or, when there is none, the ``mime.types`` files (which do);
rclone then adds a few media types of its own for extensions still unknown. This module
does the same, in the same order, from the same files, so the answer is rclone's on any
machine, a slim image without a database included.

Python's :mod:`mimetypes` is not used: its own table and file list differ from Go's
(``.opus``, ``.glb``, ``.mkv`` come out differently), and the point is one answer.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterable

__all__ = ["content_type", "MediaTypes", "DEFAULT_TYPE", "system_database"]

DEFAULT_TYPE = "application/octet-stream"

# Go's builtinTypesLower (src/mime/type.go of the Go that builds rclone 1.75: the types Firefox and
# Chrome both know). An older Go had 16 of these; the test against `push` catches a change.
_GO_BUILTIN = {
    ".ai": "application/postscript",
    ".apk": "application/vnd.android.package-archive",
    ".apng": "image/apng",
    ".avif": "image/avif",
    ".bin": "application/octet-stream",
    ".bmp": "image/bmp",
    ".com": "application/octet-stream",
    ".css": "text/css; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".ehtml": "text/html; charset=utf-8",
    ".eml": "message/rfc822",
    ".eps": "application/postscript",
    ".exe": "application/octet-stream",
    ".flac": "audio/flac",
    ".gif": "image/gif",
    ".gz": "application/gzip",
    ".htm": "text/html; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".ico": "image/vnd.microsoft.icon",
    ".ics": "text/calendar; charset=utf-8",
    ".jfif": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".m4a": "audio/mp4",
    ".mjs": "text/javascript; charset=utf-8",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".ogv": "video/ogg",
    ".opus": "audio/ogg",
    ".pdf": "application/pdf",
    ".pjp": "image/jpeg",
    ".pjpeg": "image/jpeg",
    ".png": "image/png",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".ps": "application/postscript",
    ".rdf": "application/rdf+xml",
    ".rtf": "application/rtf",
    ".shtml": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".text": "text/plain; charset=utf-8",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".txt": "text/plain; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
    ".wasm": "application/wasm",
    ".wav": "audio/wav",
    ".webm": "audio/webm",
    ".webp": "image/webp",
    ".xbl": "text/xml; charset=utf-8",
    ".xbm": "image/x-xbitmap",
    ".xht": "application/xhtml+xml",
    ".xhtml": "application/xhtml+xml",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xml": "text/xml; charset=utf-8",
    ".xsl": "text/xml; charset=utf-8",
    ".zip": "application/zip",
}
# rclone's own additions (fs/mimetype.go), for extensions that neither Go's list nor the system's
# database knows (a slim image without one).
_RCLONE_FALLBACK = {
    ".flac": "audio/flac",
    ".mpga": "audio/mpeg",
    ".mpega": "audio/mpeg",
    ".mp2": "audio/mpeg",
    ".mp3": "audio/mpeg",
    ".m4a": "audio/mpeg",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".opus": "audio/ogg",
    ".spx": "audio/ogg",
    ".wav": "audio/x-wav",
    ".tiff": "image/tiff",
    ".tif": "image/tiff",
    ".dif": "video/dv",
    ".dv": "video/dv",
    ".fli": "video/fli",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpeg",
    ".mpe": "video/mpeg",
    ".ts": "video/MP2T",
    ".mp4": "video/mp4",
    ".qt": "video/quicktime",
    ".mov": "video/quicktime",
    ".ogv": "video/ogg",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
    ".mpv": "video/x-matroska",
    ".mkv": "video/x-matroska",
    ".srt": "application/x-subrip",
}
# Go's src/mime/type_unix.go, in its order.
GLOBS_FILES = ("/usr/local/share/mime/globs2", "/usr/share/mime/globs2")
TYPES_FILES = ("/etc/mime.types", "/etc/apache2/mime.types", "/etc/apache/mime.types",
               "/etc/httpd/conf/mime.types")


def _normalise(mime_type: str) -> str | None:
    """Go's setExtensionType: parse the type, add ``charset=utf-8`` to a text type without one."""
    main, _, params = mime_type.partition(";")
    main = main.strip().lower()
    if main.count("/") != 1 or not all(main.split("/")) or any(c.isspace() for c in main):
        return None
    params = params.strip()
    if main.startswith("text/") and "charset" not in params.lower():
        params = f"{params}; charset=utf-8" if params else "charset=utf-8"
    return f"{main}; {params}" if params else main


class MediaTypes:
    """An extension -> type table built as Go builds its own (built-ins, then one system database)."""

    def __init__(self, *, globs: Iterable[str] = GLOBS_FILES, types: Iterable[str] = TYPES_FILES) -> None:
        self._exact: dict[str, str] = {}
        self._lower: dict[str, str] = {}
        for ext, typ in _GO_BUILTIN.items():
            self._set(ext, typ)
        self.source = "built-in list only"
        for name in globs:
            if self._load_globs(name):
                self.source = name
                break
        else:
            loaded = [name for name in types if self._load_types(name)]
            if loaded:
                self.source = ", ".join(loaded)
        for ext, typ in _RCLONE_FALLBACK.items():
            if ext not in self._exact and ext.lower() not in self._lower:
                self._set(ext, typ)

    def _set(self, ext: str, mime_type: str) -> None:
        normal = _normalise(mime_type)
        if normal is None:
            return
        self._exact[ext] = normal
        self._lower[ext.lower()] = normal

    def _load_globs(self, name: str) -> bool:
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) < 3 or not fields[0] or len(fields[2]) < 3:
                continue
            if fields[0].startswith("#") or not fields[2].startswith("*."):
                continue
            ext = fields[2][1:]
            if any(c in ext for c in "?*["):
                continue  # a glob, not a bare extension
            if ext in self._exact:
                continue  # weight order: the first entry wins, and a built-in one stays
            self._set(ext, fields[1])
        return True

    def _load_types(self, name: str) -> bool:
        try:
            text = Path(name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            fields = line.split()
            if len(fields) <= 1 or fields[0].startswith("#"):
                continue
            for ext in fields[1:]:
                if ext.startswith("#"):
                    break
                self._set("." + ext, fields[0])
        return True

    def lookup(self, name: str) -> str:
        """The Content-Type rclone stores for a file called ``name`` (a path or a key)."""
        base = name.rsplit("/", 1)[-1]
        dot = base.rfind(".")
        if dot < 0:
            return DEFAULT_TYPE
        ext = base[dot:]
        found = self._exact.get(ext) or self._lower.get(ext.lower())
        return found if found and "/" in found else DEFAULT_TYPE


_TABLE: MediaTypes | None = None
_TABLE_LOCK = threading.Lock()


def _table() -> MediaTypes:
    global _TABLE
    if _TABLE is None:
        with _TABLE_LOCK:
            if _TABLE is None:
                _TABLE = MediaTypes()
    return _TABLE


def content_type(name: str) -> str:
    """The Content-Type for ``name`` (loaded once per process from this machine's database)."""
    return _table().lookup(name)


def system_database() -> str:
    """Where the table came from: a globs2 or mime.types path, or 'built-in list only'."""
    return _table().source
