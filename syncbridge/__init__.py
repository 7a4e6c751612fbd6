"""syncbridge: keep GPU containers and an S3/R2 bucket in step.

Library entry points (each takes a :class:`~syncbridge.config.Config` built once
with :func:`~syncbridge.config.load_config` from a mapping you pass in)::

    import os
    from syncbridge import load_config, push, pull, bisync

    config = load_config(os.environ)
    print(push(config, "/workspace/ComfyUI/user/default/workflows", "workflows").line())

Names are imported lazily, so ``import syncbridge`` stays cheap.
"""

from __future__ import annotations

import logging

from .lazy import lazy_exports

# The library never prints by itself: with no logging configured, its warnings would otherwise reach
# stderr through Python's last-resort handler as bare lines. The CLI installs its own handler.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.2.0"

# public name -> module that defines it
_EXPORTS = {
    "Config": "config",
    "load_config": "config",
    "push": "bulk",
    "pull": "bulk",
    "bisync": "bulk",
    "TransferSummary": "bulk",
    "SyncBridgeError": "errors",
    "ConfigError": "errors",
    "RcloneError": "errors",
    "StoreError": "errors",
    "open_store": "store",
    "OutputWatcher": "watch",
    "pull_models": "models",
    "PullReport": "models",
    "PushedOutput": "watch.notify",
}

__all__ = ["__version__", *_EXPORTS]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
