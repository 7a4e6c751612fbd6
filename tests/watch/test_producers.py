"""How real producers write into ComfyUI's output folder, replayed under the watcher on both servers.

Each pattern comes from what ComfyUI and its popular nodes do (shared/FIELD_NOTES.md):

* SaveImage / SaveAnimatedPNG / SaveAnimatedWEBP / SaveAudio*: PIL or the audio writer open the
  final name and write it in place, several writes, one close;
* VideoHelperSuite / SaveVideo: ffmpeg writes the final ``.mp4`` over seconds, and a second pass
  (metadata) rewrites the same path;
* SaveLatent: a hidden ``tempfile`` in the target folder, ``os.replace``d onto the final ``.latent``;
* a date subfolder made together with its first file (``filename_prefix="%date%/img"``);
* a hard link of a finished temp file; 3D ``.glb``; ``.safetensors`` from a training node under
  ``loras/``; names with spaces and unicode; a file above the multipart threshold.

Every test checks what a user relies on: every file is in the bucket at ``<prefix>/<relpath>``,
byte-identical, with the Content-Type rclone gives the same name, and **no object was ever
stored as a prefix of its file**: a loopback proxy between the watcher and the server records
the size of every PUT and multipart upload, and each must be the size of a complete version.
"""

from __future__ import annotations

import collections
import json
import os
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from syncbridge.keys import object_key
from syncbridge.bulk import push
from syncbridge.config import Config, load_config
from syncbridge.demo.localserver import LocalS3, free_port
from syncbridge.mediatypes import content_type
from syncbridge.store import S3Store, open_store
from syncbridge.watch import OutputWatcher

from ..conftest import new_bucket, server_env, wait_for
from ..faultproxy import FaultProxy

rng = random.Random(13)


# -- the producers ------------------------------------------------------------------------------

def pil_save(path: Path, data: bytes, *, piece: int = 65536) -> None:
    """PIL's Image.save: the final name opened in place, written in pieces, closed once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for i in range(0, len(data), piece):
            fh.write(data[i:i + piece])
            fh.flush()


def ffmpeg_write(path: Path, data: bytes, *, seconds: float, pieces: int = 8) -> None:
    """ffmpeg: the final name written over ``seconds``, flushed as it goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // pieces)
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(seconds / pieces)


