"""Capture: a model that arrives on this pod (ComfyUI-Manager, wget, a node's own downloader) reaches the
cache and a profile in the bucket, so the next pod with that profile starts with it.

A file in the models folder is captured once it is complete: not a partial download by its name
(``.incomplete``, ``.part``, ``.downloading``, ``.tmp``...), no process on this machine has it open
for writing (``/proc``), and unchanged for ``quiet`` seconds. It is hashed, published to
``<cache_prefix>/<path>`` with the cache-entry protocol (a conditional create: an equal entry is
kept, another one is never overwritten) and recorded in the profile, a manifest kept at
``<fleet.prefix>/profiles/<name>.toml`` and rewritten with If-Match, so pods capturing at once lose
nothing. ``start`` pulls the profile like a manifest; ``models forget PATH`` takes a model out of it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import attrs

from ..config.settings import PARTIAL_SUFFIXES
from ..errors import ConfigError, PreconditionFailedError, Problem
from ..fsutil import open_for_writing
from ..hashing import sha256_file
from ..store import Store
from ..tomlsrc import TOMLDecodeError, loads, value as toml_value
from .cacheentry import publish
from .source import cache_key

__all__ = ["Profile", "Captured", "Capturer", "finished_models", "profile_key", "profile_for", "profile_manifest",
           "place", "DOWNLOAD_SUFFIXES"]

log = logging.getLogger(__name__)

# What downloaders leave while they work (browsers, aria2, ComfyUI-Manager and wget's temp names), on top
# of the watcher's partial suffixes, and syncbridge's own temp and resume files.
DOWNLOAD_SUFFIXES = tuple(dict.fromkeys((*PARTIAL_SUFFIXES, ".incomplete", ".part", ".downloading", ".tmp",
                                         ".sbpart", ".sbtmp", ".resume", ".lock")))
ATTEMPTS = 8  # rewrites of the profile when other pods write it at the same moment


def profile_key(fleet_prefix: str, name: str) -> str:
    return f"{fleet_prefix.strip('/')}/profiles/{name}.toml"


class Profile:
    """A manifest kept in the bucket, changed with compare-and-swap (If-Match) so concurrent writers merge."""

    def __init__(self, store: Store, key: str, *, models_dir: Path, cache_prefix: str) -> None:
        self.store = store
        self.key = key
        self.models_dir = models_dir
        self.cache_prefix = cache_prefix

    def read(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """(path -> entry, the object's ETag or None when there is no profile yet)."""
        info = self.store.head(self.key)
        if info is None:
            return {}, None
        data, info = self.store.get_bytes(self.key)
        try:
            doc = loads(data.decode("utf-8"))
        except (UnicodeDecodeError, TOMLDecodeError) as exc:
            raise ConfigError([Problem(f"profile {self.key}", f"is not a valid manifest: {exc}")]) from exc
        return {m["path"]: dict(m) for m in doc.get("model", []) if isinstance(m, dict) and "path" in m}, info.etag

    def text(self, entries: Mapping[str, Mapping[str, Any]]) -> str:
        lines = [f"# Captured by syncbridge ({self.key}): models that arrived on pods of this profile.",
                 "[settings]", f"models_dir = {toml_value(str(self.models_dir))}",
                 f"cache_prefix = {toml_value(self.cache_prefix)}", ""]
        for path in sorted(entries):
            lines.append("[[model]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in entries[path].items()]
            lines.append("")
        return "\n".join(lines)

    def change(self, edit: Callable[[dict[str, dict[str, Any]]], bool]) -> bool:
        """Apply ``edit`` (returns whether it changed anything) and write back with If-Match; retried when
        another pod wrote in between. Returns whether the profile changed."""
        for _ in range(ATTEMPTS):
            entries, etag = self.read()
            if not edit(entries):
                return False
            data = self.text(entries).encode("utf-8")
            try:
                if etag is None:
                    self.store.put_bytes(self.key, data, if_none_match=True)
                else:
                    self.store.put_bytes(self.key, data, if_match=etag)
                return True
            except PreconditionFailedError:
                continue  # another pod wrote it: read again and merge
        raise ConfigError([Problem(f"profile {self.key}", f"kept changing under us ({ATTEMPTS} tries)")])

    def add(self, entries: Iterable[Mapping[str, Any]]) -> bool:
        new = list(entries)

        def edit(current: dict[str, dict[str, Any]]) -> bool:
            changed = False
            for entry in new:
                if current.get(entry["path"]) != dict(entry):
                    current[entry["path"]] = dict(entry)
                    changed = True
            return changed

        return self.change(edit)

    def forget(self, path: str) -> bool:
        return self.change(lambda current: current.pop(path, None) is not None)


@attrs.frozen
class Captured:
    path: str
    size: int
    sha256: str
    cache: str  # the cache write's outcome: pushed, exists, conflict ...


def _walk(models_dir: Path) -> Iterable[tuple[str, os.stat_result]]:
    for root, dirs, files in os.walk(models_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .syncbridge, .cache, hidden temp folders
        for name in files:
            if name.startswith(".") or name.lower().endswith(DOWNLOAD_SUFFIXES):
                continue
            path = Path(root, name)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            yield path.relative_to(models_dir).as_posix(), st


def finished_models(models_dir: Path, *, skip: Callable[[str, os.stat_result], bool], quiet: float,
                    now: float | None = None) -> list[tuple[str, os.stat_result]]:
    """The complete model files below ``models_dir`` that ``skip`` does not rule out: no writer in /proc
    (where it can tell), unchanged for ``quiet`` seconds."""
    now = time.time() if now is None else now
    found = [(rel, st) for rel, st in _walk(models_dir) if not skip(rel, st)]
    if not found:
        return []
    writers = open_for_writing(str(models_dir))
    return [(rel, st) for rel, st in found
            if (writers is None or str(models_dir / rel) not in writers) and now - st.st_mtime >= quiet]


class Capturer:
    """Captures what arrives in ``models_dir`` after it starts (what was there is its baseline)."""

    def __init__(self, store: Store, profile: Profile, *, models_dir: Path, cache_prefix: str, quiet: float = 2.0,
                 interval: float = 2.0, baseline: Iterable[str] | None = None,
                 on_capture: Callable[[Captured], Any] | None = None, hashes: Any = None) -> None:
        self.on_capture = on_capture
        self.hashes = hashes  # a HashCache: a captured file is not hashed again by the next pull here
        self.store = store
        self.profile = profile
        self.models_dir = models_dir
        self.cache_prefix = cache_prefix
        self.quiet = quiet
        self.interval = interval
        self.seen: dict[str, tuple[int, int]] = {} if baseline is not None else {
            rel: (st.st_size, st.st_mtime_ns) for rel, st in _walk(models_dir)}
        for rel in baseline or ():
            self.seen[rel] = (-1, -1)
        self.captured: list[Captured] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="syncbridge-capture", daemon=True)

    def scan(self) -> list[Captured]:
        """Capture every finished file that is new or changed since it was last seen."""
        out = []
        skip = (lambda rel, st: self.seen.get(rel) in ((st.st_size, st.st_mtime_ns), (-1, -1)))
        for rel, st in finished_models(self.models_dir, skip=skip, quiet=self.quiet):
            size, sha = sha256_file(self.models_dir / rel)
            if (size, os.stat(self.models_dir / rel).st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                continue  # changed while hashed: the next scan takes it
            if self.hashes is not None:  # the profile's sha256 is this one: the file is verified against it
                self.hashes.put(self.models_dir / rel, sha, verified="sha256", st=st)
                self.hashes.save()
            key = cache_key(self.cache_prefix, rel)
            outcome = publish(self.store, key, self.models_dir / rel, sha)
            self.seen[rel] = (st.st_size, st.st_mtime_ns)
            if outcome.bad:  # the cache holds other bytes under that name: a profile entry would not verify
                log.warning("capture: %s not recorded: %s", rel, outcome, extra={"event": "models.capture_conflict",
                                                                                   "key": key})
                continue
            self.profile.add([{"name": rel, "path": rel, "sha256": sha, "size": size}])
            captured = Captured(rel, size, sha, str(outcome))
            log.info("capture: %s (%d bytes) is in the cache and the profile %s", rel, size, self.profile.key,
                     extra={"event": "models.captured", "path": rel})
            out.append(captured)
            if self.on_capture is not None:
                self.on_capture(captured)
        self.captured += out
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - said, and the next scan tries again
                log.warning("capture: %s", exc, extra={"event": "models.capture_failed"})

    def start(self) -> "Capturer":
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def place(config: Any) -> tuple[Path, str]:
    """(models folder, cache prefix) for capture: SYNCBRIDGE_MODELS_DIR, else the first manifest's settings."""
    from .manifest import load_manifests
    from .spec import DEFAULT_CACHE_PREFIX, DEFAULT_MODELS_DIR

    if config.models.manifests:
        first = load_manifests([config.models.manifests[0]], models_dir=config.models.dir)
        return Path(first.models_dir), first.cache_prefix
    return Path(config.models.dir or DEFAULT_MODELS_DIR), DEFAULT_CACHE_PREFIX


def profile_for(config: Any, store: Store) -> Profile:
    models_dir, cache_prefix = place(config)
    return Profile(store, profile_key(config.fleet.prefix, config.models.profile), models_dir=models_dir,
                   cache_prefix=cache_prefix)


def profile_manifest(config: Any, store: Store) -> Path | None:
    """The profile as a manifest file in the state folder (what ``start`` pulls), or None when there is none."""
    from ..fsutil import atomic_write_bytes, private_state_dir

    profile = profile_for(config, store)
    entries, etag = profile.read()
    if etag is None:
        return None
    path = private_state_dir(config.state_dir) / f"profile-{config.models.profile}.toml"
    atomic_write_bytes(path, profile.text(entries).encode("utf-8"))
    log.info("profile %s: %d model(s)", profile.key, len(entries), extra={"event": "models.profile"})
    return path
