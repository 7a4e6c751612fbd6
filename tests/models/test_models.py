"""Model warm-start against real things on loopback: the S3 servers (rclone serve s3, moto), the local
bucket, a server speaking the Hugging Face download protocol, CivitAI's API plus a second storage host."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.models import InsufficientSpaceError, pull_models, push_cache
from syncbridge.models.sources import CacheSource
from syncbridge.store import open_store

from ..civitaiserver import serve_civitai
from ..conftest import CIVITAI_KEY, HF_TOKEN, assert_no_secret, new_bucket, run_cli, server_env, wait_for
from ..hfserver import LoopbackServer, send_body, serve_hf


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(path: Path, models_dir: Path, models: str, *, settings: str = "") -> Path:
    path.write_text(f'[settings]\nmodels_dir = "{models_dir}"\n{settings}\n' + textwrap.dedent(models))
    return path


def with_upstreams(env: dict[str, str], hub=None, civ=None) -> dict[str, str]:
    env = dict(env)
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
        env["HF_TOKEN"] = HF_TOKEN
    if civ is not None:
        env["SYNCBRIDGE_CIVITAI_ENDPOINT"] = civ.url
        env["CIVITAI_API_KEY"] = CIVITAI_KEY
    return env


def seed(store, key: str, data: bytes, *, with_sha: bool = True) -> None:
    store.put_bytes(key, data, metadata={"sha256": sha(data)} if with_sha else {})


class FileServer:
    """A plain HTTP file server on loopback; ``drops`` = how many GETs to cut off half way."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.drops = 0
        self.head_size: dict[str, int] = {}
        self.server = LoopbackServer(self._handle).start()
        self.url = self.server.url

    def _handle(self, h) -> None:
        name = h.path.lstrip("/")
        if name not in self.files and name not in self.head_size:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if h.command == "HEAD" and name in self.head_size:
            h.send_response(200)
            h.send_header("Content-Length", str(self.head_size[name]))
            h.end_headers()
            return
        data = self.files[name]
        drop = None
        if h.command == "GET" and self.drops:
            self.drops -= 1
            drop = 100_000  # bytes of this answer's body before the connection is cut
        send_body(h, data, drop_after=drop)

    @property
    def requests(self):
        return self.server.requests

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def files_server():
    servers = []

    def make(files):
        servers.append(FileServer(files))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


# -- the R2 cache -----------------------------------------------------------------------------


def test_cache_hit_large_and_small(env, tmp_path):
    """Both S3 servers: a ranged parallel download for the large object, a single GET for the small one."""
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    big, small = os.urandom(3 * 1024 * 1024 + 17), os.urandom(5000)
    seed(store, "models/checkpoints/big.safetensors", big)
    seed(store, "models/vae/small.safetensors", small, with_sha=False)
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "big"
        path = "checkpoints/big.safetensors"

        [[model]]
        name = "small"
        path = "vae/small.safetensors"
        sha256 = "{sha(small)}"
        ''')
    events = []
    cache = CacheSource(lambda: store, "models", streams=3, part_size=256 * 1024, big=1024 * 1024)
    report = pull_models(config, [m], sources=[cache], store=store, on_event=events.append)
    assert report.ok, report.table()
    by = {r.name: r for r in report.results}
    assert (by["big"].status, by["big"].source, by["big"].verified) == ("pulled", "cache", "sha256")
    assert (by["small"].status, by["small"].verified) == ("pulled", "sha256")
    assert (tmp_path / "models/checkpoints/big.safetensors").read_bytes() == big
    assert (tmp_path / "models/vae/small.safetensors").read_bytes() == small
    assert sum(e.bytes for e in events if e.kind == "bytes") == len(big) + len(small)
    assert not list((tmp_path / "models").rglob("*.sbpart"))
    # present now: nothing fetched again
    again = pull_models(config, [m], sources=[cache], store=store)
    assert [r.status for r in again.results] == ["present", "present"]


def test_cache_hit_local_bucket_through_the_cli(local_env, tmp_path):
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    data = os.urandom(100_000)
    seed(store, "models/loras/x.safetensors", data)
    # a leftover from an interrupted run is cleaned up once the model is in place
    (tmp_path / "models/loras").mkdir(parents=True)
    (tmp_path / "models/loras/.x.safetensors.url.sbpart").write_bytes(b"junk")
    (tmp_path / "models/loras/.x.safetensors.hf.sbpart.d").mkdir()
    m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
        [[model]]
        name = "lora"
        path = "loras/x.safetensors"
        ''')
    proc = run_cli(["models", "pull", str(m)], local_env)
    assert proc.returncode == 0, proc.stderr
    assert "lora" in proc.stdout and "cache" in proc.stdout and "sha256" in proc.stdout
    assert (tmp_path / "models/loras/x.safetensors").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "models/loras").iterdir()) == ["x.safetensors"]


