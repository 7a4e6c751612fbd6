"""The status page's pure parts: what a response may show, the Prometheus text (checked by
prometheus_client's own parser and a strict line grammar), the thumbnail path rule, the app's port."""

from __future__ import annotations

import base64
import hashlib
import math
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from syncbridge.statuspage.html import CSP, PAGE
from syncbridge.statuspage.page import (LATENCY_BUCKETS, app_port_of, metrics_text, page_document, sanitize,
                                        thumb_relpath)
from syncbridge.watch.scheduler import LATENCY_BUCKETS as SCHEDULER_BUCKETS

from ..conftest import SECRET_KEY

OUT = "/workspace/ComfyUI/output"


def _doc(**extra):
    report = {
        "running": True, "uploaded": 7, "bytes_uploaded": 12345, "skipped": 1, "retries": 2, "failures_total": 1,
        "failed": 1, "pending": 3, "oldest_pending_age": 4.5, "latency_counts": [2, 1, 0, 0, 3, 0, 0, 0, 0, 0, 1],
        "latency_sum": 75.25, "directory": OUT,
        "recent": [{"path": "a.png", "key": "outputs/a.png", "url": None, "size": 3,
                    "presigned_url": "https://h/b/a.png?X-Amz-Signature=abc"}],
        "start": {"running": True, "updated_at": 110.0, "steps": [{"name": "models", "status": "ok", "line": "x",
                                                                    "seconds": 2.5}],
                  "app": {"state": "running", "pid": 9},
                  "models": {"m1": {"name": "m1", "state": "downloading", "source": "cache", "from": "cache",
                                    "bytes": 500, "total": 1000, "started_at": 100.0, "done_at": None},
                             "m2": {"name": "m2", "state": "done", "source": "hf", "from": "upstream", "bytes": 300,
                                    "total": 300, "started_at": 100.0, "done_at": 103.0},
                             "m\"3\n": {"name": "m3", "state": "done", "source": "hf", "from": "upstream",
                                        "bytes": 7, "total": 7, "started_at": 100.0, "done_at": 101.0}}},
        **extra}
    return page_document(report, output_dir=OUT, secrets=[SECRET_KEY], pod_id="pod1", version="1",
                         fleet={"pods": [{"pod_id": "a", "status": "live"}, {"pod_id": "b", "status": "silent"}]})


def test_the_document_is_safe_to_show() -> None:
    doc = page_document({
        "last_error": f"403 for key {SECRET_KEY} at /workspace/state/watch/journal.sqlite3",
        "journal": {"path": "/workspace/state/watch/journal.sqlite3"},
        "directory": OUT, "file": f"{OUT}/sub/a.png", "sneaky": f"{OUT}/../state/x",
        "link": "see https://b.r2.cloudflarestorage.com/k.png?X-Amz-Algorithm=A&X-Amz-Signature=deadbeef now",
        "public": "https://cdn.example/outputs/a.png?v=2", "relative": "outputs/sub/a.png",
        "recent": [{"presigned_url": "https://h/x?X-Amz-Signature=1", "url": None}], "n": math.inf,
    }, output_dir=OUT, secrets=[SECRET_KEY])
    assert doc["last_error"] == "403 for key *** at \u2026/journal.sqlite3"
    assert doc["journal"]["path"] == "\u2026/journal.sqlite3"
    assert doc["directory"] == OUT and doc["file"] == f"{OUT}/sub/a.png"
    assert doc["sneaky"] == "\u2026/x"
    assert doc["link"] == "see https://b.r2.cloudflarestorage.com/k.png now"
    assert doc["public"] == "https://cdn.example/outputs/a.png?v=2" and doc["relative"] == "outputs/sub/a.png"
    assert doc["recent"] == [{"url": None}] and doc["n"] is None
    assert sanitize({"a": ["/etc/passwd", "x /root/.ssh/id y"]}, output_dir=OUT, secrets=()) == \
        {"a": ["\u2026/passwd", "x \u2026/id y"]}


def test_models_rate_and_eta() -> None:
    models = _doc()["start"]["models"]
    assert models["m1"]["rate"] == 50.0 and models["m1"]["eta"] == 10.0 and models["m1"]["fraction"] == 0.5
    assert models["m2"]["rate"] == 100.0 and models["m2"]["eta"] is None and models["m2"]["fraction"] == 1.0


