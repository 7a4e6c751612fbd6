"""The status page's security, against a real ``syncbridge start`` on a real S3 server (rclone serve s3)
with the suite's distinctive secrets: the token (none: 401; bearer; ?token= once, then the cookie alone),
the thumbnail route confined to the output folder (traversal in every spelling, absolute paths, symlinks out
of it, special files), read-only methods, security headers, and no secret, presigned link or path outside the
output folder in any route's body or headers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from ..conftest import CIVITAI_KEY, HF_TOKEN, assert_no_secret, new_bucket, server_env, wait_for
from .pod import APP, free_port, get, png, start_pod, stop_pod, wait_page

TOKEN = "sbSTATUStokenQ7v2Wd91"


@pytest.fixture
def pod(rclone_s3, tmp_path):
    """A running start with the page on a free port, a token, and an output folder with traps beside it."""
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_image = png(8, 8, (255, 0, 0)) + b"OUTSIDE-SECRET-BYTES"
    (outside / "private.png").write_bytes(secret_image)
    (tmp_path / "private.png").write_bytes(secret_image)
    (out / "a.png").write_bytes(png(10, 10, (0, 255, 0)))
    (out / "sub").mkdir()
    (out / "sub" / "b.png").write_bytes(png(12, 12, (0, 0, 255)))
    (out / "escape.png").symlink_to(outside / "private.png")
    (out / "linkdir").symlink_to(outside)
    (out / "inside-link.png").symlink_to(out / "a.png")  # resolves inside: allowed
    (out / ".hidden.png").write_bytes(png(4, 4, (1, 2, 3)))
    (out / "notes.txt").write_text("not an image")
    os.mkfifo(out / "fifo.png")
    port = free_port()
    env.update({"ENABLE_R2_SYNC": "true", "SYNCBRIDGE_STATUS_PORT": str(port), "SYNCBRIDGE_STATUS_BIND": "127.0.0.1",
                "SYNCBRIDGE_STATUS_TOKEN": TOKEN, "HF_TOKEN": HF_TOKEN, "CIVITAI_API_KEY": CIVITAI_KEY,
                "SYNCBRIDGE_PUBLIC_URL": "https://cdn.example.test/pub", "SYNCBRIDGE_PRESIGN_SECONDS": "3600"})
    stop = tmp_path / "stop"
    proc = start_pod(env, [sys.executable, "-c", APP, str(out), "2", "0.1", str(stop)], tmp_path / "start.log")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        wait_page(port, auth)
        wait_for(lambda: json.loads(get(port, "/status.json", auth)[2]).get("uploaded", 0) >= 2, 30, "2 pushed")
        yield {"port": port, "auth": auth, "out": out, "tmp": tmp_path, "secret_image": secret_image, "env": env}
    finally:
        code = stop_pod(proc, stop)
        log = (tmp_path / "start.log").read_text()
        assert TOKEN not in log
        assert_no_secret(log)
        assert code in (0, 1), log  # 1: the fifo cannot be pushed; what matters here is the page


ROUTES = ["/", "/index.html", "/status.json", "/metrics", "/thumb?path=a.png", "/favicon.ico", "/nope"]


def test_without_the_token_every_route_is_401(pod) -> None:
    port = pod["port"]
    for route in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Cookie": "syncbridge_status=forged"}, {"Cookie": f"syncbridge_status={TOKEN}"}):
            status, resp_headers, body = get(port, route, headers)
            assert status == 401, (route, headers, status)
            assert resp_headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert b"OUTSIDE" not in body and b"uploaded" not in body
    assert get(port, "/status.json?token=wrong")[0] == 401


def test_bearer_then_token_once_then_the_cookie_alone(pod) -> None:
    port = pod["port"]
    status, _h, body = get(port, "/status.json", pod["auth"])
    assert status == 200 and json.loads(body)["running"] is True
    status, headers, _body = get(port, f"/?token={TOKEN}&x=1")
    assert status == 303
    assert headers["Location"] == "/?x=1"  # the token does not stay in the address bar
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    pair = cookie.split(";", 1)[0]
    for route in ("/", "/status.json", "/metrics", "/thumb?path=a.png"):
        assert get(port, route, {"Cookie": pair})[0] == 200, route
    assert get(port, "/status.json", {"Cookie": pair[:-1] + ("0" if pair[-1] != "0" else "1")})[0] == 401


TRAVERSALS = [
    "../private.png", "..%2Fprivate.png", "%2e%2e/private.png", "%2E%2E%2Fprivate.png", "%252e%252e%252fprivate.png",
    "sub/../../private.png", "sub%2F..%2F..%2Fprivate.png", "./a.png", "sub//b.png", "sub/./b.png",
    "..%5cprivate.png", "sub%5c..%5c..%5cprivate.png", "../outside/private.png", "%2e%2e%2foutside%2fprivate.png",
    "/etc/passwd", "%2Fetc%2Fpasswd", "%2F" + "%2F".join(["tmp", "x.png"]), "//etc/passwd",
    "escape.png", "linkdir/private.png", "linkdir%2Fprivate.png", ".hidden.png", "notes.txt", "fifo.png",
    "a.png%00.txt", "a.png%00", "", "sub", "sub/", "missing.png", "a.png/..", "a.png/../a.png",
]


def test_the_thumbnail_route_stays_in_the_output_folder(pod) -> None:
    port, auth, out = pod["port"], pod["auth"], pod["out"]
    for raw in TRAVERSALS:
        status, headers, body = get(port, f"/thumb?path={raw}", auth)
        assert status == 404, (raw, status)
        assert b"OUTSIDE-SECRET-BYTES" not in body and b"root:" not in body, raw
        assert headers["X-Content-Type-Options"] == "nosniff"
    absolute = str(pod["tmp"] / "private.png")
    assert get(port, f"/thumb?path={absolute}", auth)[0] == 404
    # Paths that are not the route at all, traversal in the URL's path itself.
    for path in ("/thumb/../../private.png", "/..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/etc/passwd",
                 "/../../../etc/passwd", "/outputs/../private.png", "/thumb%2f..%2fstatus.json"):
        status, _h, body = get(port, path, auth)
        assert status == 404 and b"root:" not in body and b"OUTSIDE" not in body, path
    # What is there is served, from the local file, with its type.
    for rel in ("a.png", "sub/b.png", "sub%2Fb.png", "inside-link.png"):
        status, headers, body = get(port, f"/thumb?path={rel}", auth)
        name = rel.replace("%2F", "/")
        expected = (out / ("a.png" if name == "inside-link.png" else name)).read_bytes()
        assert (status, headers["Content-Type"], body) == (200, "image/png", expected), rel
        assert headers["Content-Security-Policy"] == "default-src 'none'"
    # A symlink swapped in after the page started is judged by where it points now.
    (out / "later.png").symlink_to(pod["tmp"] / "private.png")
    assert get(port, "/thumb?path=later.png", auth)[0] == 404


def test_read_only_and_security_headers(pod) -> None:
    port, auth = pod["port"], pod["auth"]
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _body = get(port, "/status.json", auth, method=method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    status, headers, body = get(port, "/", auth)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"<script src" not in body and b"http://" not in body and b"https://" not in body  # no external asset
    status, headers, _body = get(port, "/status.json", auth)
    assert headers["Cache-Control"] == "no-store" and headers["Content-Type"] == "application/json"
    status, headers, body = get(port, "/status.json", auth, method="HEAD")
    assert status == 200 and body == b""


def test_no_secret_presigned_link_or_outside_path_in_any_response(pod) -> None:
    port, auth, tmp = pod["port"], pod["auth"], pod["tmp"]
    texts: list[str] = []
    for route in [*ROUTES, "/thumb?path=sub/b.png", "/thumb?path=../private.png", f"/?token={TOKEN}"]:
        for headers in ({}, auth):
            status, resp_headers, body = get(port, route, headers)
            texts.append("\n".join(f"{k}: {v}" for k, v in resp_headers.items()))
            texts.append(body.decode("utf-8", "replace"))
    everything = "\n".join(texts)
    assert_no_secret(everything)
    assert TOKEN not in everything
    assert "X-Amz-Signature" not in everything and "X-Amz-Credential" not in everything
    doc = json.loads(get(port, "/status.json", auth)[2])
    assert doc["uploaded"] >= 2 and doc["recent"], doc
    assert all(o["url"].startswith("https://cdn.example.test/pub/") for o in doc["recent"])  # the public link
    # Paths outside the output folder are cut to their last part: the state dir, HOME, the workspace.
    flat = json.dumps(doc)
    for outside in (pod["env"]["SYNCBRIDGE_STATE_DIR"], pod["env"]["HOME"], str(tmp / "workspace") + '"',
                    str(tmp / "workspace") + ","):
        assert outside not in flat, outside
    assert str(pod["out"]) in flat  # the output folder itself is shown
    assert doc["journal"]["path"].startswith("\u2026/")


def test_status_json_is_what_status_json_prints(pod) -> None:
    from ..conftest import run_cli

    page = json.loads(get(pod["port"], "/status.json", pod["auth"])[2])
    cli = json.loads(run_cli(["status", "--json"], pod["env"], check=True).stdout)
    assert set(page) - {"page", "fleet"} == set(cli)
    for key in ("running", "uploaded", "pending", "failed", "directory", "prefix", "bytes_uploaded"):
        assert page[key] == cli[key], key
    assert [o["key"] for o in page["recent"]] == [o["key"] for o in cli["recent"]]
    assert [s["name"] for s in page["start"]["steps"]] == [s["name"] for s in cli["start"]["steps"]]
    assert page["journal"]["done"] == cli["journal"]["done"]
