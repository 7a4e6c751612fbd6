"""The dependency direction: pure < io < orchestration < cli. No module imports upward.

Every module in syncbridge/ and its packages must be listed here (dotted: ``watch.scheduler``), so a
new module states its layer. A package's ``__init__`` is listed under the package name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "syncbridge"

PURE, IO, ORCH, CLI = 0, 1, 2, 3
LAYERS = {
    # pure: no processes, threads, sockets, inotify, environment
    "__init__": PURE,
    "errors": PURE,
    "diagnose": PURE,
    "redact": PURE,
    "fmt": PURE,
    "lazy": PURE,
    "config.settings": PURE,
    "config.model": PURE,
    "config.build": PURE,
    "retry": PURE,
    "hashing": PURE,
    "tomlsrc": PURE,
    "models.spec": PURE,
    "models.manifest": PURE,
    "models.workflow": PURE,
    "keys": PURE,
    "rclone.argv": PURE,
    "watch.events": PURE,
    "watch.scheduler": PURE,
    "statuspage.page": PURE,
    "statuspage.html": PURE,
    # I/O adapters
    "fsutil": IO,
    "config": IO,  # load_config: reads the TOML file and the host's facts
    "rclone": IO,
    "rclone.runner": IO,
    "store": IO,
    "store.base": IO,
    "store.s3": IO,
    "store.local": IO,
    "store.endpoint": IO,
    "demo.localserver": IO,
    "watch.journal": IO,
    "watch.inotify": IO,
    "watch.notify": IO,
    "watch.status": IO,
    "watch.upload": IO,
    "watch.early": IO,
    "watch.intake": IO,
    "system": IO,
    "models.sources": IO,
    "models.source": IO,
    "models.sources.cache": IO,
    "models.sources.hf": IO,
    "models.sources.civitai": IO,
    "models.sources.url": IO,
    "models.http": IO,
    "models.ranged": IO,
    "models.cacheentry": IO,
    "models.localstate": IO,
    "models.layout": IO,
    "models.report": IO,
    "models.fromworkflow": IO,
    "models.add": IO,
    "models.cachetidy": IO,
    "models.capture": IO,
    "fleet.rules": PURE,
    "fleet.lease": IO,
    "fleet.heartbeat": IO,
    "fleet.status": IO,
    "fleet.singleflight": IO,
    "fleet": IO,
    "mediatypes": IO,
    "probe": IO,
    # orchestration
    "bulk": ORCH,
    "doctor": ORCH,
    "watch": ORCH,
    "watch.watcher": ORCH,
    "models": ORCH,
    "models.plan": ORCH,
    "models.prefetch": ORCH,
    "models.fetch": ORCH,
    "models.puller": ORCH,
    "models.pull": ORCH,
    "start": ORCH,
    "start.result": ORCH,
    "start.starter": ORCH,
    "start.supervise": ORCH,
    "start.background": ORCH,
    "start.live": ORCH,
    "start.statuspage": ORCH,
    "statuspage": ORCH,
    "statuspage.report": ORCH,
    "statuspage.server": ORCH,
    "demo": ORCH,
    "demo.run": ORCH,
    "demo.app": ORCH,
    "jobs": ORCH,
    "jobs.request": PURE,
    "jobs.comfy": IO,
    "jobs.scope": ORCH,
    "jobs.worker": ORCH,
    # command line
    "cli": CLI,
    "cli.common": CLI,
    "cli.output": CLI,
    "cli.progress": CLI,
    "cli.bulk": CLI,
    "cli.watch": CLI,
    "cli.models": CLI,
    "cli.fleet": CLI,
    "cli.start": CLI,
    "__main__": CLI,
}
NAMES = {0: "pure", 1: "io", 2: "orchestration", 3: "cli"}
FORBIDDEN_IN_PURE = {"subprocess", "threading", "socket", "inotify_simple", "boto3", "botocore", "sqlite3",
                     "concurrent", "asyncio", "multiprocessing", "signal", "requests", "urllib.request",
                     "huggingface_hub"}


def _modules() -> list[str]:
    """Every module as a dotted name under syncbridge: ``config``, ``watch`` (a package's __init__), ``watch.scheduler``."""
    names = []
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        names.append(".".join(parts))
    return sorted(names)


def _file(name: str) -> Path:
    base = PKG.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _package_of(name: str) -> list[str]:
    """The package a module's relative imports start from, as parts."""
    parts = name.split(".") if name != "__init__" else []
    return parts if _file(name).name == "__init__.py" else parts[:-1]


def _owner(dotted: str) -> str | None:
    """The module of LAYERS that ``dotted`` (a name under syncbridge) belongs to: the longest listed prefix."""
    parts = dotted.split(".")
    while parts:
        if ".".join(parts) in LAYERS:
            return ".".join(parts)
        parts.pop()
    return None


def _imports(name: str) -> list[tuple[str, int]]:
    """(target, line) for every import of module ``name``; targets inside the package as ``syncbridge.<dotted>``."""
    tree = ast.parse(_file(name).read_text())
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level and node.level > 0:
                base = _package_of(name)
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                if node.module:
                    found.append(("syncbridge." + ".".join([*base, *node.module.split(".")]), node.lineno))
                else:
                    found += [("syncbridge." + ".".join([*base, a.name]), node.lineno) for a in node.names]
            elif node.module:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
    return found


def test_every_module_has_a_layer() -> None:
    missing = [m for m in _modules() if m not in LAYERS]
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("name", _modules())
def test_no_upward_import(name: str) -> None:
    own = LAYERS.get(name)
    if own is None:
        pytest.skip("not in LAYERS (see test_every_module_has_a_layer)")
    for target, line in _imports(name):
        if target.startswith("syncbridge."):
            dotted = target.split(".", 1)[1]
            if dotted == "__version__":
                continue
            dep = _owner(dotted)
            if dep is None and "." in dotted:  # "from . import x" of a name, not a module
                dep = _owner(dotted.rsplit(".", 1)[0])
            assert dep is not None, f"{name}.py:{line} imports unknown module {dotted}"
            # __init__ exports lazily (by name); importing syncbridge.__init__ from below is fine
            if dep == "__init__" or dep == name:
                continue
            assert LAYERS[dep] <= own, (f"{name}.py ({NAMES[own]}) imports {dep} ({NAMES[LAYERS[dep]]}) "
                                        f"at line {line}: imports must point down")
        elif own == PURE:
            root = target.split(".")[0]
            assert root not in FORBIDDEN_IN_PURE and target not in FORBIDDEN_IN_PURE, \
                f"pure module {name}.py imports {target} at line {line}"


@pytest.mark.parametrize("name", [m for m, layer in LAYERS.items() if layer == PURE])
def test_pure_modules_do_not_read_the_environment(name: str) -> None:
    tree = ast.parse(_file(name).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
            pytest.fail(f"{name}.py:{node.lineno} reads the environment ({node.attr})")


def test_library_never_configures_logging() -> None:
    for name, layer in LAYERS.items():
        if layer == CLI:
            continue
        text = _file(name).read_text()
        text = text.replace("addHandler(logging.NullHandler())", "")  # the library's own silence (__init__)
        for bad in ("basicConfig(", "addHandler(", "setLevel("):
            assert bad not in text, f"{name}.py configures logging ({bad}); only the CLI may"


def test_no_shell_anywhere() -> None:
    """No call passes shell=True, and nothing calls os.system / os.popen."""
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "shell":
                        pytest.fail(f"{path.name}:{node.lineno} passes shell= to a call")
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in ("system", "popen") and \
                        isinstance(func.value, ast.Name) and func.value.id == "os":
                    pytest.fail(f"{path.name}:{node.lineno} calls os.{func.attr}")


@pytest.mark.parametrize("name", _modules())
def test_every_relative_import_names_a_module_that_exists(name: str) -> None:
    """Imports inside functions run only when called: a module moved into a package with a stale
    ``from .x import`` there would pass every import-time check and fail at its first use."""

    def exists(parts: list[str]) -> bool:
        target = PKG.joinpath(*parts)
        return target.with_suffix(".py").exists() or (target / "__init__.py").exists()

    for node in ast.walk(ast.parse(_file(name).read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        base = _package_of(name)
        base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
        if node.module:  # from .x import y: .x must be a module
            parts = [*base, *node.module.split(".")]
            assert exists(parts), f"{name}.py:{node.lineno} imports {'.'.join(parts)}, not a module of syncbridge"
        else:  # from . import y: y is a module, or a name the package's __init__ defines
            for alias in node.names:
                assert exists([*base, alias.name]) or alias.name == "__version__" or exists(base), \
                    f"{name}.py:{node.lineno} imports {alias.name} from {'.'.join(base) or 'syncbridge'}"
