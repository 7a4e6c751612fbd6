"""Model manifests (TOML): parse, validate, merge (the types and the selection: :mod:`.spec`). Pure.

A manifest lists the models a pod needs and where each can come from::

    [settings]
    models_dir = "/workspace/ComfyUI/models"
    cache_prefix = "models"
    write_back = false
    parallel = 3

    [[model]]
    name = "sdxl-vae"
    path = "vae/sdxl_vae.safetensors"
    sha256 = "..."
    hf = { repo = "stabilityai/sdxl-vae", file = "sdxl_vae.safetensors" }

Every problem in every manifest is reported together in one
:class:`ManifestError`, each naming the file, line and key (with a "did you
mean" for unknown keys). Several manifests merge into one
:class:`Manifest`; two entries with the same ``path`` (or a path inside
another model's folder) are an error naming both.

The only I/O here is reading the files the caller names (as in
:mod:`syncbridge.config`); selection by ``enabled_by`` takes the environment
as a mapping passed in.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

from ..errors import Problem, UnsafePathError
from ..keys import relpath_to_key
from ..tomlsrc import Lines, TOMLDecodeError, did_you_mean, error_line, loads
from .spec import (DEFAULT_CACHE_PREFIX, DEFAULT_MODELS_DIR, DEFAULT_PARALLEL, SNAPSHOT_INDEX, TIERS, CivitaiSpec,
                   HfSpec, Manifest, ManifestError, ModelSpec, Selection, select_models, tier_rank)

__all__ = [
    "TIERS",
    "DEFAULT_MODELS_DIR",
    "SNAPSHOT_INDEX",
    "HfSpec",
    "CivitaiSpec",
    "ModelSpec",
    "Manifest",
    "ManifestError",
    "Selection",
    "parse_manifest",
    "merge_manifests",
    "load_manifests",
    "select_models",
    "tier_rank",
]

SETTINGS_KEYS = ("models_dir", "cache_prefix", "write_back", "parallel")
MODEL_KEYS = ("name", "path", "sha256", "size", "enabled_by", "min_tier", "optional", "required", "write_back", "hf",
              "civitai", "url")
HF_KEYS = ("repo", "file", "revision", "repo_type", "snapshot", "allow")
CIVITAI_KEYS = ("version_id", "file")
REPO_TYPES = ("model", "dataset", "space")
_SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


@attrs.frozen
class _Parsed:
    """One manifest file: its settings (value, where) and its models."""

    file: str
    settings: Mapping[str, tuple[Any, str]]
    models: tuple[ModelSpec, ...]
    # entries with problems of their own whose name and path are known: still checked for duplicates,
    # so one run lists every problem of the manifest (before, a duplicate showed up a run later)
    partial: tuple["_Entry", ...] = ()
    problems: tuple[Problem, ...] = ()


@attrs.frozen
class _Entry:
    name: str | None
    path: str | None
    is_snapshot: bool
    origin: str


def _check_path(text: str) -> str:
    """A model path: relative, ``/``-separated, never leaving the models folder."""
    if not isinstance(text, str) or not text.strip():
        raise UnsafePathError("must be a non-empty relative path", path=str(text))
    if text.startswith("/") or text.startswith("~"):
        raise UnsafePathError(f"{text!r} is absolute; it must be relative to models_dir", path=text)
    normal = posixpath.normpath(text)
    if normal.startswith("../") or normal == "..":
        raise UnsafePathError(f"{text!r} leaves models_dir", path=text)
    try:
        return relpath_to_key(text.rstrip("/"))
    except UnsafePathError as exc:
        raise UnsafePathError(f"{exc} (it must stay inside models_dir)", path=text) from None


def _flag(value: Any) -> bool | None:
    """A manifest's true/false, with the same words as the configuration (true/false/1/0/yes/no)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def parse_manifest(text: str, *, path: str | Path = "<manifest>") -> _Parsed:
    """Parse and validate one manifest's text.

    Raises:
        ManifestError: every problem in this file.
    """
    parsed = _parse(text, path=path)
    if parsed.problems:
        raise ManifestError(parsed.problems)
    return parsed


