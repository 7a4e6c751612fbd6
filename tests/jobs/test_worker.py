"""The serverless worker end to end, against a loopback stand-in of ComfyUI (tests/jobs/comfystandin.py),
moto's server (the default bucket) and a second ``rclone serve s3`` with other keys (a job's s3Config).

Real inotify, real servers; the stand-in writes its outputs as ComfyUI's save nodes do.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.demo.localserver import serve_rclone_s3
from syncbridge.hashing import md5_file, sha256_file
from syncbridge.jobs.worker import Worker
from syncbridge.store import open_store

from ..conftest import ACCESS_KEY, SECRETS, new_bucket, server_env
from .comfystandin import StandIn, content_of

ROOT = Path(__file__).resolve().parents[2]
HANDLER = ROOT / "examples" / "runpod-serverless" / "handler.py"
JOB_ACCESS = "sbJOBaccessID5d1e7c"
JOB_SECRET = "sbJOBsecretVALUE-91ab3f7c2d"


def every_kind(seed: str, *, video_size: int = 3_000_000) -> dict:
    """A workflow writing PNG (two), animated WEBP, an MP4 (ffmpeg over 0.6 s, with VHS's metadata PNG),
    FLAC (tempfile + os.replace) and a latent."""
    return {
        "1": {"class_type": "KSampler", "inputs": {"seed": 1}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "count": 2, "seed": seed,
                                                    "images": ["1", 0]}},
        "3": {"class_type": "SaveAnimatedWEBP", "inputs": {"filename_prefix": "anim/ComfyUI", "seed": seed}},
        "4": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "video/clip", "seed": seed,
                                                           "size": video_size, "seconds": 0.6}},
        "5": {"class_type": "SaveAudio", "inputs": {"filename_prefix": "audio/ComfyUI", "seed": seed}},
        "6": {"class_type": "SaveLatent", "inputs": {"filename_prefix": "latents/ComfyUI", "seed": seed}},
    }


@pytest.fixture
def setup(moto_s3, tmp_path):
    """(env, stand-in, store): a default bucket on moto, the stand-in writing into COMFYUI_OUTPUT_DIR."""
    bucket = new_bucket(moto_s3)
    env = server_env(moto_s3, bucket, tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    output.mkdir(parents=True)
    with StandIn(output, models) as stand_in:
        env.update(COMFYUI_URL=stand_in.url, SYNCBRIDGE_MODELS_DIR=str(models), SYNCBRIDGE_HEARTBEAT_SECONDS="0",
                   SYNCBRIDGE_JOB_PUSH_TIMEOUT="20", SYNCBRIDGE_JOB_TIMEOUT="60")
        config = load_config(env)
        store = open_store(config.remote, state_dir=config.state_dir)
        try:
            yield env, stand_in, store
        finally:
            store.close()


def _get(url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        return response.read()


def _check_outputs(result: dict, output_dir: Path, store, prefix: str) -> dict[str, bytes]:
    """Every output: its link serves the file's bytes, the object at its key is byte-identical, the checksum
    is the file's. Returns {path: bytes}."""
    assert "error" not in result, result
    got = {}
    for entry in result["outputs"]:
        local = (output_dir / entry["path"]).read_bytes()
        assert entry["key"] == f"{prefix}/{entry['path']}"
        assert entry["size"] == len(local)
        assert _get(entry["url"]) == local, entry["path"]
        data, info = store.get_bytes(entry["key"])
        assert data == local
        algo, _, digest = entry["checksum"].partition(":")
        assert digest == (md5_file(output_dir / entry["path"]) if algo == "md5" else
                          sha256_file(output_dir / entry["path"])[1])
        got[entry["path"]] = local
    assert [i["data"] for i in result["images"]] == [e["url"] for e in result["outputs"]]
    assert all(i["type"] == "s3_url" for i in result["images"])
    return got


def test_a_job_of_every_kind_lands_under_its_prefix_and_two_jobs_never_overwrite(setup):
    env, stand_in, store = setup
    config = load_config(env)
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    before = output / "earlier.png"  # written before the job: not the job's output
    with Worker(config) as worker:
        before.write_bytes(b"from before the job")
        assert worker.watcher.wait_idle(10)
        first = worker.handler({"id": "job-aaa", "input": {"workflow": every_kind("one")}})
        got = _check_outputs(first, output, store, "outputs/jobs/job-aaa")
        assert set(got) == {"ComfyUI_00001_.png", "ComfyUI_00002_.png", "anim/ComfyUI_00001_.webp",
                            "video/clip_00001_.mp4", "video/clip_00001_.png", "audio/ComfyUI_00001_.flac",
                            "latents/ComfyUI_00001_.latent"}
        types = {e["path"]: e["content_type"] for e in first["outputs"]}
        assert types["ComfyUI_00001_.png"] == "image/png" and types["anim/ComfyUI_00001_.webp"] == "image/webp"
        assert types["video/clip_00001_.mp4"] == "video/mp4" and types["audio/ComfyUI_00001_.flac"] == "audio/flac"
        nodes = {e["path"]: (e["node"], e["kind"]) for e in first["outputs"]}
        assert nodes["video/clip_00001_.mp4"] == ("4", "gifs") and nodes["audio/ComfyUI_00001_.flac"] == ("5", "audio")
        assert nodes["latents/ComfyUI_00001_.latent"] == ("6", "latents")
        assert got["video/clip_00001_.mp4"] == content_of("one:clip_00001_.mp4", 3_000_000)
        # the file from before the job went to the watcher's own prefix, not the job's
        assert store.head("outputs/earlier.png") is not None
        assert not any(e["path"] == "earlier.png" for e in first["outputs"])

        # A fresh output folder (a new worker, or one that cleaned up): ComfyUI's counter starts again, so
        # the second job writes the very same names, with other bytes.
        for path in sorted(output.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        second = worker.handler({"id": "job-bbb", "input": {"workflow": every_kind("two")}})
        got2 = _check_outputs(second, output, store, "outputs/jobs/job-bbb")
        assert set(got2) == set(got)
    for path, data in got.items():  # the first job's objects are untouched
        assert store.get_bytes(f"outputs/jobs/job-aaa/{path}")[0] == data
        assert data != got2[path]


def test_s3config_bucket_for_that_job_only_and_no_secret_anywhere(setup, tmp_path, caplog):
    env, stand_in, store = setup
    caplog.set_level(logging.DEBUG, logger="syncbridge")  # all of syncbridge's own log, debug included
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    with serve_rclone_s3(tmp_path / "job-s3", access_key=JOB_ACCESS, secret_key=JOB_SECRET) as other:
        other.create_bucket("job-bucket")
        s3config = {"endpointUrl": other.endpoint, "accessId": JOB_ACCESS, "accessSecret": JOB_SECRET,
                    "bucketName": "job-bucket"}
        other_env = {**env, **other.environ("job-bucket")}
        other_store = open_store(load_config(other_env).remote, state_dir=tmp_path / "other-state")
        workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "count": 2, "seed": "s"}},
                    "2": {"class_type": "SaveAudio", "inputs": {"filename_prefix": "x", "seed": "s"}}}
        with Worker(load_config(env)) as worker:
            own = worker.handler({"id": "job-own", "input": {"workflow": workflow}, "s3Config": s3config})
            _check_outputs(own, output, other_store, "outputs/jobs/job-own")
            assert other.endpoint in own["outputs"][0]["url"]
            assert list(store.list("outputs/jobs/job-own")) == []  # nothing in the default bucket
            after = worker.handler({"id": "job-next", "input": {"workflow": workflow}})
            _check_outputs(after, output, store, "outputs/jobs/job-next")  # back to the default bucket
            assert list(other_store.list("outputs/jobs/job-next")) == []
            # A wrong secret: the job fails naming its outputs, and says nothing of the secret.
            wrong = dict(s3config, accessSecret="sbWRONGsecret-0e9d8c7b6a")
            bad = worker.handler({"id": "job-bad", "input": {"workflow": workflow}, "s3Config": wrong})
            assert bad["error_kind"] == "not_pushed", bad
            assert "x_00007_.png" in bad["error"] and "job-bucket" in bad["error"]
            assert "s3Config.accessSecret" in bad["error"] and "R2_SECRET_KEY" not in bad["error"]
            assert {d["path"] for d in bad["details"]} == {"x_00007_.png", "x_00008_.png", "x_00009_.flac"}
        other_store.close()
    # Secrets: in no result, no log record, no file of the state directory (the journal included). A
    # presigned link names the access key id (every SigV4 link does, as X-Amz-Credential), never a secret.
    secret_keys = [s for s in (*SECRETS, JOB_SECRET, "sbWRONGsecret-0e9d8c7b6a") if s != ACCESS_KEY]
    for result in (own, after, bad):
        for secret in secret_keys:
            assert secret not in json.dumps(result)
    secrets = (*SECRETS, JOB_SECRET, JOB_ACCESS, "sbWRONGsecret-0e9d8c7b6a")
    texts = [r.getMessage() + str(r.__dict__) for r in caplog.records]
    for path in Path(env["SYNCBRIDGE_STATE_DIR"]).rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"secret {secret[:6]}... leaked: {text[:300]}"
    assert any("job-own" in r.getMessage() for r in caplog.records)


