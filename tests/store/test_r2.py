"""R2 as it really answers: every mistake a user makes with R2 settings, through every command that can
meet it, on Cloudflare's own local R2 (tests/r2server.py). Each must end in a message naming the setting
to fix, a non-zero exit, no traceback, no secret, and nothing done that the user would regret (no app
started, no silent upstream download standing in for the cache).

| mistake            | what R2 answers                  | the user reads              |
|--------------------|----------------------------------|-----------------------------|
| unknown access key | 401 Unauthorized (HEAD: bare 401) | R2_ACCESS_KEY               |
| wrong secret       | 403 SignatureDoesNotMatch        | R2_SECRET_KEY               |
| missing bucket     | 404 NoSuchBucket (HEAD: bare 404) | R2_BUCKET                   |
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.diagnose import diagnose, diagnose_text
from syncbridge.errors import StoreError
from syncbridge.models import pull_models
from syncbridge.store import S3Store, open_store
from syncbridge.watch import OutputWatcher, WatchError

from ..conftest import assert_no_secret, new_bucket, run_cli, server_env
from ..hfserver import serve_hf

MISTAKES = {
    "unknown-access-key": ({"R2_ACCESS_KEY": "sbNOSUCHaccesskey01"}, "R2_ACCESS_KEY",
                           "the endpoint does not know this access key"),
    "wrong-secret": ({"R2_SECRET_KEY": "sbWRONGsecret-000000000000000"}, "R2_SECRET_KEY",
                     "the secret does not match the access key"),
    "missing-bucket": ({"R2_BUCKET": "sb-no-such-bucket"}, "R2_BUCKET", "the bucket does not exist"),
}


@pytest.fixture(params=list(MISTAKES))
def mistake(request, r2_s3, tmp_path):
    """A template's environment pointing at R2's emulator, with one mistake in it."""
    change, setting, words = MISTAKES[request.param]
    env = {**server_env(r2_s3, new_bucket(r2_s3), tmp_path), **change}
    return env, setting, words


def _clean(proc: subprocess.CompletedProcess, *secrets: str) -> str:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert_no_secret(proc.stdout, proc.stderr)
    for secret in secrets:
        assert secret not in text
    return text


def test_doctor(mistake) -> None:
    env, setting, words = mistake
    proc = run_cli(["doctor"], env)
    text = _clean(proc, env["R2_SECRET_KEY"])
    assert proc.returncode == 1
    assert f"[FAIL] bucket access: listing '{env['R2_BUCKET']}': {words}" in text, text
    assert "fix: " in text and setting in text.split("[FAIL] bucket access", 1)[1]


def test_start_stops_before_anything_runs(mistake, tmp_path) -> None:
    env, setting, words = mistake
    marker = tmp_path / "app-ran"
    env = {**env, "ENABLE_R2_SYNC": "true"}
    proc = run_cli(["start", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"], env, timeout=60)
    text = _clean(proc, env["R2_SECRET_KEY"])
    assert proc.returncode == 1, text
    assert "bucket: bucket access:" in text and words in text and setting in text, text
    assert "SYNCBRIDGE_ON_BUCKET_FAILURE" in text
    assert not marker.exists(), "the app ran though the bucket is not usable"


def test_start_with_warn_runs_the_app_keeps_the_outputs_and_exits_1(r2_s3, tmp_path) -> None:
    """The user chose to run without the bucket: the app runs, its outputs wait in the journal, and the
    exit status says they were not pushed (it was 0, with one error per output)."""
    env = {**server_env(r2_s3, new_bucket(r2_s3), tmp_path), "R2_SECRET_KEY": "sbWRONGsecret-000000000000000",
           "ENABLE_R2_SYNC": "true", "SYNCBRIDGE_ON_BUCKET_FAILURE": "warn"}
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    script = (f"import pathlib, time\nfor i in range(3):\n    pathlib.Path({str(out)!r}, f'img_{{i}}.png').write_bytes(b'x' * 100)\n"
              f"time.sleep(1.5)\n")
    proc = run_cli(["start", "--", sys.executable, "-c", script], env, timeout=60)
    text = _clean(proc, env["R2_SECRET_KEY"])
    assert proc.returncode == 1, text
    assert "going on without it (SYNCBRIDGE_ON_BUCKET_FAILURE=warn)" in text
    assert "outputs were not pushed" in text
    status = run_cli(["status", "--json"], env)
    assert '"failed": 3' in status.stdout, status.stdout


def test_watch_refuses_to_start(mistake, tmp_path) -> None:
    env, setting, words = mistake
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    proc = run_cli(["watch", str(out)], env, timeout=30)
    text = _clean(proc, env["R2_SECRET_KEY"])
    assert proc.returncode != 0 and words in text and setting in text, text


def test_the_library_says_which_setting(mistake) -> None:
    env, setting, words = mistake
    config = load_config(env)
    with pytest.raises(WatchError) as refused:
        OutputWatcher(config).start()
    assert refused.value.setting == setting and words in str(refused.value)
    store = open_store(config.remote, state_dir=config.state_dir, max_attempts=1)
    try:
        with pytest.raises(StoreError) as exc:
            store.put_bytes("outputs/x.png", b"x")
    finally:
        store.close()
    assert exc.value.setting == setting and not exc.value.retryable


def test_models_pull_names_the_setting_instead_of_going_upstream_quietly(mistake, tmp_path) -> None:
    """Before, a wrong key quietly downloaded everything from upstream, printed `write-back failed:
    ... 401` among the results and exited 0: the cache never filled and nothing said why."""
    env, setting, words = mistake
    data = os.urandom(50_000)
    with serve_hf() as hub:
        hub.add("org/m", {"a.safetensors": data})
        env = {**env, "HF_ENDPOINT": hub.url}
        manifest = tmp_path / "models.toml"
        manifest.write_text(f'[settings]\nmodels_dir = "{tmp_path / "models"}"\nwrite_back = true\n'
                            f'[[model]]\nname = "a"\npath = "a.safetensors"\n'
                            f'hf = {{ repo = "org/m", file = "a.safetensors" }}\n')
        proc = run_cli(["models", "pull", str(manifest)], env, timeout=120)
        text = _clean(proc, env["R2_SECRET_KEY"])
        assert proc.returncode == 1, text
        assert "the bucket cache refused access" in text and words in text and setting in text, text
        assert (tmp_path / "models" / "a.safetensors").read_bytes() == data  # the model is in place all the same
        # the library: the report carries it (a second pod, with nothing on disk yet)
        second = tmp_path / "second.toml"
        second.write_text(manifest.read_text().replace(str(tmp_path / "models"), str(tmp_path / "models2")))
        report = pull_models(load_config(env), [second])
        assert report.cache_setting == setting and report.ok


def test_r2_answers_are_the_table_rows(r2_s3, tmp_path) -> None:
    """What the emulator answers for each mistake, as the store sees it (R2's codes, not AWS's)."""
    seen = {}
    for name, (change, setting, _words) in MISTAKES.items():
        env = {**server_env(r2_s3, new_bucket(r2_s3), tmp_path), **change}
        store = S3Store(load_config(env).remote, max_attempts=1)
        try:
            with pytest.raises(StoreError) as listing:
                store.check_bucket()
            head = None
            try:
                store.head("k")
            except StoreError as exc:
                head = exc
        finally:
            store.close()
        seen[name] = (listing.value.status, listing.value.code, head.status if head else None)
        assert listing.value.setting == setting
    assert seen == {
        "unknown-access-key": (401, "Unauthorized", 401),  # never InvalidAccessKeyId on R2
        "wrong-secret": (403, "SignatureDoesNotMatch", 403),
        "missing-bucket": (404, "NoSuchBucket", None),  # a HEAD's bare 404 reads as "no such object"
    }, seen


def test_a_header_r2_refuses_is_called_a_syncbridge_bug(r2_s3, tmp_path) -> None:
    """A header R2 does not implement (here KMS encryption) is 501 NotImplemented naming it: our bug, not the
    user's settings, and said so."""
    config = load_config(server_env(r2_s3, new_bucket(r2_s3), tmp_path))
    store = S3Store(config.remote, max_attempts=1)
    try:
        with pytest.raises(StoreError) as exc:
            store._call("put", "k", store.client.put_object, Key="k", Body=b"x",
                        ServerSideEncryption="aws:kms")
    finally:
        store.close()
    assert exc.value.code == "NotImplemented" and exc.value.setting is None and not exc.value.retryable
    assert "a bug in syncbridge" in str(exc.value) and "x-amz-server-side-encryption" in str(exc.value)


