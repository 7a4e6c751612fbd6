"""Two loopback servers standing for CivitAI: the API host and the storage host its downloads redirect to.

* API: ``GET /api/v1/model-versions/{id}`` -> ``files[]`` with ``name``,
  ``sizeKB``, ``hashes.SHA256``, ``downloadUrl``, ``primary``;
  ``GET /api/download/models/{id}`` -> 307 to the storage host (another port,
  so another origin) with a presigned-looking query. With ``api_key`` set, both
  need ``Authorization: Bearer <key>`` (401 otherwise).
* storage: ``GET /files/{name}`` with Range support; ``drop_after`` and
  ``corrupt`` inject faults.

Both log every request with its headers, so tests can assert where the key went.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator
from urllib.parse import unquote, urlsplit

from .hfserver import LoopbackServer, send_body, send_json


class CivitAI:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.versions: dict[int, tuple[str, bytes]] = {}
        self.types: dict[int, str] = {}
        self.drop_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.api = LoopbackServer(self._api)
        self.storage = LoopbackServer(self._storage)
        self.url = self.api.url

    def add(self, version_id: int, name: str, data: bytes, *, model_type: str = "Checkpoint") -> None:
        self.versions[version_id] = (name, data)
        self.types[version_id] = model_type

    def _authorized(self, h) -> bool:
        return self.api_key is None or h.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _api(self, h) -> None:
        path = unquote(urlsplit(h.path).path)
        if path.startswith("/api/v1/model-versions/"):
            vid = int(path.rsplit("/", 1)[1])
            if not self._authorized(h):
                send_json(h, {"error": "Unauthorized"}, status=401)
                return
            if vid not in self.versions:
                send_json(h, {"error": f"No model version with id {vid}"}, status=404)
                return
            name, data = self.versions[vid]
            send_json(h, {"id": vid, "model": {"name": f"model {vid}", "type": self.types[vid]}, "files": [
                {"name": "notes.txt", "sizeKB": 0.1, "type": "Training Data", "primary": False,
                 "hashes": {"SHA256": "00" * 32}, "downloadUrl": f"{self.url}/api/download/models/{vid}?type=Training"},
                {"name": name, "sizeKB": len(data) / 1024, "type": "Model", "primary": True,
                 "hashes": {"SHA256": hashlib.sha256(data).hexdigest().upper(), "AutoV2": "ABCDEF0123"},
                 "downloadUrl": f"{self.url}/api/download/models/{vid}"},
            ]})
            return
        if path.startswith("/api/download/models/"):
            vid = int(path.rsplit("/", 1)[1])
            if not self._authorized(h):
                send_json(h, {"error": "Unauthorized"}, status=401)
                return
            name, _ = self.versions[vid]
            h.send_response(307)
            h.send_header("Location", f"{self.storage.url}/files/{name}?X-Amz-Signature=deadbeef&X-Amz-Expires=60")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        send_json(h, {"error": "not found"}, status=404)

    def _storage(self, h) -> None:
        name = unquote(urlsplit(h.path).path).rsplit("/", 1)[1]
        for _, (fname, data) in self.versions.items():
            if fname == name:
                if name in self.corrupt:
                    data = bytes(b ^ 0xFF for b in data)
                send_body(h, data, headers={"Content-Disposition": f'attachment; filename="{name}"'},
                          drop_after=self.drop_after.pop(name, None))
                return
        send_json(h, {"error": "not found"}, status=404)

    @property
    def requests(self):
        return self.api.requests + self.storage.requests


@contextlib.contextmanager
def serve_civitai(api_key: str | None = None) -> Iterator[CivitAI]:
    civ = CivitAI(api_key)
    civ.api.start()
    civ.storage.start()
    try:
        yield civ
    finally:
        civ.api.stop()
        civ.storage.stop()
