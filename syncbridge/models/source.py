"""What one model source is and says: the two-step interface and the records passed between the steps.

The ladder of sources is :mod:`syncbridge.models.sources`; this is the vocabulary every part of a
pull speaks (the cache entry protocol, the download engines, the planner), kept out of the ladder
so those do not load every source.

Each source is an object with two steps:

* :meth:`Source.offer` asks (cheaply: one HEAD or metadata call) what the
  source would deliver: the files, each with its size and sha256 when the
  source knows them. :class:`NotAvailable` means "not here, try the next one".
* :meth:`Source.fetch` writes one file to a temp path the caller chose (beside
  the target) and returns what was written (:class:`Fetched`: size and sha256,
  hashed while writing). The caller verifies and renames; a source never
  touches the final path.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import attrs

from ..errors import CancelledError, SyncBridgeError
from ..keys import encode_name, join_key
from .manifest import ModelSpec

__all__ = ["OnBytes", "RemoteFile", "Offer", "Fetched", "SourceError", "NotAvailable", "Source", "cache_key",
           "origin_of", "safe_url", "check_cancel"]

OnBytes = Callable[[int], None]


@attrs.frozen
class RemoteFile:
    """One file a source offers. ``rel`` is ``""`` for a single-file model, else the path inside the snapshot.

    ``size`` is exact when set; ``approx_size`` (CivitAI's ``sizeKB``) only feeds the disk-space check.
    """

    rel: str
    size: int | None
    sha256: str | None
    ref: Any = None
    approx_size: int | None = None

    @property
    def planned_size(self) -> int:
        return self.size if self.size is not None else (self.approx_size or 0)


@attrs.frozen
class Offer:
    """What a source would deliver for one model."""

    source: str
    detail: str
    files: tuple[RemoteFile, ...]
    meta: Any = None  # snapshot: repo, revision (written into the snapshot index)

    @property
    def size(self) -> int:
        return sum(f.planned_size for f in self.files)

    @property
    def size_known(self) -> bool:
        return all(f.size is not None for f in self.files)


@attrs.frozen
class Fetched:
    """What a fetch wrote: size and sha256 of the temp file."""

    size: int
    sha256: str


class SourceError(SyncBridgeError, OSError):
    """A source failed for one model; :attr:`retryable` says whether the same source may work on a retry."""

    def __init__(self, message: str, *, source: str, retryable: bool = False) -> None:
        self.source = source
        self.retryable = retryable
        super().__init__(message)


class NotAvailable(SourceError):
    """The source does not have this model (404, no cache entry): try the next one."""


def cache_key(cache_prefix: str, model_path: str, rel: str = "") -> str:
    """``<cache_prefix>/<path>[/<rel>]``, each segment encoded as rclone's S3 remote would."""
    rel_path = "/".join(encode_name(p) for p in model_path.split("/"))
    if rel:
        rel_path += "/" + "/".join(encode_name(p) for p in rel.split("/"))
    return join_key(cache_prefix, rel_path)


def origin_of(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL: two URLs are the same origin only when all three match."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def safe_url(url: str) -> str:
    """A URL without its query (presigned URLs carry signatures) for messages and logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("model download cancelled")


class Source:
    """One rung of the model-source ladder."""

    name = "source"
    upstream = True  # False only for the team's own cache

    def applies(self, model: ModelSpec) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def offer(self, model: ModelSpec) -> Offer:  # pragma: no cover - interface
        raise NotImplementedError

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:  # pragma: no cover - interface
        raise NotImplementedError

    def resumable(self) -> bool:
        """Whether a temp file left by an interrupted fetch is continued (else it is started over)."""
        return False