# -- upstream ---------------------------------------------------------------------------------


def test_cache_miss_pulls_from_hf_and_writes_back(env, tmp_path):
    data = os.urandom(200_000)
    with serve_hf() as hub:
        hub.token = HF_TOKEN
        hub.add("org/vae", {"sdxl_vae.safetensors": data})
        environ = with_upstreams(env, hub)
        config = load_config(environ)
        m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
            [[model]]
            name = "vae"
            path = "vae/sdxl_vae.safetensors"
            hf = { repo = "org/vae", file = "sdxl_vae.safetensors" }
            ''', settings="write_back = true")
        report = pull_models(config, [m], environ=environ)
        r = report.results[0]
        assert (r.status, r.source, r.verified, r.write_back) == ("pulled", "hf", "sha256", "pushed"), report.table()
        assert (tmp_path / "models/vae/sdxl_vae.safetensors").read_bytes() == data
        # the token went to the Hub, never to the CDN origin
        hub_side = [q for q in hub.server.requests]
        cdn_side = [q for q in hub.cdn.requests]
        assert cdn_side and all("Authorization" not in q.headers for q in cdn_side)
        assert all(q.headers.get("Authorization") == f"Bearer {HF_TOKEN}" for q in hub_side)
        # the cache now holds it, with its sha256 in metadata
        store = open_store(config.remote, state_dir=config.state_dir)
        info = store.head("models/vae/sdxl_vae.safetensors")
        assert info.size == len(data)
        assert {k.lower(): v for k, v in info.metadata.items()}["sha256"] == sha(data)
        # a second pod (empty models dir) now starts from the cache, not the Hub
        before = len(hub.requests)
        m2 = manifest(tmp_path / "m2.toml", tmp_path / "models2", m.read_text().split("\n", 2)[2])
        second = pull_models(config, [m2], environ=environ)
        assert (second.results[0].status, second.results[0].source) == ("pulled", "cache")
        assert len(hub.requests) == before


def test_cancel_interrupts_a_hugging_face_download_mid_file(local_env, tmp_path):
    """A stop (Ctrl-C, SIGTERM in start) while huggingface_hub streams a large file: the pull ends at the
    next piece huggingface_hub hands over (lowered from its 10 MiB to 1 MiB), not when the file is done;
    nothing at the final path."""
    import threading

    from syncbridge.errors import CancelledError

    data = os.urandom(32 * 1024 * 1024)
    with serve_hf() as hub:
        hub.add("org/big", {"big.safetensors": data})
        hub.trickle["big.safetensors"] = 0.005  # 64 KiB every 5 ms: a 1 MiB piece every ~0.08 s, 32 MiB in ~2.6 s
        environ = with_upstreams(local_env, hub)
        config = load_config(environ)
        m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
            [[model]]
            name = "big"
            path = "checkpoints/big.safetensors"
            hf = { repo = "org/big", file = "big.safetensors" }
            ''')
        cancel = threading.Event()
        got = []
        outcome: list[BaseException | object] = []

        def on_event(event) -> None:
            if event.kind == "bytes":
                got.append(event.bytes)
                cancel.set()  # at the first piece

        def run() -> None:
            try:
                outcome.append(pull_models(config, [m], environ=environ, cancel=cancel, on_event=on_event))
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        wait_for(cancel.is_set, 30, "the download to start")
        stopped = time.monotonic()
        worker.join(10)
        assert not worker.is_alive(), "the pull went on after the cancel"
        took = time.monotonic() - stopped
        assert not (tmp_path / "models/checkpoints/big.safetensors").exists()
        assert isinstance(outcome[0], CancelledError) or not outcome[0].ok, outcome
        from syncbridge.models.sources.hf import PROGRESS_PIECE

        # progress comes in pieces of 1 MiB (huggingface_hub's own 10 MiB showed nothing for a small
        # model on a slow link), and the cancel took effect at the next piece
        assert 0 < got[0] <= PROGRESS_PIECE and sum(got) <= 2 * PROGRESS_PIECE, got
        assert took < 1.6, f"{took:.2f}s after the cancel (the rest of the file takes about 1.8 s)"