def save_latent(path: Path, data: bytes) -> None:
    """SaveLatent: a hidden temp file beside the target, then os.replace onto the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def hard_link(path: Path, data: bytes) -> None:
    """A finished temp file linked to its final name (no close event on the final name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.link-tmp")
    tmp.write_bytes(data)
    os.link(tmp, path)
    os.unlink(tmp)


def blob(size: int) -> bytes:
    return rng.randbytes(size)


# -- the harness ----------------------------------------------------------------------------------

class Recorded:
    """What the proxy saw stored per key: sizes of completed PUTs, and completed multipart uploads."""

    def __init__(self, proxy: FaultProxy, bucket: str) -> None:
        self.puts: dict[str, list[int]] = collections.defaultdict(list)
        self.multipart: dict[str, int] = collections.Counter()
        for seen in proxy.seen(method="PUT"):
            if seen.status != 200 or not seen.path.startswith(f"/{bucket}/"):
                continue
            key = seen.path[len(bucket) + 2:]
            if "uploadId" not in seen.query:
                self.puts[key].append(seen.length or 0)
        for seen in proxy.seen(method="POST"):
            if seen.status == 200 and "uploadId" in seen.query and seen.path.startswith(f"/{bucket}/"):
                self.multipart[seen.path[len(bucket) + 2:]] += 1


def _config(env: dict[str, str], **overrides: object) -> Config:
    return load_config(env, overrides=overrides or None)


def _objects(config: Config, prefix: str) -> dict[str, tuple[bytes, str]]:
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        out = {}
        for info in store.list(prefix):
            data, _ = store.get_bytes(info.key)
            head = store.head(info.key)
            out[info.key] = (data, head.content_type if head else "")
        return out
    finally:
        store.close()


@pytest.fixture
def proxied(store_s3: LocalS3, tmp_path: Path):
    """A fresh bucket on each server (R2's emulator included), reached through a recording proxy."""
    bucket = new_bucket(store_s3)
    prefix = store_s3.endpoint.split("127.0.0.1", 1)[1].split("/", 1)
    path = "/" + prefix[1] if len(prefix) > 1 else ""  # the emulator serves S3 under a path
    with FaultProxy(store_s3.endpoint.removesuffix(path)) as proxy:
        env = server_env(store_s3, bucket, tmp_path)
        env["R2_ENDPOINT"] = proxy.endpoint + path
        yield store_s3, f"{path.strip('/')}/{bucket}".strip("/"), proxy, env


def _check(config: Config, s3: LocalS3, bucket: str, proxy: FaultProxy, expected: dict[str, bytes],
           *, versions: dict[str, set[int]] | None = None, prefix: str = "outputs") -> None:
    """Every file in the bucket, byte-identical, right type; nothing stored that was a prefix of a file."""
    got = _objects(config, prefix + "/")
    want = {object_key(prefix, rel): data for rel, data in expected.items()}
    missing = sorted(set(want) - set(got))
    assert not missing, f"never reached the bucket: {missing}"
    assert set(got) == set(want), f"unexpected objects: {sorted(set(got) - set(want))}"
    for key, data in want.items():
        assert got[key][0] == data, f"{key}: the object differs from the file ({len(got[key][0])} vs {len(data)})"
        if s3.kind in ("moto", "r2"):  # they keep the Content-Type they are sent (rclone serve s3 derives its own)
            assert got[key][1] == content_type(key), f"{key}: stored as {got[key][1]!r}"
    recorded = Recorded(proxy, bucket)
    for key, data in want.items():
        allowed = (versions or {}).get(key.split("/", 1)[1], set()) | {len(data)}
        torn = [n for n in recorded.puts.get(key, []) if n not in allowed]
        assert not torn, f"{key} was stored at {torn} bytes, a part of the file (complete: {sorted(allowed)})"


# -- the tests ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_comfyui_save_node_output_lands(proxied) -> None:
    """One of every kind of output ComfyUI's own save nodes and common custom nodes write, each the way
    its node writes it, with default settings: every one in the bucket (before, .opus, .latent, .glb and
    .safetensors were left out by an extension allowlist without a word)."""
    s3, bucket, proxy, env = proxied
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    expected: dict[str, bytes] = {}

    def produce(rel: str, size: int, how=pil_save) -> None:
        data = blob(size)
        how(out / rel, data)
        expected[rel] = data

    with OutputWatcher(config) as watcher:
        produce("ComfyUI_00001_.png", 180_000)                        # SaveImage
        produce("ComfyUI_00002_.webp", 90_000)                        # SaveAnimatedWEBP
        produce("anim/ComfyUI_00001_.png", 120_000)                   # SaveAnimatedPNG (prefix with a subfolder)
        produce("video/ComfyUI_00001_.mp4", 400_000,
                lambda p, d: ffmpeg_write(p, d, seconds=0.4))         # SaveVideo / VHS
        produce("video/ComfyUI_00001_.webm", 200_000,
                lambda p, d: ffmpeg_write(p, d, seconds=0.3))         # SaveWEBM
        produce("audio/ComfyUI_00001_.flac", 150_000)                 # SaveAudio
        produce("audio/ComfyUI_00001_.mp3", 60_000)                   # SaveAudioMP3
        produce("audio/ComfyUI_00001_.opus", 40_000)                  # SaveAudioOpus
        produce("latents/ComfyUI_00001_.latent", 70_000, save_latent)  # SaveLatent
        produce("3d/mesh_00001_.glb", 250_000)                        # Save GLB / Hunyuan3D
        produce("loras/my_lora_00001_.safetensors", 300_000)          # a training node's LoRA
        produce("checkpoints/ckpt_00001_.safetensors", 5 * 1024 * 1024 + 3)  # past the in-memory limit
        produce("exr/frame_0001.exr", 80_000)                         # a custom node's EXR
        produce("svg/logo.svg", 3_000)
        produce("text/prompt.txt", 300)
        produce("meta/ComfyUI_00001_.json", 900)
        produce("no_extension", 500)
        produce("Upper/IMAGE.PNG", 20_000)
        produce("names/my render 01.png", 30_000)                     # spaces
        produce("names/\u65e5\u672c\u8a9e \u00e9t\u00e9.png", 30_000)  # unicode
        produce("linked/final.png", 40_000, hard_link)
        produce("2026-12-06/ComfyUI_00001_.png", 100_000)             # a date folder made with its first file
        assert watcher.wait_idle(60), watcher.stats()
        stats = watcher.stats()
    assert stats.failed == 0 and stats.left_out == 0, stats
    _check(config, s3, bucket, proxy, expected)


@pytest.mark.slow
@pytest.mark.parametrize("size", [300_000, 6 * 1024 * 1024], ids=["in-memory", "streamed"])
def test_ffmpeg_writing_over_seconds_then_rewriting_never_publishes_a_prefix(proxied, size: int) -> None:
    """ffmpeg writes into a date folder it just made (the new folder's scan finds the file half
    written), closes, then a second pass rewrites it. Every stored size is that of a whole version,
    and the bucket ends with the second."""
    s3, bucket, proxy, env = proxied
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    first, second = blob(size), blob(size + size // 7 + 1)
    rel = "2026-12-06/clip_00001.mp4"
    with OutputWatcher(config) as watcher:
        ffmpeg_write(out / rel, first, seconds=1.2, pieces=8)
        pil_save(out / "2026-12-06/clip_00001.png", blob(5_000))  # VHS's metadata PNG beside the video
        time.sleep(0.3)
        ffmpeg_write(out / rel, second, seconds=1.0, pieces=11)
        assert watcher.wait_idle(60), watcher.stats()
    expected = {rel: second, "2026-12-06/clip_00001.png": (out / "2026-12-06/clip_00001.png").read_bytes()}
    _check(config, s3, bucket, proxy, expected, versions={rel: {len(first)}})


@pytest.mark.slow
def test_a_file_found_half_written_by_a_new_folders_scan_waits_for_its_close(proxied) -> None:
    """The torn object seen with the real ComfyUI: a 100 KB file written into a folder made a moment
    before, found by the folder's scan after its first 64 KiB. Never stored at 64 KiB."""
    s3, bucket, proxy, env = proxied
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    expected = {}
    with OutputWatcher(config) as watcher:
        for i in range(12):
            data = blob(100_000)
            path = out / f"batch_{i:02d}" / "ComfyUI_00001_.png"
            path.parent.mkdir()
            with open(path, "wb") as fh:
                fh.write(data[:65536])
                fh.flush()
                time.sleep(0.25)  # the scan of the new folder runs now
                fh.write(data[65536:])
            expected[f"batch_{i:02d}/ComfyUI_00001_.png"] = data
        assert watcher.wait_idle(60), watcher.stats()
    _check(config, s3, bucket, proxy, expected)


@pytest.mark.slow
def test_a_file_above_the_multipart_threshold_is_stored_once_whole(proxied) -> None:
    """A large output goes up in parts; the parts become an object only once, for the whole file."""
    s3, bucket, proxy, env = proxied
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    data = blob(66 * 1024 * 1024 + 11)  # MULTIPART_THRESHOLD is 64 MiB
    with OutputWatcher(config) as watcher:
        ffmpeg_write(out / "long/clip.mp4", data, seconds=1.0, pieces=6)
        assert watcher.wait_idle(120), watcher.stats()
    recorded = Recorded(proxy, bucket)
    assert recorded.multipart.get("outputs/long/clip.mp4") == 1, recorded.multipart
    _check(config, s3, bucket, proxy, {"long/clip.mp4": data})


def test_content_type_is_what_rclone_push_stores(moto_s3: LocalS3, tmp_path: Path) -> None:
    """The same files pushed by the watcher and by `push` (rclone) are stored with the same
    Content-Type on moto, which keeps what it is sent."""
    bucket = new_bucket(moto_s3)
    config = _config(server_env(moto_s3, bucket, tmp_path))
    names = ["a.png", "b.jpg", "c.jpeg", "d.webp", "e.gif", "f.avif", "g.mp4", "h.webm", "i.mov", "j.mkv",
             "k.flac", "l.mp3", "m.opus", "n.wav", "o.ogg", "p.m4a", "q.latent", "r.glb", "s.gltf",
             "t.safetensors", "u.json", "v.txt", "w.svg", "x.exr", "y.tiff", "z", "UP.PNG", "page.html",
             "data.csv", "notes.md", "k.ts", "l.avi", "m.srt", "n.heic", "o.mpg", "p.weba", "q.m2ts"]
    src = tmp_path / "src"
    src.mkdir()
    out = config.watch.dir
    out.mkdir(parents=True)
    with OutputWatcher(config) as watcher:
        for name in names:
            data = blob(1000)
            (src / name).write_bytes(data)
            pil_save(out / name, data)
        assert watcher.wait_idle(30)
    push(config, src, "viapush")
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        differ = {}
        for name in names:
            by_watch = store.head(f"outputs/{name}").content_type
            by_push = store.head(f"viapush/{name}").content_type
            if by_watch != by_push:
                differ[name] = (by_watch, by_push)
        assert not differ, f"watcher vs push: {differ}"
        assert store.head("outputs/a.png").content_type == "image/png"
        assert store.head("outputs/g.mp4").content_type == "video/mp4"
        assert store.head("outputs/z").content_type == "application/octet-stream"
    finally:
        store.close()


def test_cache_control_and_public_url(moto_s3: LocalS3, tmp_path: Path) -> None:
    bucket = new_bucket(moto_s3)
    env = server_env(moto_s3, bucket, tmp_path)
    env["SYNCBRIDGE_WATCH_CACHE_CONTROL"] = "public, max-age=31536000, immutable"
    env["SYNCBRIDGE_PUBLIC_URL"] = "https://cdn.example.test/{key}?v=1"
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    seen = []
    with OutputWatcher(config, on_pushed=seen.append) as watcher:
        pil_save(out / "my render #1.png", blob(1000))
        assert watcher.wait_idle(30)
        wait_for(lambda: seen, 5, "the on_pushed call")
        recent = watcher.stats().to_dict()["recent"]
    store = S3Store(config.remote)
    try:
        r = store.client.head_object(Bucket=bucket, Key="outputs/my render #1.png")
    finally:
        store.close()
    assert r["CacheControl"] == "public, max-age=31536000, immutable"
    [output] = seen
    assert output.url == "https://cdn.example.test/outputs/my%20render%20%231.png?v=1"
    assert output.key == "outputs/my render #1.png" and output.size == 1000
    assert output.content_type == "image/png" and output.md5 and len(output.md5) == 32
    assert recent[-1]["url"] == output.url and recent[-1]["key"] == output.key


class Receiver:
    """A loopback webhook receiver that can go down and come back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.keys: collections.Counter[str] = collections.Counter()
        self.posts = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.posts += 1
                    for output in body["outputs"]:
                        receiver.keys[output["key"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/s3cr3t-token"


def _with_webhook(server: LocalS3, tmp_path: Path) -> tuple[Receiver, Config, Path]:
    """A running receiver, and a configuration whose webhook points at it (output folder made)."""
    receiver = Receiver()
    env = {**server_env(server, new_bucket(server), tmp_path), "SYNCBRIDGE_WEBHOOK_URL": receiver.url}
    config = _config(env)
    config.watch.dir.mkdir(parents=True)
    receiver.up()
    return receiver, config, config.watch.dir


@pytest.mark.slow
def test_webhook_down_for_10s_during_a_300_file_burst_notifies_every_output(moto_s3: LocalS3, tmp_path: Path,
                                                                            caplog) -> None:
    """At least once per output, each with its key; every output in the bucket all the same; the
    webhook's secret path never in a log line."""
    receiver, config, out = _with_webhook(moto_s3, tmp_path)
    expected = {}
    with caplog.at_level("DEBUG", logger="syncbridge"):
        with OutputWatcher(config) as watcher:
            for i in range(100):
                data = blob(2000)
                pil_save(out / f"a/img_{i:03d}.png", data)
                expected[f"a/img_{i:03d}.png"] = data
            wait_for(lambda: len(receiver.keys) >= 50, 20, "the first notifications")
            receiver.down()
            went_down = time.monotonic()
            for i in range(200):
                data = blob(2000)
                pil_save(out / f"b/img_{i:03d}.png", data)
                expected[f"b/img_{i:03d}.png"] = data
            assert watcher.wait_idle(60), watcher.stats()  # the uploads did not wait for the webhook
            pushed_while_down = time.monotonic() - went_down
            time.sleep(max(0.0, 10 - (time.monotonic() - went_down)))
            receiver.up()
            want = {object_key("outputs", rel) for rel in expected}
            wait_for(lambda: set(receiver.keys) >= want, 30, "every output notified")
    receiver.down()
    assert pushed_while_down < 10, "uploads were held back by the webhook"
    assert set(receiver.keys) == want
    got = _objects(config, "outputs/")
    assert {k: v[0] for k, v in got.items()} == {object_key("outputs", r): d for r, d in expected.items()}
    assert any("webhook 127.0.0.1 did not take" in r.getMessage() for r in caplog.records)
    assert not any("s3cr3t-token" in r.getMessage() for r in caplog.records)


def test_filters_left_out_files_are_counted_not_silent(moto_s3: LocalS3, tmp_path: Path, caplog) -> None:
    """A user who narrowed the push keeps exactly that; what it leaves out is counted and shown."""
    bucket = new_bucket(moto_s3)
    env = server_env(moto_s3, bucket, tmp_path)
    env["SYNCBRIDGE_WATCH_INCLUDE"] = "*.png,*.mp4"
    env["SYNCBRIDGE_WATCH_EXCLUDE"] = "drafts/*.png"
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    pil_save(out / "old.opus", blob(100))  # found by the catch-up scan
    with caplog.at_level("INFO", logger="syncbridge"):
        watcher = OutputWatcher(config)
        watcher.start()
        pil_save(out / "a.png", blob(100))
        pil_save(out / "b.latent", blob(100))
        pil_save(out / "drafts/c.png", blob(100))
        pil_save(out / "temp/preview.png", blob(100))  # never an output: not counted
        pil_save(out / "b.latent", blob(100))  # again: still one file left out
        assert watcher.wait_idle(30)
        stats = watcher.stats()
        result = watcher.stop()
    assert stats.left_out == 3 and set(stats.left_out_examples) == {"old.opus", "b.latent", "drafts/c.png"}
    assert "3 files left out by watch.include / watch.exclude" in result.line()
    assert set(_objects(config, "outputs/")) == {"outputs/a.png"}
    assert any("left out by watch.include" in r.getMessage() for r in caplog.records)


def test_content_types_on_a_machine_without_a_mime_database() -> None:
    """A slim image: Go's built-in list and rclone's own media types still name videos and audio."""
    from syncbridge.mediatypes import MediaTypes

    bare = MediaTypes(globs=(), types=())
    assert bare.source == "built-in list only"
    assert bare.lookup("a/clip.mp4") == "video/mp4"
    assert bare.lookup("clip.MKV") == "video/x-matroska"  # rclone's addition, any case
    assert bare.lookup("clip.mov") == "video/quicktime"
    assert bare.lookup("x.webm") == "audio/webm"  # Go's list wins over rclone's video/webm
    assert bare.lookup("notes.txt") == "text/plain; charset=utf-8"
    assert bare.lookup("x.latent") == "application/octet-stream"
    assert bare.lookup("noext") == "application/octet-stream"
    assert bare.lookup(".hidden") == "application/octet-stream"


def test_mime_types_file_overrides_the_built_ins_but_globs2_does_not(tmp_path: Path) -> None:
    globs = tmp_path / "globs2"
    globs.write_text("# comment\n80:image/x-custom:*.png\n50:model/x-latent:*.latent\n40:model/other:*.latent\n"
                     "50:text/x-thing:*.thing\n50:image/x-glob:*.[ab]c\n")
    types = tmp_path / "mime.types"
    types.write_text("image/x-override png\nmodel/x-from-types latent # comment\n")
    from syncbridge.mediatypes import MediaTypes

    with_globs = MediaTypes(globs=[str(globs)], types=[str(types)])
    assert with_globs.lookup("a.png") == "image/png"  # a built-in is never replaced by globs2
    assert with_globs.lookup("a.latent") == "model/x-latent"  # the first (heaviest) entry wins
    assert with_globs.lookup("a.thing") == "text/x-thing; charset=utf-8"
    with_types = MediaTypes(globs=[str(tmp_path / "missing")], types=[str(types)])
    assert with_types.lookup("a.png") == "image/x-override"
    assert with_types.lookup("a.latent") == "model/x-from-types"


def test_presigned_links_only_when_asked_and_never_in_logs_or_status(moto_s3: LocalS3, tmp_path: Path,
                                                                     caplog) -> None:
    bucket = new_bucket(moto_s3)
    env = server_env(moto_s3, bucket, tmp_path)
    env["SYNCBRIDGE_PRESIGN_SECONDS"] = "600"
    config = _config(env)
    out = config.watch.dir
    out.mkdir(parents=True)
    seen = []
    data = blob(3000)
    with caplog.at_level("DEBUG", logger="syncbridge"):
        with OutputWatcher(config, on_pushed=seen.append) as watcher:
            pil_save(out / "a.png", data)
            assert watcher.wait_idle(30)
            wait_for(lambda: seen, 5, "the on_pushed call")
            status = watcher.stats().to_dict()
    [output] = seen
    assert output.url is None and output.presigned_url and "Signature" in output.presigned_url
    assert output.to_dict(with_presigned=True)["url"] == output.presigned_url
    import urllib.request

    with urllib.request.urlopen(output.presigned_url, timeout=10) as response:  # the link serves the bytes
        assert response.read() == data
    assert status["recent"][-1]["url"] is None
    assert "presigned_url" not in status["recent"][-1]
    assert not any("Signature" in r.getMessage() for r in caplog.records)


def test_webhook_survives_a_name_that_is_not_utf8_and_a_folder_named_like_a_partial(moto_s3: LocalS3,
                                                                                   tmp_path: Path) -> None:
    """A file name with a byte that is not UTF-8 once ended the webhook's thread (the JSON encode raised
    outside its error handling); a folder called `run.download` was never watched (the partial-file
    suffixes applied to folders too)."""
    receiver, config, out = _with_webhook(moto_s3, tmp_path)
    try:
        with OutputWatcher(config) as watcher:
            pil_save(out / os.fsdecode(b"bad\xff.png"), blob(100))
            pil_save(out / "after.png", blob(100))
            pil_save(out / "run.download" / "frame.png", blob(100))
            assert watcher.wait_idle(30), watcher.stats()
            wait_for(lambda: {"outputs/after.png", "outputs/run.download/frame.png"} <= set(receiver.keys), 15,
                     "the outputs after the odd name notified")
        assert len(receiver.keys) == 3
    finally:
        receiver.down()


def test_quiet_is_measured_on_this_machines_clock(moto_s3: LocalS3, tmp_path: Path) -> None:
    """Where /proc cannot tell (a network file system), a scan-found file is finished once its stat has not
    changed for quiet_seconds by this machine's clock, even with an mtime in the future (another clock)."""
    config = _config({**server_env(moto_s3, new_bucket(moto_s3), tmp_path), "SYNCBRIDGE_WATCH_QUIET_SECONDS": "0.3"})
    from syncbridge.watch.scheduler import Item
    from syncbridge.watch.upload import FinishCheck

    # local_fs=False: as on NFS/MooseFS, no /proc look
    check = FinishCheck(tmp_path, quiet_seconds=config.watch.quiet_seconds, local_fs=False)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x")
    future = time.time() + 3600
    os.utime(path, (future, future))
    item = Item("f.bin", time.time(), time.monotonic(), False)
    first = check.wait_for(item, path, os.lstat(path))
    assert 0.25 < first.seconds <= 0.31  # the future mtime says nothing: the quiet starts on this machine's clock
    assert not first.writing  # no /proc look on such a file system: only evidence is awaited
    item.quiet_since -= 0.35  # as if 0.35 s passed (the quiet itself: tests/watch/test_scheduler.py)
    assert check.wait_for(item, path, os.lstat(path)).seconds == 0.0  # unchanged for the quiet time
    path.write_bytes(b"xy")  # changed: the quiet starts again
    os.utime(path, (future + 1, future + 1))
    assert check.wait_for(item, path, os.lstat(path)).seconds > 0.25
