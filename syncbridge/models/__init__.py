"""Model warm-start: manifests, the source ladder, the bucket cache, and the pull that ties them together.

The package, by layer (each module's docstring says why it is its own):

* :mod:`.manifest` (and :mod:`.spec`): what a pod needs, parsed and validated (pure);
* :mod:`.source`: what one source is and says (offers, fetched files, source errors);
* :mod:`.sources`: where a model comes from: the cache first (:mod:`.sources.cache`), then
  Hugging Face, CivitAI, a URL; :mod:`.http` (the HTTP clients) and :mod:`.ranged` (the ranged
  parallel download engine) under them;
* :mod:`.cacheentry`: the one publish/verify protocol of a cache entry;
* :mod:`.localstate`: what is on disk and what it was verified against; :mod:`.layout`: the temp
  parts and locks beside a model;
* :mod:`.plan`, :mod:`.prefetch`, :mod:`.fetch`, :mod:`.puller`: the phases of a pull;
  :mod:`.pull`: :func:`pull_models`, :func:`push_cache`, :func:`list_models`; :mod:`.report`: what they return.

Names are imported lazily, so ``import syncbridge.models.manifest`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .localstate import HashCache
    from .plan import InsufficientSpaceError, PlanItem
    from .pull import list_models, pull_models, push_cache
    from .puller import FillCoordinator
    from .report import STATUSES, ModelEvent, ModelResult, PullReport

# public name -> module (under syncbridge.models) that defines it
_EXPORTS = {
    "pull_models": "pull",
    "push_cache": "pull",
    "list_models": "pull",
    "InsufficientSpaceError": "plan",
    "PlanItem": "plan",
    "ModelEvent": "report",
    "ModelResult": "report",
    "PullReport": "report",
    "STATUSES": "report",
    "FillCoordinator": "puller",
    "HashCache": "localstate",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