# One line of the text format: a comment, or name{labels} value.
_LINE = re.compile(r'^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*|[a-zA-Z_:][a-zA-Z0-9_:]*'
                   r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})? '
                   r'(-?[0-9.]+(e[+-]?[0-9]+)?|NaN|[+-]Inf))$')


def test_metrics_in_the_prometheus_text_format() -> None:
    text = metrics_text(_doc())
    assert text.endswith("\n")
    for line in text.splitlines():
        assert _LINE.match(line), line
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["syncbridge_uploads"].type == "counter"
    assert families["syncbridge_uploads"].samples[0].value == 7
    assert families["syncbridge_upload_bytes"].samples[0].value == 12345
    assert families["syncbridge_upload_retries"].samples[0].value == 2
    assert families["syncbridge_upload_failures"].samples[0].value == 1
    hist = families["syncbridge_upload_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert [b for b, _ in buckets][-1] == "+Inf" and len(buckets) == len(LATENCY_BUCKETS) + 1
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 7  # cumulative; +Inf is the count
    assert {s.name: s.value for s in hist.samples if not s.name.endswith("_bucket")} == {
        "syncbridge_upload_latency_seconds_sum": 75.25, "syncbridge_upload_latency_seconds_count": 7}
    by_source = {s.labels["source"]: s.value for s in families["syncbridge_model_bytes"].samples}
    assert by_source == {"cache": 500, "hf": 307}
    assert {s.labels["state"]: s.value for s in families["syncbridge_models"].samples} == {"downloading": 1, "done": 2}
    assert {s.labels["status"]: s.value for s in families["syncbridge_fleet_pods"].samples} == \
        {"live": 1, "silent": 1, "stopped": 0}
    assert families["syncbridge_app_running"].samples[0].value == 1


def test_metrics_of_a_watcher_that_is_not_running() -> None:
    text = metrics_text(page_document({"running": False, "pending": 2, "failed": 0}, output_dir=OUT, secrets=()))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["syncbridge_watcher_running"].samples[0].value == 0
    assert families["syncbridge_uploads_pending"].samples[0].value == 2
    # counters since the watcher's start are left out, never 0 (a false reset to Prometheus)
    assert "syncbridge_uploads" not in families and "syncbridge_upload_latency_seconds" not in families
    assert "syncbridge_upload_bytes" not in families and "syncbridge_upload_failures" not in families


def test_the_histogram_bounds_are_the_watchers() -> None:
    assert LATENCY_BUCKETS == SCHEDULER_BUCKETS


@pytest.mark.parametrize("raw", ["../a.png", "a/../../b.png", "/etc/x.png", "a\\..\\b.png", ".h.png", "a/.h/b.png",
                                 "a//b.png", "./a.png", "a.png\x00", "", "a.txt", "a.svg", "x" * 2000 + ".png"])
def test_thumb_paths_refused(raw: str) -> None:
    assert thumb_relpath(raw) is None


@pytest.mark.parametrize("raw", ["a.png", "sub/dir/ComfyUI_00001_.PNG", "x.webp", "y.jpeg", "z.gif", "a..b.png", "sub/x.y.jpg"])
def test_thumb_paths_allowed(raw: str) -> None:
    assert thumb_relpath(raw) == raw


@pytest.mark.parametrize(("argv", "port"), [
    (["python", "main.py", "--listen", "0.0.0.0", "--port", "8188"], 8188),
    (["python", "main.py", "--port=3000"], 3000),
    (["app", "--listen", "0.0.0.0:7860"], 7860),
    (["app", "--listen=127.0.0.1:9000", "--port", "9001"], 9001),
    (["python", "main.py", "--listen", "0.0.0.0"], None),
    (["app", "--port"], None),
    (["app", "--port", "99999"], None),
])
def test_app_port_of(argv, port) -> None:
    assert app_port_of(argv) == port


def test_the_csp_allows_exactly_the_inline_script_and_style() -> None:
    html = PAGE.decode()
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    for text in (script, style):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in CSP
    assert "unsafe" not in CSP and " style=" not in html and "innerHTML" not in html
