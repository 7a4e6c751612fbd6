"""The job scope on one long-lived watcher (real inotify, moto's server): which files are the job's,
what wait() says, the job prefix, s3Config checks; and the job input's checks (pure)."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.errors import JobError, WatchError
from syncbridge.jobs.comfy import fetch_image
from syncbridge.jobs.request import parse_input
from syncbridge.jobs.scope import JobBucket, job_prefix
from syncbridge.watch import OutputWatcher

from ..conftest import SECRET_KEY, new_bucket, server_env


@pytest.fixture
def running(moto_s3, tmp_path):
    env = server_env(moto_s3, new_bucket(moto_s3), tmp_path)
    env["SYNCBRIDGE_HEARTBEAT_SECONDS"] = "0"
    out = Path(env["COMFYUI_OUTPUT_DIR"])
    out.mkdir(parents=True)
    config = load_config(env)
    with OutputWatcher(config) as watcher:
        yield watcher, out


def test_only_files_finished_inside_the_scope_are_the_jobs(running):
    watcher, out = running
    (out / "before.png").write_bytes(b"before")  # finished before the scope: its event may still be queued
    with watcher.job("j1") as job:
        (out / "sub").mkdir()
        (out / "sub" / "in.png").write_bytes(b"inside")
        (out / "in2.webp").write_bytes(b"inside too")
        outputs = job.wait(20)
        (out / "after.png").write_bytes(b"after")  # the scope is closed: the watcher's own prefix
    assert sorted(o.path for o in outputs) == ["in2.webp", "sub/in.png"]
    assert {o.key for o in outputs} == {"outputs/jobs/j1/sub/in.png", "outputs/jobs/j1/in2.webp"}
    assert watcher.wait_idle(20)
    store = watcher.store
    assert store.get_bytes("outputs/before.png")[0] == b"before"
    assert store.get_bytes("outputs/after.png")[0] == b"after"
    assert store.head("outputs/jobs/j1/before.png") is None and store.head("outputs/jobs/j1/after.png") is None
    for o in outputs:
        assert o.checksum.startswith("md5:") and o.url and "X-Amz-Signature" in o.url


def test_an_output_written_before_the_scope_is_added_under_the_jobs_prefix(running):
    """ComfyUI answers a prompt it ran before from its cache: /history names files an earlier job wrote."""
    watcher, out = running
    (out / "cached.png").write_bytes(b"from an earlier run")
    assert watcher.wait_idle(20)
    with watcher.job("again") as job:
        assert job.add("cached.png") and not job.add("missing.png")
        (out.parent / "beside.png").write_bytes(b"not an output")  # a name that leaves the folder is no output
        assert not job.add("../beside.png") and not job.add(str(out.parent / "beside.png"))
        assert not job.add("./cached.png") and not job.add("sub//x.png")
        outputs = job.wait(20)
    assert [(o.path, o.key) for o in outputs] == [("cached.png", "outputs/jobs/again/cached.png")]
    assert watcher.store.get_bytes("outputs/jobs/again/cached.png")[0] == b"from an earlier run"
    assert watcher.store.get_bytes("outputs/cached.png")[0] == b"from an earlier run"  # the first push stays


def test_one_scope_at_a_time(running):
    watcher, _ = running
    with watcher.job("first"):
        with pytest.raises(WatchError, match="one job at a time"):
            watcher.job("second").open()
    with watcher.job("second"):  # once the first is closed
        pass


def test_wait_names_an_output_still_being_written_when_time_is_up(running):
    watcher, out = running
    with watcher.job("slow") as job:
        (out / "done.png").write_bytes(b"ok")
        fh = open(out / "growing.mp4", "wb")  # ffmpeg still writing: no close event yet
        fh.write(b"x" * 1000)
        fh.flush()
        job.add("growing.mp4")  # as if /history reported it
        with pytest.raises(JobError) as caught:
            job.wait(1.5)
        fh.close()
    assert caught.value.kind == "not_pushed"
    assert [d["path"] for d in caught.value.details] == ["growing.mp4"]
    assert "growing.mp4" in str(caught.value)


def test_a_file_rewritten_during_the_job_ends_as_its_last_version(running):
    watcher, out = running
    with watcher.job("rw") as job:
        path = out / "clip.mp4"
        path.write_bytes(b"first pass")

        def second_pass() -> None:
            time.sleep(0.3)
            path.write_bytes(b"second pass, with metadata")  # VideoHelperSuite's rewrite of the same path
        thread = threading.Thread(target=second_pass)
        thread.start()
        thread.join()
        outputs = job.wait(20)
    assert [o.path for o in outputs] == ["clip.mp4"]
    assert watcher.store.get_bytes(outputs[0].key)[0] == b"second pass, with metadata"
    assert outputs[0].size == len(b"second pass, with metadata")


def _write_like_ffmpeg(path: Path, data: bytes, *, header: bytes | None = None, pause: float = 0.02) -> bytes:
    """ffmpeg: the final name written in pieces over time, then (mp4) back to the start to fix the header."""
    with open(path, "wb") as fh:
        for i in range(0, len(data), 1 << 20):
            fh.write(data[i:i + (1 << 20)])
            fh.flush()
            time.sleep(pause)
        if header is not None:
            fh.seek(8)
            fh.write(header)
    return path.read_bytes()


def test_a_growing_video_is_sent_as_written_and_its_rewritten_header_again(running, caplog):
    watcher, out = running
    caplog.set_level(logging.DEBUG, logger="syncbridge.watch.early")
    data = os.urandom(20 * (1 << 20) + 12345)  # two full 8 MiB parts while written, the rest at the close
    with watcher.job("vid") as job:
        final = _write_like_ffmpeg(out / "clip.mp4", data, header=b"moov-size-fixed")
        outputs = job.wait(30)
    assert [o.path for o in outputs] == ["clip.mp4"]
    assert watcher.store.get_bytes(outputs[0].key)[0] == final != data
    assert outputs[0].checksum == "sha256:" + hashlib.sha256(final).hexdigest()
    done = [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "watch.tail_done"]
    assert done and "2 parts sent as it was written, 1 sent again at its close" in done[0], done


def test_a_growing_file_replaced_midway_is_uploaded_as_it_ends(running):
    watcher, out = running
    with watcher.job("repl") as job:
        path = out / "clip.webm"
        _write_like_ffmpeg(path, os.urandom(9 * (1 << 20)))  # one part sent early...
        time.sleep(0.2)
        other = out / ".clip.tmp"
        other.write_bytes(b"the real clip")
        os.replace(other, path)  # ...then another file takes the name
        outputs = job.wait(30)
    assert [o.path for o in outputs] == ["clip.webm"]
    assert watcher.store.get_bytes(outputs[0].key)[0] == b"the real clip"


def test_job_prefix_template():
    assert job_prefix("{prefix}/jobs/{job_id}", prefix="outputs", job_id="abc-1", pod_id="p") == "outputs/jobs/abc-1"
    assert job_prefix("runs/{pod_id}/{job_id}", prefix="o", job_id="a/../b", pod_id="p") == "runs/p/a-..-b"
    with pytest.raises(JobError, match="job_id"):
        job_prefix("{prefix}/fixed", prefix="o", job_id="x", pod_id="p")
    with pytest.raises(JobError, match="cannot be part of a key"):
        job_prefix("{prefix}/{job_id}", prefix="o", job_id="///", pod_id="p")


def test_bad_settings_are_named(local_env):
    with pytest.raises(Exception, match="SYNCBRIDGE_JOB_KEY"):
        load_config({**local_env, "SYNCBRIDGE_JOB_KEY": "outputs/fixed"})
    with pytest.raises(Exception, match="COMFYUI_URL"):
        load_config({**local_env, "COMFYUI_URL": "localhost:8188"})


def test_s3config_problems_are_named_as_the_request_names_them(local_env):
    base = load_config(local_env)
    with pytest.raises(JobError, match="accessSecret") as caught:
        JobBucket.from_s3_config({"endpointUrl": "https://x.r2.cloudflarestorage.com", "accessId": "a",
                                  "bucketName": "b-1"}, base=base)
    assert caught.value.kind == "bucket"
    with pytest.raises(JobError, match="s3Config.bucketName") as caught:
        JobBucket.from_s3_config({"endpointUrl": "https://x.r2.cloudflarestorage.com", "accessId": "a",
                                  "accessSecret": SECRET_KEY, "bucketName": "Not A Bucket"}, base=base)
    assert SECRET_KEY not in str(caught.value) and SECRET_KEY not in repr(caught.value.details)
    bucket = JobBucket.from_s3_config({"endpointUrl": "https://x.r2.cloudflarestorage.com/", "accessId": "a",
                                       "accessSecret": SECRET_KEY, "bucketName": "b-1"}, base=base)
    assert SECRET_KEY not in repr(bucket) and bucket.remote.provider == "Cloudflare"


@pytest.mark.parametrize("job_input, field", [
    (None, "input"),
    ({}, "input.workflow"),
    ({"workflow": {"nodes": []}}, "UI format"),
    ({"workflow": {"1": {"inputs": {}}}}, "input.workflow['1']"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": {}}, "input.images"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "a/b.png", "image": "aGk="}]}, "images[0].name"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": ".x", "image": "aGk="}]}, "images[0].name"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "a.png", "image": "not base64!"}]},
     "images[0].image"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "a.png", "image": "https://e.com/a.png"}]},
     "base64 images only"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "a.png", "image": "aGk="},
                                                         {"name": "a.png", "image": "aGk="}]}, "twice"),
    ({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "a.png",
                                                          "image": base64.b64encode(b"x" * 2000).decode()}]},
     "larger than"),
])
def test_job_input_problems_name_the_field(job_input, field):
    with pytest.raises(JobError, match=field.replace("[", r"\[").replace("]", r"\]")) as caught:
        parse_input(job_input, allow_urls=False, max_bytes=1000)
    assert caught.value.kind == "input"


def test_an_image_url_is_fetched_only_where_allowed(tmp_path):
    import http.server

    class Serve(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            body = b"pixels" * (1000 if self.path == "/big.png" else 1)
            if self.path == "/moved.png":
                self.send_response(302)
                self.send_header("Location", "/ok.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(JobError, match=r"input.images\[0\].image: .*loopback.*SYNCBRIDGE_JOB_IMAGE_PRIVATE"):
            fetch_image(f"{base}/ok.png", max_bytes=1000, allow_private=False, field="input.images[0].image")
        assert fetch_image(f"{base}/ok.png", max_bytes=1000, allow_private=True, field="f") == b"pixels"
        with pytest.raises(JobError, match="larger than"):
            fetch_image(f"{base}/big.png", max_bytes=1000, allow_private=True, field="f")
        with pytest.raises(JobError, match="302.*redirects are not followed"):
            fetch_image(f"{base}/moved.png", max_bytes=1000, allow_private=True, field="f")
    finally:
        server.shutdown()
        server.server_close()


def test_job_input_accepted():
    request = parse_input({"workflow": {"prompt": {"3": {"class_type": "SaveImage", "inputs": {}}}},
                           "images": [{"name": "in.png", "image": "data:image/png;base64,aGk="},
                                      {"name": "u.png", "image": "https://example.com/u.png"}]},
                          allow_urls=True, max_bytes=1000)
    assert list(request.workflow) == ["3"]
    assert request.images[0].data == b"hi" and request.images[1].url == "https://example.com/u.png"
    with pytest.raises(JobError, match="only https"):
        parse_input({"workflow": {"1": {"class_type": "A"}}, "images": [{"name": "u.png",
                                                                        "image": "http://example.com/u"}]},
                    allow_urls=True, max_bytes=1000)


def test_a_rewrite_never_clobbers_another_object_in_a_jobs_bucket_that_ignores_if_match(running, tmp_path):
    """The watcher's bucket enforces conditional writes (moto), the job's own does not (rclone serve s3): a
    rewrite of a job's output whose object someone else replaced meanwhile keeps theirs (a sibling key)."""
    from syncbridge.demo.localserver import serve_rclone_s3
    from syncbridge.store import open_store

    watcher, out = running
    with serve_rclone_s3(tmp_path / "job-s3", access_key="sbJOBaccessIDra01", secret_key="sbJOBsecret-ra-77c1") \
            as other:
        other.create_bucket("job-bucket")
        s3config = {"endpointUrl": other.endpoint, "accessId": "sbJOBaccessIDra01",
                    "accessSecret": "sbJOBsecret-ra-77c1", "bucketName": "job-bucket"}
        theirs = open_store(load_config({**os.environ, **other.environ("job-bucket"),
                                         "SYNCBRIDGE_STATE_DIR": str(tmp_path / "s2")}).remote,
                            state_dir=tmp_path / "s2")
        with watcher.job("cas", bucket=s3config) as job:
            path = out / "img.png"
            path.write_bytes(b"ours, first")
            first = job.next_landed(20)
            assert first is not None and first.key == "outputs/jobs/cas/img.png"
            theirs.put_bytes(first.key, b"someone else's object")  # replaced in the bucket behind our back
            time.sleep(1.1)  # past the key spacing
            path.write_bytes(b"ours, rewritten")
            outputs = job.wait(20)
        assert theirs.get_bytes("outputs/jobs/cas/img.png")[0] == b"someone else's object"
        assert [o.path for o in outputs] == ["img.png"] and outputs[0].key != "outputs/jobs/cas/img.png"
        assert theirs.get_bytes(outputs[0].key)[0] == b"ours, rewritten"