def _parse(text: str, *, path: str | Path) -> _Parsed:
    """Parse one manifest's text; every problem is in the result's ``problems`` (nothing raised)."""
    file = str(path)
    try:
        doc = loads(text)
    except TOMLDecodeError as exc:
        line = error_line(exc)
        where = f"{file}:{line}" if line else file
        return _Parsed(file, {}, (), problems=(Problem(where, f"not valid TOML: {exc}"),))
    lines = Lines(text)
    problems: list[Problem] = []

    def where(table: str | None, index: int | None, key: str | None, label: str) -> str:
        # the key's line, else its table's header
        number = lines.of(table, key, index=index) or lines.of(table, None, index=index)
        return f"{file}:{number}" + (f": {label}" if label else "") if number else f"{file}: {label}"

    for top in doc:
        if top not in ("settings", "model"):
            problems.append(Problem(where(None, None, top, top),
                                    "unknown table" + did_you_mean(top, ["settings", "model"])))

    settings: dict[str, tuple[Any, str]] = {}
    body = doc.get("settings", {})
    if not isinstance(body, dict):
        problems.append(Problem(where(None, None, "settings", "settings"), "must be a table: [settings]"))
        body = {}
    for key, value in body.items():
        at = where("settings", None, key, f"settings.{key}")
        if key not in SETTINGS_KEYS:
            problems.append(Problem(at, "unknown key" + did_you_mean(key, SETTINGS_KEYS)))
        elif key == "models_dir":
            if not isinstance(value, str) or not value.startswith(("/", "~")):
                problems.append(Problem(at, f"must be an absolute path, got {value!r}"))
            else:
                settings[key] = (value, at)
        elif key == "cache_prefix":
            if not isinstance(value, str) or value.startswith("/") or ".." in value.split("/") or "\\" in value:
                problems.append(Problem(at, f"must be a relative key prefix without '..', got {value!r}"))
            else:
                settings[key] = (value.strip("/"), at)
        elif key == "write_back":
            if _flag(value) is None:
                problems.append(Problem(at, f"must be true or false (or 1/0, yes/no), got {value!r}"))
            else:
                settings[key] = (_flag(value), at)
        elif key == "parallel":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(Problem(at, f"must be a whole number >= 1, got {value!r}"))
            else:
                settings[key] = (value, at)
    default_write_back = settings.get("write_back", (False, ""))[0]

    tables = doc.get("model", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        problems.append(Problem(where(None, None, "model", "model"), "must be an array of tables: [[model]]"))
        tables = []
    models: list[ModelSpec] = []
    partial: list[_Entry] = []
    for index, table in enumerate(tables):
        raw_name = table.get("name")
        label = f"model {raw_name!r}" if isinstance(raw_name, str) else f"[[model]] #{index + 1}"

        def at(key: str | None, _i: int = index, _label: str = label) -> str:
            return where("model", _i, key, f"{_label} key {key}" if key else _label)

        bad = len(problems)
        for key in table:
            if key not in MODEL_KEYS:
                problems.append(Problem(at(key), "unknown key" + did_you_mean(key, MODEL_KEYS)))
        if not isinstance(raw_name, str) or not raw_name.strip():
            problems.append(Problem(at("name"), "every [[model]] needs name = \"...\""))
        path = table.get("path")
        rel = ""
        if path is None:
            problems.append(Problem(at("path"), "missing: path = \"folder/file.safetensors\" (relative to models_dir)"))
        else:
            try:
                rel = _check_path(path)
            except UnsafePathError as exc:
                problems.append(Problem(at("path"), str(exc)))
        sha = table.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not _SHA256_RE.match(sha)):
            problems.append(Problem(at("sha256"), f"must be 64 hex digits, got {sha!r}"))
        size = table.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            problems.append(Problem(at("size"), f"must be a whole number of bytes, got {size!r}"))
        enabled_by = table.get("enabled_by")
        if enabled_by is not None and (not isinstance(enabled_by, str) or not _ENV_NAME_RE.match(enabled_by)):
            problems.append(Problem(at("enabled_by"), f"must be an environment variable name, got {enabled_by!r}"))
        tier = table.get("min_tier")
        if tier is not None and tier not in TIERS:
            problems.append(Problem(at("min_tier"), f"must be one of {', '.join(TIERS)}, got {tier!r}"
                                    + did_you_mean(str(tier), TIERS)))
        flags = {}
        for flag in ("optional", "required", "write_back"):
            if flag in table:
                flags[flag] = _flag(table[flag])
                if flags[flag] is None:
                    problems.append(Problem(at(flag), f"must be true or false (or 1/0, yes/no), got {table[flag]!r}"))
        hf = _hf(table.get("hf"), at, problems) if "hf" in table else None
        civitai = _civitai(table.get("civitai"), at, problems) if "civitai" in table else None
        url = table.get("url")
        if url is not None and (not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url)):
            problems.append(Problem(at("url"), f"must be an http(s) URL, got {url!r}"))
        if hf is not None and hf.snapshot:
            if civitai is not None or url is not None:
                problems.append(Problem(at("hf"), "a snapshot (a folder) cannot also have civitai or url sources"))
            if sha is not None or size is not None:
                problems.append(Problem(at("sha256" if sha is not None else "size"),
                                        "a snapshot is a folder: its files are verified against the Hub's metadata"))
        origin = f"{file}:{lines.of('model', None, index=index)}"
        if len(problems) > bad:
            if rel or isinstance(raw_name, str):
                partial.append(_Entry(raw_name.strip() if isinstance(raw_name, str) else None, rel or None,
                                      bool(isinstance(table.get("hf"), dict) and table["hf"].get("snapshot") is True),
                                      origin))
            continue
        models.append(ModelSpec(
            name=raw_name.strip(), path=rel, sha256=sha.lower() if sha else None, size=size, enabled_by=enabled_by,
            min_tier=tier, optional=bool(flags.get("optional", False)), required=bool(flags.get("required", False)),
            write_back=bool(flags["write_back"] if "write_back" in flags else default_write_back), hf=hf,
            civitai=civitai, url=url, origin=origin))
    return _Parsed(file, settings, tuple(models), tuple(partial), tuple(problems))


