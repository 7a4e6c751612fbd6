"""Planning a pull: which source would deliver each missing model, and whether the disk can hold it all.

Each source is asked in ladder order (one cheap request each) until one offers the model; an
offer that cannot be right (the source's sha256 or size differs from the manifest's) is refused
before a byte is downloaded. From :data:`BULK_MIN` missing models on, the cache is listed once
instead of a HEAD per model. Then the free space is checked against what is missing, so a pull
that cannot fit downloads nothing.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import attrs

from ..errors import SyncBridgeError
from ..fmt import human_bytes as _human
from ..system import free_bytes
from .layout import part_path
from .localstate import LocalState
from .manifest import ModelSpec
from .sources import CacheSource, Offer, Source, SourceError

__all__ = ["PlanItem", "Todo", "InsufficientSpaceError", "offer_problem", "plan_one", "plan_all", "check_space",
           "BULK_MIN"]

# Headroom kept free on top of what the missing models need (1%, at least 16 MiB).
SPACE_MARGIN = 0.01
SPACE_MARGIN_MIN = 16 * 1024 * 1024
# From this many missing models on, the cache is listed once instead of a HEAD per model,
# and its small objects are copied by one rclone batch instead of a Python request each.
BULK_MIN = 16


@attrs.frozen
class Todo:
    """A model that is not present: where it goes and what is there now (``missing``, ``stale``, ``unknown``)."""

    model: ModelSpec
    target: Path
    local: str
    local_sha: str | None = None


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


def plan_one(sources: Sequence[Source], local: LocalState, todo: Todo,
             known: Mapping[str, Offer | SourceError] | None = None) -> PlanItem:
    """Ask the sources in order until one offers the model (one cheap request each).

    ``known``: offers already obtained in bulk (the cache listing), by source name.
    """
    model, target, state = todo.model, todo.target, todo.local
    offers: dict[str, Offer | SourceError] = {}
    for source in sources:
        if not source.applies(model):
            continue
        try:
            offer = (known or {}).get(source.name) or source.offer(model)
            if isinstance(offer, SourceError):
                raise offer
        except SourceError as exc:
            offers[source.name] = exc
            continue
        problem = offer_problem(model, offer)
        if problem:
            offers[source.name] = SourceError(problem, source=source.name)
            continue
        offers[source.name] = offer
        if state == "unknown":
            # The file is there but nothing local says what it should be: the source does.
            found = local.matches_offer(target, offer)
            if found is not None:
                return PlanItem(model, target, "present", offers, found[0], found[1])
            state = "stale"
        break
    return PlanItem(model, target, state, offers)


def plan_all(todo: Sequence[Todo], sources: Sequence[Source], local: LocalState, *, cache: CacheSource | None,
             workers: int) -> list[PlanItem]:
    """A plan for each model of ``todo``, in its order (the cache listed once when there are many)."""
    if cache is not None:
        cache.check()
    listed: dict[str, Offer | SourceError] = {}
    if cache is not None and len(todo) >= BULK_MIN:
        listed = cache.list_offers([t.model for t in todo])

    def plan(t: Todo) -> PlanItem:
        return plan_one(sources, local, t, known={"cache": listed[t.model.name]} if t.model.name in listed else None)

    # A missing model the listing offers needs no request and no hashing: planned here, since
    # handing hundreds of them to threads cost more than the plans (about 0.1 s for 500).
    quick = {t.model.name for t in todo if t.local == "missing" and isinstance(listed.get(t.model.name), Offer)}
    planned = {t.model.name: plan(t) for t in todo if t.model.name in quick}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="models-plan") as pool:
        slow = [t for t in todo if t.model.name not in quick]
        planned.update(zip((t.model.name for t in slow), pool.map(plan, slow)))
    return [planned[t.model.name] for t in todo]


def check_space(models_dir: Path, items: Sequence[PlanItem]) -> None:
    """Raise :class:`InsufficientSpaceError` when what is missing (minus resumable parts) does not fit."""
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
                have = part_path(item.target, offer.source).stat().st_size
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
