"""Models from workflows: what ComfyUI workflows need, where each model would come from, a manifest for it.

``syncbridge models from-workflow WORKFLOW...`` reads workflow files (or folders of them), lists every
model they need with the nodes that want it, and resolves each, in this order:

* ``present``: the file is in the models folder already;
* ``cache``: the bucket's model cache holds ``<cache_prefix>/<path>`` (one listing, not a HEAD per model);
* ``hf`` / ``civitai`` / ``url``: the workflow gives a URL (a Hugging Face or CivitAI URL goes through
  that source, so ``HF_TOKEN``, ``CIVITAI_API_KEY`` and ``HF_ENDPOINT`` apply);
* ``unresolved``: none of these; said plainly, with the node that wants it.

:func:`manifest_text` turns the resolvable ones into a manifest that ``models pull`` (and ``start``)
pull like a hand-written one: cache first, then the URL's source, verified, written back if asked.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import attrs

from ..errors import ConfigError, Problem, StoreError
from ..tomlsrc import value as toml_value
from .spec import DEFAULT_CACHE_PREFIX, DEFAULT_MODELS_DIR
from .workflow import Needed, WorkflowError, needed, refs_of, url_source

__all__ = ["Resolved", "WorkflowModels", "read_workflows", "resolve", "manifest_text", "workflow_models",
           "write_workflow_manifest", "document_models", "STATUSES"]

log = logging.getLogger(__name__)

STATUSES = ("present", "cache", "hf", "civitai", "url", "unresolved")


@attrs.frozen
class Resolved:
    """A model the workflows need, and where it would come from (``status``: one of :data:`STATUSES`)."""

    model: Needed
    status: str
    source: dict[str, Any] | None = None  # the manifest source for hf / civitai / url
    size: int | None = None  # of the file present on this pod (what the manifest entry verifies)
    sha256: str | None = None  # of a file present here that no URL names (nothing else could vouch for it)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.model.path, "status": self.status, "url": self.model.url,
                "wanted_by": list(self.model.wanted_by)}


def _workflow_files(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, bool]]:
    """(file, named) for each file named and each ``*.json`` below each folder named."""
    files: list[tuple[Path, bool]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += [(p, False) for p in sorted(path.rglob("*.json")) if p.is_file()]
        else:
            files.append((path, True))
    return files


def read_workflows(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[str, list]]:
    """``(file, references)`` for each workflow file (a folder: its ``*.json``, recursively).

    Raises:
        ConfigError: naming every file that cannot be read, is not JSON or is not a workflow. In a
            folder, JSON files that are not workflows (``index.json``...) are skipped; a file named
            on its own must be one.
    """
    out: list[tuple[str, list]] = []
    problems: list[Problem] = []
    for file, named in _workflow_files(paths):
        where = f"workflow {file}"
        try:
            doc = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            problems.append(Problem(where, f"cannot be read: {exc.strerror or exc}"))
            continue
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(Problem(where, f"is not JSON: {exc}"))
            continue
        try:
            out.append((str(file), refs_of(doc)))
        except WorkflowError as exc:
            if named:
                problems.append(Problem(where, str(exc)))
    if problems:
        raise ConfigError(problems)
    return out


def _cached_paths(list_keys: Callable[[str], Iterable[str]], cache_prefix: str) -> set[str]:
    prefix = cache_prefix.strip("/") + "/"
    return {key[len(prefix):] for key in list_keys(prefix) if key.startswith(prefix)}


def resolve(models: Sequence[Needed], *, models_dir: Path, cache_prefix: str,
            list_keys: Callable[[str], Iterable[str]] | None, hf_endpoint: str = "https://huggingface.co",
            civitai_endpoint: str = "https://civitai.com",
            sha256_of: Callable[[Path, os.stat_result], str] | None = None
            ) -> tuple[list[Resolved], str | None]:
    """Where each model would come from. ``list_keys(prefix)`` lists the bucket (``None``: no bucket).

    A file present here that no URL names gets its sha256 from ``sha256_of(path, stat)``: a manifest
    entry with only a path and a size could not be verified by any source.

    Returns the resolutions and, when the cache could not be listed, why (the models are then
    resolved without it, and the caller says so).
    """
    cached: set[str] = set()
    cache_error = None
    if list_keys is not None:
        try:
            cached = _cached_paths(list_keys, cache_prefix)
        except StoreError as exc:
            cache_error = str(exc)
    out: list[Resolved] = []
    for model in models:
        source = url_source(model.url, hf_endpoint=hf_endpoint, civitai_endpoint=civitai_endpoint) \
            if model.url else None
        size = sha = None
        local = models_dir / model.path
        if local.is_file():
            st = local.stat()
            status, size = "present", st.st_size
            if source is None and sha256_of is not None:
                sha = sha256_of(local, st)
        elif model.path in cached:
            status = "cache"
        elif source is not None:
            status = next(iter(source))
        else:
            status = "unresolved"
        out.append(Resolved(model, status, source, size, sha))
    return out, cache_error


def manifest_text(resolved: Sequence[Resolved], *, models_dir: Path, cache_prefix: str,
                  workflows: Sequence[str]) -> str:
    """A manifest (TOML) of every model with a source: the cache by path, then the workflow's URL.

    A model only present on this pod (no URL) is listed too, with its size and sha256: the cache is
    asked for it first, and ``models cache push`` puts it there. Unresolved ones are comments.
    """
    lines = ["# Generated by `syncbridge models from-workflow` from:"]
    lines += [f"#   {w}" for w in workflows]
    lines += ["", "[settings]", f"models_dir = {toml_value(str(models_dir))}",
              f"cache_prefix = {toml_value(cache_prefix)}", ""]
    names: set[str] = set()
    for r in resolved:
        if r.status == "unresolved":
            lines.append(f"# unresolved: {r.model.path} (wanted by {r.model.wanted_by[0]})")
            continue
        name = Path(r.model.name).name
        base, n = name, 2
        while name in names:  # the same file name in two folders
            name, n = f"{base} ({n})", n + 1
        names.add(name)
        lines += ["[[model]]", f"name = {toml_value(name)}", f"path = {toml_value(r.model.path)}",
                  "required = true"]  # a workflow needs it: SYNCBRIDGE_MODELS_WAIT=required waits for it
        if r.size is not None:  # present here: what the entry verifies
            lines.append(f"size = {r.size}")
        if r.sha256 is not None:
            lines.append(f"sha256 = {toml_value(r.sha256)}")
        for key, value in (r.source or {}).items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    return "\n".join(lines) + "\n"


@attrs.frozen
class WorkflowModels:
    """What :func:`workflow_models` found: the workflows read, each model resolved, the manifest text."""

    workflows: tuple[str, ...]
    resolved: tuple[Resolved, ...]
    manifest: str
    cache_error: str | None

    @property
    def unresolved(self) -> list[Resolved]:
        return [r for r in self.resolved if r.status == "unresolved"]

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s in STATUSES if (n := sum(1 for r in self.resolved if r.status == s)))
        return f"{len(self.workflows)} workflow(s), {len(self.resolved)} model(s)" + (f": {counts}" if counts else "")


def workflow_models(config: Any, paths: Iterable[str | os.PathLike[str]], *, models_dir: Path | None = None,
                    cache_prefix: str = DEFAULT_CACHE_PREFIX) -> WorkflowModels:
    """Read ``paths`` (workflows, or folders of them), resolve every model against this pod and the
    bucket's cache, and write nothing: the caller decides where the manifest goes.

    Raises:
        ConfigError: a workflow that cannot be read or is not one, naming the file.
    """
    from ..store import open_store
    from .localstate import HashCache

    workflows = read_workflows(paths)
    models = needed((Path(name).name, refs) for name, refs in workflows)
    models_dir = Path(models_dir or config.models.dir or DEFAULT_MODELS_DIR)
    hashes = HashCache.of(config.state_dir)  # a start hashes a present model once, not at every start
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        resolved, cache_error = resolve(models, models_dir=models_dir, cache_prefix=cache_prefix,
                                        list_keys=lambda prefix: (o.key for o in store.list(prefix)),
                                        hf_endpoint=config.models.hf_endpoint,
                                        civitai_endpoint=config.models.civitai_endpoint, sha256_of=hashes.hash)
    finally:
        store.close()
        hashes.save()
    text = manifest_text(resolved, models_dir=models_dir, cache_prefix=cache_prefix,
                         workflows=[name for name, _ in workflows])
    return WorkflowModels(tuple(name for name, _ in workflows), tuple(resolved), text, cache_error)


def document_models(config: Any, doc: Any, *, name: str, store: Any, models_dir: Path | None = None,
                    cache_prefix: str = DEFAULT_CACHE_PREFIX) -> WorkflowModels:
    """:func:`workflow_models` for one workflow already in memory (a serverless job's, API format or UI),
    against ``store``'s cache. A model present here is checked by size only (no hashing on a job's path).

    Raises:
        WorkflowError: ``doc`` is not a workflow.
    """
    models = needed([("", refs_of(doc))])
    models_dir = Path(models_dir or config.models.dir or DEFAULT_MODELS_DIR)
    resolved, cache_error = resolve(models, models_dir=models_dir, cache_prefix=cache_prefix,
                                    list_keys=lambda prefix: (o.key for o in store.list(prefix)),
                                    hf_endpoint=config.models.hf_endpoint,
                                    civitai_endpoint=config.models.civitai_endpoint)
    text = manifest_text(resolved, models_dir=models_dir, cache_prefix=cache_prefix, workflows=[name])
    return WorkflowModels((name,), tuple(resolved), text, cache_error)


def write_workflow_manifest(config: Any) -> Path:
    """The manifest of every model ``config.models.workflows`` need, written to the state folder (what
    ``start`` pulls with the manifests); each unresolved model is logged with the node that wants it."""
    from ..fsutil import atomic_write_bytes, private_state_dir

    found = workflow_models(config, config.models.workflows)
    log.info("workflows: %s", found.summary(), extra={"event": "models.workflows"})
    for r in found.unresolved:
        log.warning("workflows: no source for %s, wanted by %s (not in the models folder, not in the cache, and "
                    "the workflow gives no URL)", r.model.path, ", ".join(r.model.wanted_by),
                    extra={"event": "models.workflow_unresolved"})
    if found.cache_error:
        log.warning("workflows: the bucket cache could not be listed: %s", found.cache_error,
                    extra={"event": "models.workflow_cache"})
    manifest = private_state_dir(config.state_dir) / "workflow-models.toml"
    atomic_write_bytes(manifest, found.manifest.encode("utf-8"))
    return manifest
