"""The models a ComfyUI workflow needs, read from the workflow itself. Pure: JSON in, references out.

Both formats ComfyUI writes:

* **UI** (what the browser saves, and ComfyUI's own templates): ``nodes[]``, each with its
  ``type`` and ``widgets_values``; a node may name its models with URLs in
  ``properties.models[] = {name, url, directory}``. Nodes inside subgraphs live in
  ``definitions.subgraphs[].nodes`` (most of the templates' references are there).
* **API** (what ``/prompt`` takes and serverless workers receive): ``{id: {class_type, inputs}}``,
  optionally wrapped as ``{"prompt": {...}}``.

A loader's model input (``ckpt_name``, ``lora_name``, ``unet_name``, ...) says the file and, by the
loader's class, its folder; ``properties.models`` adds the URL. :func:`needed` merges the
references of many workflows into one entry per model file, with every node that wants it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import attrs

__all__ = ["ModelRef", "Needed", "LOADERS", "WorkflowError", "refs_of", "needed", "url_source", "source_hosts"]

# Core loaders: class -> (model input, its folder under models/) in widget order. The first input
# of CheckpointLoader is its config (a yaml in models/configs).
LOADERS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "CheckpointLoaderSimple": (("ckpt_name", "checkpoints"),),
    "CheckpointLoader": (("config_name", "configs"), ("ckpt_name", "checkpoints")),
    "ImageOnlyCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "unCLIPCheckpointLoader": (("ckpt_name", "checkpoints"),),
    "LoraLoader": (("lora_name", "loras"),),
    "LoraLoaderModelOnly": (("lora_name", "loras"),),
    "VAELoader": (("vae_name", "vae"),),
    "UNETLoader": (("unet_name", "diffusion_models"),),
    "CLIPLoader": (("clip_name", "text_encoders"),),
    "DualCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders")),
    "TripleCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders"),
                         ("clip_name3", "text_encoders")),
    "QuadrupleCLIPLoader": (("clip_name1", "text_encoders"), ("clip_name2", "text_encoders"),
                            ("clip_name3", "text_encoders"), ("clip_name4", "text_encoders")),
    "CLIPVisionLoader": (("clip_name", "clip_vision"),),
    "ControlNetLoader": (("control_net_name", "controlnet"),),
    "DiffControlNetLoader": (("control_net_name", "controlnet"),),
    "UpscaleModelLoader": (("model_name", "upscale_models"),),
    "LatentUpscaleModelLoader": (("model_name", "latent_upscale_models"),),
    "StyleModelLoader": (("style_model_name", "style_models"),),
    "GLIGENLoader": (("gligen_name", "gligen"),),
    "HypernetworkLoader": (("hypernetwork_name", "hypernetworks"),),
    "PhotoMakerLoader": (("photomaker_model_name", "photomaker"),),
    "AudioEncoderLoader": (("audio_encoder_name", "audio_encoders"),),
    "ModelPatchLoader": (("name", "model_patches"),),
}
MODEL_SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf", ".onnx", ".yaml", ".pt2")


class WorkflowError(ValueError):
    """The document is not a ComfyUI workflow in either format."""


@attrs.frozen
class ModelRef:
    """One node's reference to one model file.

    Attributes:
        name: the file as the workflow names it, relative to its folder (may hold a subfolder).
        directory: the folder under ``models/`` (``checkpoints``, ``loras``...).
        url: where the workflow says it can be downloaded (``properties.models``), if it does.
        node: which node wants it: ``#12 CheckpointLoaderSimple``, inside a subgraph ``#5 > #3 VAELoader``.
        via: where the reference was read (``properties.models``, ``widgets_values[0]``, ``inputs.vae_name``).
    """

    name: str
    directory: str
    url: str | None
    node: str
    via: str

    @property
    def path(self) -> str:
        """The model's path under ``models/``."""
        return f"{self.directory}/{self.name}"


