"""Hugging Face: a file or a whole snapshot of a Hub repo, through ``huggingface_hub``.

``HF_TOKEN`` goes only to ``huggingface_hub``, which drops it on redirects to another host; it
never falls back to a token stored in ``~/.cache/huggingface``.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ...errors import CancelledError
from ...hashing import sha256_file
from ...retry import retryable_status
from ..manifest import ModelSpec
from ..source import Fetched, NotAvailable, Offer, OnBytes, RemoteFile, Source, SourceError, check_cancel

__all__ = ["HfSource"]

# huggingface_hub reads the body in pieces of ``constants.DOWNLOAD_CHUNK_SIZE`` (10 MiB in 2.x) and
# calls the progress hook once per piece: a 6 MiB model on a slow link showed no progress at all
# until it was done, and a cancel (SIGTERM on a spot pod: 5 s to live) waited for the next 10 MiB.
# The constant is read at each download, so it is lowered (never raised) for the downloads here.
PROGRESS_PIECE = 1 << 20


def _finer_pieces() -> None:
    from huggingface_hub import constants

    if getattr(constants, "DOWNLOAD_CHUNK_SIZE", 0) > PROGRESS_PIECE:
        constants.DOWNLOAD_CHUNK_SIZE = PROGRESS_PIECE


def _hf_progress_class(on_bytes: OnBytes, cancel: threading.Event | None = None):
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):  # type: ignore[misc, valid-type]
        """huggingface_hub's progress hook, turned into byte counts for our own display; it is also
        where a cancel (Ctrl-C, a stop) interrupts a download mid-file (the *.incomplete is kept)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            check_cancel(cancel)
            if n:
                on_bytes(int(n))
            return super().update(n)

    return _Progress


class HfSource(Source):
    """A file or snapshot of a Hugging Face repo, through ``huggingface_hub``.

    The endpoint is passed explicitly (``HF_ENDPOINT`` is read by
    ``huggingface_hub`` at import time, so setting it later has no effect).
    The sha256 of an LFS file comes from ``HfApi.get_paths_info``
    (``huggingface_hub`` itself checks only the size).
    """

    name = "hf"

    def __init__(self, *, endpoint: str, token: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token

    def applies(self, model: ModelSpec) -> bool:
        return model.hf is not None

    def resumable(self) -> bool:
        return True

    def _api(self):
        from huggingface_hub import HfApi

        # token=False: never fall back to a token stored in ~/.cache/huggingface.
        return HfApi(endpoint=self.endpoint, token=self._token or False)

    def _error(self, exc: BaseException, what: str) -> SourceError:
        from huggingface_hub import errors as hf_errors

        if isinstance(exc, hf_errors.GatedRepoError):
            return SourceError(f"hf: {what}: gated repository; accept its terms on the Hub and set HF_TOKEN",
                               source=self.name)
        if isinstance(exc, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                            hf_errors.EntryNotFoundError)):
            hint = "" if self._token else " (private repos need HF_TOKEN)"
            return NotAvailable(f"hf: {what}: not found{hint}", source=self.name)
        if isinstance(exc, hf_errors.HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                return SourceError(f"hf: {what}: refused ({status}); check HF_TOKEN", source=self.name)
            # no status: no answer at all, worth another try
            return SourceError(f"hf: {what}: HTTP {status}", source=self.name,
                               retryable=status is None or retryable_status(status))
        return SourceError(f"hf: {what}: {type(exc).__name__}: {exc}", source=self.name, retryable=True)

    def offer(self, model: ModelSpec) -> Offer:
        from huggingface_hub.hf_api import RepoFile

        spec = model.hf
        assert spec is not None
        api = self._api()
        try:
            if spec.snapshot:
                from huggingface_hub.utils import filter_repo_objects

                entries = [e for e in api.list_repo_tree(spec.repo, revision=spec.revision, repo_type=spec.repo_type,
                                                         recursive=True) if isinstance(e, RepoFile)]
                entries = list(filter_repo_objects(entries, allow_patterns=list(spec.allow) or None,
                                                   key=lambda e: e.path))
                if not entries:
                    raise NotAvailable(f"hf: {spec.describe()}: no files match allow = {list(spec.allow)}",
                                       source=self.name)
            else:
                entries = [e for e in api.get_paths_info(spec.repo, [spec.file], revision=spec.revision,
                                                         repo_type=spec.repo_type) if isinstance(e, RepoFile)]
                if not entries:
                    raise NotAvailable(f"hf: {spec.describe()}: no such file", source=self.name)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - huggingface_hub and httpx errors, mapped
            raise self._error(exc, spec.describe()) from exc
        files = []
        for entry in entries:
            sha = entry.lfs.sha256 if entry.lfs is not None else None
            size = entry.lfs.size if entry.lfs is not None else entry.size
            files.append(RemoteFile("" if not spec.snapshot else entry.path, int(size), sha, entry.path))
        return Offer(self.name, spec.describe(), tuple(files),
                     meta={"repo": spec.repo, "revision": spec.revision, "repo_type": spec.repo_type,
                           "allow": list(spec.allow)})

    def fetch(self, model: ModelSpec, file: RemoteFile, temp: Path, *, on_bytes: OnBytes,
              cancel: threading.Event | None = None) -> Fetched:
        from huggingface_hub import hf_hub_download

        spec = model.hf
        assert spec is not None
        # huggingface_hub downloads into <local_dir>/.cache/huggingface/download/*.incomplete
        # (resumed on the next run) and moves the file into local_dir: a hidden folder beside
        # the target keeps all of that on the target's file system.
        staging = temp.with_name(temp.name + ".d")
        check_cancel(cancel)
        _finer_pieces()
        try:
            path = hf_hub_download(
                spec.repo, file.ref, revision=spec.revision, repo_type=spec.repo_type, local_dir=staging,
                cache_dir=staging / ".hub-cache", token=self._token or False, endpoint=self.endpoint,
                tqdm_class=_hf_progress_class(on_bytes, cancel),
            )
            os.replace(path, temp)
        except CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            error = self._error(exc, f"{spec.repo}@{spec.revision}/{file.ref}")
            if not error.retryable:  # keep a resumable *.incomplete only when a retry may use it
                shutil.rmtree(staging, ignore_errors=True)
            raise error from exc
        shutil.rmtree(staging, ignore_errors=True)
        size, sha = sha256_file(temp)
        return Fetched(size, sha)

