"""Keeping the bucket's model cache tidy: what is in it, what it costs, what nothing uses, what does not verify.

* :func:`inventory`: every object under the cache prefix, with its size, its sha256 (metadata) and the
  manifest entries that name it (a snapshot model names everything below its folder);
* :func:`monthly_cost`: storage at a price per GB-month (R2's published $0.015 by default; GB = 10^9 bytes);
* :func:`prune`: the entries no manifest names, deleted only with ``apply`` and never while another pod
  fills them (it holds the entry's fill lease, the same lease the single-flight fill takes);
* :func:`verify`: each manifest entry's cache object against its size and sha256 (``deep``: read and hash).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Sequence

import attrs

from ..hashing import HashingWriter
from ..store import ObjectInfo, Store
from .cacheentry import entry_sha256
from .source import cache_key
from .spec import Manifest

__all__ = ["CacheEntry", "Finding", "R2_PRICE_PER_GB_MONTH", "inventory", "monthly_cost", "prune", "verify"]

R2_PRICE_PER_GB_MONTH = 0.015  # USD, Cloudflare R2 standard storage (its published price)


@attrs.frozen
class CacheEntry:
    key: str
    size: int
    sha256: str | None
    used_by: tuple[str, ...]  # "models.toml: flux-dev" for each manifest entry that names it


@attrs.frozen
class Finding:
    """One verdict of :func:`prune` or :func:`verify` about one cache object."""

    key: str
    what: str  # prune: deleted, would delete, kept (being filled); verify: ok, missing, size, sha256, no sha256
    detail: str = ""


def _users(manifests: Sequence[tuple[str, Manifest]], cache_prefix: str) -> tuple[dict[str, list[str]],
                                                                                   list[tuple[str, str]]]:
    """(cache key -> users) for single files, and (key prefix, user) for snapshot folders."""
    files: dict[str, list[str]] = {}
    folders: list[tuple[str, str]] = []
    for label, manifest in manifests:
        if manifest.cache_prefix.strip("/") != cache_prefix.strip("/"):
            continue
        for model in manifest.models:
            key = cache_key(manifest.cache_prefix, model.path)
            user = f"{label}: {model.name}"
            if model.is_snapshot:
                folders.append((key.rstrip("/") + "/", user))
            else:
                files.setdefault(key, []).append(user)
    return files, folders


def inventory(store: Store, manifests: Sequence[tuple[str, Manifest]], cache_prefix: str) -> list[CacheEntry]:
    """Every object under ``cache_prefix``, with the manifest entries that name it."""
    files, folders = _users(manifests, cache_prefix)
    out = []
    for info in store.list(cache_prefix.strip("/") + "/"):
        users = list(files.get(info.key, ()))
        users += [user for prefix, user in folders if info.key.startswith(prefix)]
        out.append(CacheEntry(info.key, info.size, entry_sha256(info), tuple(users)))
    return out


def monthly_cost(size: int, price_per_gb_month: float = R2_PRICE_PER_GB_MONTH) -> float:
    """What storing ``size`` bytes costs a month (GB = 10^9 bytes, as R2 bills)."""
    return size / 1e9 * price_per_gb_month


def prune(store: Store, entries: Iterable[CacheEntry], *, being_filled: Callable[[str], str | None],
          apply: bool = False) -> list[Finding]:
    """Delete (with ``apply``) the entries nothing uses. ``being_filled(key)`` names the pod filling ``key``
    (it holds the fill lease), or ``None``: such an entry is kept, whatever the manifests here say."""
    out = []
    for entry in entries:
        if entry.used_by:
            continue
        holder = being_filled(entry.key)
        if holder is not None:
            out.append(Finding(entry.key, "kept", f"pod {holder} is filling it"))
            continue
        if apply:
            store.delete(entry.key)
            out.append(Finding(entry.key, "deleted", f"{entry.size} bytes"))
        else:
            out.append(Finding(entry.key, "would delete", f"{entry.size} bytes"))
    return out


def _read_sha256(store: Store, key: str) -> str:
    with open(os.devnull, "wb") as sink:
        writer = HashingWriter(sink)
        store.download_to(key, writer)  # type: ignore[arg-type]
    return writer.hexdigest()


def verify(store: Store, manifests: Sequence[tuple[str, Manifest]], *, deep: bool = False) -> list[Finding]:
    """Each manifest entry's cache object (single files) against the entry's size and sha256."""
    out = []
    seen: set[str] = set()
    for label, manifest in manifests:
        for model in manifest.models:
            key = cache_key(manifest.cache_prefix, model.path)
            if model.is_snapshot or key in seen:
                continue
            seen.add(key)
            info: ObjectInfo | None = store.head(key)
            if info is None:
                out.append(Finding(key, "missing", f"{label}: {model.name}"))
                continue
            if model.size is not None and info.size != model.size:
                out.append(Finding(key, "size", f"{info.size} bytes, {label}: {model.name} says {model.size}"))
                continue
            theirs = entry_sha256(info)
            if deep:
                theirs_read = _read_sha256(store, key)
                if theirs and theirs_read != theirs:
                    out.append(Finding(key, "sha256", f"its bytes hash to {theirs_read[:12]}..., its metadata says "
                                                      f"{theirs[:12]}..."))
                    continue
                theirs = theirs_read
            if model.sha256 and theirs and theirs != model.sha256:
                out.append(Finding(key, "sha256", f"{theirs[:12]}..., {label}: {model.name} says "
                                                  f"{model.sha256[:12]}..."))
            elif model.sha256 and not theirs:
                out.append(Finding(key, "no sha256", "the object carries no sha256 (use --deep to read it)"))
            else:
                out.append(Finding(key, "ok", f"{info.size} bytes"))
    return out
