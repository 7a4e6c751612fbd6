"""The status page in a real headless Chromium (Debian's, through Playwright), served by a real
``syncbridge start``: model progress while a slow hub trickles a model, pushed counters moving as the
stand-in app writes images, a thumbnail that loads from the local file, a screenshot kept as an artifact,
and every request the page makes going to the pod alone (anything else is aborted and listed)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit

from ..conftest import wait_for
from ..hfserver import serve_hf
from .pod import APP, artifacts_dir, chromium, free_port, get, start_pod, stop_pod, wait_page

MODEL_BYTES = 4 * 1024 * 1024


def _pushed(page) -> int:
    text = page.locator("#counters span", has_text="pushed").first.locator("b").inner_text()
    return int(text)


def test_the_page_shows_start_up_models_and_outputs_in_a_real_browser(local_env, tmp_path) -> None:
    port = free_port()
    out = Path(local_env["COMFYUI_OUTPUT_DIR"])
    stop = tmp_path / "stop"
    model = bytes(range(256)) * (MODEL_BYTES // 256)
    with serve_hf() as hub:
        hub.add("org/sdxl", {"sd_xl_base.safetensors": model})
        hub.trickle["sd_xl_base.safetensors"] = 0.1  # 64 KiB per 0.1 s: about 6 s
        manifest = tmp_path / "models.toml"
        # The URL source (the hub's resolve link): it reports bytes as they arrive.
        manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\n'
                            '[[model]]\nname = "sdxl-base"\npath = "checkpoints/sd_xl_base.safetensors"\n'
                            f'url = "{hub.url}/org/sdxl/resolve/main/sd_xl_base.safetensors"\n'
                            f'sha256 = "{hashlib.sha256(model).hexdigest()}"\n')
        env = {**local_env, "HF_ENDPOINT": hub.url, "SYNCBRIDGE_MODELS": str(manifest), "ENABLE_R2_SYNC": "true",
               "SYNCBRIDGE_STATUS_PORT": str(port), "SYNCBRIDGE_STATUS_BIND": "127.0.0.1"}
        proc = start_pod(env, [sys.executable, "-c", APP, str(out), "6", "0.7", str(stop)], tmp_path / "start.log")
        try:
            wait_page(port)
            pod = f"127.0.0.1:{port}"
            with chromium() as browser:
                context = browser.new_context(viewport={"width": 1100, "height": 900})
                blocked: list[str] = []
                seen: list[str] = []

                def only_the_pod(route) -> None:
                    url = route.request.url
                    if urlsplit(url).netloc == pod:
                        route.continue_()
                    else:
                        blocked.append(url)
                        route.abort()

                context.route("**/*", only_the_pod)
                page = context.new_page()
                page.on("request", lambda request: seen.append(request.url))
                page.goto(f"http://{pod}/")
                # Model progress, while the hub trickles: bytes of the total, a rate, an ETA, the source.
                row = page.locator("#models tr", has_text="sdxl-base")
                row.filter(has_text="downloading").wait_for(timeout=30_000)
                wait_for(lambda: re.search(r"\d+(\.\d)? [KM]B / 4\.0 MB", row.inner_text()), 20, "bytes of 4 MB")
                wait_for(lambda: "ETA" in row.inner_text() and "/s" in row.inner_text(), 20, "a rate and an ETA")
                text = row.inner_text()
                assert "upstream (url)" in text, text
                assert page.locator("#steps tr", has_text="models").filter(has_text="running").count() == 1
                assert page.locator("#steps tr", has_text="bucket").filter(has_text="ok").count() == 1
                page.screenshot(path=str(artifacts_dir() / "status-page-models.png"), full_page=True)

                # The app runs once the model is in; outputs are pushed and the counter moves.
                page.locator("#steps tr", has_text="app").filter(has_text="running").wait_for(timeout=60_000)
                wait_for(lambda: "done" in row.inner_text(), 10, "the model done")
                wait_for(lambda: _pushed(page) >= 1, 20, "a first output pushed")
                first = _pushed(page)
                wait_for(lambda: _pushed(page) >= first + 2, 20, "the pushed counter moving")
                page.wait_for_function("() => [...document.querySelectorAll('#outputs img')]"
                                       ".some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
                widths = page.eval_on_selector_all("#outputs img", "imgs => imgs.map(i => i.naturalWidth)")
                assert 96 in widths, widths  # the stand-in app's images are 96 px wide
                assert page.locator("#outputs").inner_text().count("outputs/ComfyUI_") >= 3
                wait_for(lambda: _pushed(page) >= 6, 20, "every output pushed")
                page.wait_for_timeout(2500)  # one more poll: every thumbnail drawn for the screenshot
                shot = artifacts_dir() / "status-page.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 5000
                if os.environ.get("SYNCBRIDGE_TEST_SCREENSHOT_TO"):  # regenerate the README's picture
                    shutil.copy(shot, os.environ["SYNCBRIDGE_TEST_SCREENSHOT_TO"])

                # Nothing but the pod was asked for: the page needs no external asset...
                assert blocked == [], blocked
                assert seen and all(urlsplit(u).netloc == pod for u in seen), seen
                assert page.locator("#err").inner_text() == ""
                # ...and a script's request elsewhere fails: the page's CSP stops it before the network (so
                # not even the route sees it), and the route aborts what gets past a page (a navigation).
                verdict = page.evaluate("() => fetch('http://192.0.2.7:9/x').then(() => 'reached', () => 'blocked')")
                assert verdict == "blocked" and blocked == [], (verdict, blocked)
                other = context.new_page()
                with contextlib.suppress(Exception):
                    other.goto("http://192.0.2.7:9/y", timeout=5000)
                assert blocked == ["http://192.0.2.7:9/y"], blocked
                context.close()
            status, _headers, body = get(port, "/status.json")
            assert status == 200 and json.loads(body)["uploaded"] == 6
        finally:
            code = stop_pod(proc, stop)
    log = (tmp_path / "start.log").read_text()
    assert code == 0, log
    assert f"status page: http://127.0.0.1:{port}/" in log


def test_file_names_render_as_text_in_a_real_browser(local_env, tmp_path) -> None:
    """An output named like markup is shown as its name: no element made from it, no script run, its thumbnail
    still loads (its name encoded into the request)."""
    from .pod import png

    port = free_port()
    out = Path(local_env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    names = ["<img src=x onerror=alert(1)>.png", "\"><svg onload=alert(2)><script>alert(3).png", "a&amp;b <b>bold<b>.png"]
    for i, name in enumerate(names):
        (out / name).write_bytes(png(40 + i, 30, (200, 50 * i, 90)))
    stop = tmp_path / "stop"
    env = {**local_env, "ENABLE_R2_SYNC": "true", "SYNCBRIDGE_STATUS_PORT": str(port),
           "SYNCBRIDGE_STATUS_BIND": "127.0.0.1"}
    proc = start_pod(env, [sys.executable, "-c", APP, str(out / "app"), "0", "0", str(stop)], tmp_path / "start.log")
    try:
        wait_page(port)
        wait_for(lambda: json.loads(get(port, "/status.json")[2]).get("uploaded", 0) >= len(names), 30, "pushed")
        with chromium() as browser:
            page = browser.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function("() => document.querySelectorAll('#outputs .card').length >= 3", timeout=15_000)
            page.wait_for_function("() => [...document.querySelectorAll('#outputs img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
            text = page.locator("#outputs").inner_text()
            for name in names:
                assert f"outputs/{name}" in text, text
            # Only the cards' own thumbnails are images; no <script>, <b> or src=x came from a name.
            srcs = page.eval_on_selector_all("#outputs img", "imgs => imgs.map(i => i.getAttribute('src'))")
            assert len(srcs) == 3 and all(s.startswith("thumb?path=") for s in srcs), srcs
            assert sorted(page.eval_on_selector_all("#outputs img", "imgs => imgs.map(i => i.naturalWidth)")) == \
                [40, 41, 42]
            assert page.locator("#outputs script, #outputs b, #outputs svg").count() == 0
            assert page.locator("img[src='x']").count() == 0
            page.wait_for_timeout(500)
            assert dialogs == []
    finally:
        code = stop_pod(proc, stop)
    assert code == 0, (tmp_path / "start.log").read_text()
