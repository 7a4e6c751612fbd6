"""Model warm-start under faults: the R2 cache is reached through the loopback fault proxy.

Every scenario ends with the model at its final path, verified (sha256), or, when the
fault makes that impossible, a clear error and nothing at the final path.

``SYNCBRIDGE_FAULT_MODEL_MB`` (default 200) sizes the large model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

models = pytest.importorskip("syncbridge.models")

from syncbridge.config import load_config  # noqa: E402
from syncbridge.hashing import sha256_file  # noqa: E402
from syncbridge.models.sources import default_sources  # noqa: E402
from syncbridge.store import S3Store, open_store  # noqa: E402

from ..conftest import HF_TOKEN, new_bucket, server_env  # noqa: E402
from ..faultproxy import FaultProxy, Rule  # noqa: E402
from ..hfserver import serve_hf  # noqa: E402

MODEL_MB = int(os.environ.get("SYNCBRIDGE_FAULT_MODEL_MB", "200"))
CACHE = "models"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha_file(path: Path) -> str:
    return sha256_file(path)[1]


class Scene:
    def __init__(self, server, tmp_path: Path, proxy: FaultProxy, *, models_dir: Path | None = None,
                 hub=None) -> None:
        env = server_env(server, new_bucket(server), tmp_path)
        self.direct = S3Store(load_config(env).remote)
        env["R2_ENDPOINT"] = proxy.endpoint
        if hub is not None:
            env["HF_ENDPOINT"] = hub.url
            env["HF_TOKEN"] = HF_TOKEN
        self.env = env
        self.config = load_config(env)
        self.models_dir = models_dir or tmp_path / "models"
        self.manifest = tmp_path / "models.toml"
        self.proxy = proxy

    def write_manifest(self, entries: list[dict]) -> Path:
        lines = [f'[settings]\nmodels_dir = "{self.models_dir}"\ncache_prefix = "{CACHE}"\n']
        for e in entries:
            lines.append("[[model]]")
            for k, v in e.items():
                lines.append(f"{k} = {v}" if k == "hf" else f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}")
        self.manifest.write_text("\n".join(lines) + "\n")
        return self.manifest

    def seed_file(self, rel: str, path: Path) -> str:
        digest = sha_file(path)
        # the cache object carries its sha256 in metadata, as write-back puts it there
        self.direct.put_file(path, f"{CACHE}/{rel}", metadata={"sha256": digest})
        return digest

    def pull(self):
        return models.pull_models(self.config, [self.manifest], tier="datacenter")

    def leave_interrupted(self, rel: str, kept: bytes, size: int, complete: int) -> Path:
        """What a killed pull of the cache object ``rel`` leaves: its temp file holding ``kept`` and the
        sidecar saying ``complete`` bytes of the object's current ETag are in it. Returns the temp file."""
        target = self.models_dir / rel
        temp = target.with_name(f".{target.name}.cache.sbpart")
        temp.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(kept)
        etag = self.direct.head(f"{CACHE}/{rel}").etag
        Path(str(temp) + ".resume").write_text(json.dumps({"key": f"{CACHE}/{rel}", "size": size, "etag": etag,
                                                           "complete": complete}))
        return temp

    def leftovers(self) -> list[str]:
        """Anything in the models folder that is not a final, complete model file."""
        return sorted(p.relative_to(self.models_dir).as_posix() for p in self.models_dir.rglob("*")
                      if p.is_file() and (p.name.endswith((".sbpart", ".sbtmp", ".partial", ".incomplete", ".resume"))))


@pytest.fixture
def scene(rclone_s3, tmp_path):
    with FaultProxy(rclone_s3.endpoint) as proxy:
        yield Scene(rclone_s3, tmp_path, proxy)


def _big_file(path: Path, mb: int) -> Path:
    with open(path, "wb") as fh:
        block = os.urandom(1024 * 1024)
        for i in range(mb):
            fh.write(block[:-8] + i.to_bytes(8, "big"))  # each MiB differs: a misplaced range fails the hash
    return path