def test_civitai_key_only_to_the_api_host(local_env, tmp_path):
    data = os.urandom(150_000)
    with serve_civitai(api_key=CIVITAI_KEY) as civ:
        civ.add(4242, "lora.safetensors", data)
        environ = with_upstreams(local_env, civ=civ)
        m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
            [[model]]
            name = "lora"
            path = "loras/lora.safetensors"
            civitai = { version_id = 4242 }
            ''')
        proc = run_cli(["models", "pull", str(m)], environ)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "models/loras/lora.safetensors").read_bytes() == data
        assert "civitai" in proc.stdout and "sha256" in proc.stdout
        assert_no_secret(proc.stdout, proc.stderr)
        api, storage = civ.api.requests, civ.storage.requests
        assert [q.path.split("?")[0] for q in api] == ["/api/v1/model-versions/4242", "/api/download/models/4242"]
        assert all(q.headers.get("Authorization") == f"Bearer {CIVITAI_KEY}" for q in api)
        assert storage and all("Authorization" not in q.headers for q in storage)
        for q in api + storage:
            assert CIVITAI_KEY not in q.path and all(CIVITAI_KEY not in v for k, v in q.headers.items()
                                                     if k != "Authorization")


def test_wrong_sha256_falls_through_to_the_next_source(local_env, tmp_path):
    data = os.urandom(120_000)
    with serve_hf() as hub, serve_civitai() as civ:
        hub.add("org/m", {"m.safetensors": data})
        hub.corrupt.add("m.safetensors")  # the CDN serves other bytes of the same size
        civ.add(7, "m.safetensors", data)
        environ = with_upstreams(local_env, hub, civ)
        config = load_config(environ)
        store = open_store(config.remote, state_dir=config.state_dir)
        # the cache holds a different object: its sha256 metadata gives it away before any download
        seed(store, "models/m.safetensors", os.urandom(120_000))
        m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
            [[model]]
            name = "m"
            path = "m.safetensors"
            sha256 = "{sha(data)}"
            hf = {{ repo = "org/m", file = "m.safetensors" }}
            civitai = {{ version_id = 7 }}
            ''')
        report = pull_models(config, [m], environ=environ)
        r = report.results[0]
        assert (r.status, r.source, r.verified) == ("pulled", "civitai", "sha256"), report.table()
        sources = [s for s, _ in r.attempts]
        assert sources == ["cache", "hf"]
        assert "offers sha256" in r.attempts[0][1] and "sha256 mismatch" in r.attempts[1][1]
        assert (tmp_path / "models/m.safetensors").read_bytes() == data
        assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".m.")]


def test_every_source_failing_lists_every_attempt(local_env, tmp_path, files_server):
    srv = files_server({})
    with serve_hf() as hub:
        environ = with_upstreams(local_env, hub)
        m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
            [[model]]
            name = "needed"
            path = "a.safetensors"
            hf = {{ repo = "org/none", file = "a.safetensors" }}
            url = "{srv.url}/a.safetensors"

            [[model]]
            name = "nice"
            path = "b.safetensors"
            optional = true
            url = "{srv.url}/b.safetensors"
            ''')
        proc = run_cli(["models", "pull", str(m)], environ)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "needed: cache:" in out and "needed: hf:" in out and "needed: url:" in out
    assert "optional_failed" in out and "warning: optional model nice is missing" in out
    assert "Traceback" not in out
    assert not (tmp_path / "models/a.safetensors").exists()
    # each failed attempt is told once on stderr (the progress line, not also its log record)
    assert proc.stderr.count("needed: hf failed:") == 1 and "warning: model needed: hf:" not in proc.stderr
    quiet = run_cli(["models", "pull", "-q", str(m)], environ)  # no progress: the log record tells it
    assert quiet.returncode == 1 and quiet.stderr.count("warning: model needed: url:") == 1


def test_interrupted_download_resumes_with_range(local_env, tmp_path, files_server):
    data = os.urandom(1_000_000)
    srv = files_server({"w.bin": data})
    srv.drops = 1
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "w"
        path = "w.bin"
        sha256 = "{sha(data)}"
        url = "{srv.url}/w.bin"
        ''')
    report = pull_models(load_config(local_env), [m], environ=local_env)
    assert report.ok, report.table()
    assert (tmp_path / "models/w.bin").read_bytes() == data
    gets = [q for q in srv.requests if q.method == "GET"]
    assert len(gets) == 2 and "Range" not in gets[0].headers
    assert gets[1].headers["Range"].startswith("bytes=") and gets[1].headers["Range"] != "bytes=0-"


