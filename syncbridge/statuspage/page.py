"""The status page's data, pure: what a response may show, the Prometheus text, the thumbnail path rule.

* :func:`page_document` turns the status report (:func:`~syncbridge.statuspage.report.status_report`,
  what ``status --json`` prints) into what /status.json serves: the same object, with every secret
  masked, presigned links dropped, every absolute path outside the output folder cut to its last
  part, the models' rate and ETA worked out, plus ``page`` (pod, version) and ``fleet`` (pods).
* :func:`metrics_text` is that document as the Prometheus text exposition format (0.0.4).
* :func:`thumb_relpath` says whether a thumbnail request names an image below the output folder
  (no ``..``, no absolute path, no hidden part); the server then checks the real path on disk.
"""

from __future__ import annotations

import math
import posixpath
import re
from typing import Any, Iterable, Mapping

from ..redact import redact

__all__ = ["page_document", "sanitize", "metrics_text", "thumb_relpath", "IMAGE_TYPES", "LATENCY_BUCKETS",
           "STEP_ORDER"]

# What /thumb serves: images a browser shows, by name.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
               ".gif": "image/gif"}
# Must match syncbridge.watch.scheduler.LATENCY_BUCKETS (the counts come from there; a test checks it).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STEP_ORDER = ("system", "bucket", "models", "folders", "watch", "app")

HIDDEN = "\u2026"  # what stands for the folders of a path outside the output folder
# An absolute path in text: a "/" that starts a token (not inside a URL or a relative path).
_ABS_PATH = re.compile(r"(?<![\w:/.~%@-])/[^\s\"'<>,;()\[\]{}|]+")
_URL = re.compile(r"(?i)\b(https?://[^\s\"'<>?#]+)(\?[^\s\"'<>#]*)?")
_SIGNED = re.compile(r"(?i)(x-amz-signature|x-amz-credential|x-amz-security-token|signature=|token=|sig=|"
                     r"expires=|key-pair-id=|api_?key=)")


def _under(path: str, root: str) -> bool:
    return bool(root) and (path == root or path.startswith(root.rstrip("/") + "/"))


def _clean_text(text: str, *, output_dir: str, secrets: Iterable[str]) -> str:
    text = redact(text, secrets)

    def url(match: re.Match[str]) -> str:
        base, query = match.group(1), match.group(2) or ""
        return base if query and _SIGNED.search(query) else base + query

    text = _URL.sub(url, text)

    def path(match: re.Match[str]) -> str:
        found = match.group(0)
        if _under(posixpath.normpath(found), output_dir) and ".." not in found.split("/"):
            return found
        return HIDDEN + "/" + posixpath.basename(found.rstrip("/"))

    return _ABS_PATH.sub(path, text)


def sanitize(value: Any, *, output_dir: str, secrets: Iterable[str]) -> Any:
    """``value`` (JSON data) with secrets masked, signed links cut, and absolute paths outside ``output_dir`` cut."""
    secrets = tuple(secrets)
    if isinstance(value, Mapping):
        return {str(k): sanitize(v, output_dir=output_dir, secrets=secrets) for k, v in value.items()
                if k not in ("presigned_url",)}
    if isinstance(value, (list, tuple)):
        return [sanitize(v, output_dir=output_dir, secrets=secrets) for v in value]
    if isinstance(value, str):
        return _clean_text(value, output_dir=output_dir, secrets=secrets)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _model_rates(start: dict[str, Any]) -> None:
    updated = start.get("updated_at") or 0.0
    for entry in (start.get("models") or {}).values():
        if not isinstance(entry, dict):
            continue
        began, done, got, total = (entry.get("started_at"), entry.get("done_at"), entry.get("bytes") or 0,
                                   entry.get("total") or 0)
        end = done if done else updated
        seconds = (end - began) if began else 0.0
        rate = got / seconds if seconds > 0 and got else None
        entry["rate"] = None if rate is None else round(rate, 1)
        entry["eta"] = (round((total - got) / rate, 1) if rate and total and got < total
                        and entry.get("state") == "downloading" else None)
        entry["fraction"] = round(min(1.0, got / total), 4) if total else (1.0 if entry.get("state") == "done"
                                                                          else None)