@pytest.mark.parametrize("mb", [MODEL_MB, 24], ids=["large-ranged", "small-single-get"])
def test_get_reset_half_way_through_a_model(scene, tmp_path, mb):
    src = _big_file(tmp_path / "blob", mb)
    digest = scene.seed_file("checkpoints/big.safetensors", src)
    scene.write_manifest([{"name": "big", "path": "checkpoints/big.safetensors", "sha256": digest}])
    scene.proxy.add(Rule("reset", method="GET", path=r"/big\.safetensors$", phase="response", fraction=0.5, times=1))
    report = scene.pull()
    assert scene.proxy.count("reset") == 1
    (result,) = report.results
    assert result.status == "pulled", report.table()
    assert result.source == "cache" and result.verified == "sha256"
    target = scene.models_dir / "checkpoints" / "big.safetensors"
    assert sha_file(target) == digest
    assert not scene.leftovers()


@pytest.mark.parametrize("mb", [MODEL_MB, 24], ids=["large-ranged", "small-single-get"])
def test_a_body_that_stalls_once_is_read_again_from_the_cache(scene, tmp_path, mb):
    """A stall past the read timeout in the middle of a cache object's body: botocore raises its
    ReadTimeoutError and never retries it (the request was answered). One stalled read used to mark
    the cache down for the whole pull; it is tried again, after a backoff, like a body cut short."""
    src = _big_file(tmp_path / "blob", mb)
    digest = scene.seed_file("checkpoints/slow.safetensors", src)
    scene.write_manifest([{"name": "slow", "path": "checkpoints/slow.safetensors", "sha256": digest}])
    scene.proxy.add(Rule("stall", method="GET", path=r"/slow\.safetensors$", phase="response", fraction=0.5,
                         seconds=30, times=1))
    config = load_config({**scene.env, "SYNCBRIDGE_CACHE_TIMEOUT": "1"})
    report = models.pull_models(config, [scene.manifest], tier="datacenter")
    assert scene.proxy.count("stall") == 1
    (result,) = report.results
    assert (result.status, result.source, result.verified) == ("pulled", "cache", "sha256"), report.table()
    assert sha_file(scene.models_dir / "checkpoints" / "slow.safetensors") == digest
    assert not scene.leftovers()


@pytest.mark.parametrize("lie", [False, True], ids=["cut-short", "content-length-rewritten"])
def test_truncated_body_with_status_200(scene, lie):
    data = os.urandom(3 * 1024 * 1024)
    path = scene.models_dir.parent / "vae.bin"
    path.write_bytes(data)
    scene.seed_file("vae/vae.safetensors", path)
    scene.write_manifest([{"name": "vae", "path": "vae/vae.safetensors", "sha256": sha(data)}])
    scene.proxy.add(Rule("truncate", method="GET", path=r"/vae\.safetensors$", fraction=0.4, lie=lie, times=1))
    report = scene.pull()
    assert scene.proxy.count("truncate") == 1
    (result,) = report.results
    assert result.status == "pulled", report.table()
    assert (scene.models_dir / "vae" / "vae.safetensors").read_bytes() == data
    assert result.verified == "sha256"
    assert not scene.leftovers()


