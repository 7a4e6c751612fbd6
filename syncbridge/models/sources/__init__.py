"""Where a model comes from: the ladder of sources, the team's cache first, then upstream.

1. :class:`CacheSource`: ``<cache_prefix>/<path>`` in the bucket (:mod:`.cache`);
2. :class:`HfSource`: Hugging Face (:mod:`.hf`);
3. :class:`CivitaiSource`: CivitAI (:mod:`.civitai`);
4. :class:`UrlSource`: a plain URL (:mod:`.url`).

Every source speaks the two steps of :class:`Source` (:mod:`syncbridge.models.source`): ``offer``
(one cheap request: what it would deliver) and ``fetch`` (one file into a temp path the caller
chose). The caller verifies and renames; a source never touches the final path.

Secrets: ``HF_TOKEN`` goes only to ``huggingface_hub``; ``CIVITAI_API_KEY`` only to the CivitAI
endpoint's own origin, as a header (see :mod:`.civitai`).
"""

from __future__ import annotations

from typing import Callable

from ...store import Store
from ..source import (Fetched, NotAvailable, Offer, OnBytes, RemoteFile, Source, SourceError, cache_key, origin_of,
                      safe_url)
from .cache import CacheSource
from .civitai import CivitaiSource
from .hf import HfSource
from .url import UrlSource

__all__ = [
    "RemoteFile",
    "Offer",
    "Fetched",
    "OnBytes",
    "SourceError",
    "NotAvailable",
    "Source",
    "CacheSource",
    "HfSource",
    "CivitaiSource",
    "UrlSource",
    "cache_key",
    "origin_of",
    "safe_url",
    "default_sources",
]


def default_sources(*, store: Callable[[], Store] | None, cache_prefix: str, hf_endpoint: str, hf_token: str | None,
                    civitai_endpoint: str, civitai_api_key: str | None, streams: int = 4,
                    cache_timeout: float = 60.0) -> list[Source]:
    """The ladder in its fixed order: cache (when a store is given), Hugging Face, CivitAI, URL.

    Nothing here opens a connection or imports an HTTP library: a warm start never asks a source.
    """
    ladder: list[Source] = []
    if store is not None:
        ladder.append(CacheSource(store, cache_prefix, streams=streams, timeout=cache_timeout))
    ladder.append(HfSource(endpoint=hf_endpoint, token=hf_token))
    ladder.append(CivitaiSource(endpoint=civitai_endpoint, api_key=civitai_api_key))
    ladder.append(UrlSource())
    return ladder