def test_interrupted_run_never_leaves_a_partial_at_the_final_path(local_env, tmp_path, files_server):
    data = os.urandom(600_000)
    srv = files_server({"w.bin": data})
    srv.drops = 100  # every GET is cut off half way
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "w"
        path = "w.bin"
        size = {len(data)}
        url = "{srv.url}/w.bin"
        ''')
    config = load_config(local_env)
    report = pull_models(config, [m], environ=local_env)
    assert not report.ok and "connection lost" in report.table()
    assert not (tmp_path / "models/w.bin").exists()
    partial = tmp_path / "models/.w.bin.url.sbpart"
    assert partial.exists() and 0 < partial.stat().st_size < len(data)
    # the next run continues where the last one stopped
    srv.drops = 0
    kept = partial.stat().st_size
    report = pull_models(config, [m], environ=local_env)
    assert report.ok and (tmp_path / "models/w.bin").read_bytes() == data
    assert srv.requests[-1].headers.get("Range") == f"bytes={kept}-"
    assert not partial.exists()


def test_truncated_file_at_the_final_path_is_not_present(local_env, tmp_path, files_server):
    data = os.urandom(300_000)
    srv = files_server({"c.bin": data})
    target = tmp_path / "models/c.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data[:1000])  # what another tool left behind
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "c"
        path = "c.bin"
        sha256 = "{sha(data)}"
        url = "{srv.url}/c.bin"
        ''')
    report = pull_models(load_config(local_env), [m], environ=local_env)
    assert report.results[0].status == "pulled" and target.read_bytes() == data


def test_hash_cache_forgets_files_that_are_gone_or_changed(local_env, tmp_path):
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    blobs = {name: os.urandom(5000) for name in ("a", "b", "c")}
    for name, data in blobs.items():
        seed(store, f"models/{name}.bin", data)

    def entries(*names: str) -> str:
        return "".join(f'''
            [[model]]
            name = "{name}"
            path = "{name}.bin"
            sha256 = "{sha(blobs[name])}"
            ''' for name in names)

    models = tmp_path / "models"
    assert pull_models(config, [manifest(tmp_path / "m.toml", models, entries("a", "b", "c"))], environ=local_env).ok
    cache_file = config.state_dir / "models" / "hashes.json"
    assert set(json.loads(cache_file.read_text())) == {str(models / f"{n}.bin") for n in blobs}
    # a model taken out of the manifest and deleted, and a file changed by hand: neither entry can match again
    (models / "a.bin").unlink()
    (models / "b.bin").write_bytes(b"edited")
    report = pull_models(config, [manifest(tmp_path / "m2.toml", models, entries("b", "c"))], environ=local_env)
    assert report.ok and {r.name: r.status for r in report.results} == {"b": "pulled", "c": "present"}
    kept = json.loads(cache_file.read_text())
    assert set(kept) == {str(models / "b.bin"), str(models / "c.bin")}
    assert kept[str(models / "b.bin")][2] == sha(blobs["b"])


# -- planning, space, filtering -----------------------------------------------------------------