def test_cache_answering_403_falls_through_to_the_next_source(rclone_s3, tmp_path, caplog):
    data = os.urandom(200_000)
    with serve_hf() as hub, FaultProxy(rclone_s3.endpoint) as proxy:
        hub.add("org/repo", {"unet.safetensors": data})
        scene = Scene(rclone_s3, tmp_path, proxy, hub=hub)
        path = tmp_path / "u.bin"
        path.write_bytes(data)
        scene.seed_file("unet/unet.safetensors", path)
        scene.write_manifest([{"name": "unet", "path": "unet/unet.safetensors", "sha256": sha(data),
                               "hf": '{ repo = "org/repo", file = "unet.safetensors" }'}])
        proxy.add(Rule("error", path=rf"/{CACHE}/", status=403, code="AccessDenied"))
        with caplog.at_level(logging.WARNING, logger="syncbridge"):
            report = scene.pull()
    (result,) = report.results
    assert result.status == "pulled" and result.source == "hf", report.table()
    assert (scene.models_dir / "unet" / "unet.safetensors").read_bytes() == data
    assert proxy.count("error") >= 1
    cache_attempts = [err for src, err in result.attempts if src == "cache"]
    # a HEAD answer has no body, so the status is all there is to name
    assert cache_attempts and ("AccessDenied" in cache_attempts[0] or "403" in cache_attempts[0]), result.attempts
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("unet" in w and "cache" in w and ("AccessDenied" in w or "403" in w) for w in warnings), warnings


@contextlib.contextmanager
def small_filesystem(where: Path, size_mb: int):
    where.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(where)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def test_disk_filled_during_a_download(rclone_s3, tmp_path):
    """The space check passes, then something else fills the disk mid-download: a clear error, nothing at
    the final path; once space exists again, the next run succeeds."""
    model_mb = 40
    with small_filesystem(tmp_path / "small", 72) as small, FaultProxy(rclone_s3.endpoint) as proxy:
        scene = Scene(rclone_s3, tmp_path, proxy, models_dir=small / "models")
        src = _big_file(tmp_path / "blob", model_mb)
        digest = scene.seed_file("loras/style.safetensors", src)
        scene.write_manifest([{"name": "style", "path": "loras/style.safetensors", "sha256": digest}])
        # hold the download a moment after its first megabytes, and fill the disk meanwhile
        proxy.add(Rule("stall", method="GET", path=r"/style\.safetensors$", phase="response",
                       after_bytes=2 * 1024 * 1024, seconds=1.5, times=1))
        filler = small / "filler.bin"

        def fill() -> None:
            proxy.wait_for(lambda: proxy.count("stall") > 0, 60)
            with open(filler, "wb") as fh, contextlib.suppress(OSError):
                for _ in range(60):
                    fh.write(b"\0" * (1024 * 1024))

        filling = threading.Thread(target=fill)
        filling.start()
        report = scene.pull()
        filling.join()
        (result,) = report.results
        target = scene.models_dir / "loras" / "style.safetensors"
        assert result.status == "failed", report.table()
        text = report.table()
        assert "No space left" in text or "ENOSPC" in text or "disk" in text.lower(), text
        assert not target.exists(), "a partial file sits at the final path"

        filler.unlink()
        report = scene.pull()
        (result,) = report.results
        assert result.status == "pulled", report.table()
        assert sha_file(target) == digest
        assert not scene.leftovers()


