"""Model warm-start: put every model a pod needs in place, verified, as fast as the link allows.

For each enabled model (``enabled_by``, ``min_tier``), in order:

1. **present**: the file (or snapshot folder) is there and verified: size
   always, sha256 when known (manifest, or what a source said when it was
   pulled). Hashes are cached by (path, size, mtime_ns) under the state
   directory (:mod:`~syncbridge.models.localstate`), so a warm start with
   everything present reads no file, makes no network request and opens no store;
2. the **R2 cache** ``<cache_prefix>/<path>``;
3. **upstream**: Hugging Face, CivitAI, a URL (:mod:`syncbridge.models.sources`).

A source that fails, or delivers the wrong size or sha256, is recorded in the
model's ``attempts`` and the next one is tried. Every download goes to a temp
file beside the target and is renamed into place only once verified. Before
anything is downloaded, the free space is checked against what is missing.

:func:`pull_models` orders the phases of the :class:`~syncbridge.models.puller.Puller`:
local state, plan, space check, prefetch, fetch (with write-back).

Fleet hook: :class:`~syncbridge.models.puller.FillCoordinator` wraps the one moment a
model with ``write_back`` is about to go upstream after a cache miss, so a
coordinator can make a single pod fill the cache while the others wait for it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import attrs

from ..config import Config
from ..errors import StoreError
from ..fsutil import atomic_write_bytes, private_state_dir
from ..store import Store
from ..system import detect_gpu_tier
from .cacheentry import Outcome, WriteBack, publish, publish_snapshot
from .layout import tree_size
from .manifest import CivitaiSpec, HfSpec, Manifest, ModelSpec, Selection, load_manifests, select_models
from .plan import PlanItem, Todo, check_space
from .puller import FillCoordinator, Puller
from .report import ModelEvent, ModelResult, PullReport
from .sources import CacheSource, Source, SourceError

__all__ = ["pull_models", "push_cache", "list_models"]

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


def _select(config: Config, manifest: Manifest, environ: Mapping[str, str] | None, tier: str | None) -> Selection:
    env = os.environ if environ is None else environ
    if tier is None:
        # nvidia-smi only when some model asks for a tier: a warm start stays fast.
        tier = detect_gpu_tier(config, environ=env) if any(m.min_tier for m in manifest.models) else "consumer"
    return select_models(manifest.models, tier=tier, environ=env)


def _skipped(model: ModelSpec, reason: str) -> ModelResult:
    return ModelResult(model.name, model.path, "", 0, 0.0, "", "skipped", message=reason)


def _dry_run(item: PlanItem) -> ModelResult:
    """What ``--dry-run`` says of a model that is not present: where it would come from, or that nothing has it."""
    model = item.model
    chosen = item.chosen
    tried = [(n, str(e)) for n, e in item.offers.items() if isinstance(e, SourceError)]
    if chosen is None:
        status = "optional_failed" if model.optional else "failed"
        return ModelResult(model.name, model.path, "", 0, 0.0, "", status, tuple(tried), "no source has it")
    note = f"would pull from {chosen.source}: {chosen.detail}"
    if item.local == "stale":
        note += f" (replacing the file at {item.target}, which does not verify)"
    return ModelResult(model.name, model.path, chosen.source, chosen.size, 0.0, "", "planned", tuple(tried), note)


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
    only: Callable[[ModelSpec], bool] | None = None,
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
        only: pull only the models it accepts (``start`` pulls the ``required`` ones first); the others
            are left out of the report.

    Returns:
        A :class:`PullReport`; ``report.ok`` is false when a required model failed.

    Raises:
        ManifestError: invalid manifests (nothing done).
        InsufficientSpaceError: not enough free space for what is missing (nothing downloaded).
    """
    started = time.monotonic()
    manifest = _load(config, manifests)
    selection = _select(config, manifest, environ, tier)
    if only is not None:
        selection = attrs.evolve(selection, enabled=tuple(m for m in selection.enabled if only(m)),
                                 skipped=tuple((m, r) for m, r in selection.skipped if only(m)))
    puller = Puller(config, manifest, on_event=on_event, sources=sources, fill_coordinator=fill_coordinator,
                    cancel=cancel, store=store)
    results: dict[str, ModelResult] = {model.name: _skipped(model, reason) for model, reason in selection.skipped}
    todo: list[Todo] = []
    for model in selection.enabled:
        target = manifest.models_dir / model.path
        state, sha, level = puller.local.state(model, target)
        if state == "present":
            results[model.name] = puller.present(model, target, level)
        elif not puller.fetcher.inside(target):
            results[model.name] = ModelResult(model.name, model.path, "", 0, 0.0, "", "failed",
                                              message=f"{target} resolves outside {manifest.models_dir}")
        else:
            todo.append(Todo(model, target, state, sha))
    try:
        to_fetch: list[PlanItem] = []
        for item in puller.plan(todo) if todo else []:
            if item.local == "present":
                results[item.model.name] = puller.present(item.model, item.target, item.local_verified)
            elif dry_run:
                results[item.model.name] = _dry_run(item)
            else:
                to_fetch.append(item)
                if item.chosen is not None:
                    puller.emit("plan", item.model, source=item.chosen.source, total=item.chosen.size)
        if to_fetch:
            check_space(manifest.models_dir, to_fetch)
            batch = puller.prefetch(to_fetch)
            try:
                results.update((r.name, r) for r in puller.fetch_all(to_fetch, batch))
            finally:
                if batch is not None:
                    batch.close()
    finally:
        puller.close()
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
    puller = Puller(config, manifest, on_event=on_event, sources=[], store=store)
    cache = CacheSource(puller.store, manifest.cache_prefix)
    results: list[ModelResult] = []
    try:
        for model in selection.enabled:
            target = manifest.models_dir / model.path
            t0 = time.monotonic()
            state, sha, _ = puller.local.state(model, target)
            if state == "unknown":
                # Nothing to verify against: hash it; the cache records that hash.
                sha = puller.hashes.hash(target, os.stat(target))
                state = "present"
            if state != "present":
                results.append(_skipped(model, f"not present locally ({state})"))
                continue
            try:
                if model.is_snapshot:
                    outcome = publish_snapshot(puller.store(), lambda rel, m=model: cache.key(m, rel), target)
                else:
                    outcome = publish(puller.store(), cache.key(model), target, sha)
            except (StoreError, OSError, ValueError) as exc:
                outcome = WriteBack(Outcome.FAILED, str(exc))
            status = "failed" if outcome.bad else "pulled"
            results.append(ModelResult(model.name, model.path, "cache", tree_size(target), time.monotonic() - t0,
                                       "sha256", status, message=str(outcome) if outcome.bad else "",
                                       cache_write=outcome))
            puller.emit("done", model, source="cache", message=str(outcome))
        results += [_skipped(model, reason) for model, reason in selection.skipped]
    finally:
        puller.close()
    return PullReport(tuple(results), time.monotonic() - started, models_dir=manifest.models_dir)


def list_models(config: Config, manifests: Sequence[str | os.PathLike[str]] | None = None, *,
                environ: Mapping[str, str] | None = None, tier: str | None = None) -> PullReport:
    """Each model's local state without any network request: present, planned (missing or stale) or skipped."""
    started = time.monotonic()
    manifest = _load(config, manifests)
    selection = _select(config, manifest, environ, tier)
    puller = Puller(config, manifest, sources=[])
    results = []
    for model in manifest.models:
        skipped = next((r for m, r in selection.skipped if m is model), None)
        if skipped is not None:
            results.append(_skipped(model, skipped))
            continue
        state, sha, level = puller.local.state(model, manifest.models_dir / model.path)
        if state == "present":
            results.append(puller.present(model, manifest.models_dir / model.path, level))
        else:
            results.append(ModelResult(model.name, model.path, "", 0, 0.0, "", "planned",
                                       message={"missing": "missing", "stale": "present but does not verify",
                                                "unknown": "present, not yet verified against a source"}[state]))
    puller.close()
    return PullReport(tuple(results), time.monotonic() - started, models_dir=manifest.models_dir)

