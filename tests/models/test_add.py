"""`syncbridge models add SOURCE`: every SOURCE form against the loopback Hugging Face and CivitAI servers and a
plain URL; the manifest keeps its comments; duplicates are refused; --pull puts the model in place."""

from __future__ import annotations

import hashlib

import pytest

from syncbridge.errors import ConfigError
from syncbridge.models.add import parse_source

from ..civitaiserver import serve_civitai
from ..conftest import CIVITAI_KEY, HF_TOKEN, run_cli
from ..hfserver import LoopbackServer, send_body, serve_hf


@pytest.mark.parametrize("text, source", [
    ("hf:org/vae/sdxl_vae.safetensors", {"hf": {"repo": "org/vae", "file": "sdxl_vae.safetensors",
                                                "revision": "main"}}),
    ("hf:org/flux/split/ae.safetensors@v2", {"hf": {"repo": "org/flux", "file": "split/ae.safetensors",
                                                    "revision": "v2"}}),
    ("https://huggingface.co/org/vae/blob/main/sdxl_vae.safetensors",
     {"hf": {"repo": "org/vae", "file": "sdxl_vae.safetensors", "revision": "main"}}),
    ("https://civitai.com/models/4201/some-name?modelVersionId=130072", {"civitai": {"version_id": 130072}}),
    ("https://civitai.com/api/download/models/130072", {"civitai": {"version_id": 130072}}),
    ("https://example.org/models/x.safetensors", {"url": "https://example.org/models/x.safetensors"}),
])
def test_every_source_form(text, source) -> None:
    assert parse_source(text) == source


@pytest.mark.parametrize("text, says", [
    ("org/vae", "is not hf:REPO/PATH"),
    ("https://huggingface.co/org/vae", "not a file's"),
    ("https://civitai.com/models/4201", "without a version"),
    ("https://civitai.com/api/download/models/1?token=abc123", "token parameter would put a credential"),
    ("https://example.org/m.bin?X-Amz-Signature=deadbeef&x=1", "X-Amz-Signature parameter would put a credential"),
    ("https://user:hunter2@example.org/m.bin", "a password would put a credential"),
])
def test_a_source_that_is_none_of_them_is_named(text, says) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        parse_source(text)
    message = str(caught.value)
    if "credential" in says:  # the URL itself is not repeated: it holds the secret
        assert "abc123" not in message and "hunter2" not in message and "deadbeef" not in message
    else:
        assert text in message


MANIFEST = """# our team's models
[settings]
models_dir = "{models}"   # the pod's folder

# the base model, by hand
[[model]]
name = "base"
path = "checkpoints/base.safetensors"
url = "http://127.0.0.1:9/base.safetensors"
"""


def test_add_from_hugging_face_keeps_the_manifest_and_refuses_a_duplicate(local_env, tmp_path) -> None:
    data = b"vae " * 4000
    models = tmp_path / "models"
    manifest = tmp_path / "models.toml"
    manifest.write_text(MANIFEST.format(models=models))
    with serve_hf() as hub:
        hub.add("org/vae", {"sdxl_vae.safetensors": data})
        env = {**local_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN, "SYNCBRIDGE_MODELS": str(manifest)}
        added = run_cli(["models", "add", f"{hub.url}/org/vae/resolve/main/sdxl_vae.safetensors", "--dir", "vae",
                         "--pull"], env)
        assert added.returncode == 0, added.stdout + added.stderr
        again = run_cli(["models", "add", "hf:org/vae/sdxl_vae.safetensors", "--dir", "vae"], env)
        no_dir = run_cli(["models", "add", "hf:org/vae/sdxl_vae.safetensors", "--name", "other"], env)
    text = manifest.read_text()
    assert text.startswith(MANIFEST.format(models=models))  # comments and layout kept, the entry appended
    assert f'sha256 = "{hashlib.sha256(data).hexdigest()}"' in text and f"size = {len(data)}" in text
    assert 'hf = {repo = "org/vae", file = "sdxl_vae.safetensors", revision = "main"}' in text
    assert (models / "vae" / "sdxl_vae.safetensors").read_bytes() == data  # --pull
    assert again.returncode == 2 and "has a model with path 'vae/sdxl_vae.safetensors' already" in again.stderr
    assert no_dir.returncode == 2 and "--dir: is needed" in no_dir.stderr and "Traceback" not in no_dir.stderr
    assert HF_TOKEN not in text + added.stdout + added.stderr


def test_add_from_a_civitai_page_takes_the_folder_from_the_model_type(local_env, tmp_path) -> None:
    data = b"lora " * 3000
    manifest = tmp_path / "new" / "models.toml"  # created
    with serve_civitai(api_key=CIVITAI_KEY) as civ:
        civ.add(130072, "ink_style.safetensors", data, model_type="LORA")
        env = {**local_env, "SYNCBRIDGE_CIVITAI_ENDPOINT": civ.url, "CIVITAI_API_KEY": CIVITAI_KEY,
               "SYNCBRIDGE_MODELS_DIR": str(tmp_path / "models")}
        added = run_cli(["models", "add", f"{civ.url}/models/4201/ink?modelVersionId=130072", "--manifest",
                         str(manifest)], env)
    assert added.returncode == 0, added.stdout + added.stderr
    text = manifest.read_text()
    assert 'path = "loras/ink_style.safetensors"' in text and "civitai = {version_id = 130072}" in text
    assert f'sha256 = "{hashlib.sha256(data).hexdigest()}"' in text
    assert CIVITAI_KEY not in text + added.stdout + added.stderr


def test_add_a_plain_url_downloads_and_hashes_it_or_not(local_env, tmp_path) -> None:
    data = b"upscaler " * 2000

    def handle(h) -> None:
        send_body(h, data)

    server = LoopbackServer(handle).start()
    try:
        manifest = tmp_path / "m.toml"
        env = {**local_env, "SYNCBRIDGE_MODELS_DIR": str(tmp_path / "models"), "SYNCBRIDGE_MODELS": str(manifest)}
        hashed = run_cli(["models", "add", f"{server.url}/files/4x.pth", "--dir", "upscale_models"], env)
        plain = run_cli(["models", "add", f"{server.url}/files/2x.pth", "--dir", "upscale_models",
                         "--no-download"], env)
    finally:
        server.stop()
    assert hashed.returncode == 0 and plain.returncode == 0, hashed.stderr + plain.stderr
    assert (tmp_path / "models" / "upscale_models" / "4x.pth").read_bytes() == data  # in place, complete
    assert not (tmp_path / "models" / "upscale_models" / "2x.pth").exists()
    text = manifest.read_text()
    assert text.count("[[model]]") == 2 and text.count("sha256 =") == 1
    assert f'sha256 = "{hashlib.sha256(data).hexdigest()}"' in text
    assert not list((tmp_path / "models").rglob("*.sbtmp"))