def test_an_expired_presigned_url_is_expired_request(r2_s3, tmp_path) -> None:
    config = load_config(server_env(r2_s3, new_bucket(r2_s3), tmp_path))
    store = S3Store(config.remote)
    try:
        store.put_bytes("k.png", b"data")
        url = store.presign_get("k.png", expires=1)
    finally:
        store.close()
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"data"
    time.sleep(2.1)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url, timeout=10)
    body = exc.value.read().decode()
    assert exc.value.code == 403 and "<Code>ExpiredRequest</Code>" in body
    found = diagnose("ExpiredRequest", 403)
    assert found.setting == "SYNCBRIDGE_PRESIGN_SECONDS" and found.fatal


def test_rclone_cannot_use_the_emulator_and_says_why(r2_s3, tmp_path) -> None:
    """The emulator's limit, not R2's: the Workers runtime rewrites Accept-Encoding, which rclone signs.
    This is why rclone's paths (push, pull, bisync, the models batch) are tested on the other two."""
    env = server_env(r2_s3, new_bucket(r2_s3), tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("x")
    proc = run_cli(["push", str(src), "p"], env, timeout=60)
    text = _clean(proc, env["R2_SECRET_KEY"])
    assert proc.returncode != 0 and "(rclone exit 1, fatal)" in text, text
    # boto3 lists the bucket with the same keys (the pre-check passes); rclone's HEAD is refused bare
    assert "rclone took the prefix for a file" in text and "syncbridge doctor" in text, text


def test_rclone_log_lines_are_read_with_the_same_table() -> None:
    line = ("NOTICE: Failed to lsjson: operation error S3: ListObjects, https response error StatusCode: 403, "
            "RequestID: , HostID: , api error SignatureDoesNotMatch: The request signature ...")
    assert diagnose_text([line]).setting == "R2_SECRET_KEY"
    assert diagnose_text(["StatusCode: 404, api error NoSuchBucket: The specified bucket"]).setting == "R2_BUCKET"
    assert diagnose_text(["https response error StatusCode: 401, RequestID: , HostID: , api error Unauthorized"]
                         ).setting == "R2_ACCESS_KEY"
    assert diagnose_text(["x509: certificate signed by unknown authority"]).setting == "SYNCBRIDGE_CA_BUNDLE"
    assert diagnose_text(["Failed to copy: read: connection reset by peer"]) is None
    assert diagnose("SlowDown", 503).fatal is False and diagnose(None, 500).fatal is False
    assert diagnose("RequestTimeTooSkewed", 403).setting == "the system clock"


@pytest.mark.slow
def test_watcher_kill_9_and_restart_on_r2(r2_s3, tmp_path) -> None:
    """The watcher's crash safety on R2's own answers: a `kill -9` mid-burst, a restart, every file in the
    bucket once, nothing that was already there uploaded again (the journal's ETag proof)."""
    env = server_env(r2_s3, new_bucket(r2_s3), tmp_path)
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    files = {}
    for i in range(20):
        data = os.urandom(3000 + i)
        files[f"first/img_{i:03d}.png"] = data
        (out / "first").mkdir(exist_ok=True)
        (out / f"first/img_{i:03d}.png").write_bytes(data)
    proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "watch", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(store.list("outputs/first/"))) < 20:
            time.sleep(0.1)
        etags = {o.key: (o.etag, o.last_modified) for o in store.list("outputs/")}
        assert len(etags) == 20
        for i in range(20):
            data = os.urandom(2000 + i)
            files[f"second/img_{i:03d}.png"] = data
            (out / "second").mkdir(exist_ok=True)
            (out / f"second/img_{i:03d}.png").write_bytes(data)
        proc.kill()
        proc.wait(10)
        time.sleep(1.1)  # Last-Modified has one-second steps: a re-upload would show
        proc = subprocess.Popen([sys.executable, "-m", "syncbridge", "watch", str(out)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(store.list("outputs/"))) < 40:
            time.sleep(0.1)
        time.sleep(0.5)
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        got = {o.key: store.get_bytes(o.key)[0] for o in store.list("outputs/")}
        assert got == {f"outputs/{rel}": data for rel, data in files.items()}
        again = [k for k, (etag, modified) in etags.items()
                 if next(o for o in store.list(k)).last_modified != modified]
        assert not again, f"uploaded again after the restart: {again}"
        assert all(hashlib.md5(files[k.removeprefix('outputs/')]).hexdigest() == e for k, (e, _m) in etags.items())
    finally:
        if proc.poll() is None:
            proc.kill()
        store.close()