def test_a_model_only_in_the_bucket_cache_is_pulled_before_the_prompt_is_queued(setup):
    env, stand_in, store = setup
    store.put_bytes("models/checkpoints/cached.safetensors", b"weights from the cache")
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "cached.safetensors"}},
                "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "m"}}}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-model", "input": {"workflow": workflow}})
    # the stand-in refuses a prompt whose model file is missing (as ComfyUI does): it was there before
    assert "error" not in result, result
    assert (Path(env["SYNCBRIDGE_MODELS_DIR"]) / "checkpoints" / "cached.safetensors").read_bytes() == \
        b"weights from the cache"
    assert len(stand_in.queued) == 1


def test_a_model_found_nowhere_fails_naming_the_node_and_nothing_is_queued(setup):
    env, stand_in, store = setup
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "m"}},
                "7": {"class_type": "LoraLoader", "inputs": {"lora_name": "missing.safetensors"}}}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-nomodel", "input": {"workflow": workflow}})
    assert result["error_kind"] == "models"
    assert "loras/missing.safetensors" in result["error"] and "#7 LoraLoader" in result["error"]
    assert "Traceback" not in result["error"]
    assert stand_in.queued == []


@pytest.mark.parametrize("case", ["unreachable", "refused", "execution", "input", "ui_format"])
def test_failures_in_the_users_terms(setup, case):
    env, stand_in, store = setup
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "f"}}}
    if case == "unreachable":
        env = dict(env, COMFYUI_URL="http://127.0.0.1:9")  # discard port: nothing listens
    if case == "refused":
        workflow["2"] = {"class_type": "NoSuchNode", "inputs": {}}
    if case == "execution":  # ComfyUI's message comes back in the details, a secret in it masked
        workflow["2"] = {"class_type": "Fail", "inputs": {"message": f"CUDA out of memory ({env['R2_SECRET_KEY']})"}}
    job_input: object = {"workflow": workflow}
    if case == "input":
        job_input = {"workflow": workflow, "images": [{"name": "../x.png", "image": "aGk="}]}
    if case == "ui_format":
        job_input = {"workflow": {"nodes": [], "links": []}}
    config = load_config(env)
    with Worker(config) as worker:
        if case == "unreachable":
            worker._ready_once = True  # do not wait for ComfyUI to come up
        result = worker.handler({"id": f"job-{case}", "input": job_input})
    assert set(result) >= {"error", "error_kind"}, result
    text = result["error"]
    assert "Traceback" not in text
    expected = {"unreachable": ("unreachable", "COMFYUI_URL"), "refused": ("refused", "NoSuchNode"),
                "execution": ("execution", "node #2 (Fail)"), "input": ("input", "input.images[0].name"),
                "ui_format": ("input", "API")}[case]
    assert result["error_kind"] == expected[0] and expected[1] in text, result
    assert env["R2_SECRET_KEY"] not in json.dumps(result)
    if case == "execution":
        assert "CUDA out of memory (***)" in json.dumps(result["details"]), result


