"""Public names of a package imported on first use (PEP 562), so ``import syncbridge`` stays cheap.

A package lists ``{public name: module below it}`` and sets
``__getattr__ = lazy_exports(__name__, EXPORTS, globals())``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: MutableMapping[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from ``package.<exports[name]>`` and keeps it."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value  # the next lookup is a plain global
        return value

    return __getattr__
