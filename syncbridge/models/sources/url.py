"""A plain http(s) URL: no credentials, resumed with ``Range`` where the server supports it."""

from __future__ import annotations

import threading
from pathlib import Path

from ...retry import retryable_status
from ..http import Http, HttpSource
from ..manifest import ModelSpec
from ..source import Fetched, NotAvailable, Offer, OnBytes, RemoteFile, SourceError, safe_url

__all__ = ["UrlSource"]


class UrlSource(HttpSource):
    """A plain http(s) URL: no credentials, resumed with ``Range`` where the server supports it."""

    name = "url"

    def __init__(self, *, http: Http | None = None) -> None:
        self._http = http

    def applies(self, model: ModelSpec) -> bool:
        return model.url is not None

    def resumable(self) -> bool:
        return True

    def offer(self, model: ModelSpec) -> Offer:
        assert model.url is not None
        response, final = self.http.head(model.url, source=self.name)
        response.drain_conn()
        response.release_conn()
        if response.status in (404, 410):
            raise NotAvailable(f"url: {safe_url(final)}: HTTP {response.status}", source=self.name)
        if response.status in (401, 403):
            raise SourceError(f"url: {safe_url(final)}: refused (HTTP {response.status})", source=self.name)
        size = None
        if response.status == 200:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
        elif response.status not in (405, 501):  # HEAD not allowed: size unknown, GET may still work
            raise SourceError(f"url: {safe_url(final)}: HTTP {response.status}", source=self.name,
                              retryable=retryable_status(response.status))
        return Offer(self.name, safe_url(model.url), (RemoteFile("", size, None, model.url),))

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        return self.http.download(file.ref, temp, source=self.name, expected_size=file.size, auth=None,
                                  on_bytes=on_bytes, cancel=cancel)
