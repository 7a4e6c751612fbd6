"""The configuration as typed, frozen objects: what every part of syncbridge is given.

Each section class's fields are named after its settings (``watch.quiet_seconds`` is
``WatchConfig.quiet_seconds``); :mod:`.build` fills them from the table, and a test keeps
the two in agreement.
"""

from __future__ import annotations

from pathlib import Path

import attrs

__all__ = ["Config", "RemoteConfig", "RcloneConfig", "WatchConfig", "ModelsConfig", "BisyncConfig", "StartConfig",
           "FleetConfig", "JobsConfig", "Folder"]


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
    expect_continue_min: int = 2 * 1024 * 1024  # bodies this large ask for "100 Continue" first

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
    keep_warm_seconds: float = 40.0


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
    workflows: tuple[Path, ...] = ()
    capture: bool = False
    profile: str = "default"


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
    models_wait: str = "all"
    status_port: int | None = None
    status_bind: str = "auto"
    status_token: str | None = attrs.field(default=None, repr=False)
    status_on_app_port: bool = False
    app_port: int | None = None


@attrs.frozen
class FleetConfig:
    heartbeat_seconds: float
    lease_seconds: float
    prefix: str
    fill_lease_min_bytes: int = 8 * 1024 * 1024


@attrs.frozen
class JobsConfig:
    """Serverless jobs (:mod:`syncbridge.jobs`)."""

    key: str = "{prefix}/jobs/{job_id}"
    comfyui_url: str = "http://127.0.0.1:8188"
    link_seconds: int = 604800
    timeout: float = 1800.0
    push_timeout: float = 120.0
    models: bool = True
    image_urls: bool = False
    image_private: bool = False
    image_max_mb: float = 50.0
    input_dir: Path | None = None
    stream: bool = False


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
    jobs: JobsConfig = attrs.field(factory=JobsConfig)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every secret value in this configuration, for redaction."""
        return tuple(s for s in (*self.remote.secrets, self.models.hf_token, self.models.civitai_api_key,
                                  self.start.status_token) if s)