def page_document(report: Mapping[str, Any], *, output_dir: str, secrets: Iterable[str], pod_id: str = "",
                  version: str = "", fleet: Mapping[str, Any] | None = None, now: float = 0.0,
                  public_url: bool = False) -> dict[str, Any]:
    """What /status.json serves: ``report`` (``status --json``) made safe to show, with ``page`` and ``fleet``."""
    doc: dict[str, Any] = dict(report)
    start = doc.get("start")
    if isinstance(start, dict):
        start = dict(start)
        start["models"] = {k: dict(v) for k, v in (start.get("models") or {}).items() if isinstance(v, dict)}
        _model_rates(start)
        doc["start"] = start
    doc["page"] = {"pod": pod_id, "version": version, "generated_at": now, "output_dir": output_dir,
                   "public_url": public_url, "steps": list(STEP_ORDER)}
    if fleet is not None:
        doc["fleet"] = dict(fleet)
    return sanitize(doc, output_dir=output_dir.rstrip("/") or "/", secrets=secrets)


def thumb_relpath(raw: str) -> str | None:
    """``raw`` (a decoded ``path=`` value) as a safe path below the output folder naming an image, or None."""
    if not raw or len(raw) > 1024 or "\x00" in raw or "\\" in raw or raw.startswith("/"):
        return None
    parts = raw.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    if posixpath.splitext(parts[-1])[1].lower() not in IMAGE_TYPES:
        return None
    return raw