def test_dry_run_prints_the_plan_and_downloads_nothing(local_env, tmp_path, files_server):
    config = load_config(local_env)
    seed(open_store(config.remote, state_dir=config.state_dir), "models/a.bin", b"a" * 1000)
    srv = files_server({"b.bin": b"b" * 2000})
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "from-cache"
        path = "a.bin"
        url = "{srv.url}/a.bin"

        [[model]]
        name = "from-url"
        path = "b.bin"
        url = "{srv.url}/b.bin"
        ''')
    proc = run_cli(["models", "pull", "--dry-run", str(m)], local_env)
    assert proc.returncode == 0, proc.stderr
    assert "would pull from cache" in proc.stdout and "would pull from url" in proc.stdout
    assert "would download 3.0 KB;" in proc.stdout and "free in" in proc.stdout
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.bin"))
    assert all(q.method == "HEAD" for q in srv.requests)


def test_not_enough_disk_space_refuses_before_downloading(local_env, tmp_path, files_server):
    srv = files_server({"small.bin": b"x" * 1000})
    srv.head_size["huge.bin"] = 10**15
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "small"
        path = "small.bin"
        url = "{srv.url}/small.bin"

        [[model]]
        name = "huge"
        path = "huge.bin"
        url = "{srv.url}/huge.bin"
        ''')
    with pytest.raises(InsufficientSpaceError) as info:
        pull_models(load_config(local_env), [m], environ=local_env)
    assert "huge: 1000.0 TB from url" in str(info.value) and "nothing was downloaded" in str(info.value)
    assert [q.method for q in srv.requests] == ["HEAD", "HEAD"]
    proc = run_cli(["models", "pull", str(m)], local_env)
    assert proc.returncode == 1 and "not enough disk space" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*"))


