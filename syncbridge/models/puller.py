"""The puller: one pull's shared state, and the ladder walked for one model.

:class:`Puller` holds what every phase of a pull shares: the sources, the bucket (opened only when
a model is missing: a warm start imports no boto3), the local record, the progress subscriber and
the cancel event. Its phases are public, so :func:`~syncbridge.models.pull.pull_models` only
orders them: :meth:`Puller.local` (what is there), :meth:`Puller.plan`, :meth:`Puller.prefetch`,
:meth:`Puller.fetch_all` (each model: the cache, then upstream through the :class:`FillCoordinator`,
then the write-back of what came from upstream).

With ``write_back``, a model fetched upstream is published to the cache by the one cache-entry
protocol (:mod:`syncbridge.models.cacheentry`); a pod that loses that race verifies the winner's
object instead.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import Config
from ..errors import StoreError
from ..store import Store, open_store
from .cacheentry import Outcome, WriteBack, publish, publish_snapshot
from .fetch import Fetcher
from .layout import LOCK_MIN_SIZE, clean_parts, model_lock, tree_size
from .localstate import HashCache, LocalState
from .manifest import Manifest, ModelSpec
from .plan import PlanItem, Todo, offer_problem, plan_all
from .prefetch import Batch, prefetch_small
from .report import ModelEvent, ModelResult
from .sources import CacheSource, NotAvailable, Offer, Source, SourceError, default_sources

__all__ = ["Puller", "FillCoordinator"]

log = logging.getLogger(__name__)


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


class Puller:
    """One pull's shared state and phases (see the module doc).

    Args:
        sources: the ladder (default: :func:`~syncbridge.models.sources.default_sources` from ``config``).
        fill_coordinator: who goes upstream on a cache miss with ``write_back`` (default: the fleet's).
        cancel: set to stop every download (a fresh event when not given).
        store: the bucket (default: opened when first needed, and closed by :meth:`close`).
    """

    def __init__(self, config: Config, manifest: Manifest, *, on_event: Callable[[ModelEvent], None] | None = None,
                 sources: Sequence[Source] | None = None, fill_coordinator: FillCoordinator | None = None,
                 cancel: threading.Event | None = None, store: Store | None = None) -> None:
        self.config = config
        self.manifest = manifest
        self.models_dir = manifest.models_dir
        self.on_event = on_event
        # Always an event: an interrupt (Ctrl-C) in the caller's thread stops every download thread.
        self.cancel = cancel if cancel is not None else threading.Event()
        self._coordinator = fill_coordinator
        self.hashes = HashCache.of(config.state_dir)
        self.local = LocalState(self.hashes)
        self.fetcher = Fetcher(self.models_dir, self.hashes, on_bytes=lambda m, n: self.emit("bytes", m, bytes=n),
                               cancel=self.cancel)
        self._store = store
        self._own_store = store is None
        self._store_lock = threading.Lock()
        self._coord_lock = threading.Lock()
        self._hidden: dict[Path, frozenset[str]] = {}  # dot-names per folder, per pull (see clean_parts)
        self.parallel = config.models.parallel or manifest.parallel
        self.streams = max(1, config.rclone.multi_thread_streams)
        if sources is None:
            sources = default_sources(store=self.store, cache_prefix=manifest.cache_prefix,
                                      hf_endpoint=config.models.hf_endpoint, hf_token=config.models.hf_token,
                                      civitai_endpoint=config.models.civitai_endpoint,
                                      civitai_api_key=config.models.civitai_api_key, streams=self.streams,
                                      cache_timeout=config.models.cache_timeout)
        self.sources = list(sources)
        self.cache = next((s for s in self.sources if isinstance(s, CacheSource)), None)
        if self.cache is not None:
            self.cache.begin_pull()

    @property
    def coordinator(self) -> FillCoordinator:
        """Default: single-flight across the fleet (one pod of many fills the cache; syncbridge.fleet),
        imported on the first cache miss with write_back so a warm start does not pay for it."""
        with self._coord_lock:
            if self._coordinator is None:
                from ..fleet import ModelFillCoordinator

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

    def close(self) -> None:
        """Save the local record; close the store when this puller opened it."""
        self.hashes.save()
        if self._store is not None and self._own_store:
            self._store.close()

    def emit(self, kind: str, model: ModelSpec, **fields: Any) -> None:
        if self.on_event is not None:
            try:
                self.on_event(ModelEvent(kind, model.name, **fields))
            except Exception:  # noqa: BLE001 - a subscriber's bug must not fail a pull
                log.exception("model event callback failed")

    def present(self, model: ModelSpec, target: Path, verified: str) -> ModelResult:
        """The result of a model found in place, verified."""
        return self._done(model, "present", "local", target, time.monotonic(), [], verified=verified)

    # -- the phases ---------------------------------------------------------------------------
    def plan(self, todo: Sequence[Todo]) -> list[PlanItem]:
        """Ask the ladder about each model not present (see :func:`~syncbridge.models.plan.plan_all`)."""
        return plan_all(todo, self.sources, self.local, cache=self.cache,
                        workers=min(8, max(1, self.parallel * 2)))

    def prefetch(self, items: Sequence[PlanItem]) -> Batch | None:
        """Start the rclone batch of small cache objects (see :func:`~syncbridge.models.prefetch.prefetch_small`)."""
        return prefetch_small(self.config, self.cache, self.models_dir, items, cancel=self.cancel)

    def fetch_all(self, items: Sequence[PlanItem], batch: Batch | None) -> list[ModelResult]:
        """Pull every planned model, ``parallel`` at a time, largest first; the models of ``batch`` in a
        lane of their own, each put in place as the batch delivers it."""
        batched = [item for item in items if batch is not None and item.model.name in batch.names]
        rest = [item for item in items if batch is None or item.model.name not in batch.names]
        # Largest first: the long downloads start at once, the small ones fill in around them.
        rest.sort(key=lambda item: -(item.chosen.size if item.chosen is not None else 0))
        results = []
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="models-pull") as pool, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="models-batch") as lane:
            futures = [pool.submit(self.pull, item) for item in rest]
            futures += [lane.submit(self.pull, item) for item in batched]
            try:
                for future in futures:
                    results.append(future.result())
            except BaseException:
                self.cancel.set()  # do not wait for every download to finish
                for future in futures:
                    future.cancel()
                raise
        return results

    # -- pulling one model ----------------------------------------------------------------------
    def pull(self, item: PlanItem) -> ModelResult:
        model, target = item.model, item.target
        started = time.monotonic()
        attempts: list[tuple[str, str]] = []
        size = item.chosen.size if item.chosen is not None else (model.size or LOCK_MIN_SIZE)
        with model_lock(self.models_dir, model, lambda: self.emit("waiting", model,
                                                                 message="another puller has this model"),
                         size=size):
            # Another puller sharing this folder may have put it in place since the plan was made.
            state, _, level = self.local.state(model, target)
            if state == "unknown" and item.chosen is not None:
                found = self.local.matches_offer(target, item.chosen)
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
            clean_parts(target, model, None if attempts else self._hidden)
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
                problem = offer_problem(model, offer)
                if problem:
                    raise SourceError(problem, source=source.name)
            self.emit("start", model, source=source.name, total=offer.size)
            if model.is_snapshot:
                verified = self.fetcher.snapshot(source, model, target, offer)
                sha = None
            else:
                sha, verified = self.fetcher.file(source, model, target, offer.files[0])
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
        write_back = None
        if source.upstream and model.write_back and self.cache is not None:
            write_back = self._write_back(model, target, sha)
        return self._done(model, "pulled", source.name, target, started, attempts, verified=verified,
                          write_back=write_back)

    # -- the cache --------------------------------------------------------------------------------
    def _write_back(self, model: ModelSpec, target: Path, sha: str | None) -> WriteBack:
        assert self.cache is not None
        if self.cache.write_refused is not None:
            return WriteBack(Outcome.SKIPPED, f"the cache refused access (check {self.cache.write_refused.setting})")
        if self.cache.down:  # each put would wait out the same timeouts
            log.info("model %s: cache write-back skipped: the cache is not answering", model.name,
                     extra={"event": "models.write_back", "model": model.name})
            return WriteBack(Outcome.SKIPPED, "the cache is not answering")
        try:
            if model.is_snapshot:
                outcome = publish_snapshot(self.store(), lambda rel: self.cache.key(model, rel), target)
            else:
                assert sha is not None
                outcome = publish(self.store(), self.cache.key(model), target, sha)
        except (StoreError, OSError, ValueError) as exc:
            outcome = WriteBack(Outcome.FAILED, str(exc))
            self.cache.refusal(exc, writing=True)
        log.log(logging.WARNING if outcome.bad else logging.INFO, "model %s: cache write-back %s", model.name, outcome,
                extra={"event": "models.write_back", "model": model.name})
        return outcome

    def _done(self, model: ModelSpec, status: str, source: str, target: Path, started: float,
              attempts: list[tuple[str, str]], *, verified: str, write_back: WriteBack | None = None) -> ModelResult:
        size = tree_size(target)
        self.emit("done", model, source=source, message=status)
        return ModelResult(model.name, model.path, source, size, time.monotonic() - started, verified, status,
                           tuple(attempts), cache_write=write_back)
