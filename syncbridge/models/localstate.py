"""The local verified-state record: what is on disk, and what it was verified against.

A warm start with everything present must read no file and make no request. :class:`HashCache`
keeps the sha256 of each local file under (path, size, mtime_ns) in the private state directory,
with what it was checked against when it was pulled (``sha256`` or ``size``); :class:`LocalState`
answers "is this model present, missing, stale or unknown?" from it.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write_bytes, private_state_dir
from ..hashing import sha256_file
from .manifest import SNAPSHOT_INDEX, ModelSpec
from .source import Offer

__all__ = ["HashCache", "LocalState", "LOCAL_STATES"]

# present: verified; missing; stale: there but does not verify; unknown: there, nothing local to check it against.
LOCAL_STATES = ("present", "missing", "stale", "unknown")


class HashCache:
    """sha256 of local files keyed by (path, size, mtime_ns), in ``<state_dir>/models/hashes.json``.

    ``verified`` (``sha256`` or ``size``) says what was checked against an
    authority (manifest or source) when the file was pulled: such a file is
    "present" on a warm start even when the manifest gives no sha256.
    """

    @classmethod
    def of(cls, state_dir: Path) -> "HashCache":
        """The pod's one cache of local hashes (pulls, workflows and capture share it)."""
        return cls(state_dir / "models" / "hashes.json")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._dirty = False
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            self._entries: dict[str, list[Any]] = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self._entries = {}

    def get(self, path: Path, st: os.stat_result) -> tuple[str, str] | None:
        """(sha256, verified) where verified is ``sha256``, ``size`` or ``""`` (only hashed here)."""
        entry = self._entries.get(str(path))
        if (isinstance(entry, list) and len(entry) == 4 and entry[0] == st.st_size
                and entry[1] == st.st_mtime_ns):
            return str(entry[2]), str(entry[3] or "")
        return None

    def put(self, path: Path, sha256: str, *, verified: str, st: os.stat_result | None = None) -> None:
        st = st or os.stat(path)
        with self._lock:
            self._entries[str(path)] = [st.st_size, st.st_mtime_ns, sha256, verified]
            self._dirty = True

    def hash(self, path: Path, st: os.stat_result) -> str:
        """The file's sha256, from the cache or computed (and remembered, unverified)."""
        known = self.get(path, st)
        if known is not None:
            return known[0]
        _, sha = sha256_file(path)
        self.put(path, sha, verified="", st=st)
        return sha

    def save(self) -> None:
        """Write the cache when it changed, leaving out files that are gone or changed since they were
        hashed (such an entry could never match again; a warm start that changed nothing writes nothing)."""
        with self._lock:
            if not self._dirty:
                return
            for name, entry in list(self._entries.items()):
                try:
                    st = os.stat(name)
                except OSError:
                    del self._entries[name]
                    continue
                if not (isinstance(entry, list) and len(entry) == 4 and entry[0] == st.st_size
                        and entry[1] == st.st_mtime_ns):
                    del self._entries[name]
            data = json.dumps(self._entries, separators=(",", ":")).encode()
            self._dirty = False
        private_state_dir(self.path.parent)
        atomic_write_bytes(self.path, data)



class LocalState:
    """The state of models on disk, from the :class:`HashCache` (hashing only what it does not know)."""

    def __init__(self, hashes: HashCache) -> None:
        self.hashes = hashes

    def state(self, model: ModelSpec, target: Path) -> tuple[str, str | None, str]:
        """(state, sha256, verified) without any network.

        state: present, missing, stale (does not verify) or unknown (exists, nothing local to check it against).
        """
        if model.is_snapshot:
            state = self._snapshot(model, target)
            return state, None, "sha256" if state == "present" else ""
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return "missing", None, ""
        if not stat.S_ISREG(st.st_mode):
            return "stale", None, ""
        if model.size is not None and st.st_size != model.size:
            return "stale", None, ""
        known = self.hashes.get(target, st)
        if model.sha256:
            sha = known[0] if known else self.hashes.hash(target, st)
            if sha == model.sha256:
                if not (known and known[1] == "sha256"):
                    self.hashes.put(target, sha, verified="sha256", st=st)
                return "present", sha, "sha256"
            return "stale", sha, ""
        if known and known[1]:
            return "present", known[0], known[1]
        if model.size is not None and known is None:
            return "unknown", None, ""
        return "unknown", known[0] if known else None, ""

    def _snapshot(self, model: ModelSpec, target: Path) -> str:
        try:
            index = json.loads((target / SNAPSHOT_INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return "stale" if target.exists() else "missing"
        except (OSError, ValueError):
            return "stale"
        spec = model.hf
        assert spec is not None
        if not isinstance(index, dict) or (index.get("repo"), index.get("revision"), index.get("allow", [])) != \
                (spec.repo, spec.revision, list(spec.allow)):
            return "stale"
        try:
            for rel, entry in index["files"].items():
                path = target / rel
                st = os.stat(path)
                if st.st_size != int(entry["size"]):
                    return "stale"
                if entry.get("sha256") and self.hashes.hash(path, st) != entry["sha256"]:
                    return "stale"
        except (OSError, KeyError, TypeError, ValueError, AttributeError):
            return "stale"
        return "present"

    def matches_offer(self, target: Path, offer: Offer) -> tuple[str, str] | None:
        """(sha256, verified) when the local single file is what ``offer`` describes, else None."""
        if len(offer.files) != 1 or offer.files[0].rel:
            return None
        remote = offer.files[0]
        if remote.size is None and remote.sha256 is None:
            return None
        try:
            st = os.stat(target)
        except OSError:
            return None
        if remote.size not in (None, st.st_size):
            return None
        sha = self.hashes.hash(target, st)
        if remote.sha256 not in (None, sha):
            return None
        level = "sha256" if remote.sha256 else "size"
        self.hashes.put(target, sha, verified=level, st=st)
        return sha, level