def test_a_failed_look_before_completing_a_growing_files_upload_leaves_no_multipart_upload(running, moto_s3):
    """A job's own bucket (no conditional writes probed: a HEAD before completing) answering 503 to that HEAD:
    the file is pushed on the next try, and the multipart upload sent while it was written is aborted, not
    left in the bucket (R2 bills its parts until it drops them after days)."""
    import boto3
    from botocore.config import Config as BotoConfig

    from ..faultproxy import FaultProxy, Rule

    watcher, out = running
    name = new_bucket(moto_s3)
    with FaultProxy(moto_s3.endpoint) as proxy:
        proxy.add(Rule("error", method="HEAD", path=r"clip\.mp4", status=503, code="ServiceUnavailable", times=1))
        s3config = {"endpointUrl": proxy.endpoint, "accessId": "sbJOBaccessIDra02",
                    "accessSecret": "sbJOBsecret-ra-9d3e", "bucketName": name}
        with watcher.job("mp", bucket=s3config) as job:
            final = _write_like_ffmpeg(out / "clip.mp4", os.urandom(9 * (1 << 20)))  # one part sent early
            outputs = job.wait(30)
        assert proxy.count("error") == 1
    client = boto3.client("s3", endpoint_url=moto_s3.endpoint, aws_access_key_id="a", aws_secret_access_key="b",
                          region_name="us-east-1", config=BotoConfig(request_checksum_calculation="when_required",
                                                                     response_checksum_validation="when_required"))
    assert client.get_object(Bucket=name, Key=outputs[0].key)["Body"].read() == final
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []


def test_a_file_rewritten_after_the_scope_leaves_the_jobs_output_as_it_was_returned(running):
    """A job's output of a fixed name written again after the job (a later run outside any job): the job's
    object stays what the job returned; the new version goes under the watcher's own prefix."""
    watcher, out = running
    with watcher.job("fixed") as job:
        (out / "result.png").write_bytes(b"the job's result")
        outputs = job.wait(20)
    assert [o.key for o in outputs] == ["outputs/jobs/fixed/result.png"]
    time.sleep(1.1)
    (out / "result.png").write_bytes(b"a later run, no job")
    assert watcher.wait_idle(20)
    assert watcher.store.get_bytes("outputs/jobs/fixed/result.png")[0] == b"the job's result"
    assert wait_for_key(watcher.store, "outputs/result.png")
    assert watcher.store.get_bytes("outputs/result.png")[0] == b"a later run, no job"


def wait_for_key(store, key: str, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.head(key) is not None:
            return True
        time.sleep(0.05)
    return False
