"""What a pod needs, as data: the validated model entries, the merged manifest, the selection. Pure.

:mod:`syncbridge.models.manifest` builds these from TOML; everything after parsing (the ladder,
the pull, the report) only sees these types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import attrs

from ..config.settings import parse_bool
from ..errors import ConfigError, Problem

__all__ = ["TIERS", "DEFAULT_MODELS_DIR", "DEFAULT_CACHE_PREFIX", "DEFAULT_PARALLEL", "SNAPSHOT_INDEX", "HfSpec",
           "CivitaiSpec", "ModelSpec", "Manifest", "ManifestError", "Selection", "select_models", "tier_rank"]

TIERS = ("consumer", "prosumer", "datacenter")
DEFAULT_MODELS_DIR = "/workspace/ComfyUI/models"
DEFAULT_CACHE_PREFIX = "models"
DEFAULT_PARALLEL = 3
# Written into a snapshot folder (and its cache prefix) once every file is verified.
SNAPSHOT_INDEX = ".syncbridge-snapshot.json"


def tier_rank(tier: str) -> int:
    """consumer 0 < prosumer 1 < datacenter 2."""
    return TIERS.index(tier)


@attrs.frozen
class HfSpec:
    """A file (``file``) or a whole snapshot (``snapshot = true``, filtered by ``allow``) of a Hub repo."""

    repo: str
    file: str | None
    revision: str = "main"
    repo_type: str = "model"
    snapshot: bool = False
    allow: tuple[str, ...] = ()

    def describe(self) -> str:
        what = f"{self.repo}@{self.revision}"
        return f"{what} (snapshot)" if self.snapshot else f"{what}/{self.file}"


@attrs.frozen
class CivitaiSpec:
    """A CivitAI model version; ``file`` picks one of its files by name (default: the primary file)."""

    version_id: int
    file: str | None = None


@attrs.frozen
class ModelSpec:
    """One model entry after validation.

    Attributes:
        path: relative to the models folder, ``/``-separated, checked not to escape it.
        write_back: resolved (the entry's own value, else its manifest's setting).
        origin: ``file:line`` of the ``[[model]]`` header, for messages.
    """

    name: str
    path: str
    sha256: str | None = None
    size: int | None = None
    enabled_by: str | None = None
    min_tier: str | None = None
    optional: bool = False
    required: bool = False  # with SYNCBRIDGE_MODELS_WAIT=required, start waits only for these
    write_back: bool = False
    hf: HfSpec | None = None
    civitai: CivitaiSpec | None = None
    url: str | None = None
    origin: str = ""

    @property
    def is_snapshot(self) -> bool:
        """A whole Hugging Face snapshot placed in the folder ``path``."""
        return self.hf is not None and self.hf.snapshot


@attrs.frozen
class Manifest:
    """Merged manifests: settings plus every model, in file order."""

    models_dir: Path
    cache_prefix: str
    parallel: int
    models: tuple[ModelSpec, ...]
    files: tuple[str, ...] = ()
    write_back: bool = False


class ManifestError(ConfigError):
    """Every problem found in the manifests, each naming file, line and key."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(problems, title="invalid model manifest")


@attrs.frozen
class Selection:
    """Which models apply to this pod, and why the others do not."""

    enabled: tuple[ModelSpec, ...]
    skipped: tuple[tuple[ModelSpec, str], ...]


def select_models(models: Iterable[ModelSpec], *, tier: str, environ: Mapping[str, str]) -> Selection:
    """Filter by ``enabled_by`` (the variable must be true) and ``min_tier`` (this pod's tier or lower).

    An ``enabled_by`` variable that is unset, empty or not a boolean disables the model.
    """
    enabled: list[ModelSpec] = []
    skipped: list[tuple[ModelSpec, str]] = []
    for model in models:
        if model.enabled_by:
            raw = environ.get(model.enabled_by, "")
            try:
                on = parse_bool(raw) if raw.strip() else False
            except ValueError:
                skipped.append((model, f"{model.enabled_by}={raw!r} is not a boolean"))
                continue
            if not on:
                skipped.append((model, f"{model.enabled_by} is not true"))
                continue
        if model.min_tier and tier_rank(tier) < tier_rank(model.min_tier):
            skipped.append((model, f"needs GPU tier {model.min_tier}, this pod is {tier}"))
            continue
        enabled.append(model)
    return Selection(tuple(enabled), tuple(skipped))
