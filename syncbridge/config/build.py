"""Build the :class:`~syncbridge.config.model.Config` from parsed sources: pure, every fact passed in.

The TOML document, the environment mapping, explicit overrides and the host's facts
(:class:`Host`: home folder, host name, how to tell a mount point) come from the caller;
nothing here reads a file, the process environment or the machine. Every problem is
collected and raised together.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import attrs

from ..errors import ConfigError, Problem, UnsafePathError
from ..keys import render_prefix
from ..tomlsrc import Lines, did_you_mean as suggest
from .model import (BisyncConfig, Config, FleetConfig, Folder, JobsConfig, ModelsConfig, RcloneConfig, RemoteConfig,
                    StartConfig, WatchConfig)
from .settings import (BY_KEY, CHECKED_ENV_PREFIXES, EXTRA_ENV, EXTRA_ENV_PREFIXES, FOLDER_KEYS, FOLDER_MODES,
                       RENAMED_KEYS, SECTIONS, SETTINGS, convert, expand_home)

__all__ = ["Host", "build_config", "infer_provider", "SECTION_DERIVED"]

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@attrs.frozen
class Host:
    """What the configuration needs to know about the machine, found by the caller."""

    home: str  # "~" in paths, and the default state folder
    hostname: str  # the default pod id
    is_mount: Callable[[str], bool]  # whether the workspace is a mount point (storage_mode auto)
    user_home: Callable[[str], str | None] = lambda _user: None  # "~user" in paths (None: unknown user)

    def expand(self, path: str) -> Path:
        """``path`` with ``~`` and ``~user`` expanded."""
        return expand_home(path, self.home, self.user_home)


# Fields of a section class that are not a setting read as is: computed in build_config.
SECTION_DERIVED = {RemoteConfig: "*", WatchConfig: ("prefix",), ModelsConfig: ("hf_endpoint", "civitai_endpoint"),
                   FleetConfig: ("prefix",), JobsConfig: ("key", "comfyui_url")}


def _section(cls: type, get: Callable[[str], Any], **derived: Any) -> Any:
    """A section object whose fields are the settings of the same name (``WatchConfig.dir`` is ``watch.dir``)."""
    section = cls.__name__.removesuffix("Config").lower()
    values = {f.name: derived[f.name] if f.name in derived else get(f"{section}.{f.name}") for f in attrs.fields(cls)}
    return cls(**values)


class _Collector:
    """Gathers problems so they can be reported together."""

    def __init__(self, toml_text: str, toml_path: Path | None) -> None:
        self.problems: list[Problem] = []
        self.lines = Lines(toml_text) if toml_text else None
        self.path = toml_path

    def toml_where(self, section: str | None, key: str | None, *, display: str | None = None,
                   index: int | None = None, what: str = "TOML key") -> str:
        line = self.lines.of(section, key, index=index) if self.lines is not None else None
        name = display or (f"{section}.{key}" if section and key else (key or section or ""))
        loc = f"{self.path}" + (f":{line}" if line else "")
        return f"{what} {name} ({loc})"

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))


def _endpoint_with_bucket(parts: Any, bucket: str) -> bool:
    """An endpoint URL that carries a bucket (or a query): R2's own endpoints have no path at all; another
    service's may have one (a gateway's prefix, the R2 emulator's /cdn-cgi/local/r2/s3), but not one that
    ends with the bucket's name."""
    path = parts.path.strip("/")
    if parts.query or parts.fragment:
        return True
    if not path:
        return False
    host = (parts.hostname or "").lower()
    return host.endswith(".r2.cloudflarestorage.com") or path.rsplit("/", 1)[-1] == bucket


def infer_provider(endpoint: str) -> tuple[str, str]:
    """(rclone provider, region) for an endpoint URL."""
    host = (urlsplit(endpoint).hostname or "").lower()
    if host.endswith(".r2.cloudflarestorage.com") or host == "r2.cloudflarestorage.com":
        return "Cloudflare", "auto"
    if host.endswith(".amazonaws.com"):
        match = re.search(r"s3[.-]([a-z0-9-]+)\.amazonaws\.com$", host)
        region = match.group(1) if match and match.group(1) not in ("external-1", "accelerate") else "us-east-1"
        return "AWS", region
    if host.endswith("wasabisys.com"):
        return "Wasabi", "us-east-1"
    return "Other", "us-east-1"


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _default_state_dir(environ: Mapping[str, str], home: str, workspace: Path, storage_mode: str) -> Path:
    if storage_mode == "persistent":
        return workspace / ".syncbridge"
    base = environ.get("XDG_STATE_HOME") or f"{home.rstrip('/')}/.local/state"
    return Path(base) / "syncbridge"


