"""Model warm-start: put every model a pod needs in place, verified, as fast as the link allows.

For each enabled model (``enabled_by``, ``min_tier``), in order:

1. **present**: the file (or snapshot folder) is there and verified: size
   always, sha256 when known (manifest, or what a source said when it was
   pulled). Hashes are cached by (path, size, mtime_ns) under the state
   directory, so a warm start with everything present reads no file, makes no
   network request and opens no store;
2. the **R2 cache** ``<cache_prefix>/<path>``;
3. **upstream**: Hugging Face, CivitAI, a URL (:mod:`syncbridge.sources`).

A source that fails, or delivers the wrong size or sha256, is recorded in the
model's ``attempts`` and the next one is tried. Every download goes to a temp
file beside the target and is renamed into place only once verified. Before
anything is downloaded, the free space is checked against what is missing.

With ``write_back``, a model fetched upstream is pushed to the cache with
``If-None-Match: *`` and its sha256 in metadata; a pod that loses that race
verifies the winner's object instead.

Fleet hook: :class:`FillCoordinator` wraps the one moment a model with
``write_back`` is about to go upstream after a cache miss, so a coordinator
can make a single pod fill the cache while the others wait for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from .fmt import human_bytes as _human
from .config import Config
from .errors import PreconditionFailedError, StoreError, SyncBridgeError
from .fsutil import atomic_write_bytes, fsync_dir, private_state_dir
from .manifest import SNAPSHOT_INDEX, CivitaiSpec, HfSpec, Manifest, ModelSpec, load_manifests, select_models
from .sources import (RESUME_SUFFIX, CacheSource, Fetched, NotAvailable, Offer, RemoteFile, Source, SourceError,
                      default_sources, sha256_file)
from .store import Store, open_store
from .system import detect_gpu_tier, free_bytes

__all__ = [
    "ModelResult",
    "PullReport",
    "ModelEvent",
    "PlanItem",
    "FillCoordinator",
    "InsufficientSpaceError",
    "HashCache",
    "pull_models",
    "push_cache",
    "list_models",
    "STATUSES",
]

log = logging.getLogger(__name__)

STATUSES = ("present", "pulled", "failed", "skipped", "optional_failed", "planned")
PART_SUFFIX = ".sbpart"
SNAPSHOT_STAGING = ".sbsnap"
# Headroom kept free on top of what the missing models need (1%, at least 16 MiB).
SPACE_MARGIN = 0.01
SPACE_MARGIN_MIN = 16 * 1024 * 1024
# From this many missing models on, the cache is listed once instead of a HEAD per model,
# and its small objects are copied by one rclone batch instead of a Python request each.
BULK_MIN = 16
BATCH_MAX_SIZE = 16 * 1024 * 1024


# -- results ------------------------------------------------------------------------------


@attrs.frozen
class ModelResult:
    """What happened to one model.

    Attributes:
        status: ``present`` (already there, verified), ``pulled``, ``failed``,
            ``skipped`` (disabled: ``message`` says why), ``optional_failed``
            (``optional = true``: a warning, not an error), ``planned``
            (``--dry-run``: ``source`` says where it would come from).
        source: ``local``, ``cache``, ``hf``, ``civitai`` or ``url``.
        verified: ``sha256`` (hash checked), ``size`` (only the size was known) or ``""``.
        attempts: every failed try, as ``(source, error)``, in order.
        write_back: what happened to the cache copy (``pushed``, ``exists``, ``failed: ...``) or ``""``.
    """

    name: str
    path: str
    source: str
    size: int
    seconds: float
    verified: str
    status: str
    attempts: tuple[tuple[str, str], ...] = ()
    message: str = ""
    write_back: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds if self.seconds > 0 and self.status == "pulled" else 0.0


@attrs.frozen
class PullReport:
    """Per-model results of :func:`pull_models` (or :func:`push_cache`)."""

    results: tuple[ModelResult, ...]
    seconds: float
    dry_run: bool = False
    models_dir: Path | None = None
    cache_error: str | None = None  # the bucket refused the cache (credentials, bucket, permissions)
    cache_setting: str | None = None  # the variable that refusal points at
    cache_write_only: bool = False  # only writes were refused (a read-only token): reads worked

    @property
    def ok(self) -> bool:
        """No required model failed."""
        return all(r.status != "failed" for r in self.results)

    @property
    def failed(self) -> tuple[ModelResult, ...]:
        return tuple(r for r in self.results if r.status in ("failed", "optional_failed"))

    def table(self) -> str:
        """The final table: model, status, source, size, seconds, MB/s, verified (and every failed attempt)."""
        header = ("model", "status", "source", "size", "seconds", "MB/s", "verified")
        rows = [header]
        for r in self.results:
            rows.append((r.name, r.status, r.source or "-", _human(r.size) if r.size else "-",
                         f"{r.seconds:.1f}" if r.status == "pulled" else "-",
                         f"{r.mb_per_s:.1f}" if r.status == "pulled" else "-", r.verified or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell.rjust(widths[i]) for i, cell in enumerate(row))
                 .rstrip() for row in rows]
        for r in self.results:
            if r.message and r.status in ("skipped", "planned"):
                lines.append(f"  {r.name}: {r.message}")
            if r.status in ("failed", "optional_failed"):
                for source, error in r.attempts:
                    lines.append(f"  {r.name}: {source}: {error.removeprefix(source + ': ')}")
                if r.message:
                    lines.append(f"  {r.name}: {r.message}")
            if r.write_back.startswith(("failed", "conflict")):
                lines.append(f"  {r.name}: write-back {r.write_back}")
        pulled = [r for r in self.results if r.status == "pulled"]
        total = sum(r.size for r in pulled)
        if self.cache_error:
            lines.append(f"cache: {self.cache_error}")
        lines.append(f"{len(self.results)} models: {sum(r.status == 'present' for r in self.results)} present, "
                     f"{len(pulled)} pulled ({_human(total)}), "
                     f"{sum(r.status == 'failed' for r in self.results)} failed, "
                     f"{sum(r.status == 'optional_failed' for r in self.results)} optional failed, "
                     f"{sum(r.status == 'skipped' for r in self.results)} skipped in {self.seconds:.1f}s")
        return "\n".join(lines)


@attrs.frozen
class ModelEvent:
    """A progress record for subscribers (the CLI draws bars from these).

    ``kind``: ``plan`` (``total`` known), ``start`` (a source begins), ``bytes``
    (``bytes`` more written), ``attempt_failed`` (``message``), ``done``
    (``message`` is the status), ``waiting`` (another puller holds the model).
    """

    kind: str
    model: str
    source: str = ""
    bytes: int = 0
    total: int = 0
    message: str = ""


@attrs.frozen
class PlanItem:
    model: ModelSpec
    target: Path
    local: str  # present, missing, stale, unknown
    offers: Mapping[str, Offer | SourceError] = attrs.field(factory=dict)
    local_sha: str | None = None
    local_verified: str = ""

    @property
    def chosen(self) -> Offer | None:
        return next((o for o in self.offers.values() if isinstance(o, Offer)), None)


class InsufficientSpaceError(SyncBridgeError, OSError):
    """Not enough free disk space for the missing models; nothing was downloaded."""

    def __init__(self, message: str, *, needed: int, free: int) -> None:
        self.needed = needed
        self.free = free
        super().__init__(message)


# -- the fleet hook -------------------------------------------------------------------------


class FillCoordinator:
    """Decides who goes upstream for a model whose cache entry is missing and that will be written back.

    The default runs ``go_upstream`` at once. A fleet-aware coordinator can take
    a lease in the bucket (``If-None-Match``) so only one pod downloads
    upstream, and let the others wait for the cache entry and call
    ``try_cache`` instead (returning its result when not ``None``).
    """

    def fill(self, model: ModelSpec, *, cache_key: str, go_upstream: Callable[[], Any],
             try_cache: Callable[[], Any]) -> Any:
        return go_upstream()


# -- the local hash cache ------------------------------------------------------------------------


class HashCache:
    """sha256 of local files keyed by (path, size, mtime_ns), in ``<state_dir>/models/hashes.json``.

    ``verified`` (``sha256`` or ``size``) says what was checked against an
    authority (manifest or source) when the file was pulled: such a file is
    "present" on a warm start even when the manifest gives no sha256.
    """

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


# -- helpers -----------------------------------------------------------------------------------


def _inside(base: Path, target: Path, resolved: dict[Path, str] | None = None) -> bool:
    """Whether ``target`` (following symlinks of its existing part) stays inside ``base``.

    ``resolved`` caches the real paths of folders for one pull (a realpath is a syscall per path
    component: for 500 models in one folder it cost more CPU than fetching them).
    """
    if resolved is None:
        resolved = {}

    def real(folder: Path) -> str:
        found = resolved.get(folder)
        if found is None:
            found = os.path.realpath(folder)
            if os.path.isdir(found):  # a folder made later is resolved again once it exists
                resolved[folder] = found
        return found

    if os.path.islink(target):
        full = os.path.realpath(target)
    else:
        full = os.path.join(real(target.parent), target.name)
    return full.startswith(real(base).rstrip(os.sep) + os.sep)


def _part_path(target: Path, source: str) -> Path:
    return target.with_name(f".{target.name}.{source}{PART_SUFFIX}")


def _clean_parts(target: Path, model: ModelSpec, hidden: dict[Path, frozenset[str]] | None = None) -> None:
    """Remove temp files and staging folders an earlier run left for this target (known names only).

    ``hidden`` caches, per folder and per pull, the dot-names in it (one listing instead of a failed
    unlink per possible leftover of each model: a folder of 500 models cost 2,500 syscalls).
    """
    if model.is_snapshot:
        names = [f".{target.name}{SNAPSHOT_STAGING}", f".{target.name}.sbold"]
    else:
        names = [f".{target.name}.{s}{PART_SUFFIX}" for s in ("cache", "hf", "civitai", "url")]
        names += [f".{target.name}.hf{PART_SUFFIX}.d", f".{target.name}.cache{PART_SUFFIX}{RESUME_SUFFIX}"]
    if hidden is not None:
        there = hidden.get(target.parent)
        if there is None:
            try:
                with os.scandir(target.parent) as entries:
                    there = frozenset(e.name for e in entries if e.name.startswith("."))
            except OSError:
                there = None
            if there is not None:
                hidden[target.parent] = there
        if there is not None:
            names = [n for n in names if n in there]
    for name in names:
        leftover = target.with_name(name)
        try:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()
        except FileNotFoundError:
            pass


# Models smaller than this are fetched without the per-model lock: fetching one twice costs less
# than the lock file.
LOCK_MIN_SIZE = 16 * 1024 * 1024


@contextlib.contextmanager
def _model_lock(models_dir: Path, model: ModelSpec, on_wait: Callable[[], None], *, size: int):
    """An exclusive lock per model path (flock), so two pullers sharing a models folder do not download
    the same model twice. Correctness does not depend on it: only verified files are renamed into place."""
    if size < LOCK_MIN_SIZE and not model.is_snapshot:
        yield
        return
    lock_dir = models_dir / ".syncbridge" / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(model.path.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    fd = os.open(lock_dir / f"{digest}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the puller --------------------------------------------------------------------------------


class _Puller:
    def __init__(self, config: Config, manifest: Manifest, *, on_event: Callable[[ModelEvent], None] | None,
                 sources: Sequence[Source] | None, fill_coordinator: FillCoordinator | None,
                 cancel: threading.Event | None, store: Store | None) -> None:
        self.config = config
        self.manifest = manifest
        self.models_dir = manifest.models_dir
        self.on_event = on_event
        # Always an event: an interrupt (Ctrl-C) in the caller's thread stops every download thread.
        self.cancel = cancel if cancel is not None else threading.Event()
        # Default: single-flight across the fleet (one pod of many fills the cache; syncbridge.fleet).
        self._coordinator = fill_coordinator
        self.hashes = HashCache(config.state_dir / "models" / "hashes.json")
        self._store = store
        self._store_lock = threading.Lock()
        self._coord_lock = threading.Lock()
        # Per-pull caches of the file system: real paths of folders, dot-names per folder, folders made.
        self._resolved: dict[Path, str] = {}
        self._hidden: dict[Path, frozenset[str]] = {}
        self._made: set[Path] = set()
        self.parallel = config.models.parallel or manifest.parallel
        streams = max(1, config.rclone.multi_thread_streams)
        self.streams = streams
        if sources is None:
            sources = default_sources(store=self.store, cache_prefix=manifest.cache_prefix,
                                      hf_endpoint=config.models.hf_endpoint, hf_token=config.models.hf_token,
                                      civitai_endpoint=config.models.civitai_endpoint,
                                      civitai_api_key=config.models.civitai_api_key, streams=streams,
                                      cache_timeout=config.models.cache_timeout)
        self.sources = list(sources)
        self.cache = next((s for s in self.sources if isinstance(s, CacheSource)), None)

    @property
    def coordinator(self) -> FillCoordinator:
        """Default: single-flight across the fleet (one pod of many fills the cache; syncbridge.fleet),
        imported on the first cache miss with write_back so a warm start does not pay for it."""
        with self._coord_lock:
            if self._coordinator is None:
                from .fleet import ModelFillCoordinator

                self._coordinator = ModelFillCoordinator(self.config, store=self.store, cancel=self.cancel)
            return self._coordinator

    # the store is opened only when a model is missing: a warm start imports no boto3
    def store(self) -> Store:
        with self._store_lock:
            if self._store is None:
                self._store = open_store(self.config.remote, state_dir=self.config.state_dir,
                                         max_pool_connections=max(10, self.parallel * self.streams + 4),
                                         read_timeout=self.config.models.cache_timeout)
            return self._store

    def emit(self, kind: str, model: ModelSpec, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ModelEvent(kind, model.name, **fields))
            except Exception:  # noqa: BLE001 - a subscriber's bug must not fail a pull
                log.exception("model event callback failed")

    # -- local state --------------------------------------------------------------------------
    def local_state(self, model: ModelSpec, target: Path) -> tuple[str, str | None, str]:
        """(state, sha256, verified) without any network.

        state: present, missing, stale (does not verify) or unknown (exists, nothing local to check it against).
        """
        if model.is_snapshot:
            state = self._snapshot_state(model, target)
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

    def _snapshot_state(self, model: ModelSpec, target: Path) -> str:
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

    # -- planning ------------------------------------------------------------------------------
    def plan(self, model: ModelSpec, target: Path, local: str, local_sha: str | None,
             known: Mapping[str, Offer | SourceError] | None = None) -> PlanItem:
        """Ask the sources in order until one offers the model (one cheap request each).

        ``known``: offers already obtained in bulk (the cache listing), by source name.
        """
        offers: dict[str, Offer | SourceError] = {}
        for source in self.sources:
            if not source.applies(model):
                continue
            try:
                offer = (known or {}).get(source.name) or source.offer(model)
                if isinstance(offer, SourceError):
                    raise offer
            except SourceError as exc:
                offers[source.name] = exc
                continue
            problem = self.offer_problem(model, offer)
            if problem:
                offers[source.name] = SourceError(problem, source=source.name)
                continue
            offers[source.name] = offer
            if local == "unknown":
                # The file is there but nothing local says what it should be: the source does.
                found = self.matches_offer(target, offer)
                if found is not None:
                    return PlanItem(model, target, "present", offers, found[0], found[1])
                local = "stale"
            break
        return PlanItem(model, target, local, offers)

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

    @staticmethod
    def offer_problem(model: ModelSpec, offer: Offer) -> str:
        """Why an offer cannot be right, before downloading a byte (e.g. the source's sha256 differs)."""
        if model.is_snapshot or len(offer.files) != 1:
            return ""
        remote = offer.files[0]
        if model.sha256 and remote.sha256 and remote.sha256 != model.sha256:
            return f"offers sha256 {remote.sha256[:12]}..., the manifest wants {model.sha256[:12]}..."
        if model.size is not None and remote.size is not None and remote.size != model.size:
            return f"offers {remote.size} bytes, the manifest wants {model.size}"
        return ""

    def prefetch_small(self, items: Sequence[PlanItem]) -> tuple[Path, threading.Thread, frozenset[str]] | None:
        """Copy the small cache objects of many missing models with one rclone batch, in the background
        (one rclone process: Go-speed concurrency on the other core while Python fetches the big ones).

        Returns the staging folder (removed by the caller when the pull ends), the thread running
        the batch and the names of the models in it, or None when there are too few such models to be
        worth a batch. Models in the batch wait for their file in :meth:`CacheSource.fetch`.
        """
        if self.cache is None:
            return None
        chosen = [item for item in items
                  if item.chosen is not None and item.chosen.source == "cache" and not item.model.is_snapshot
                  and (item.chosen.files[0].size or 0) < BATCH_MAX_SIZE]
        files = [item.chosen.files[0] for item in chosen]  # type: ignore[union-attr]
        if len(files) < BULK_MIN:
            return None
        from .rclone import Rclone
        from .rclone.argv import remote_path

        staging = self.models_dir / ".syncbridge" / f"batch-{os.getpid()}-{threading.get_ident()}"
        rc = Rclone(self.config)
        transfers = str(max(16, self.config.rclone.transfers))
        timeout = self.config.models.cache_timeout

        def run(extra: list[str], copied: Callable[[str], None]) -> None:
            def on_record(record) -> None:
                if record.object and record.msg.startswith("Copied"):
                    copied(record.object)

            # --files-from lists each folder once, instead of a HEAD per file (--no-traverse).
            rc.run(["copy", remote_path(self.config.remote, self.cache.cache_prefix), str(staging), *extra,
                    "--transfers", transfers, "--checkers", transfers, "--config", "/dev/null",
                    "--ignore-checksum", "--use-json-log", "-v",
                    # A cache that stops answering ends the batch within about three of its timeouts
                    # (rclone's defaults wait 5 min per stalled read, 10 times, 3 runs); what the batch
                    # did not deliver is then fetched one by one, and skipped once the cache is down.
                    "--timeout", f"{timeout:g}s", "--contimeout", f"{min(timeout, 10.0):g}s",
                    "--low-level-retries", "3", "--retries", "1"], with_common=False, cancel=self.cancel,
                   on_record=on_record, what=f"copy {len(files)} small models from the cache")

        cache = self.cache
        ready = threading.Event()

        def batch() -> None:
            started = time.monotonic()
            try:
                cache.prefetch(files, staging, run, registered=ready)
            finally:
                ready.set()
            log.info("batch copy of %d small models from the cache in %.1fs", len(files),
                     time.monotonic() - started, extra={"event": "models.batch", "files": len(files)})

        thread = threading.Thread(target=batch, name="models-batch", daemon=True)
        thread.start()
        ready.wait()
        return staging, thread, frozenset(item.model.name for item in chosen)

    # -- pulling one model ----------------------------------------------------------------------
    def pull(self, item: PlanItem) -> ModelResult:
        model, target = item.model, item.target
        started = time.monotonic()
        attempts: list[tuple[str, str]] = []
        size = item.chosen.size if item.chosen is not None else (model.size or LOCK_MIN_SIZE)
        with _model_lock(self.models_dir, model, lambda: self.emit("waiting", model,
                                                                 message="another puller has this model"),
                         size=size):
            # Another puller sharing this folder may have put it in place since the plan was made.
            state, _, level = self.local_state(model, target)
            if state == "unknown" and item.chosen is not None:
                found = self.matches_offer(target, item.chosen)
                state, level = ("present", found[1]) if found else (state, level)
            if state == "present":
                return self._done(model, "present", "local", target, started, attempts, verified=level)
            offers = dict(item.offers)

            def attempt(source: Source) -> ModelResult | None:
                return self._attempt(source, item, offers, attempts, started)

            result: ModelResult | None = None
            cache = self.cache if self.cache is not None and self.cache.applies(model) else None
            if cache is not None:
                result = attempt(cache)
            if result is None:
                def go_upstream() -> ModelResult | None:
                    for source in self.sources:
                        if source.upstream and source.applies(model):
                            found = attempt(source)
                            if found is not None:
                                return found
                    return None

                if model.write_back and cache is not None and not cache.down:
                    # The one place where "about to go upstream for a model the cache should hold" happens.
                    result = self.coordinator.fill(model, cache_key=cache.key(model), go_upstream=go_upstream,
                                                   try_cache=lambda: attempt(cache))
                else:
                    result = go_upstream()
            if result is None:
                status = "optional_failed" if model.optional else "failed"
                tried = ", ".join(dict.fromkeys(s for s, _ in attempts)) or "none"
                message = f"no source could provide it (tried: {tried})"
                if not attempts:
                    message = "no source is configured for it (add hf, civitai or url, or fill the cache)"
                if target.exists():
                    message += f"; the existing {target} does not match and was left as it is"
                self.emit("done", model, message=status)
                return ModelResult(model.name, model.path, "", 0, time.monotonic() - started, "", status,
                                   tuple(attempts), message)
            # A source that failed in this run may have left a part the folder listing predates.
            _clean_parts(target, model, None if attempts else self._hidden)
            return result

    def _attempt(self, source: Source, item: PlanItem, offers: dict[str, Offer | SourceError],
                 attempts: list[tuple[str, str]], started: float) -> ModelResult | None:
        model, target = item.model, item.target
        offer = offers.pop(source.name, None)
        try:
            if isinstance(offer, SourceError):
                raise offer
            if offer is None:
                offer = source.offer(model)
                problem = self.offer_problem(model, offer)
                if problem:
                    raise SourceError(problem, source=source.name)
            self.emit("start", model, source=source.name, total=offer.size)
            if model.is_snapshot:
                verified = self._fetch_snapshot(source, model, target, offer)
                sha = None
            else:
                sha, verified = self._fetch_file(source, model, target, offer.files[0])
        except (SourceError, OSError) as exc:
            if not isinstance(exc, SourceError):
                exc = SourceError(f"{source.name}: {type(exc).__name__}: {exc}", source=source.name)
            miss = isinstance(exc, NotAvailable) and source.name == "cache"  # the usual first fill: no noise
            if not miss:
                log.warning("model %s: %s", model.name, exc, extra={"event": "models.attempt_failed",
                                                                    "model": model.name, "source": source.name})
            if (source.name, str(exc)) not in attempts:  # a coordinator may look at the cache repeatedly
                attempts.append((source.name, str(exc)))
                if not miss:
                    self.emit("attempt_failed", model, source=source.name, message=str(exc))
            return None
        write_back = ""
        if source.upstream and model.write_back and self.cache is not None:
            write_back = self._write_back(model, target, offer, sha)
        return self._done(model, "pulled", source.name, target, started, attempts, verified=verified,
                          write_back=write_back)

    def _verify(self, source: str, fetched: Fetched, *, size: int | None, sha256: str | None, what: str) -> str:
        if size is not None and fetched.size != size:
            raise SourceError(f"{what}: got {fetched.size} bytes, expected {size}", source=source)
        if sha256 and fetched.sha256 != sha256:
            raise SourceError(f"{what}: sha256 mismatch: got {fetched.sha256[:12]}..., expected {sha256[:12]}...",
                              source=source)
        return "sha256" if sha256 else ("size" if size is not None else "")

    def _fetch_file(self, source: Source, model: ModelSpec, target: Path, remote: RemoteFile) -> tuple[str, str]:
        if not _inside(self.models_dir, target, self._resolved):
            raise SourceError(f"{target} resolves outside {self.models_dir} (a symlink?)", source=source.name)
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        temp = _part_path(target, source.name)
        if not source.resumable():
            temp.unlink(missing_ok=True)
        try:
            fetched = source.fetch(model, remote, temp, on_bytes=lambda n: self.emit("bytes", model, bytes=n),
                                   cancel=self.cancel)
            verified = self._verify(source.name, fetched, size=model.size if model.size is not None else remote.size,
                                    sha256=model.sha256 or remote.sha256, what=source.name)
        except SourceError as exc:
            if not exc.retryable:
                temp.unlink(missing_ok=True)  # wrong bytes: never resume from them
            raise
        except BaseException:
            if not source.resumable():
                temp.unlink(missing_ok=True)
            raise
        # No fsync per file: a torn file after a host crash fails verification on the next start.
        os.replace(temp, target)
        self.hashes.put(target, fetched.sha256, verified=verified)
        return fetched.sha256, verified

    def _fetch_snapshot(self, source: Source, model: ModelSpec, target: Path, offer: Offer) -> str:
        if not _inside(self.models_dir, target, self._resolved):
            raise SourceError(f"{target} resolves outside {self.models_dir} (a symlink?)", source=source.name)
        staging = target.with_name(f".{target.name}{SNAPSHOT_STAGING}")
        staging.mkdir(parents=True, exist_ok=True)
        files: dict[str, dict[str, Any]] = {}
        levels = set()
        for remote in offer.files:
            dest = staging / remote.rel
            if not _inside(staging, dest):
                raise SourceError(f"snapshot file {remote.rel!r} would leave {target}", source=source.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha = None
            with contextlib.suppress(FileNotFoundError):  # verified by an earlier, interrupted run
                st = os.stat(dest)
                known = self.hashes.get(dest, st)
                if known and known[1] and st.st_size == remote.size and remote.sha256 in (None, known[0]):
                    sha = known[0]
            if sha is None:
                temp = _part_path(dest, source.name)
                try:
                    fetched = source.fetch(model, remote, temp,
                                           on_bytes=lambda n: self.emit("bytes", model, bytes=n), cancel=self.cancel)
                    level = self._verify(source.name, fetched, size=remote.size, sha256=remote.sha256,
                                         what=f"{source.name} {remote.rel}")
                    levels.add(level)
                except SourceError as exc:
                    if not exc.retryable:
                        temp.unlink(missing_ok=True)
                    raise
                os.replace(temp, dest)
                sha = fetched.sha256
                self.hashes.put(dest, sha, verified=level)
            files[remote.rel] = {"size": remote.size if remote.size is not None else os.path.getsize(dest),
                                 "sha256": remote.sha256 or sha}
        spec = model.hf
        assert spec is not None
        index = {"repo": spec.repo, "revision": spec.revision, "allow": list(spec.allow), "source": source.name,
                 "files": files}
        atomic_write_bytes(staging / SNAPSHOT_INDEX, json.dumps(index, indent=1, sort_keys=True).encode(), mode=0o644)
        # Swap the finished folder into place; an older, unverified folder goes aside first.
        old = target.with_name(f".{target.name}.sbold")
        if target.exists() or target.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
        for rel in files:  # rename keeps size and mtime: re-key the hashes under the final paths
            path = target / rel
            self.hashes.put(path, files[rel]["sha256"], verified="sha256")
        return "size" if levels == {"size"} else "sha256"

    # -- the cache --------------------------------------------------------------------------------
    def _write_back(self, model: ModelSpec, target: Path, offer: Offer, sha: str | None) -> str:
        assert self.cache is not None
        if self.cache.write_refused is not None:
            return f"skipped: the cache refused access (check {self.cache.write_refused.setting})"
        if self.cache.down:  # each put would wait out the same timeouts
            log.info("model %s: cache write-back skipped: the cache is not answering", model.name,
                     extra={"event": "models.write_back", "model": model.name})
            return "skipped: the cache is not answering"
        try:
            if model.is_snapshot:
                index_bytes = (target / SNAPSHOT_INDEX).read_bytes()
                index = json.loads(index_bytes)
                outcomes = [push_one(self.store(), self.cache.key(model, rel), target / rel, entry["sha256"])
                            for rel, entry in index["files"].items()]
                outcomes.append(push_one(self.store(), self.cache.key(model, SNAPSHOT_INDEX), None, None,
                                         data=index_bytes))
                outcome = "pushed" if "pushed" in outcomes else outcomes[-1]
                bad = [o for o in outcomes if o.startswith(("failed", "conflict"))]
                outcome = bad[0] if bad else outcome
            else:
                assert sha is not None
                outcome = push_one(self.store(), self.cache.key(model), target, sha)
        except (StoreError, OSError, ValueError) as exc:
            outcome = f"failed: {exc}"
            self.cache.refusal(exc, writing=True)
        level = logging.WARNING if outcome.startswith(("failed", "conflict")) else logging.INFO
        log.log(level, "model %s: cache write-back %s", model.name, outcome,
                extra={"event": "models.write_back", "model": model.name})
        return outcome

    def _done(self, model: ModelSpec, status: str, source: str, target: Path, started: float,
              attempts: list[tuple[str, str]], *, verified: str, write_back: str = "") -> ModelResult:
        size = _tree_size(target)
        self.emit("done", model, source=source, message=status)
        return ModelResult(model.name, model.path, source, size, time.monotonic() - started, verified, status,
                           tuple(attempts), write_back=write_back)


def push_one(store: Store, key: str, path: Path | None, sha: str | None, *, data: bytes | None = None) -> str:
    """Put one file in the cache unless an equal object is there; the conditional put's loser verifies.

    Returns ``pushed``, ``exists``, ``conflict: ...`` (the cache holds something else) or raises StoreError.
    """
    size = len(data) if data is not None else os.path.getsize(path)  # type: ignore[arg-type]

    def same(info) -> str:
        theirs = {k.lower(): v for k, v in info.metadata.items()}.get("sha256")
        if info.size == size and (theirs is None or sha is None or theirs.lower() == sha):
            return "exists"
        return f"conflict: {key} holds another object ({info.size} bytes, sha256 {str(theirs)[:12]}...)"

    info = store.head(key)
    if info is not None:
        return same(info)
    metadata = {"sha256": sha} if sha else {}
    try:
        if data is not None:
            store.put_bytes(key, data, if_none_match=True, metadata=metadata)
        else:
            store.put_file(path, key, if_none_match=True, metadata=metadata)  # type: ignore[arg-type]
        return "pushed"
    except PreconditionFailedError:
        info = store.head(key)
        return same(info) if info is not None else "exists"


def _tree_size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != SNAPSHOT_INDEX)
        return path.stat().st_size
    except OSError:
        return 0


# -- entry points --------------------------------------------------------------------------------


_MANIFEST_CACHE_VERSION = 1


def _load(config: Config, manifests: Sequence[str | os.PathLike[str]] | None) -> Manifest:
    """Load the manifests, reusing the parsed result while the files are unchanged.

    Parsing TOML is pure Python: for a manifest of a thousand models it is most of
    a warm start. The parsed manifest is kept (pickled, in the private state
    directory) under the files' (path, size, mtime_ns) and the models_dir override.
    """
    paths = list(manifests) if manifests else list(config.models.manifests)
    try:
        shape = tuple(f.name for cls in (Manifest, ModelSpec, HfSpec, CivitaiSpec) for f in attrs.fields(cls))
        stamp = (_MANIFEST_CACHE_VERSION, shape, str(config.models.dir),
                 tuple((str(Path(p).resolve()), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]))
    except OSError:
        return load_manifests(paths, models_dir=config.models.dir)
    cache = config.state_dir / "models" / "manifest.pickle"
    try:
        with open(cache, "rb") as fh:
            cached_stamp, manifest = pickle.load(fh)
        if cached_stamp == stamp and isinstance(manifest, Manifest):
            return manifest
    except (OSError, pickle.PickleError, EOFError, AttributeError, ValueError, TypeError, ImportError):
        pass
    manifest = load_manifests(paths, models_dir=config.models.dir)
    with contextlib.suppress(OSError):
        private_state_dir(cache.parent)
        atomic_write_bytes(cache, pickle.dumps((stamp, manifest), protocol=pickle.HIGHEST_PROTOCOL))
    return manifest


def _select(config: Config, manifest: Manifest, environ: Mapping[str, str] | None, tier: str | None):
    env = os.environ if environ is None else environ
    if tier is None:
        # nvidia-smi only when some model asks for a tier: a warm start stays fast.
        tier = detect_gpu_tier(config, environ=env) if any(m.min_tier for m in manifest.models) else "consumer"
    return select_models(manifest.models, tier=tier, environ=env)


def _check_space(models_dir: Path, items: Sequence[PlanItem]) -> None:
    need = 0
    lines = []
    unknown = []
    for item in items:
        offer = item.chosen
        if offer is None:
            continue
        size = offer.size
        have = 0
        if not item.model.is_snapshot:
            with contextlib.suppress(OSError):
                have = _part_path(item.target, offer.source).stat().st_size
        need += max(0, size - have)
        lines.append(f"  {item.model.name}: {_human(size)} from {offer.source}" + ("" if offer.size_known else
                                                                                  " (approximate)"))
        if not offer.size and not offer.size_known:
            unknown.append(item.model.name)
    if not need:
        return
    free = free_bytes(models_dir)
    margin = max(SPACE_MARGIN_MIN, int(need * SPACE_MARGIN))
    if free < need + margin:
        text = (f"not enough disk space in {models_dir}: the missing models need {_human(need)} "
                f"(+{_human(margin)} headroom), {_human(free)} is free; nothing was downloaded\n" + "\n".join(lines))
        if unknown:
            text += f"\n  (size unknown for: {', '.join(unknown)})"
        raise InsufficientSpaceError(text, needed=need + margin, free=free)


def pull_models(
    config: Config,
    manifests: Sequence[str | os.PathLike[str]] | None = None,
    *,
    dry_run: bool = False,
    on_event: Callable[[ModelEvent], None] | None = None,
    environ: Mapping[str, str] | None = None,
    tier: str | None = None,
    fill_coordinator: FillCoordinator | None = None,
    cancel: threading.Event | None = None,
    sources: Sequence[Source] | None = None,
    store: Store | None = None,
) -> PullReport:
    """Put every enabled model of the manifests in place, verified.

    Args:
        config: the resolved configuration (bucket, tokens, endpoints, state dir).
        manifests: manifest files; default ``config.models.manifests`` (``SYNCBRIDGE_MODELS``).
        dry_run: only plan: each result says ``planned`` and which source it would use.
        on_event: progress subscriber (:class:`ModelEvent`).
        environ: where ``enabled_by`` variables and PATH (nvidia-smi) are read (default ``os.environ``).
        tier: the GPU tier; default :func:`syncbridge.system.detect_gpu_tier`.
        fill_coordinator: who goes upstream on a cache miss with ``write_back`` (see :class:`FillCoordinator`).
        cancel: set to stop downloads (raises :class:`~syncbridge.errors.CancelledError`).
        sources: the ladder (default: cache, Hugging Face, CivitAI, URL).
        store: the bucket (default: opened from ``config.remote`` when first needed).

    Returns:
        A :class:`PullReport`; ``report.ok`` is false when a required model failed.

    Raises:
        ManifestError: invalid manifests (nothing done).
        InsufficientSpaceError: not enough free space for what is missing (nothing downloaded).
    """
    started = time.monotonic()
    manifest = _load(config, manifests)
    selection = _select(config, manifest, environ, tier)
    puller = _Puller(config, manifest, on_event=on_event, sources=sources, fill_coordinator=fill_coordinator,
                     cancel=cancel, store=store)
    if puller.cache is not None:
        puller.cache.begin_pull()
    results: dict[str, ModelResult] = {}
    for model, reason in selection.skipped:
        results[model.name] = ModelResult(model.name, model.path, "", 0, 0.0, "", "skipped", message=reason)
    todo: list[tuple[ModelSpec, Path, str, str | None]] = []
    for model in selection.enabled:
        target = manifest.models_dir / model.path
        state, sha, level = puller.local_state(model, target)
        if state != "present" and not _inside(manifest.models_dir, target, puller._resolved):
            results[model.name] = ModelResult(model.name, model.path, "", 0, 0.0, "", "failed",
                                              message=f"{target} resolves outside {manifest.models_dir}")
            continue
        if state == "present":
            results[model.name] = puller._done(model, "present", "local", target, time.monotonic(), [],
                                               verified=level)
        else:
            todo.append((model, target, state, sha))
    try:
        if todo:
            if puller.cache is not None:
                puller.cache.check()
            listed: dict[str, Offer | SourceError] = {}
            if puller.cache is not None and len(todo) >= BULK_MIN:
                listed = puller.cache.list_offers([t[0] for t in todo])

            def plan(t: tuple[ModelSpec, Path, str, str | None]) -> PlanItem:
                return puller.plan(*t, known={"cache": listed[t[0].name]} if t[0].name in listed else None)

            # A missing model the listing offers needs no request and no hashing: planned here, since
            # handing hundreds of them to threads cost more than the plans (about 0.1 s for 500).
            quick = {t[0].name for t in todo if t[2] == "missing" and isinstance(listed.get(t[0].name), Offer)}
            planned = {t[0].name: plan(t) for t in todo if t[0].name in quick}
            with ThreadPoolExecutor(max_workers=min(8, max(1, puller.parallel * 2)),
                                    thread_name_prefix="models-plan") as pool:
                slow = [t for t in todo if t[0].name not in quick]
                planned.update(zip((t[0].name for t in slow), pool.map(plan, slow)))
            plans = [planned[t[0].name] for t in todo]
            to_fetch: list[PlanItem] = []
            for item in plans:
                model = item.model
                if item.local == "present":
                    results[model.name] = puller._done(model, "present", "local", item.target, time.monotonic(),
                                                       [], verified=item.local_verified)
                elif dry_run:
                    chosen = item.chosen
                    tried = [(n, str(e)) for n, e in item.offers.items() if isinstance(e, SourceError)]
                    if chosen is None:
                        status = "optional_failed" if model.optional else "failed"
                        results[model.name] = ModelResult(model.name, model.path, "", 0, 0.0, "", status,
                                                          tuple(tried), "no source has it")
                    else:
                        note = f"would pull from {chosen.source}: {chosen.detail}"
                        if item.local == "stale":
                            note += f" (replacing the file at {item.target}, which does not verify)"
                        results[model.name] = ModelResult(model.name, model.path, chosen.source, chosen.size, 0.0,
                                                          "", "planned", tuple(tried), note)
                else:
                    to_fetch.append(item)
                    if item.chosen is not None:
                        puller.emit("plan", model, source=item.chosen.source, total=item.chosen.size)
            if to_fetch:
                _check_space(manifest.models_dir, to_fetch)
                batch = puller.prefetch_small(to_fetch)
                batched = [item for item in to_fetch if batch is not None and item.model.name in batch[2]]
                rest = [item for item in to_fetch if batch is None or item.model.name not in batch[2]]
                # Largest first: the long downloads start at once, the small ones fill in around them.
                rest.sort(key=lambda item: -(item.chosen.size if item.chosen is not None else 0))
                try:
                    # Models in the batch get their own lane: each is put in place as the batch delivers
                    # it, instead of waiting for a slot behind the large downloads.
                    with ThreadPoolExecutor(max_workers=puller.parallel, thread_name_prefix="models-pull") as pool, \
                            ThreadPoolExecutor(max_workers=2, thread_name_prefix="models-batch") as lane:
                        futures = [pool.submit(puller.pull, item) for item in rest]
                        futures += [lane.submit(puller.pull, item) for item in batched]
                        try:
                            for future in futures:
                                result = future.result()
                                results[result.name] = result
                        except BaseException:
                            puller.cancel.set()  # do not wait for every download to finish
                            for future in futures:
                                future.cancel()
                            raise
                finally:
                    if batch is not None:
                        batch[1].join()
                        shutil.rmtree(batch[0], ignore_errors=True)
    finally:
        puller.hashes.save()
        if puller._store is not None and store is None:
            puller._store.close()
    order = {m.name: i for i, m in enumerate(manifest.models)}
    ordered = tuple(sorted(results.values(), key=lambda r: order.get(r.name, 0)))
    refused = puller.cache.refused if puller.cache is not None else None
    return PullReport(ordered, time.monotonic() - started, dry_run=dry_run, models_dir=manifest.models_dir,
                      cache_error=str(refused) if refused is not None else None,
                      cache_setting=refused.setting if refused is not None else None,
                      cache_write_only=refused is not None and puller.cache.read_refused is None)


def push_cache(
    config: Config,
    manifests: Sequence[str | os.PathLike[str]] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    tier: str | None = None,
    on_event: Callable[[ModelEvent], None] | None = None,
    store: Store | None = None,
) -> PullReport:
    """Fill the cache from the models present (and verified) locally, with conditional puts.

    Models that are not present locally are ``skipped``; ``source`` is the
    outcome per model: ``pushed`` or ``exists`` (the cache already holds the
    same bytes). A model whose local file does not verify, or whose cache entry
    holds another object, is ``failed``.
    """
    started = time.monotonic()
    manifest = _load(config, manifests)
    selection = _select(config, manifest, environ, tier)
    puller = _Puller(config, manifest, on_event=on_event, sources=[], fill_coordinator=None, cancel=None,
                     store=store)
    cache = CacheSource(puller.store, manifest.cache_prefix)
    results: list[ModelResult] = []
    try:
        for model in selection.enabled:
            target = manifest.models_dir / model.path
            t0 = time.monotonic()
            state, sha, _ = puller.local_state(model, target)
            if state == "unknown":
                # Nothing to verify against: hash it; the cache records that hash.
                sha = puller.hashes.hash(target, os.stat(target))
                state = "present"
            if state != "present":
                results.append(ModelResult(model.name, model.path, "", 0, 0.0, "", "skipped",
                                           message=f"not present locally ({state})"))
                continue
            try:
                if model.is_snapshot:
                    index_bytes = (target / SNAPSHOT_INDEX).read_bytes()
                    index = json.loads(index_bytes)
                    outcomes = [push_one(puller.store(), cache.key(model, rel), target / rel, entry["sha256"])
                                for rel, entry in index["files"].items()]
                    outcomes.append(push_one(puller.store(), cache.key(model, SNAPSHOT_INDEX), None, None,
                                             data=index_bytes))
                    bad = [o for o in outcomes if o.startswith("conflict")]
                    outcome = bad[0] if bad else ("pushed" if "pushed" in outcomes else "exists")
                else:
                    outcome = push_one(puller.store(), cache.key(model), target, sha)
            except (StoreError, OSError, ValueError) as exc:
                outcome = f"failed: {exc}"
            status = "failed" if outcome.startswith(("failed", "conflict")) else "pulled"
            results.append(ModelResult(model.name, model.path, "cache", _tree_size(target), time.monotonic() - t0,
                                       "sha256", status, message=outcome if status == "failed" else "",
                                       write_back=outcome))
            puller.emit("done", model, source="cache", message=outcome)
        for model, reason in selection.skipped:
            results.append(ModelResult(model.name, model.path, "", 0, 0.0, "", "skipped", message=reason))
    finally:
        puller.hashes.save()
        if puller._store is not None and store is None:
            puller._store.close()
    return PullReport(tuple(results), time.monotonic() - started, models_dir=manifest.models_dir)


def list_models(config: Config, manifests: Sequence[str | os.PathLike[str]] | None = None, *,
                environ: Mapping[str, str] | None = None, tier: str | None = None) -> PullReport:
    """Each model's local state without any network request: present, planned (missing or stale) or skipped."""
    started = time.monotonic()
    manifest = _load(config, manifests)
    selection = _select(config, manifest, environ, tier)
    puller = _Puller(config, manifest, on_event=None, sources=[], fill_coordinator=None, cancel=None, store=None)
    results = []
    for model in manifest.models:
        skipped = next((r for m, r in selection.skipped if m is model), None)
        if skipped is not None:
            results.append(ModelResult(model.name, model.path, "", 0, 0.0, "", "skipped", message=skipped))
            continue
        state, sha, level = puller.local_state(model, manifest.models_dir / model.path)
        if state == "present":
            results.append(puller._done(model, "present", "local", manifest.models_dir / model.path,
                                        time.monotonic(), [], verified=level))
        else:
            results.append(ModelResult(model.name, model.path, "", 0, 0.0, "", "planned",
                                       message={"missing": "missing", "stale": "present but does not verify",
                                                "unknown": "present, not yet verified against a source"}[state]))
    puller.hashes.save()
    return PullReport(tuple(results), time.monotonic() - started, models_dir=manifest.models_dir)