def test_disk_space_on_a_tiny_tmpfs(local_env, tmp_path, files_server):
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        data = os.urandom(12 * 1024 * 1024)
        srv = files_server({"big.bin": data})
        m = manifest(tmp_path / "m.toml", small / "models", f'''
            [[model]]
            name = "big"
            path = "big.bin"
            url = "{srv.url}/big.bin"
            ''')
        with pytest.raises(InsufficientSpaceError, match="big: 12.6 MB"):
            pull_models(load_config(local_env), [m], environ=local_env)
        assert not any(small.rglob("*.bin*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_enabled_by_and_min_tier_with_a_fake_nvidia_smi(local_env, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 24576\necho 24576\n")  # two 24 GiB GPUs: 48 GiB, datacenter
    script.chmod(0o755)
    models = tmp_path / "models"
    models.mkdir()
    for name in ("a.bin", "b.bin", "c.bin"):
        (models / name).write_bytes(b"x")
    m = manifest(tmp_path / "m.toml", models, f'''
        [[model]]
        name = "sdxl"
        path = "a.bin"
        sha256 = "{sha(b"x")}"
        enabled_by = "ENABLE_SDXL"

        [[model]]
        name = "flux"
        path = "b.bin"
        sha256 = "{sha(b"x")}"
        min_tier = "datacenter"

        [[model]]
        name = "mid"
        path = "c.bin"
        sha256 = "{sha(b"x")}"
        min_tier = "prosumer"
        ''')
    env = dict(local_env, PATH=f"{fake}:{local_env['PATH']}", ENABLE_SDXL="true")
    out = run_cli(["models", "list", str(m)], env, check=True).stdout
    assert "present  sdxl" in out and "present  flux" in out and "present  mid" in out
    script.write_text("#!/bin/sh\necho 8192\n")  # 8 GiB: consumer
    env["ENABLE_SDXL"] = "false"
    out = run_cli(["models", "list", str(m)], env, check=True).stdout
    assert "skipped  sdxl" in out and "ENABLE_SDXL is not true" in out
    assert "skipped  flux" in out and "needs GPU tier datacenter, this pod is consumer" in out
    env["GPU_TIER"] = "prosumer"  # the setting wins over nvidia-smi
    out = run_cli(["models", "list", str(m)], env, check=True).stdout
    assert "present  mid" in out and "skipped  flux" in out


def test_unsafe_and_malformed_manifests_through_the_cli(local_env, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('[[model]]\nname = "x"\npath = "../../etc/x"\nurl = "https://h/x"\n\n'
                 '[[model]]\nname = "y"\npath = "/etc/passwd"\nurl = "https://h/y"\nsha256 = 12\n')
    proc = run_cli(["models", "pull", str(m)], local_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{m}:3: model 'x' key path: '../../etc/x' leaves models_dir" in proc.stderr
    assert f"{m}:8: model 'y' key path" in proc.stderr and f"{m}:10: model 'y' key sha256" in proc.stderr


def test_symlink_out_of_models_dir_is_refused(local_env, tmp_path, files_server):
    srv = files_server({"x.bin": b"data"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/escape").symlink_to(outside)
    m = manifest(tmp_path / "m.toml", tmp_path / "models", f'''
        [[model]]
        name = "x"
        path = "escape/x.bin"
        url = "{srv.url}/x.bin"
        ''')
    report = pull_models(load_config(local_env), [m], environ=local_env)
    assert report.results[0].status == "failed" and "outside" in report.table()
    assert not any(outside.iterdir())


# -- warm start ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_warm_start_makes_no_request(moto_s3, tmp_path):
    bucket = new_bucket(moto_s3)
    env = server_env(moto_s3, bucket, tmp_path)
    big = os.urandom(200_000)
    with serve_hf() as hub, serve_civitai(api_key=CIVITAI_KEY) as civ:
        hub.add("org/r", {"a.safetensors": big, "cfg.json": b"{}", "sub/t.bin": os.urandom(3000)})
        civ.add(11, "l.safetensors", os.urandom(90_000))
        environ = with_upstreams(env, hub, civ)
        lines = "".join(f'''
            [[model]]
            name = "n{i}"
            path = "many/n{i}.bin"
            size = 1
            ''' for i in range(200))
        m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
            [[model]]
            name = "a"
            path = "ckpt/a.safetensors"
            hf = { repo = "org/r", file = "a.safetensors" }

            [[model]]
            name = "cfg"
            path = "cfg/cfg.json"
            hf = { repo = "org/r", file = "cfg.json" }

            [[model]]
            name = "snap"
            path = "snap/r"
            hf = { repo = "org/r", snapshot = true, allow = ["*.json", "sub/*"] }

            [[model]]
            name = "l"
            path = "loras/l.safetensors"
            civitai = { version_id = 11 }
            ''' + lines, settings="write_back = true")
        many = tmp_path / "models/many"
        many.mkdir(parents=True)
        config = load_config(environ)
        store = open_store(config.remote, state_dir=config.state_dir)
        for i in range(200):
            seed(store, f"models/many/n{i}.bin", b"z")
        first = pull_models(config, [m], environ=environ)
        assert first.ok and {r.status for r in first.results} == {"pulled"}, first.table()
        counts = len(hub.requests), len(civ.requests)
        # the bucket is unreachable now: any request would fail the pull
        dead = dict(environ, R2_ENDPOINT="http://127.0.0.1:9")
        started = time.monotonic()
        warm = pull_models(load_config(dead), [m], environ=dead)
        elapsed = time.monotonic() - started
        assert warm.ok and {r.status for r in warm.results} == {"present"}, warm.table()
        assert (len(hub.requests), len(civ.requests)) == counts
        assert elapsed < 5, elapsed  # generous on a shared machine; benchmarks/bench_models.py measures it
        proc = run_cli(["models", "pull", str(m)], dead)
        assert proc.returncode == 0 and "204 present" in proc.stdout.replace("models: ", "")
        assert (len(hub.requests), len(civ.requests)) == counts
        # a snapshot file changed behind our back is no longer present
        (tmp_path / "models/snap/r/cfg.json").write_bytes(b"{ }")
        assert pull_models(load_config(environ), [m], environ=environ).results[2].source == "cache"
        assert (tmp_path / "models/snap/r/cfg.json").read_bytes() == b"{}"


# -- the cache: write-back races and seeding -------------------------------------------------------

_RACER = r"""
import json, os, sys
from syncbridge.config import load_config
from syncbridge.models import pull_models
env = dict(os.environ)
report = pull_models(load_config(env), [sys.argv[1]], environ=env)
r = report.results[0]
print(json.dumps({"status": r.status, "source": r.source, "write_back": r.write_back}))
"""


def _race(env_a, env_b, m_a, m_b):
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(m)], env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for e, m in ((env_a, m_a), (env_b, m_b))]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def test_two_pods_race_to_fill_the_same_cache_key(moto_s3, tmp_path):
    """moto enforces If-None-Match: exactly one pod's put wins, the other verifies and reports exists."""
    bucket = new_bucket(moto_s3)
    data = os.urandom(400_000)
    with serve_hf() as hub:
        hub.add("org/big", {"big.safetensors": data})
        body = '''
            [[model]]
            name = "big"
            path = "big.safetensors"
            hf = { repo = "org/big", file = "big.safetensors" }
            '''
        envs, mans = [], []
        for pod in ("a", "b"):
            env = with_upstreams(server_env(moto_s3, bucket, tmp_path / pod), hub)
            envs.append(env)
            mans.append(manifest(tmp_path / f"{pod}.toml", tmp_path / pod / "models", body,
                                 settings="write_back = true"))
        results = _race(envs[0], envs[1], mans[0], mans[1])
    assert [r["status"] for r in results] == ["pulled", "pulled"]
    outcomes = sorted(r["write_back"] for r in results if r["source"] == "hf")
    assert outcomes.count("pushed") <= 1 and all(o in ("pushed", "exists") for o in outcomes)
    assert sum(r["write_back"] == "pushed" for r in results) == 1
    config = load_config(envs[0])
    info = open_store(config.remote, state_dir=config.state_dir).head("models/big.safetensors")
    assert info.size == len(data) and {k.lower(): v for k, v in info.metadata.items()}["sha256"] == sha(data)
    for pod in ("a", "b"):
        assert (tmp_path / pod / "models/big.safetensors").read_bytes() == data


def test_two_pullers_sharing_a_models_folder_download_once(local_env, tmp_path):
    """Models from 16 MiB on are locked per path (smaller ones are cheaper to fetch twice than to lock)."""
    data = os.urandom(17 * 1024 * 1024)
    with serve_hf() as hub:
        hub.add("org/big", {"big.safetensors": data})
        env = with_upstreams(local_env, hub)
        m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
            [[model]]
            name = "big"
            path = "big.safetensors"
            hf = { repo = "org/big", file = "big.safetensors" }
            ''')
        env_b = dict(env, SYNCBRIDGE_STATE_DIR=str(tmp_path / "state-b"))
        results = _race(env, env_b, m, m)
        assert sorted(r["status"] for r in results) in (["present", "pulled"], ["pulled", "pulled"])
        assert len([q for q in hub.cdn.requests if q.method == "GET"]) == 1
    assert (tmp_path / "models/big.safetensors").read_bytes() == data


def test_cache_push_seeds_the_bucket(env, tmp_path):
    models = tmp_path / "models"
    (models / "vae").mkdir(parents=True)
    a, b = os.urandom(70_000), os.urandom(1000)
    (models / "vae/a.safetensors").write_bytes(a)
    (models / "b.bin").write_bytes(b)
    m = manifest(tmp_path / "m.toml", models, f'''
        [[model]]
        name = "a"
        path = "vae/a.safetensors"
        sha256 = "{sha(a)}"

        [[model]]
        name = "b"
        path = "b.bin"

        [[model]]
        name = "missing"
        path = "nope.bin"
        ''')
    proc = run_cli(["models", "cache", "push", str(m)], env)
    assert proc.returncode == 0, proc.stderr
    assert "a        pushed" in proc.stdout and "b        pushed" in proc.stdout and "not present" in proc.stdout
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    info = store.head("models/vae/a.safetensors")
    assert {k.lower(): v for k, v in info.metadata.items()}["sha256"] == sha(a)
    report = push_cache(config, [m])
    assert [r.write_back for r in report.results[:2]] == ["exists", "exists"]
    # another object under the same key is a conflict, never overwritten
    store.delete("models/b.bin")
    seed(store, "models/b.bin", b"other")
    report = push_cache(config, [m])
    assert not report.ok and report.results[1].write_back.startswith("conflict")
    assert store.get_bytes("models/b.bin")[0] == b"other"


def test_many_small_models_come_in_one_batch_and_are_still_verified(env, tmp_path, files_server, caplog):
    """From 16 missing models on: one cache listing, one rclone batch; each file still verified on its own."""
    _batch_scenario(env, tmp_path, files_server, caplog)


def test_batch_from_the_local_bucket(local_env, tmp_path, files_server, caplog):
    _batch_scenario(local_env, tmp_path, files_server, caplog)


def _batch_scenario(env, tmp_path, files_server, caplog):
    caplog.set_level("INFO", logger="syncbridge.models")
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    blobs = {f"emb/e{i:02d}.pt": os.urandom(3000 + i) for i in range(20)}
    for rel, data in blobs.items():
        seed(store, f"models/{rel}", data, with_sha=False)
    good = blobs["emb/e07.pt"]
    store.put_bytes("models/emb/e07.pt", os.urandom(len(good)))  # wrong bytes in the cache for this one
    srv = files_server({"e07.pt": good})
    body = "".join(f'''
        [[model]]
        name = "{rel}"
        path = "{rel}"
        sha256 = "{sha(data)}"
        ''' + (f'url = "{srv.url}/e07.pt"\n' if rel == "emb/e07.pt" else "") for rel, data in blobs.items())
    m = manifest(tmp_path / "m.toml", tmp_path / "models", body)
    report = pull_models(config, [m], environ=env)
    assert report.ok, report.table()
    by = {r.name: r for r in report.results}
    assert by["emb/e07.pt"].source == "url" and "sha256 mismatch" in by["emb/e07.pt"].attempts[0][1]
    assert {r.source for n, r in by.items() if n != "emb/e07.pt"} == {"cache"}
    assert "batch copy of 20 small models from the cache" in caplog.text
    for rel, data in blobs.items():
        assert (tmp_path / "models" / rel).read_bytes() == data
    assert not (tmp_path / "models/.syncbridge").exists() or not list((tmp_path / "models/.syncbridge").glob("batch-*"))


def test_an_edited_manifest_is_read_again(local_env, tmp_path, files_server):
    srv = files_server({"a.bin": b"a" * 100, "b.bin": b"b" * 100})
    one = '''
        [[model]]
        name = "a"
        path = "a.bin"
        url = "URL/a.bin"
        '''.replace("URL", srv.url)
    m = manifest(tmp_path / "m.toml", tmp_path / "models", one)
    config = load_config(local_env)
    assert [r.name for r in pull_models(config, [m], environ=local_env).results] == ["a"]
    manifest(m, tmp_path / "models", one + one.replace('"a', '"b'))
    assert [r.name for r in pull_models(config, [m], environ=local_env).results] == ["a", "b"]


def test_progress_bars_on_a_tty_and_lines_otherwise():
    import io

    from syncbridge.cli.progress import ModelsProgress
    from syncbridge.models import ModelEvent

    tty = io.StringIO()
    bars = ModelsProgress(stream=tty, tty=True)
    bars(ModelEvent("plan", "vae", source="cache", total=1000))
    bars(ModelEvent("start", "vae", source="cache", total=1000))
    bars(ModelEvent("bytes", "vae", bytes=500))
    bars(ModelEvent("done", "vae", source="cache", message="pulled"))
    bars.close()
    assert "vae" in tty.getvalue() and "total" in tty.getvalue() and "#" in tty.getvalue()
    log = io.StringIO()
    lines = ModelsProgress(stream=log, tty=False, interval=0.0)
    lines(ModelEvent("start", "vae", source="hf", total=2000))
    lines(ModelEvent("bytes", "vae", bytes=1000))
    lines(ModelEvent("attempt_failed", "vae", source="hf", message="sha256 mismatch"))
    text = log.getvalue()
    assert "[syncbridge] vae: hf 50%" in text and "vae: hf failed: sha256 mismatch" in text
    assert "\x1b[" not in text
    assert " ETA " in tty.getvalue() and " ETA " in text  # half done: as long again at the same speed


def test_eta():
    from syncbridge.cli.progress import _eta

    assert _eta(500, 1000, 10.0) == " ETA 50s"
    assert _eta(0, 10_000, 100.0) == " ETA 1m40s"
    assert _eta(1000, 1000, 10.0) == _eta(5, 0, 1.0) == _eta(5, 10, 0.0) == ""


def test_large_cache_object_by_ranged_gets_with_progress(env, tmp_path):
    """The default ladder: objects from 64 MiB on come as parallel ranged GETs, hashed in order as they land."""
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    data = os.urandom(1024 * 1024) * 70  # 70 MiB
    seed(store, "models/checkpoints/xl.safetensors", data)
    m = manifest(tmp_path / "m.toml", tmp_path / "models", '''
        [[model]]
        name = "xl"
        path = "checkpoints/xl.safetensors"
        ''')
    events = []
    report = pull_models(config, [m], environ=env, on_event=events.append)
    r = report.results[0]
    assert (r.status, r.source, r.verified) == ("pulled", "cache", "sha256"), report.table()
    assert sha((tmp_path / "models/checkpoints/xl.safetensors").read_bytes()) == sha(data)
    assert sum(e.bytes for e in events if e.kind == "bytes") == len(data)
    assert sorted(p.name for p in (tmp_path / "models/checkpoints").iterdir()) == ["xl.safetensors"]