# -- Prometheus ----------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: Any) -> str:
    if value is None:
        return "NaN"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str,
               samples: Iterable[tuple[str, Mapping[str, str], Any]]) -> None:
        self.lines.append(f"# HELP {name} {help_text.replace(chr(92), chr(92) * 2).replace(chr(10), ' ')}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            self.lines.append(f"{sample}{'{' + text + '}' if text else ''} {_num(value)}")

    def simple(self, name: str, kind: str, help_text: str, value: Any) -> None:
        self.family(name, kind, help_text, [(name, {}, value)])

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def metrics_text(doc: Mapping[str, Any]) -> str:
    """``doc`` (:func:`page_document`) in the Prometheus text format: the watcher's counters and latency histogram
    (since the watcher started), the models' bytes by source, the start-up steps."""
    out = _Exposition()
    running = bool(doc.get("running"))
    w = doc if running else {}

    def count(key: str) -> int:
        value = w.get(key)
        return int(value) if isinstance(value, (int, float)) else 0

    out.simple("syncbridge_watcher_running", "gauge", "1 while the output watcher runs.", running)
    out.simple("syncbridge_uploads_failing", "gauge", "Outputs failing now (kept in the journal).",
               int(doc.get("failed") or 0))
    out.simple("syncbridge_uploads_pending", "gauge", "Outputs waiting or being uploaded.",
               int(doc.get("pending") or 0))
    oldest = doc.get("oldest_pending_age")
    out.simple("syncbridge_oldest_pending_seconds", "gauge", "Age of the oldest pending output (0: none).",
               float(oldest) if isinstance(oldest, (int, float)) else 0.0)
    # The counters run from the watcher's start. While no watcher runs (or its status file is stale)
    # they are left out rather than shown as 0: Prometheus would read N -> 0 -> N as two resets and
    # increase() would count everything again.
    if running:
        out.simple("syncbridge_uploads_total", "counter", "Outputs pushed to the bucket since the watcher started.",
                   count("uploaded"))
        out.simple("syncbridge_upload_bytes_total", "counter", "Bytes of outputs pushed since the watcher started.",
                   count("bytes_uploaded"))
        out.simple("syncbridge_upload_skipped_total", "counter", "Outputs found already in the bucket.",
                   count("skipped"))
        out.simple("syncbridge_upload_retries_total", "counter", "Retryable upload errors since the watcher started.",
                   count("retries"))
        out.simple("syncbridge_upload_failures_total", "counter",
                   "Outputs that failed fatally since the watcher started.", count("failures_total"))
        counts = list(w.get("latency_counts") or [])
        if len(counts) != len(LATENCY_BUCKETS) + 1:
            counts = [0] * (len(LATENCY_BUCKETS) + 1)
        samples: list[tuple[str, Mapping[str, str], Any]] = []
        cumulative = 0
        for bound, n in zip((*LATENCY_BUCKETS, math.inf), counts):
            cumulative += int(n)
            samples.append(("syncbridge_upload_latency_seconds_bucket", {"le": _num(float(bound))}, cumulative))
        samples.append(("syncbridge_upload_latency_seconds_sum", {}, float(w.get("latency_sum") or 0.0)))
        samples.append(("syncbridge_upload_latency_seconds_count", {}, cumulative))
        out.family("syncbridge_upload_latency_seconds", "histogram",
                   "Seconds from an output's close to its object in the bucket.", samples)

    start = doc.get("start") if isinstance(doc.get("start"), dict) else {}
    models = [m for m in (start.get("models") or {}).values() if isinstance(m, dict)]
    by_source: dict[str, int] = {}
    for m in models:
        source = str(m.get("source") or "unknown")
        by_source[source] = by_source.get(source, 0) + int(m.get("bytes") or 0)
    out.family("syncbridge_model_bytes_total", "counter", "Model bytes downloaded by this start, by source "
               "(cache: the bucket's model cache; hf, civitai, url: upstream).",
               [("syncbridge_model_bytes_total", {"source": s}, n) for s, n in sorted(by_source.items())])
    states: dict[str, int] = {}
    for m in models:
        states[str(m.get("state") or "unknown")] = states.get(str(m.get("state") or "unknown"), 0) + 1
    out.family("syncbridge_models", "gauge", "Models of this start by state.",
               [("syncbridge_models", {"state": s}, n) for s, n in sorted(states.items())])
    steps = [s for s in (start.get("steps") or []) if isinstance(s, dict)]
    out.family("syncbridge_start_step_seconds", "gauge", "How long each start-up step took.",
               [("syncbridge_start_step_seconds", {"step": str(s.get("name")), "status": str(s.get("status"))},
                 float(s.get("seconds") or 0.0)) for s in steps])
    app = start.get("app") if isinstance(start.get("app"), dict) else {}
    out.simple("syncbridge_app_running", "gauge", "1 while the app started by syncbridge start runs.",
               app.get("state") == "running" and bool(start.get("running")))
    fleet = doc.get("fleet") if isinstance(doc.get("fleet"), dict) else None
    if fleet is not None:
        pods = [p for p in fleet.get("pods") or [] if isinstance(p, dict)]
        out.family("syncbridge_fleet_pods", "gauge", "Pods seen in the bucket by heartbeat status.",
                   [("syncbridge_fleet_pods", {"status": st}, sum(1 for p in pods if p.get("status") == st))
                    for st in ("live", "silent", "stopped")])
    return out.text()


def app_port_of(argv: Iterable[str]) -> int | None:
    """The port an app's command line asks for: ``--port N``/``--port=N``, or ``--listen HOST:PORT``."""
    args = list(argv)
    found: int | None = None
    for i, arg in enumerate(args):
        flag, eq, value = arg.partition("=")
        if flag not in ("--port", "--listen"):
            continue
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag == "--listen":
            if value.count(":") != 1 and not value.startswith("["):
                continue
            value = value.rsplit(":", 1)[1]
        if value.isdigit() and 0 < int(value) < 65536:
            found = int(value) if flag == "--port" or found is None else found
    return found
