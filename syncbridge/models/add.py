"""``syncbridge models add SOURCE``: a manifest entry from a link, with the file's own name, size and sha256.

SOURCE is ``hf:REPO/PATH[@REV]``, a Hugging Face ``resolve``/``blob`` URL, a CivitAI model page
(``/models/ID?modelVersionId=V``) or download URL (``/api/download/models/V``), or any http(s) URL.
The name, size and sha256 come from the source's own metadata (Hugging Face's paths-info, CivitAI's
model version ``files[].hashes``); a plain URL is downloaded into the models folder and hashed (or,
with ``--no-download``, entered without a sha256). The folder comes from ``--dir``, else CivitAI's
model type. The entry is appended with tomlkit, so the manifest keeps its comments and layout, and a
second entry for the same path or name is refused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping
from urllib.parse import parse_qsl, urlsplit

import attrs

from ..errors import ConfigError, Problem
from ..fsutil import atomic_write_bytes, temp_beside
from .source import OnBytes
from .spec import CivitaiSpec, HfSpec, ModelSpec
from .workflow import source_hosts, url_source

__all__ = ["Added", "CIVITAI_FOLDERS", "parse_source", "describe", "append_entry"]

# CivitAI's model types and the ComfyUI folder each goes in.
CIVITAI_FOLDERS: Mapping[str, str] = {
    "Checkpoint": "checkpoints", "LORA": "loras", "LoCon": "loras", "DoRA": "loras",
    "TextualInversion": "embeddings", "VAE": "vae", "Controlnet": "controlnet", "Upscaler": "upscale_models",
    "Hypernetwork": "hypernetworks", "MotionModule": "animatediff_models", "Detection": "ultralytics",
}
_HF_SHORT = re.compile(r"^hf:(?P<repo>[^/@\s]+/[^/@\s]+)/(?P<file>[^@\s]+?)(?:@(?P<rev>[^@/\s]+))?$")


@attrs.frozen
class Added:
    """The entry a SOURCE gives: what goes into the manifest."""

    name: str
    path: str
    source: dict[str, Any]
    size: int | None
    sha256: str | None

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        if self.sha256:
            out["sha256"] = self.sha256
        if self.size is not None:
            out["size"] = self.size
        out.update(self.source)
        return out


def _problem(what: str, message: str) -> ConfigError:
    return ConfigError([Problem(what, message)])


def parse_source(text: str, *, hf_endpoint: str = "https://huggingface.co",
                 civitai_endpoint: str = "https://civitai.com") -> dict[str, Any]:
    """The manifest source of SOURCE (``{"hf": {...}}``, ``{"civitai": {...}}`` or ``{"url": ...}``).

    Raises:
        ConfigError: naming SOURCE when it is none of the accepted forms.
    """
    text = text.strip()
    short = _HF_SHORT.match(text)
    if short:
        return {"hf": {"repo": short["repo"], "file": short["file"], "revision": short["rev"] or "main"}}
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _problem(f"SOURCE {text!r}", "is not hf:REPO/PATH[@REV], a Hugging Face or CivitAI URL, or an "
                                           "http(s) URL")
    secret = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)
              if re.search(r"token|key|secret|signature|password|auth|credential", name, re.IGNORECASE)]
    if secret or parts.password:
        what = f"its {', '.join(sorted(set(secret)))} parameter" if secret else "a password"
        raise _problem("SOURCE", f"a URL with {what} would put a credential in the manifest: pass the link without "
                                 f"it (HF_TOKEN and CIVITAI_API_KEY reach their sources on their own)")
    source = url_source(text, hf_endpoint=hf_endpoint, civitai_endpoint=civitai_endpoint)
    host = parts.hostname.lower()
    if "url" in source and host in source_hosts(hf_endpoint, "huggingface.co"):
        raise _problem(f"SOURCE {text!r}", "is a Hugging Face URL but not a file's: use its resolve/ or blob/ "
                                           "link, or hf:REPO/PATH")
    if "url" in source and host in source_hosts(civitai_endpoint, "civitai.com"):
        raise _problem(f"SOURCE {text!r}", "is a CivitAI page without a version: open the version and copy the "
                                           "link with ?modelVersionId=, or its download link")
    return source


def describe(source: Mapping[str, Any], *, sources: Mapping[str, Any], folder: str | None, name: str | None,
             download_to: Callable[[str], Path] | None, on_bytes: OnBytes = lambda _n: None) -> Added:
    """Ask the source what it would deliver, and build the entry.

    Args:
        sources: the ``hf``, ``civitai`` and ``url`` sources (as :func:`~.sources.default_sources` makes them).
        folder: the ComfyUI folder (``--dir``); default CivitAI's model type.
        name: the entry's name (default the file name).
        download_to: for a plain URL, where a file at a models-folder path goes (``None``: do not
            download, so no sha256). The file is written beside its target and renamed into place.
    """
    kind = next(iter(source))
    spec = ModelSpec(name="added", path="added",
                     hf=HfSpec(**source["hf"]) if kind == "hf" else None,
                     civitai=CivitaiSpec(**source["civitai"]) if kind == "civitai" else None,
                     url=source["url"] if kind == "url" else None)
    offer = sources[kind].offer(spec)
    (remote,) = offer.files
    meta = offer.meta or {}
    if kind == "hf":
        file_name = PurePosixPath(source["hf"]["file"]).name
    elif kind == "civitai":
        file_name = str(meta.get("file") or f"civitai-{source['civitai']['version_id']}.safetensors")
        folder = folder or CIVITAI_FOLDERS.get(str(meta.get("type")))
    else:
        file_name = PurePosixPath(urlsplit(source["url"]).path).name or "model.bin"
    if not folder:
        raise _problem("--dir", "is needed: the source does not say which ComfyUI folder the model goes in "
                                "(checkpoints, loras, vae, diffusion_models, text_encoders, ...)")
    path = f"{folder.strip('/')}/{file_name}"
    size, sha = remote.size, remote.sha256
    if kind == "url" and download_to is not None:
        target = download_to(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with temp_beside(target) as (fd, temp):
            os.close(fd)
            fetched = sources["url"].fetch(spec, remote, Path(temp), on_bytes=on_bytes)
            os.replace(temp, target)
        size, sha = fetched.size, fetched.sha256
    return Added(name or file_name, path, dict(source), size, sha)


def append_entry(manifest: Path, added: Added, *, models_dir: str | None = None) -> None:
    """Append ``[[model]]`` to ``manifest`` keeping its comments and layout (a new file gets a header).

    Raises:
        ConfigError: the manifest is not valid TOML, or already has a model with that path or name.
    """
    import tomlkit

    where = f"manifest {manifest}"
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "# Models for syncbridge (docs/models.md); `syncbridge models add` appends to it.\n"
        if models_dir:
            text += f"\n[settings]\nmodels_dir = {tomlkit.string(models_dir).as_string()}\n"
    try:
        doc = tomlkit.parse(text)
    except Exception as exc:  # noqa: BLE001 - tomlkit's parse errors have no common base worth naming
        raise _problem(where, f"is not valid TOML: {exc}") from exc
    models = doc.get("model")
    for existing in list(models or []):
        if existing.get("path") == added.path:
            raise _problem(where, f"has a model with path {added.path!r} already ({existing.get('name')!r})")
        if existing.get("name") == added.name:
            raise _problem(where, f"has a model named {added.name!r} already; pass --name")
    table = tomlkit.table()
    for key, value in added.entry().items():
        if isinstance(value, dict):
            inline = tomlkit.inline_table()
            inline.update(value)
            table[key] = inline
        else:
            table[key] = value
    if models is None:
        doc["model"] = tomlkit.aot()
        doc["model"].append(table)
    else:
        models.append(table)
    atomic_write_bytes(manifest, tomlkit.dumps(doc).encode("utf-8"), mode=0o644)