def test_kill_9_mid_download_then_rerun(scene, tmp_path):
    """`syncbridge models pull` killed with SIGKILL mid-download (adversarial model file name): nothing at the
    final path; the next run puts the model in place, verified."""
    import signal
    import sys

    from ..conftest import run_cli

    rel = "checkpoints/ünï model $(x) 'q'.safetensors"
    src = _big_file(tmp_path / "blob", 30)
    digest = scene.seed_file(rel, src)
    scene.write_manifest([{"name": "odd", "path": rel, "sha256": digest}])
    scene.proxy.add(Rule("stall", method="GET", path=r"\.safetensors$", phase="response",
                         after_bytes=4 * 1024 * 1024, seconds=30, times=1))
    proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "models", "pull", str(scene.manifest)],
                            env=scene.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        assert scene.proxy.wait_for(lambda: scene.proxy.count("stall") > 0, 60), "no download started"
        part = (scene.models_dir / rel).with_name(f".{Path(rel).name}.cache.sbpart")

        def landed() -> bool:
            try:
                return part.stat().st_size >= 1024 * 1024
            except OSError:
                return False

        assert scene.proxy.wait_for(landed, 30), "no bytes landed before the stall"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    target = scene.models_dir / rel
    assert not target.exists(), "a partial model sits at the final path after kill -9"
    again = run_cli(["models", "pull", str(scene.manifest)], scene.env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sha_file(target) == digest
    assert not scene.leftovers()


@pytest.mark.slow
def test_killed_large_cache_download_resumes_where_it_stopped(scene, tmp_path, caplog):
    """kill -9 while the later parts of a large cache object stall: the next run keeps the complete prefix
    (re-hashed from disk, not fetched again) and fetches only the rest; the model verifies."""
    import signal
    import sys

    part = 32 * 1024 * 1024
    rel = "checkpoints/resume.safetensors"
    src = _big_file(tmp_path / "blob", max(MODEL_MB, 160))
    digest = scene.seed_file(rel, src)
    scene.write_manifest([{"name": "r", "path": rel, "sha256": digest}])
    # the first four ranged GETs (4 x 32 MiB) pass; every later one stalls
    scene.proxy.add(Rule("stall", method="GET", path=r"/resume\.safetensors$", phase="response", skip=4,
                         after_bytes=1024, seconds=60))
    proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "models", "pull", str(scene.manifest)],
                            env=scene.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    sidecar = scene.models_dir / "checkpoints" / ".resume.safetensors.cache.sbpart.resume"
    try:
        def progress() -> int:
            try:
                return json.loads(sidecar.read_text())["complete"]
            except (OSError, ValueError, KeyError):
                return 0

        assert scene.proxy.wait_for(lambda: progress() >= 4 * part, 120), "the first parts never completed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    kept = json.loads(sidecar.read_text())["complete"]
    assert kept >= 4 * part
    target = scene.models_dir / rel
    assert not target.exists()
    scene.proxy.clear()
    before = len(scene.proxy.seen(method="GET"))
    caplog.set_level(logging.INFO, logger="syncbridge.models")
    report = scene.pull()
    (result,) = report.results
    assert (result.status, result.source, result.verified) == ("pulled", "cache", "sha256"), report.table()
    assert f"at {kept} of {src.stat().st_size} bytes" in caplog.text
    gets = len([s for s in scene.proxy.seen(method="GET")[before:] if "list-type" not in s.query])  # object GETs
    total_parts = -(-src.stat().st_size // part)
    assert gets <= total_parts - kept // part, f"{gets} GETs: the kept prefix was fetched again"
    assert sha_file(target) == digest
    assert not sidecar.exists() and not scene.leftovers()


def test_cache_object_replaced_after_an_interruption_starts_over(scene, tmp_path, caplog):
    """A sidecar left by an interrupted download whose object has since changed (another ETag): the kept
    bytes are dropped, the new object is fetched whole and verified."""
    rel = "checkpoints/swap.safetensors"
    old = _big_file(tmp_path / "old", 70)
    scene.seed_file(rel, old)
    scene.write_manifest([{"name": "s", "path": rel}])
    # interrupted run: half the object on disk and its sidecar, as a killed pull leaves them
    with open(old, "rb") as fh:
        temp = scene.leave_interrupted(rel, fh.read(35 * 1024 * 1024), old.stat().st_size, 32 * 1024 * 1024)
    new = tmp_path / "new"
    new.write_bytes(os.urandom(old.stat().st_size))
    digest = scene.seed_file(rel, new)
    scene.write_manifest([{"name": "s", "path": rel, "sha256": digest}])
    caplog.set_level(logging.INFO, logger="syncbridge.models")
    report = scene.pull()
    (result,) = report.results
    assert (result.status, result.verified) == ("pulled", "sha256"), report.table()
    assert "changed during the download; starting over" in caplog.text
    assert sha_file(scene.models_dir / rel) == digest
    assert not scene.leftovers() and not Path(str(temp) + ".resume").exists()


def test_resumed_bytes_that_do_not_verify_start_over_from_the_cache(scene, tmp_path, caplog):
    """A kept prefix that lost its content (a host crash after the sidecar was written, say): the
    resumed file misses the sha256, so the download starts over from the cache instead of failing
    the cache and going upstream."""
    rel = "checkpoints/torn.safetensors"
    src = _big_file(tmp_path / "blob", 70)
    digest = scene.seed_file(rel, src)
    scene.write_manifest([{"name": "t", "path": rel, "sha256": digest}])
    # a prefix the sidecar vouches for, the wrong bytes in it
    scene.leave_interrupted(rel, b"\0" * (40 * 1024 * 1024), src.stat().st_size, 32 * 1024 * 1024)
    caplog.set_level(logging.INFO, logger="syncbridge.models")
    report = scene.pull()
    (result,) = report.results
    assert (result.status, result.source, result.verified) == ("pulled", "cache", "sha256"), report.table()
    assert not result.attempts, result.attempts
    assert "the resumed file does not match its sha256; starting over" in caplog.text
    assert sha_file(scene.models_dir / rel) == digest
    assert not scene.leftovers()


def test_cancel_ends_a_cache_download_stalled_mid_part(scene, tmp_path):
    """A stop while a ranged GET hangs mid-body (the server went quiet): the pull ends at once, not when
    the socket times out (60 s) or the 32 MiB part completes; nothing at the final path."""
    import threading
    import time

    from syncbridge.errors import CancelledError

    rel = "checkpoints/stall.safetensors"
    src = _big_file(tmp_path / "blob", 70)
    digest = scene.seed_file(rel, src)
    scene.write_manifest([{"name": "s", "path": rel, "sha256": digest}])
    scene.proxy.add(Rule("stall", method="GET", path=r"/stall\.safetensors$", phase="response",
                         after_bytes=1024 * 1024, seconds=60))
    cancel = threading.Event()
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(models.pull_models(scene.config, [scene.manifest], tier="datacenter", cancel=cancel))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert scene.proxy.wait_for(lambda: scene.proxy.count("stall") >= 2, 30), "no stalled GET"
    cancel.set()
    stopped = time.monotonic()
    worker.join(15)
    assert not worker.is_alive(), "the pull still waits on the stalled GETs"
    assert time.monotonic() - stopped < 3.0
    assert isinstance(outcome[0], CancelledError) or not outcome[0].ok, outcome
    assert not (scene.models_dir / rel).exists()


@pytest.mark.slow
def test_a_cache_that_stops_answering_is_skipped_not_waited_on(rclone_s3, tmp_path):
    """The endpoint accepts connections and never answers (a hung proxy, a stalled R2 edge). Before,
    every model asked it in turn and waited out 3 x 60 s; write-back and the fleet's lease waited too."""
    with FaultProxy(rclone_s3.endpoint) as proxy, serve_hf() as hub:
        scene = Scene(rclone_s3, tmp_path, proxy, hub=hub)
        files = {f"m{i:02d}.safetensors": os.urandom(2000 + i) for i in range(20)}
        hub.add("org/m", files)
        lines = [f'[settings]\nmodels_dir = "{scene.models_dir}"\ncache_prefix = "{CACHE}"\nwrite_back = true\n']
        for i, (name, data) in enumerate(files.items()):
            lines += ["[[model]]", f'name = "{name}"', f'path = "loras/{name}"',
                      f'hf = {{ repo = "org/m", file = "{name}" }}']
            if i % 5:  # most in the listing (they have a sha256), the others asked one by one
                lines.append(f'sha256 = "{sha(data)}"')
        scene.manifest.write_text("\n".join(lines) + "\n")
        proxy.add(Rule("stall", seconds=600))
        config = load_config({**scene.env, "SYNCBRIDGE_CACHE_TIMEOUT": "1"})
        # the library's way to keep sources across pulls
        store = open_store(config.remote, state_dir=config.state_dir, read_timeout=1)
        sources = default_sources(store=lambda: store, cache_prefix=CACHE, hf_endpoint=hub.url, hf_token=HF_TOKEN,
                                  civitai_endpoint="http://127.0.0.1:9", civitai_api_key=None, cache_timeout=1)
        started = time.monotonic()
        report = models.pull_models(config, [scene.manifest], tier="datacenter", sources=sources, store=store)
        took = time.monotonic() - started
        asked = proxy.count("request")
        # a later pull with the same sources gives the cache another chance: it answers again by then
        proxy.clear()
        later = tmp_path / "later.bin"
        later.write_bytes(os.urandom(3000))
        digest = scene.seed_file("later.bin", later)
        manifest = tmp_path / "later.toml"
        manifest.write_text(f'[settings]\nmodels_dir = "{scene.models_dir}"\ncache_prefix = "{CACHE}"\n'
                            f'[[model]]\nname = "later"\npath = "later.bin"\nsha256 = "{digest}"\n')
        again = models.pull_models(config, [manifest], tier="datacenter", sources=sources, store=store)
        assert [(r.status, r.source) for r in again.results] == [("pulled", "cache")], again.table()
    assert report.ok, report.table()
    assert {r.source for r in report.results} == {"hf"}
    for name, data in files.items():
        assert (scene.models_dir / "loras" / name).read_bytes() == data
    # one listing, tried 3 times; then no HEAD per model, no write-back, no lease
    assert asked <= 3, asked
    assert all(r.write_back == "skipped: the cache is not answering" for r in report.results), report.table()
    assert all("cache" in dict(r.attempts) for r in report.results)
    assert took < 30, took


def test_a_read_only_token_with_write_back_still_pulls(moto_s3, tmp_path):
    """Pods often get a token that can only read the cache. With write_back on, the fleet's lease probe
    (a PUT) used to fail the whole pull with the store's error; now the models come from upstream and
    each result says its write-back failed."""
    with FaultProxy(moto_s3.endpoint) as proxy, serve_hf() as hub:
        scene = Scene(moto_s3, tmp_path, proxy, hub=hub)
        files = {"a.safetensors": os.urandom(5000), "b.safetensors": os.urandom(6000)}
        hub.add("org/m", files)
        lines = [f'[settings]\nmodels_dir = "{scene.models_dir}"\ncache_prefix = "{CACHE}"\nwrite_back = true\n']
        for name in files:
            lines += ["[[model]]", f'name = "{name}"', f'path = "{name}"', f'hf = {{ repo = "org/m", file = "{name}" }}']
        scene.manifest.write_text("\n".join(lines) + "\n")
        proxy.add(Rule("error", method="PUT", status=403, code="AccessDenied"))
        report = scene.pull()
    assert report.ok, report.table()
    # after the first refusal a model does not try again (two pulled at once may both have tried)
    skipped = "skipped: the cache refused access (check R2_ACCESS_KEY)"
    assert any(r.write_back.startswith("failed:") and "AccessDenied" in r.write_back for r in report.results)
    for r in report.results:
        assert r.source == "hf" and (r.write_back == skipped or "AccessDenied" in r.write_back), r.write_back
        assert (scene.models_dir / r.name).read_bytes() == files[r.name]
    # never a quiet line among the results: the report carries the refusal and the setting
    assert report.cache_setting == "R2_ACCESS_KEY" and "AccessDenied" in report.cache_error
    assert "cache: put " in report.table()


@pytest.mark.slow
def test_bulk_pull_from_a_hung_endpoint_fails_fast(rclone_s3, tmp_path):
    """rclone alone was still waiting after 150 s on an endpoint that accepts connections and never answers."""
    with FaultProxy(rclone_s3.endpoint) as proxy:
        env = {**server_env(rclone_s3, new_bucket(rclone_s3), tmp_path), "R2_ENDPOINT": proxy.endpoint}
        proxy.add(Rule("stall", seconds=600))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "syncbridge", "pull", "workflows", str(tmp_path / "dst")],
                              env=env, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "sent no answer in 10 s" in proc.stderr and "R2_ENDPOINT" in proc.stderr, proc.stderr
    assert took < 30, took