def test_input_images_are_written_to_comfyuis_input_folder(setup):
    env, stand_in, store = setup
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "i"}}}
    image = {"name": "in.png", "image": "data:image/png;base64,aGVsbG8gaW1hZ2U="}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-img", "input": {"workflow": workflow, "images": [image]}})
    assert "error" not in result
    assert (Path(env["COMFYUI_OUTPUT_DIR"]).parent / "input" / "in.png").read_bytes() == b"hello image"


def test_stream_mode_yields_each_output_then_the_result_and_progress_is_told(setup):
    env, stand_in, store = setup
    said: list[tuple[str, str]] = []
    progress = lambda job, text: said.append((job["id"], text))  # noqa: E731 - runpod's progress_update
    with Worker(load_config(env), progress=progress) as worker:
        items = list(worker.stream({"id": "job-stream", "input": {"workflow": every_kind("s", video_size=200_000)}}))
    outputs, final = items[:-1], items[-1]
    assert "error" not in final
    assert sorted(o["output"]["path"] for o in outputs) == sorted(e["path"] for e in final["outputs"])
    assert all(o["output"]["url"] for o in outputs)
    texts = [text for job_id, text in said if job_id == "job-stream"]
    assert texts[0].startswith("models") and texts[1].startswith("queued") and texts[-1].startswith("done: 7")
    assert "executing" in texts and any(t.startswith("outputs pushed:") for t in texts)


