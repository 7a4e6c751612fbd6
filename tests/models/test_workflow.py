"""Models from ComfyUI workflows: both formats, subgraphs, every reference of ComfyUI's own templates,
and `syncbridge models from-workflow` resolving and pulling through the loopback Hugging Face server."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from syncbridge.models.workflow import LOADERS, WorkflowError, needed, refs_of, url_source

from ..conftest import HF_TOKEN, run_cli
from ..hfserver import serve_hf

HF = "https://huggingface.co"


def _ui(nodes, subgraphs=()):
    return {"last_node_id": 9, "nodes": list(nodes), "links": [],
            "definitions": {"subgraphs": [{"id": "sg-1", "name": "Text to Image", "nodes": list(subgraphs)}]}}


def test_ui_format_reads_properties_models_widgets_and_subgraphs() -> None:
    doc = _ui(
        [{"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["sd15/base.safetensors"],
          "properties": {"models": [{"name": "sd15/base.safetensors", "directory": "checkpoints",
                                     "url": f"{HF}/org/sd/resolve/main/base.safetensors"}]}},
         {"id": 5, "type": "LoraLoader", "widgets_values": ["styles\\ink.safetensors", 0.8, 1.0]},  # Windows path
         {"id": 6, "type": "CheckpointLoader", "widgets_values": ["v1-inference.yaml", "old.ckpt"]},
         {"id": 7, "type": "KSampler", "widgets_values": [42, "fixed", 20]},  # not a loader
         {"id": 8, "type": "VAELoader", "widgets_values": ["pixel_space"]}],  # a built-in choice, not a file
        subgraphs=[{"id": 3, "type": "DualCLIPLoader", "widgets_values": ["clip_l.safetensors", "t5.safetensors",
                                                                          "flux"]}])
    refs = refs_of(doc)
    assert [(r.path, r.node, r.via) for r in refs] == [
        ("checkpoints/sd15/base.safetensors", "#4 CheckpointLoaderSimple", "properties.models"),
        ("checkpoints/sd15/base.safetensors", "#4 CheckpointLoaderSimple", "widgets_values[0] (ckpt_name)"),
        ("loras/styles/ink.safetensors", "#5 LoraLoader", "widgets_values[0] (lora_name)"),
        ("configs/v1-inference.yaml", "#6 CheckpointLoader", "widgets_values[0] (config_name)"),
        ("checkpoints/old.ckpt", "#6 CheckpointLoader", "widgets_values[1] (ckpt_name)"),
        ("text_encoders/clip_l.safetensors", "[Text to Image] #3 DualCLIPLoader", "widgets_values[0] (clip_name1)"),
        ("text_encoders/t5.safetensors", "[Text to Image] #3 DualCLIPLoader", "widgets_values[1] (clip_name2)"),
    ]
    merged = needed([("a.json", refs)])
    assert merged[0].path == "checkpoints/sd15/base.safetensors" and merged[0].url.endswith("base.safetensors")
    assert merged[0].wanted_by == ("a.json: #4 CheckpointLoaderSimple",)  # one node, named once


def test_api_format_with_and_without_the_prompt_wrapper() -> None:
    prompt = {"3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1}},
              "4": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux1-dev.safetensors",
                                                           "weight_dtype": "default"}},
              "5": {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": ["9", 0]}},  # a link, not a name
              "6": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "clip_vision_h.safetensors"}}}
    for doc in (prompt, {"prompt": prompt, "client_id": "x"}):
        assert [(r.path, r.node, r.via) for r in refs_of(doc)] == [
            ("diffusion_models/flux1-dev.safetensors", "#4 UNETLoader", "inputs.unet_name"),
            ("clip_vision/clip_vision_h.safetensors", "#6 CLIPVisionLoader", "inputs.clip_name")]
    both = needed([("one.json", refs_of(prompt)), ("two.json", refs_of(prompt))])
    assert both[0].wanted_by == ("one.json: #4 UNETLoader", "two.json: #4 UNETLoader")


@pytest.mark.parametrize("doc", [[], {"a": 1}, {"nodes": "x"}, "text", {"1": {"inputs": {}}}])
def test_what_is_not_a_workflow_is_said(doc) -> None:
    with pytest.raises(WorkflowError, match="not a ComfyUI workflow"):
        refs_of(doc)


@pytest.mark.parametrize("url, source", [
    (f"{HF}/Comfy-Org/flux/resolve/main/split_files/vae/ae.safetensors",
     {"hf": {"repo": "Comfy-Org/flux", "file": "split_files/vae/ae.safetensors", "revision": "main"}}),
    (f"{HF}/org/m/blob/v1.0/a%20b.safetensors?download=true",
     {"hf": {"repo": "org/m", "file": "a b.safetensors", "revision": "v1.0"}}),
    ("http://127.0.0.1:9/org/m/resolve/main/x.safetensors",  # under HF_ENDPOINT
     {"hf": {"repo": "org/m", "file": "x.safetensors", "revision": "main"}}),
    ("https://civitai.com/api/download/models/128713", {"civitai": {"version_id": 128713}}),
    ("https://civitai.com/models/4201/realistic?modelVersionId=130072", {"civitai": {"version_id": 130072}}),
    ("https://civitai.com/models/4201", {"url": "https://civitai.com/models/4201"}),  # no version: a plain URL
    ("https://example.org/m.safetensors", {"url": "https://example.org/m.safetensors"}),
])
def test_a_url_goes_through_its_own_source(url, source) -> None:
    assert url_source(url, hf_endpoint="http://127.0.0.1:9") == source


def _template_files() -> list[Path]:
    root = resources.files("comfyui_workflow_templates_json") / "templates"
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).endswith(".json"))


def test_every_model_reference_of_comfyuis_own_templates_is_read() -> None:
    """The comfyui-workflow-templates package (ComfyUI's own templates): every properties.models entry, at
    the top level and in subgraphs, comes out as a reference with its folder and a Hugging Face source."""
    files = _template_files()
    workflows = expected = found = 0
    for file in files:
        doc = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or "nodes" not in doc:
            continue  # index.json and the like
        workflows += 1
        nodes = [*doc["nodes"], *(n for sg in (doc.get("definitions") or {}).get("subgraphs") or []
                                  for n in sg.get("nodes") or [])]
        expected += sum(len((n.get("properties") or {}).get("models") or []) for n in nodes)
        refs = [r for r in refs_of(doc) if r.via == "properties.models"]
        found += len(refs)
        for ref in refs:
            assert ref.directory and ref.name and not ref.name.startswith("/"), (file.name, ref)
            assert "hf" in url_source(ref.url), (file.name, ref.url)
        for ref in refs_of(doc):  # a loader's own widget agrees with the folder ComfyUI's template gives
            if ref.via.startswith("widgets_values"):
                listed = {r.name: r.directory for r in refs}
                assert listed.get(ref.name, ref.directory) == ref.directory or ref.directory == "configs", \
                    (file.name, ref)
    assert workflows >= 100 and expected >= 400, (workflows, expected)  # the issue's "100+ ... 400 references"
    assert found == expected


def test_loader_table_names_real_input_names() -> None:
    for kind, inputs in LOADERS.items():
        assert inputs and all(name and folder for name, folder in inputs), kind


def _workflow(path: Path, url_base: str) -> None:
    doc = _ui([
        {"id": 1, "type": "UNETLoader", "widgets_values": ["flux-mini.safetensors", "default"],
         "properties": {"models": [{"name": "flux-mini.safetensors", "directory": "diffusion_models",
                                    "url": f"{url_base}/org/flux/resolve/main/split/flux-mini.safetensors"}]}},
        {"id": 2, "type": "VAELoader", "widgets_values": ["ae.safetensors"]},  # present on the pod
        {"id": 3, "type": "LoraLoaderModelOnly", "widgets_values": ["cached.safetensors", 1.0]},  # in the cache
        {"id": 4, "type": "CLIPLoader", "widgets_values": ["lost.safetensors", "flux"]},  # nowhere
    ])
    path.write_text(json.dumps(doc))


def test_from_workflow_resolves_each_model_writes_a_manifest_and_pulls(local_env, tmp_path) -> None:
    data = b"unet bytes " * 5000
    models = tmp_path / "workspace" / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "ae.safetensors").write_bytes(b"vae")
    with serve_hf() as hub:
        hub.add("org/flux", {"split/flux-mini.safetensors": data})
        env = {**local_env, "HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN, "SYNCBRIDGE_MODELS_DIR": str(models)}
        store_dir = tmp_path / "seed"
        (store_dir / "loras").mkdir(parents=True)
        (store_dir / "loras" / "cached.safetensors").write_bytes(b"lora")
        run_cli(["push", str(store_dir), "models"], env, check=True)  # the cache holds models/loras/cached...
        wf = tmp_path / "wf.json"
        _workflow(wf, hub.url)

        listed = run_cli(["models", "from-workflow", str(wf), "--json"], env)
        rows = {json.loads(line)["path"]: json.loads(line) for line in listed.stdout.splitlines()}
        assert {p: r["status"] for p, r in rows.items()} == {
            "diffusion_models/flux-mini.safetensors": "hf", "vae/ae.safetensors": "present",
            "loras/cached.safetensors": "cache", "text_encoders/lost.safetensors": "unresolved"}
        assert listed.returncode == 1  # one model has no source, and the message names its node
        assert "no source for text_encoders/lost.safetensors, wanted by wf.json: #4 CLIPLoader" in listed.stderr
        assert HF_TOKEN not in listed.stdout + listed.stderr

        manifest = tmp_path / "from-wf.toml"
        wrote = run_cli(["models", "from-workflow", str(wf), "--write", str(manifest)], env)
        assert wrote.returncode == 1 and manifest.is_file()
        text = manifest.read_text()
        assert 'hf = { repo = "org/flux", file = "split/flux-mini.safetensors", revision = "main" }' in text
        assert "# unresolved: text_encoders/lost.safetensors" in text
        again = run_cli(["models", "from-workflow", str(wf), "--write", str(manifest)], env)
        assert again.returncode == 2 and "exists already" in again.stderr and "Traceback" not in again.stderr

        pulled = run_cli(["models", "pull", str(manifest)], env)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    target = models / "diffusion_models" / "flux-mini.safetensors"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert (models / "loras" / "cached.safetensors").read_bytes() == b"lora"  # from the cache, by path
    # the present model was hashed into the pod's hash cache: the next start reads it, not the file
    hashes = json.loads((tmp_path / "state" / "models" / "hashes.json").read_text())
    assert hashes[str(models / "vae" / "ae.safetensors")][2] == hashlib.sha256(b"vae").hexdigest()
    # through the Hugging Face source (paths-info, resolve, then the CDN), not a plain URL download
    assert any(r.path.startswith("/api/models/org/flux/paths-info/") for r in hub.requests), hub.requests
    assert any(r.path.startswith("/org/flux/resolve/main/split/flux-mini") for r in hub.requests), hub.requests


def test_from_workflow_names_a_file_that_is_not_a_workflow(local_env, tmp_path) -> None:
    bad = tmp_path / "notes.json"
    bad.write_text('{"title": "not a workflow"}')
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    proc = run_cli(["models", "from-workflow", str(bad), str(broken)], local_env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"workflow {bad}: not a ComfyUI workflow" in proc.stderr and f"workflow {broken}: is not JSON" in proc.stderr


def test_start_pulls_what_the_workflows_need(local_env, tmp_path) -> None:
    """SYNCBRIDGE_WORKFLOWS: `start` pulls every model the workflows name before the app starts, and says
    which one no source can supply, with the node that wants it."""
    import sys

    data = b"unet bytes " * 3000
    models = tmp_path / "workspace" / "models"
    (models / "vae").mkdir(parents=True)
    (models / "vae" / "ae.safetensors").write_bytes(b"vae")
    with serve_hf() as hub:
        hub.add("org/flux", {"split/flux-mini.safetensors": data})
        wf = tmp_path / "workflows"
        wf.mkdir()
        _workflow(wf / "flux.json", hub.url)
        (wf / "index.json").write_text('{"not": "a workflow"}')  # in a folder: skipped
        env = {**local_env, "HF_ENDPOINT": hub.url, "SYNCBRIDGE_MODELS_DIR": str(models),
               "SYNCBRIDGE_WORKFLOWS": str(wf)}
        app = "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 3)"  # the model is there first
        target = models / "diffusion_models" / "flux-mini.safetensors"
        proc = run_cli(["start", "--", sys.executable, "-c", app, str(target)], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert target.read_bytes() == data
    assert "workflows: 1 workflow(s), 4 model(s): 1 present, 1 hf, 2 unresolved" in proc.stderr, proc.stderr
    assert "no source for text_encoders/lost.safetensors, wanted by flux.json: #4 CLIPLoader" in proc.stderr


def test_a_real_template_is_pulled_with_its_urls_served_by_the_loopback_hub(local_env, tmp_path) -> None:
    """One of ComfyUI's own templates, as shipped: its huggingface.co URLs go to the Hugging Face source, which
    HF_ENDPOINT points at the loopback hub holding (small stand-ins for) those very repos and files."""
    from syncbridge.models.workflow import needed as merge

    template = next(p for p in _template_files() if p.name == "flux_schnell_full_text_to_image.json")
    models = merge([(template.name, refs_of(json.loads(template.read_text())))])
    assert len(models) >= 3 and all(m.url and m.url.startswith("https://huggingface.co/") for m in models)
    with serve_hf() as hub:
        expected = {}
        for m in models:
            source = url_source(m.url)["hf"]
            data = f"{m.path} stand-in".encode() * 100
            hub.add(source["repo"], {source["file"]: data})
            expected[m.path] = data
        env = {**local_env, "HF_ENDPOINT": hub.url, "SYNCBRIDGE_MODELS_DIR": str(tmp_path / "models")}
        proc = run_cli(["models", "from-workflow", str(template), "--pull"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path, data in expected.items():
        assert (tmp_path / "models" / path).read_bytes() == data, path