def _inline_table(value: Any, name: str, keys: Sequence[str], example: str, at,
                  problems: list[Problem]) -> bool:
    """Whether ``value`` is a table (``name = { ... }``); each unknown key is a problem with a "did you mean"."""
    if not isinstance(value, dict):
        problems.append(Problem(at(name), f"must be a table: {name} = {example}"))
        return False
    for key in value:
        if key not in keys:
            problems.append(Problem(at(name), f"unknown key {name}.{key}" + did_you_mean(key, keys)))
    return True


def _hf(value: Any, at, problems: list[Problem]) -> HfSpec | None:
    count = len(problems)
    if not _inline_table(value, "hf", HF_KEYS, '{ repo = "owner/name", file = "..." }', at, problems):
        return None
    repo = value.get("repo")
    if repo is None:
        problems.append(Problem(at("hf"), "hf.repo is missing: repo = \"owner/name\""))
    elif not isinstance(repo, str) or not _REPO_RE.match(repo):
        problems.append(Problem(at("hf"), f"hf.repo must be \"owner/name\" (or a legacy single name such as gpt2), "
                                          f"got {repo!r}"))
    snapshot = value.get("snapshot", False)
    if not isinstance(snapshot, bool):
        problems.append(Problem(at("hf"), f"hf.snapshot must be true or false, got {snapshot!r}"))
    file = value.get("file")
    if snapshot is True:
        if file is not None:
            problems.append(Problem(at("hf"), "hf.file and hf.snapshot = true exclude each other"))
    elif not isinstance(file, str) or not file:
        problems.append(Problem(at("hf"), "hf.file is required (or snapshot = true for a whole repo)"))
    else:
        try:
            relpath_to_key(file)
        except UnsafePathError as exc:
            problems.append(Problem(at("hf"), f"hf.file: {exc}"))
    revision = value.get("revision", "main")
    if not isinstance(revision, str) or not revision or "\n" in revision:
        problems.append(Problem(at("hf"), f"hf.revision must be a branch, tag or commit, got {revision!r}"))
    repo_type = value.get("repo_type", "model")
    if repo_type not in REPO_TYPES:
        problems.append(Problem(at("hf"), f"hf.repo_type must be one of {', '.join(REPO_TYPES)}, got {repo_type!r}"))
    allow = value.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
        problems.append(Problem(at("hf"), "hf.allow must be a list of glob patterns"))
    elif allow and snapshot is not True:
        problems.append(Problem(at("hf"), "hf.allow only applies to snapshot = true"))
    if len(problems) > count:
        return None
    return HfSpec(repo=repo, file=file, revision=revision, repo_type=repo_type, snapshot=snapshot,
                  allow=tuple(allow))


def _civitai(value: Any, at, problems: list[Problem]) -> CivitaiSpec | None:
    count = len(problems)
    if not _inline_table(value, "civitai", CIVITAI_KEYS, "{ version_id = 12345 }", at, problems):
        return None
    version = value.get("version_id")
    if version is None:
        problems.append(Problem(at("civitai"), "civitai.version_id is missing: version_id = 12345"))
    elif isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        problems.append(Problem(at("civitai"), f"civitai.version_id must be a positive whole number, got {version!r}"))
    file = value.get("file")
    if file is not None and (not isinstance(file, str) or not file):
        problems.append(Problem(at("civitai"), f"civitai.file must be a file name, got {file!r}"))
    if len(problems) > count:
        return None
    return CivitaiSpec(version_id=version, file=file)