def test_a_prompt_past_its_time_is_interrupted_and_said_so(setup):
    env, stand_in, store = setup
    env = dict(env, SYNCBRIDGE_JOB_TIMEOUT="1")
    slow = {"1": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "v", "seconds": 3, "size": 1000}}}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-slow", "input": {"workflow": slow}})
    assert result["error_kind"] == "timeout" and "SYNCBRIDGE_JOB_TIMEOUT" in result["error"]
    assert stand_in.interrupts == 1


def test_through_runpods_local_mode(setup, tmp_path):
    """``python handler.py --test_input ...``: RunPod's own local runner calls the handler; exit 0 and the
    outputs in the bucket."""
    env, stand_in, store = setup
    job = {"id": "local-1", "input": {"workflow": every_kind("local", video_size=100_000)}}
    proc = subprocess.run([sys.executable, str(HANDLER), "--test_input", json.dumps(job)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    keys = {o.key for o in store.list("outputs/jobs/local-1/")}
    assert "outputs/jobs/local-1/video/clip_00001_.mp4" in keys and len(keys) == 7, keys
    for secret in SECRETS:  # runpod logs the result, whose presigned links name the access key id (not a secret)
        if secret != ACCESS_KEY:
            assert secret not in proc.stdout + proc.stderr
    # a failing job exits non-zero with the error said plainly
    bad = {"id": "local-2", "input": {"workflow": {"1": {"class_type": "LoraLoader",
                                                         "inputs": {"lora_name": "gone.safetensors"}}}}}
    proc = subprocess.run([sys.executable, str(HANDLER), "--test_input", json.dumps(bad)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1 and "loras/gone.safetensors" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert os.path.exists(HANDLER)


def test_input_and_workflow_sent_as_json_strings_are_taken(setup):
    """worker-comfyui takes ``input`` as a JSON string; clients also send ``input.workflow`` as the exported file's
    text. Both are parsed, and text that is not JSON is an error naming the field."""
    env, stand_in, store = setup
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "js"}}}
    with Worker(load_config(env)) as worker:
        whole = worker.handler({"id": "job-str1", "input": json.dumps({"workflow": workflow})})
        inner = worker.handler({"id": "job-str2", "input": {"workflow": json.dumps(workflow)}})
        bad = worker.handler({"id": "job-str3", "input": {"workflow": "{not json"}})
    for result in (whole, inner):
        assert "error" not in result, result
        assert [e["filename"] for e in result["outputs"]] and result["outputs"][0]["key"].startswith("outputs/jobs/")
    assert bad["error_kind"] == "input" and "input.workflow" in bad["error"] and "JSON" in bad["error"], bad


def test_every_history_kind_temp_previews_and_text_outputs(setup):
    """3D files, text outputs (no file), a custom node's odd shapes and PreviewImage's temp files: the files of the
    output folder are the outputs, the rest neither crashes the job nor makes it wait."""
    env, stand_in, store = setup
    workflow = {
        "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "k"}},
        "2": {"class_type": "SaveGLB", "inputs": {"filename_prefix": "3d/mesh"}},
        "3": {"class_type": "PreviewImage", "inputs": {"count": 2}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": "a caption"}},
        "5": {"class_type": "Report", "inputs": {"ui": {"text": "not a list", "images": ["a string", None, 3],
                                                         "mesh": [{"filename": None}], "animated": [True],
                                                         "value": [1.5], "empty": []}}},
    }
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-kinds", "input": {"workflow": workflow}})
    got = _check_outputs(result, output, store, "outputs/jobs/job-kinds")
    assert set(got) == {"k_00001_.png", "3d/mesh_00001_.glb"}, result
    kinds = {e["path"]: (e["node"], e["kind"]) for e in result["outputs"]}
    assert kinds["3d/mesh_00001_.glb"] == ("2", "3d")
    assert len(list(stand_in.temp_dir.glob("*.png"))) == 2  # the previews were written, in the temp folder
    assert "warning" not in result


def test_a_prompt_without_outputs_is_a_success_that_says_so(setup):
    """Only previews (temp files) and text: nothing is kept, the job succeeds (as worker-comfyui's does) with empty
    lists, and a warning says why rather than leaving the user with nothing."""
    env, stand_in, store = setup
    workflow = {"3": {"class_type": "PreviewImage", "inputs": {}},
                "4": {"class_type": "PreviewAny", "inputs": {}}}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-none", "input": {"workflow": workflow}})
    assert "error" not in result, result
    assert result["outputs"] == [] and result["images"] == []
    assert "no output" in result["warning"] and "temp" in result["warning"] and "SaveImage" in result["warning"]


@pytest.mark.parametrize("reported", [
    {"filename": "../outside.png", "subfolder": "", "type": "output"},
    {"filename": "outside.png", "subfolder": "..", "type": "output"},
    {"filename": "passwd", "subfolder": "/etc", "type": "output"},
    {"filename": "/etc/passwd", "subfolder": "", "type": "output"},
])
def test_a_history_file_outside_the_output_folder_is_never_pushed(setup, reported):
    """A node (a custom one) may report any name: one outside the output folder fails the job naming it, and its
    bytes never reach the bucket."""
    env, stand_in, store = setup
    output = Path(env["COMFYUI_OUTPUT_DIR"])
    (output.parent / "outside.png").write_bytes(b"not an output")
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t"}},
                "2": {"class_type": "Report", "inputs": {"ui": {"images": [reported]}}}}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-out", "input": {"workflow": workflow}})
    assert result.get("error_kind") == "not_pushed", result
    assert "outside the output folder" in result["error"] and "#2" in result["error"]
    for obj in store.list(""):
        data, _ = store.get_bytes(obj.key)
        assert data not in (b"not an output", Path("/etc/passwd").read_bytes()), obj.key


def test_a_comfyui_still_starting_when_the_first_job_comes(setup, tmp_path):
    """ComfyUI starts with the container and may answer only seconds after the first job arrives: the job waits."""
    import socket
    import threading
    import time

    env, stand_in, store = setup
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(env, COMFYUI_URL=f"http://127.0.0.1:{port}")
    late: list[StandIn] = []

    def start_late() -> None:
        time.sleep(2.0)
        late.append(StandIn(Path(env["COMFYUI_OUTPUT_DIR"]), port=port).__enter__())

    threading.Thread(target=start_late, daemon=True).start()
    try:
        with Worker(load_config(env)) as worker:
            result = worker.handler({"id": "job-late", "input": {"workflow": {
                "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "late"}}}}})
        assert "error" not in result, result
        assert [e["filename"] for e in result["outputs"]] == ["late_00001_.png"]
    finally:
        for server in late:
            server.__exit__(None, None, None)


def test_s3config_errors_name_the_request_field_not_an_environment_variable(setup):
    env, stand_in, store = setup
    workflow = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "s"}}}
    s3 = {"endpointUrl": "bucket.r2.example.test", "accessId": "AKID", "accessSecret": "sbS3CFGsecret-77aa1",
          "bucketName": "job-bucket"}
    with Worker(load_config(env)) as worker:
        result = worker.handler({"id": "job-s3", "input": {"workflow": workflow}, "s3Config": s3})
        missing = worker.handler({"id": "job-s3b", "input": {"workflow": workflow},
                                  "s3Config": {k: v for k, v in s3.items() if k != "bucketName"}})
    assert result["error_kind"] == "bucket" and "s3Config.endpointUrl" in result["error"], result
    assert "environment variable" not in result["error"] and "R2_" not in result["error"]
    assert "s3Config" in missing["error"] and "bucketName" in missing["error"]
    assert stand_in.queued == []
    for r in (result, missing):
        assert "sbS3CFGsecret-77aa1" not in json.dumps(r)