def build_config(
    environ: Mapping[str, str],
    doc: Mapping[str, Any],
    *,
    toml_text: str = "",
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    host: Host,
) -> Config:
    """Build a :class:`Config` from already-parsed sources and the host's facts. See :func:`~syncbridge.config.load_config`."""
    col = _Collector(toml_text, toml_path)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    notices: list[str] = []

    # 1. TOML: check structure, unknown sections and keys first.
    folder_tables: list[tuple[int, Mapping[str, Any]]] = []
    for section, body in doc.items():
        if section == "folder":
            if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
                col.add(col.toml_where(None, "folder"), "must be an array of tables: [[folder]]")
                continue
            folder_tables = list(enumerate(body))
            continue
        if section not in SECTIONS and not isinstance(body, dict):
            # `bucket = "x"` above every [section]: say which section it belongs in.
            homes = [s.key for s in SETTINGS if s.name == section and s.key != "start.folders_spec"]
            hint = (f"; settings go in a table: did you mean [{homes[0].split('.')[0]}] {section} = ...?" if homes
                    else "; settings go in a table such as [remote]" + suggest(section, SECTIONS))
            col.add(col.toml_where(None, section), "unknown top-level key" + hint)
            continue
        if section not in SECTIONS:
            col.add(col.toml_where(None, section, display=f"[{section}]", what="TOML section"),
                    "unknown section" + suggest(section, [*SECTIONS, "folder"]))
            continue
        if not isinstance(body, dict):
            col.add(col.toml_where(None, section), f"must be a table: [{section}]")
            continue
        for name, raw in body.items():
            key = f"{section}.{name}"
            if key in RENAMED_KEYS:
                notices.append(f"{col.toml_where(section, name)}: {key} is now {RENAMED_KEYS[key]}; the old name "
                               f"still works for now")
                key = RENAMED_KEYS[key]
            setting = BY_KEY.get(key)
            if setting is None or key == "start.folders_spec":
                known = [s.name for s in SETTINGS if s.section == section and s.key != "start.folders_spec"]
                hint = suggest(name, known)
                if not hint:  # right name, wrong table: `[remote] transfers = 4`
                    homes = [s.key for s in SETTINGS if s.name == name and s.key != "start.folders_spec"]
                    hint = f"; did you mean [{homes[0].split('.')[0]}] {name}?" if homes else ""
                col.add(col.toml_where(section, name), "unknown key" + hint)
                continue
            where = col.toml_where(section, name)
            try:
                values[key] = convert(setting, raw, from_env=False, expand=host.expand)
                origin[key] = where
            except ValueError as exc:
                col.add(where, str(exc))

    # 2. Environment (empty string = unset: templates write ENV R2_ENDPOINT="").
    for setting in SETTINGS:
        for env_name in (*setting.env, *setting.deprecated):
            raw = environ.get(env_name)
            if raw is None or raw.strip() == "":
                continue
            where = f"environment variable {env_name}"
            if env_name in setting.deprecated:
                notices.append(f"{env_name} is now {setting.env[0]}; the old name still works for now")
            try:
                values[setting.key] = convert(setting, raw, from_env=True, expand=host.expand)
                origin[setting.key] = where
            except ValueError as exc:
                col.add(where, str(exc))
            break
    # A mistyped name is an error, as it is in the TOML file: SYNCBRIDGE_WATCH_PREFX used to be
    # ignored without a word, and the outputs went under the default prefix.
    known_env = {n for s in SETTINGS for n in (*s.env, *s.deprecated)}
    for env_name in sorted(environ):
        if not env_name.startswith(CHECKED_ENV_PREFIXES) or env_name in known_env or env_name in EXTRA_ENV:
            continue
        if env_name.startswith(EXTRA_ENV_PREFIXES) or not (environ.get(env_name) or "").strip():
            continue
        namespace = [n for n in known_env if n.startswith(env_name.split("_", 1)[0] + "_")]
        hint = suggest(env_name, namespace)
        if env_name.startswith("R2_") and not hint:
            # R2_* is Cloudflare's namespace too: another tool's variable is said, not refused;
            # one close to ours (R2_SECRET, R2_ACESS_KEY) is a typo and refused below.
            notices.append(f"environment variable {env_name} is not a syncbridge setting (ignored)")
            continue
        col.add(f"environment variable {env_name}",
                "is not a syncbridge setting" + (hint or "; see `syncbridge config --reference` for the settings"))

    # 3. Explicit overrides.
    for key, raw in (overrides or {}).items():
        if raw is None:
            continue
        setting = BY_KEY.get(key)
        if setting is None:
            raise KeyError(f"unknown configuration key {key!r}" + suggest(key, BY_KEY))
        where = f"argument {key}"
        try:
            values[key] = convert(setting, raw, from_env=isinstance(raw, str) and setting.kind in ("list", "paths"),
                                  expand=host.expand)
            origin[key] = where
        except ValueError as exc:
            col.add(where, str(exc))

    def get(key: str) -> Any:
        if key in values:
            return values[key]
        setting = BY_KEY[key]  # a default is written as a user would write it: typed the same way
        return None if setting.default is None else convert(setting, setting.default, from_env=False, expand=host.expand)

    def where_of(key: str) -> str:
        if key in origin:
            return origin[key]
        setting = BY_KEY[key]
        return f"environment variable {setting.env[0]} (or TOML key {key})"

    # -- cross-field checks --------------------------------------------------------
    workspace = Path(get("general.workspace"))
    mode = get("general.storage_mode")
    if mode == "auto":
        # detect_storage_mode() of the templates: persistent when the workspace is a mount point.
        mode = "persistent" if host.is_mount(str(workspace)) else "ephemeral"
    state_dir = get("general.state_dir") or _default_state_dir(environ, host.home, workspace, mode)

    endpoint = get("remote.endpoint")
    if endpoint is None and get("remote.account_id"):
        endpoint = f"https://{get('remote.account_id').strip()}.r2.cloudflarestorage.com"
        origin["remote.endpoint"] = where_of("remote.account_id")
    provider = get("remote.provider")
    region = get("remote.region")
    if endpoint is not None:
        try:
            parts = urlsplit(endpoint)
        except ValueError:  # "http://[": an unbalanced IPv6 bracket
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            col.add(where_of("remote.endpoint"), f"must be an http(s) URL such as https://<account>."
                                                 f"r2.cloudflarestorage.com, got {endpoint!r}")
        elif _endpoint_with_bucket(parts, get("remote.bucket")):
            # Cloudflare's dashboard shows the S3 API address with the bucket on the end. Taken as
            # an endpoint, every request went to /<that bucket>/<bucket>/<key>: objects under a
            # stray "<bucket>/" folder, or another bucket, and nothing said so.
            tail = parts.path.strip("/")
            hint = f"; the bucket goes in R2_BUCKET (R2_BUCKET={tail})" if tail and "/" not in tail else ""
            col.add(where_of("remote.endpoint"),
                    f"must be the service's address without the bucket or a query (such as "
                    f"{parts.scheme}://{parts.netloc}), got {endpoint!r}{hint}")
        else:
            inferred_provider, inferred_region = infer_provider(endpoint)
            provider = inferred_provider if provider == "auto" else provider
            region = region or inferred_region
        for key in ("remote.access_key", "remote.secret_key"):
            if not get(key):
                col.add(where_of(key), "is required when an endpoint is set (R2_ENDPOINT); it is not set")
        ca_bundle = get("remote.ca_bundle")
        if ca_bundle is not None and not Path(ca_bundle).is_file():
            col.add(where_of("remote.ca_bundle"), f"{ca_bundle} is not a file (a PEM file of CA certificates)")
    else:
        provider, region = "local", region or "local"
    bucket = get("remote.bucket")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        col.add(where_of("remote.bucket"),
                f"{bucket!r} is not a valid bucket name (3-63 characters: a-z, 0-9, '.', '-')")

    folders = _folders(col, host.expand, folder_tables, get("start.folders_spec"), where_of("start.folders_spec"))

    prefix = get("watch.prefix")
    # A backslash, an empty or '.' segment, or a {date:..} that renders to '..' used to pass here
    # and stop the watcher at start without naming the setting: check what the watcher will render.
    bad_prefix = _check_prefix(prefix)
    if not bad_prefix:
        try:
            render_prefix(prefix, pod_id="pod", now=dt.datetime(2000, 1, 1))
        except UnsafePathError as exc:
            bad_prefix = f"must render to a relative key prefix ({exc}), got {prefix!r}"
    if bad_prefix:
        col.add(where_of("watch.prefix"), bad_prefix)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", get("models.profile")):
        col.add(where_of("models.profile"), f"must be a name of letters, digits, '.', '_' or '-', got "
                                            f"{get('models.profile')!r}")
    for key in ("watch.public_url", "watch.webhook_url"):
        url = get(key)
        if url is not None and not _is_http_url(url.replace("{key}", "k")):
            shown = repr(url) if key == "watch.public_url" else "a value that is not one"
            col.add(where_of(key), f"must be an http(s) URL, got {shown}")

    job_key = get("jobs.key")
    if "{job_id}" not in job_key or _check_prefix(job_key.replace("{prefix}", "p").replace("{job_id}", "j")):
        col.add(where_of("jobs.key"), f"must be a relative key prefix containing {{job_id}}, got {job_key!r}")
    if not _is_http_url(get("jobs.comfyui_url")):
        col.add(where_of("jobs.comfyui_url"), f"must be an http(s) URL, got {get('jobs.comfyui_url')!r}")

    if col.problems:
        raise ConfigError(col.problems)

    pod_id = get("general.pod_id") or host.hostname
    return Config(
        remote=RemoteConfig(
            endpoint=endpoint.rstrip("/") if endpoint else None,
            bucket=bucket,
            access_key=get("remote.access_key"),
            secret_key=get("remote.secret_key"),
            provider=provider,
            region=region,
            local_root=get("remote.local_bucket_dir") or Path(state_dir) / "buckets",
            ca_bundle=Path(get("remote.ca_bundle")) if endpoint and get("remote.ca_bundle") else None,
            expect_continue_min=get("remote.expect_continue_min"),
        ),
        state_dir=Path(state_dir),
        workspace=workspace,
        storage_mode=mode,
        gpu_tier=get("general.gpu_tier"),
        pod_id=pod_id,
        log_level=get("general.log_level"),
        rclone=_section(RcloneConfig, get),
        watch=_section(WatchConfig, get, prefix=prefix.strip("/")),
        models=_section(ModelsConfig, get, hf_endpoint=get("models.hf_endpoint").rstrip("/"),
                        civitai_endpoint=get("models.civitai_endpoint").rstrip("/")),
        bisync=_section(BisyncConfig, get),
        start=_section(StartConfig, get),
        fleet=_section(FleetConfig, get, prefix=get("fleet.prefix").strip("/")),
        jobs=_section(JobsConfig, get, key=get("jobs.key").strip("/"),
                      comfyui_url=get("jobs.comfyui_url").rstrip("/")),
        folders=folders,
        config_file=toml_path,
        notices=tuple(notices),
    )


