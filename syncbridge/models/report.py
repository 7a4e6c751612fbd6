"""What a pull reports: one :class:`ModelResult` per model, the :class:`PullReport` of them all (and its
table), and the :class:`ModelEvent` progress records subscribers draw bars from."""

from __future__ import annotations

from pathlib import Path

import attrs

from ..fmt import human_bytes as _human
from .cacheentry import WriteBack

__all__ = ["STATUSES", "ModelResult", "PullReport", "ModelEvent"]

STATUSES = ("present", "pulled", "failed", "skipped", "optional_failed", "planned")


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
        cache_write: what happened to the cache copy (:class:`~syncbridge.models.cacheentry.WriteBack`), if
            anything was written back; :attr:`write_back` says it in words.
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
    cache_write: WriteBack | None = None

    @property
    def write_back(self) -> str:
        """The cache copy's outcome in words (``pushed``, ``exists``, ``conflict: ...``, ``failed: ...``,
        ``skipped: ...``), or ``""``."""
        return str(self.cache_write) if self.cache_write is not None else ""

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
            if r.cache_write is not None and r.cache_write.bad:
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