def merge_manifests(parsed: Sequence[_Parsed], *, models_dir: str | Path | None = None,
                    problems: Sequence[Problem] = ()) -> Manifest:
    """Merge parsed manifests into one.

    ``models_dir`` and ``cache_prefix`` must agree where several files set them;
    ``parallel`` is the largest given; ``write_back`` was already resolved per
    model from its own file. A duplicate ``path`` (or one inside another
    model's snapshot folder) is an error naming both entries.

    Args:
        models_dir: overrides every file's ``models_dir`` (``SYNCBRIDGE_MODELS_DIR``).

    Raises:
        ManifestError: conflicts, naming each side, with ``problems`` found before (one list in all).
    """
    problems = list(problems)
    chosen: dict[str, tuple[Any, str]] = {}
    parallel = None
    for item in parsed:
        for key, (value, at) in item.settings.items():
            if key == "parallel":
                parallel = max(parallel or 0, value)
                continue
            if key == "write_back":
                continue
            if key in chosen and chosen[key][0] != value and not (key == "models_dir" and models_dir):
                problems.append(Problem(at, f"{key} = {value!r} conflicts with {chosen[key][0]!r} set at "
                                            f"{chosen[key][1]}"))
            chosen.setdefault(key, (value, at))
    by_path: dict[str, ModelSpec] = {}
    by_name: dict[str, ModelSpec] = {}
    snapshots: dict[str, ModelSpec] = {}
    models: list[ModelSpec] = []
    for item in parsed:
        for model in (*item.models, *item.partial):
            if model.path is None or model.name is None:
                continue
            other = by_path.get(model.path)
            if other is not None:
                problems.append(Problem(model.origin, f"model {model.name!r}: path {model.path!r} is also the path of "
                                                      f"model {other.name!r} ({other.origin})"))
                continue
            parts = model.path.split("/")
            clash = next((snapshots[a] for a in ("/".join(parts[:i]) for i in range(1, len(parts)))
                          if a in snapshots), None)
            if clash is None and model.is_snapshot:
                clash = next((o for p, o in by_path.items() if p.startswith(model.path + "/")), None)
            if clash is not None:
                problems.append(Problem(model.origin, f"model {model.name!r}: path {model.path!r} overlaps the "
                                                      f"snapshot folder of model {clash.name!r} ({clash.origin})"))
                continue
            if model.name in by_name:
                other = by_name[model.name]
                problems.append(Problem(model.origin, f"model name {model.name!r} is also used at {other.origin}"))
                continue
            by_path[model.path] = model
            by_name[model.name] = model
            if model.is_snapshot:
                snapshots[model.path] = model
            if isinstance(model, ModelSpec):
                models.append(model)
    if problems:
        raise ManifestError(problems)
    base = models_dir if models_dir else chosen.get("models_dir", (DEFAULT_MODELS_DIR, ""))[0]
    return Manifest(
        models_dir=Path(str(base)).expanduser(),
        cache_prefix=chosen.get("cache_prefix", (DEFAULT_CACHE_PREFIX, ""))[0],
        parallel=parallel or DEFAULT_PARALLEL,
        models=tuple(models),
        files=tuple(p.file for p in parsed),
        write_back=any(p.settings.get("write_back", (False, ""))[0] for p in parsed),
    )


def load_manifests(paths: Sequence[str | Path], *, models_dir: str | Path | None = None) -> Manifest:
    """Read, validate and merge manifest files; all problems of all files in one error.

    Raises:
        ManifestError: unreadable files, invalid entries, conflicts.
    """
    parsed: list[_Parsed] = []
    problems: list[Problem] = []
    if not paths:
        raise ManifestError([Problem("manifests", "none given: pass MANIFEST paths or set SYNCBRIDGE_MODELS "
                                                  "(several separated by ':')")])
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(Problem(str(path), f"cannot be read: {exc.strerror or exc}"))
            continue
        except UnicodeDecodeError:
            problems.append(Problem(str(path), "is not UTF-8 text"))
            continue
        item = _parse(text, path=path)
        parsed.append(item)
        problems += item.problems
    return merge_manifests(parsed, models_dir=models_dir, problems=problems)