@attrs.frozen
class Needed:
    """One model file the workflows need, with every node (of every workflow) that wants it."""

    path: str
    url: str | None
    wanted_by: tuple[str, ...]

    @property
    def directory(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.path.split("/", 1)[1]


def _clean(name: Any) -> str | None:
    """A model file name as ComfyUI lists it (``sd15\\x.safetensors`` on Windows is ``sd15/x...``), or None."""
    if not isinstance(name, str) or not name.strip():
        return None
    return name.strip().replace("\\", "/").lstrip("/")


def _looks_like_a_model(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def _ui_nodes(doc: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(path prefix, node) for the top-level nodes and every subgraph's nodes."""
    subgraphs = {sg.get("id"): sg for sg in ((doc.get("definitions") or {}).get("subgraphs") or [])
                 if isinstance(sg, Mapping)}
    for node in doc.get("nodes") or []:
        if isinstance(node, Mapping):
            yield "", node
    for sg_id, sg in subgraphs.items():
        label = sg.get("name") or str(sg_id)[:8]
        for node in sg.get("nodes") or []:
            if isinstance(node, Mapping):
                yield f"[{label}] ", node


def _refs_ui(doc: Mapping[str, Any]) -> list[ModelRef]:
    refs: list[ModelRef] = []
    for prefix, node in _ui_nodes(doc):
        kind = str(node.get("type") or "")
        where = f"{prefix}#{node.get('id')} {kind}".strip()
        for entry in (node.get("properties") or {}).get("models") or []:
            if not isinstance(entry, Mapping):
                continue
            name, directory = _clean(entry.get("name")), _clean(entry.get("directory"))
            if name and directory:
                url = entry.get("url") if isinstance(entry.get("url"), str) and entry.get("url") else None
                refs.append(ModelRef(name, directory.strip("/"), url, where, "properties.models"))
        widgets = node.get("widgets_values")
        if isinstance(widgets, list):
            for index, (field, directory) in enumerate(LOADERS.get(kind, ())):
                name = _clean(widgets[index]) if index < len(widgets) else None
                if name and _looks_like_a_model(name):
                    refs.append(ModelRef(name, directory, None, where, f"widgets_values[{index}] ({field})"))
    return refs


def _refs_api(prompt: Mapping[str, Any]) -> list[ModelRef]:
    refs: list[ModelRef] = []
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping):
            continue
        kind = str(node.get("class_type") or "")
        inputs = node.get("inputs") if isinstance(node.get("inputs"), Mapping) else {}
        for field, directory in LOADERS.get(kind, ()):
            name = _clean(inputs.get(field))  # a link to another node is a list, not a name
            if name:
                refs.append(ModelRef(name, directory, None, f"#{node_id} {kind}", f"inputs.{field}"))
    return refs


def _is_api(doc: Mapping[str, Any]) -> bool:
    return bool(doc) and all(isinstance(v, Mapping) and "class_type" in v for v in doc.values())


def refs_of(doc: Any) -> list[ModelRef]:
    """Every model reference in a workflow (UI or API format), in node order.

    Raises:
        WorkflowError: ``doc`` is neither format.
    """
    if isinstance(doc, Mapping) and isinstance(doc.get("nodes"), list):
        return _refs_ui(doc)
    if isinstance(doc, Mapping) and isinstance(doc.get("prompt"), Mapping) and _is_api(doc["prompt"]):
        return _refs_api(doc["prompt"])
    if isinstance(doc, Mapping) and _is_api(doc):
        return _refs_api(doc)
    raise WorkflowError("not a ComfyUI workflow: neither nodes[] (as the UI saves it) nor {id: {class_type, "
                        "inputs}} (the API format)")


def needed(refs_by_workflow: Iterable[tuple[str, Sequence[ModelRef]]]) -> list[Needed]:
    """One entry per model file, in first-seen order, with every ``workflow: node`` that wants it and the
    first URL any of them gives."""
    merged: dict[str, tuple[str | None, list[str]]] = {}
    for workflow, refs in refs_by_workflow:
        for ref in refs:
            url, wanted = merged.setdefault(ref.path, (None, []))
            who = f"{workflow}: {ref.node}" if workflow else ref.node
            if who not in wanted:
                wanted.append(who)
            if url is None and ref.url:
                merged[ref.path] = (ref.url, wanted)
    return [Needed(path, url, tuple(wanted)) for path, (url, wanted) in merged.items()]


_HF_PATH = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/(?:resolve|blob)/(?P<rev>[^/]+)/(?P<file>.+)$")
_CIVITAI_DOWNLOAD = re.compile(r"^/api/download/models/(?P<version>\d+)/?$")


def source_hosts(endpoint: str, public: str) -> tuple[str, ...]:
    """The hosts whose URLs go through a source: its public host and the one of its endpoint setting
    (``HF_ENDPOINT``, ``SYNCBRIDGE_CIVITAI_ENDPOINT``)."""
    return tuple(dict.fromkeys(h for h in (public, (urlsplit(endpoint).hostname or "").lower()) if h))


def url_source(url: str, *, hf_endpoint: str = "https://huggingface.co",
               civitai_endpoint: str = "https://civitai.com") -> dict[str, Any]:
    """The manifest source of a download URL: ``{"hf": {repo, file, revision}}`` for a Hugging Face
    ``resolve``/``blob`` URL, ``{"civitai": {"version_id": V}}`` for a CivitAI download URL (or a model
    page with ``?modelVersionId=V``), else ``{"url": url}``. Through the Hugging Face and CivitAI
    sources, ``HF_TOKEN``, ``CIVITAI_API_KEY`` and the bucket cache apply to it.
    """
    hf_hosts = source_hosts(hf_endpoint, "huggingface.co")
    civitai_hosts = source_hosts(civitai_endpoint, "civitai.com")
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if host in hf_hosts or any(host.endswith("." + h) for h in hf_hosts):
        match = _HF_PATH.match(unquote(parts.path))
        if match:
            return {"hf": {"repo": match["repo"], "file": match["file"], "revision": match["rev"]}}
    if host in civitai_hosts or any(host.endswith("." + h) for h in civitai_hosts):
        match = _CIVITAI_DOWNLOAD.match(parts.path)
        if match:
            return {"civitai": {"version_id": int(match["version"])}}
        version = re.search(r"(?:^|&)modelVersionId=(\d+)", parts.query)
        if parts.path.startswith("/models/") and version:
            return {"civitai": {"version_id": int(version.group(1))}}
    return {"url": url}
