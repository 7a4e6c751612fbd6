"""A serverless job's input, checked before anything runs. Pure: the job's JSON in, a request or an error out.

The input is worker-comfyui's: ``{"workflow": {API format}, "images": [{"name", "image"}]}``, where
``input`` and ``workflow`` may each be given as JSON text (worker-comfyui takes the input so), and
``image`` is base64 (a ``data:`` URI prefix is accepted) or, when ``SYNCBRIDGE_JOB_IMAGE_URLS`` allows
it, an https URL (fetched by :mod:`~syncbridge.jobs.comfy`, which checks the address). Every problem
is a :class:`~syncbridge.errors.JobError` of kind ``input`` naming the field (``input.images[2].name``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Mapping
from urllib.parse import urlsplit

import attrs

from ..errors import JobError

__all__ = ["InputImage", "JobRequest", "parse_input"]

_NAME_RE = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")


@attrs.frozen
class InputImage:
    """One input image: its file name under ComfyUI's input folder and its bytes, or the URL to fetch."""

    name: str
    data: bytes | None = attrs.field(repr=False, default=None)
    url: str | None = None


@attrs.frozen
class JobRequest:
    workflow: Mapping[str, Any]
    images: tuple[InputImage, ...] = ()


def _bad(field: str, message: str) -> JobError:
    return JobError(f"{field}: {message}", kind="input")


def _json_text(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _bad(field, f"is a string that is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                   if isinstance(exc, json.JSONDecodeError) else "is a string that is not JSON") from None


def _is_api(doc: Mapping[str, Any]) -> bool:
    return bool(doc) and all(isinstance(v, Mapping) and isinstance(v.get("class_type"), str)
                             and isinstance(v.get("inputs", {}), Mapping) for v in doc.values())


def parse_input(job_input: Any, *, allow_urls: bool, allow_http: bool = False, max_bytes: int) -> JobRequest:
    """Check a job's ``input``.

    Args:
        allow_urls: an image may be an https URL (else base64 only).
        allow_http: plain http URLs too (with the private-address setting: tests, a private network).
        max_bytes: the largest image accepted (its decoded size).

    Raises:
        JobError: (``input``) naming the field at fault.
    """
    if isinstance(job_input, str):  # worker-comfyui takes the input as a JSON string too
        job_input = _json_text(job_input, "input")
    if not isinstance(job_input, Mapping):
        raise _bad("input", "must be an object with a workflow (ComfyUI's API format)")
    workflow = job_input.get("workflow")
    if workflow is None:
        raise _bad("input.workflow", "missing: the workflow in ComfyUI's API format (Export (API) in ComfyUI)")
    if isinstance(workflow, str):  # the exported file's text
        workflow = _json_text(workflow, "input.workflow")
    if isinstance(workflow, Mapping) and isinstance(workflow.get("prompt"), Mapping) and _is_api(workflow["prompt"]):
        workflow = workflow["prompt"]
    if not isinstance(workflow, Mapping) or not workflow:
        raise _bad("input.workflow", "must be an object {node_id: {class_type, inputs}}")
    if isinstance(workflow.get("nodes"), list):
        raise _bad("input.workflow", "is in the UI format (nodes[]); send the API format (in ComfyUI: Export (API))")
    if not _is_api(workflow):
        bad = next(str(k) for k, v in workflow.items() if not (isinstance(v, Mapping)
                                                               and isinstance(v.get("class_type"), str)))
        raise _bad(f"input.workflow[{bad!r}]", "is not a node {class_type, inputs} (ComfyUI's API format)")
    raw_images = job_input.get("images")
    raw_images = [] if raw_images is None else raw_images
    if not isinstance(raw_images, list):
        raise _bad("input.images", "must be a list of {name, image}")
    images: list[InputImage] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw_images):
        where = f"input.images[{index}]"
        if not isinstance(entry, Mapping):
            raise _bad(where, "must be an object {name, image}")
        name, image = entry.get("name"), entry.get("image")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", "..") or name.startswith("."):
            raise _bad(f"{where}.name", f"must be a plain file name (no folder, not hidden), got {name!r}")
        if name in seen:
            raise _bad(f"{where}.name", f"{name!r} is given twice")
        seen.add(name)
        if not isinstance(image, str) or not image:
            raise _bad(f"{where}.image", "must be a base64 string" + (" or an https URL" if allow_urls else ""))
        scheme = urlsplit(image).scheme.lower() if "://" in image[:12] else ""
        if scheme:
            if not allow_urls:
                raise _bad(f"{where}.image", "is a URL; this worker takes base64 images only "
                                             "(SYNCBRIDGE_JOB_IMAGE_URLS=true allows https URLs)")
            if scheme != "https" and not (allow_http and scheme == "http"):
                raise _bad(f"{where}.image", f"only https URLs are fetched, got a {scheme} URL")
            images.append(InputImage(name, url=image))
            continue
        text = image.split(",", 1)[1] if image.startswith("data:") and "," in image else image
        text = "".join(text.split())
        if len(text) * 3 // 4 > max_bytes + 3:
            raise _bad(f"{where}.image", f"is larger than the {max_bytes / 1e6:g} MB allowed "
                                         "(SYNCBRIDGE_JOB_IMAGE_MAX_MB)")
        try:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"{where}.image", "is not valid base64") from None
        if not data:
            raise _bad(f"{where}.image", "is empty")
        if len(data) > max_bytes:
            raise _bad(f"{where}.image", f"is larger than the {max_bytes / 1e6:g} MB allowed "
                                         "(SYNCBRIDGE_JOB_IMAGE_MAX_MB)")
        images.append(InputImage(name, data=data))
    return JobRequest(workflow, tuple(images))
