"""Configuration: one frozen object, read once from what the caller passes in.

Sources, lowest to highest precedence:

1. built-in defaults (the :data:`~.settings.SETTINGS` table),
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

The package: :mod:`.settings` (the table), :mod:`.model` (the typed objects),
:mod:`.build` (pure: sources and host facts in, a Config or every problem out) and
this module, the only one that reads anything: the TOML file named by the caller
and the host's facts (home folder, host name, the mount table), each replaceable.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError, Problem
from ..fmt import warn_once
from .build import Host, build_config, infer_provider
from .model import (BisyncConfig, Config, FleetConfig, Folder, JobsConfig, ModelsConfig, RcloneConfig, RemoteConfig,
                    StartConfig, WatchConfig)
from .settings import (ALWAYS_EXCLUDED, ALWAYS_EXCLUDED_DIRS, DEFAULT_WATCH_INCLUDE, EXTRA_ENV, EXTRA_ENV_PREFIXES,
                       PARTIAL_SUFFIXES, RENAMED_KEYS, SETTINGS, Setting, parse_bool, reference_markdown,
                       secret_values)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Setting", "SETTINGS", "Config", "RemoteConfig", "RcloneConfig", "WatchConfig", "ModelsConfig", "BisyncConfig",
    "StartConfig", "FleetConfig", "JobsConfig", "Folder", "Host", "load_config", "build_config", "host_facts",
    "is_mount_point",
    "parse_bool", "secret_values", "infer_provider", "reference_markdown", "DEFAULT_WATCH_INCLUDE",
    "ALWAYS_EXCLUDED", "PARTIAL_SUFFIXES", "ALWAYS_EXCLUDED_DIRS", "RENAMED_KEYS", "EXTRA_ENV",
    "EXTRA_ENV_PREFIXES",
]

log = logging.getLogger(__name__)


def load_config(
    environ: Mapping[str, str],
    *,
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    is_mount: Callable[[str], bool] | None = None,
    hostname: Callable[[], str] | None = None,
    home: str | None = None,
) -> Config:
    """Read the configuration once.

    Args:
        environ: the environment to read (pass ``os.environ`` from a CLI).
        config_file: a TOML file; default ``environ["SYNCBRIDGE_CONFIG"]`` if set.
        overrides: explicit values by dotted key (``"watch.dir"``), highest precedence.
        is_mount: how to tell whether the workspace is a mount point (default
            :func:`is_mount_point`, which agrees with the templates' ``mountpoint -q``).
        hostname: where the default pod id comes from (default: this machine's name).
        home: the home folder for ``~`` and the default state folder (default: ``HOME`` in
            ``environ``, else this user's).

    Raises:
        ConfigError: listing every invalid or missing setting.
    """
    host = host_facts(environ, is_mount=is_mount, hostname=hostname, home=home)
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
                build_config(environ, {}, overrides=overrides, host=host)
            except ConfigError as env_exc:
                problems += env_exc.problems
            raise ConfigError(problems) from exc
    config = build_config(environ, doc, toml_text=text, toml_path=path, overrides=overrides, host=host)
    for notice in config.notices:
        warn_once(log, ("config", notice), "%s", notice, event="config.deprecated")
    return config


def host_facts(environ: Mapping[str, str], *, is_mount: Callable[[str], bool] | None = None,
               hostname: Callable[[], str] | None = None, home: str | None = None) -> Host:
    """The machine's facts the configuration needs, each replaceable (tests, a library user)."""
    mount_test = is_mount or is_mount_point

    def workspace_is_mount(path: str) -> bool:
        try:
            return os.path.isdir(path) and mount_test(path)
        except OSError:
            return False

    def user_home(user: str) -> str | None:
        try:
            return pwd.getpwnam(user).pw_dir
        except KeyError:
            return None

    return Host(home=home or environ.get("HOME") or os.path.expanduser("~"),
                hostname=hostname() if hostname else os.uname().nodename, is_mount=workspace_is_mount,
                user_home=user_home)


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