def _check_prefix(prefix: str) -> str | None:
    if prefix.startswith("/") or "\\" in prefix or ".." in prefix.split("/"):
        return f"must be a relative key prefix without '..' or '\\', got {prefix!r}"
    return None


def _folders(col: _Collector, expand: Callable[[str], Path], tables: list[tuple[int, Mapping[str, Any]]],
             spec: tuple[str, ...], spec_where: str) -> tuple[Folder, ...]:
    folders: list[Folder] = []
    for index, table in tables:
        where = col.toml_where("folder", None, index=index, display=f"[[folder]] #{index + 1}",
                               what="TOML table")
        for key in table:
            if key not in FOLDER_KEYS:
                col.add(col.toml_where("folder", key, index=index, display=f"[[folder]] #{index + 1} {key}"),
                        "unknown key" + suggest(key, FOLDER_KEYS))
        local, prefix, mode = table.get("local"), table.get("prefix"), table.get("mode", "pull")
        if not isinstance(local, str) or not local or "\0" in local:
            col.add(where, "needs local = \"/path/to/folder\"")
            continue
        if not isinstance(prefix, str):
            col.add(where, "needs prefix = \"key/prefix\"")
            continue
        if mode not in FOLDER_MODES:
            col.add(where, f"mode must be one of {', '.join(FOLDER_MODES)}, got {mode!r}")
            continue
        bad = _check_prefix(prefix)
        if bad:
            col.add(where, "prefix " + bad)
            continue
        filters = {}
        for key in ("include", "exclude"):
            value = table.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                col.add(where, f"{key} must be a list of strings")
                value = []
            filters[key] = tuple(value)
        folders.append(Folder(expand(local), prefix.strip("/"), mode, **filters))
    for entry in spec:
        mode, sep, rest = entry.partition(":")
        local, eq, prefix = rest.rpartition("=")
        if not sep or not eq or mode not in FOLDER_MODES or not local:
            col.add(spec_where, f"entry {entry!r} is not MODE:LOCAL=PREFIX with MODE pull, push or bisync")
            continue
        bad = _check_prefix(prefix)
        if bad:
            col.add(spec_where, f"entry {entry!r}: prefix " + bad)
            continue
        folders.append(Folder(expand(local), prefix.strip("/"), mode))
    return tuple(folders)
