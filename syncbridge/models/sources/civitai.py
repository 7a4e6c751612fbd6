"""CivitAI: a model version, its files listed with their SHA256 by the API.

``GET {endpoint}/api/v1/model-versions/{id}`` lists the files; the download URL answers with a
redirect to presigned storage on another host. ``CIVITAI_API_KEY`` is sent only as an
``Authorization: Bearer`` header, only to the CivitAI endpoint's own origin, never in a URL, never to
the host a download redirects to (:class:`~syncbridge.models.http.Http` follows redirects by hand
for that reason).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ...retry import retryable_status
from ..http import Http, HttpSource
from ..manifest import ModelSpec
from ..source import Fetched, NotAvailable, Offer, OnBytes, RemoteFile, SourceError, origin_of

__all__ = ["CivitaiSource"]


class CivitaiSource(HttpSource):
    """A CivitAI model version: ``GET {endpoint}/api/v1/model-versions/{id}`` lists the files with their
    SHA256; the download URL answers with a redirect to presigned storage on another host."""

    name = "civitai"

    def __init__(self, *, endpoint: str, api_key: str | None, http: Http | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._auth = ((origin_of(self.endpoint), {"Authorization": f"Bearer {api_key}"}) if api_key else None)
        self._http = http

    def applies(self, model: ModelSpec) -> bool:
        return model.civitai is not None

    def resumable(self) -> bool:
        return True

    def offer(self, model: ModelSpec) -> Offer:
        spec = model.civitai
        assert spec is not None
        url = f"{self.endpoint}/api/v1/model-versions/{spec.version_id}"
        response, _ = self.http.request("GET", url, headers={"Accept": "application/json"}, auth=self._auth,
                                        source=self.name)
        try:
            body = response.read()
        except self.http._urllib3.exceptions.HTTPError as exc:
            raise SourceError(f"civitai: version {spec.version_id}: {exc}", source=self.name, retryable=True) \
                from exc
        finally:
            response.release_conn()
        if response.status == 404:
            raise NotAvailable(f"civitai: model version {spec.version_id} not found", source=self.name)
        if response.status in (401, 403):
            hint = "; set CIVITAI_API_KEY" if self._auth is None else "; check CIVITAI_API_KEY"
            raise SourceError(f"civitai: model version {spec.version_id}: refused (HTTP {response.status}){hint}",
                              source=self.name)
        if response.status != 200:
            raise SourceError(f"civitai: model version {spec.version_id}: HTTP {response.status}", source=self.name,
                              retryable=retryable_status(response.status))
        try:
            answer = json.loads(body)
            files = answer["files"]
            model_type = (answer.get("model") or {}).get("type") if isinstance(answer.get("model"), dict) else None
            if spec.file is not None:
                chosen = next((f for f in files if f.get("name") == spec.file), None)
                if chosen is None:
                    names = ", ".join(str(f.get("name")) for f in files)
                    raise NotAvailable(f"civitai: version {spec.version_id} has no file {spec.file!r} (it has: "
                                       f"{names})", source=self.name)
            else:
                chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
                if chosen is None:
                    raise NotAvailable(f"civitai: version {spec.version_id} lists no files", source=self.name)
            sha = (chosen.get("hashes") or {}).get("SHA256")
            size_kb = chosen.get("sizeKB")
            download = str(chosen["downloadUrl"])
        except SourceError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SourceError(f"civitai: version {spec.version_id}: unexpected answer ({exc})", source=self.name) \
                from exc
        approx = int(float(size_kb) * 1024) if isinstance(size_kb, (int, float)) else None
        return Offer(self.name, f"version {spec.version_id} ({chosen.get('name')})",
                     (RemoteFile("", None, sha.lower() if isinstance(sha, str) else None, download, approx),),
                     meta={"type": model_type, "file": chosen.get("name")})

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        return self.http.download(file.ref, temp, source=self.name, expected_size=file.size, auth=self._auth,
                                  on_bytes=on_bytes, cancel=cancel)
