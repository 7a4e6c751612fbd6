"""Two syncbridge trees side by side in one benchmark run: this checkout and another git revision.

Used by the ``--before REV`` option of ``bench_watch.py``, ``bench_models.py`` and ``bench_start.py``.
``extract_revision`` writes the ``syncbridge`` package of revision REV under a folder with
``git archive`` (nothing else of that revision: the benchmark, its server and its data are this
checkout's). A ``Tree`` runs ``python -m syncbridge ...`` from one tree: ``PYTHONPATH`` and the
working directory both point at it, so the process and any Python child it starts import that
tree's package and not the installed one. The before tree is only ever run as a command, never
imported into the benchmark's process (its modules may have other names: ``models.py`` against a
``models/`` package).

``Tree.check()`` asks the interpreter which ``syncbridge/__init__.py`` it imports with that
environment and fails when it is not the tree's own; each benchmark prints it once per tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def extract_revision(rev: str, dest: Path) -> Path:
    """The syncbridge package of git revision ``rev`` under ``dest`` (for a before/after run)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "syncbridge"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def describe(rev: str) -> str:
    """``rev`` as a short hash and subject line, for the report (``rev`` itself if git cannot say)."""
    proc = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s", rev], capture_output=True,
                          text=True)
    line = proc.stdout.strip() if proc.returncode == 0 else rev
    return line if len(line) <= 90 else line[:87] + "..."


@dataclass(frozen=True)
class Tree:
    """One syncbridge source tree (its folder holds the ``syncbridge`` package) and a label."""

    path: Path
    label: str

    @property
    def cwd(self) -> str:
        return str(self.path)

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with ``PYTHONPATH`` set to this tree alone."""
        return {**base, "PYTHONPATH": str(self.path)}

    def argv(self, *args: str) -> list[str]:
        """``python -m syncbridge ARGS`` (this interpreter; run it with ``env()`` and ``cwd``)."""
        return [sys.executable, "-m", "syncbridge", *args]

    def check(self, base: dict[str, str] | None = None) -> str:
        """The ``syncbridge/__init__.py`` that ``env(base)`` and ``cwd`` import; an error if not this tree's."""
        proc = subprocess.run([sys.executable, "-c", "import syncbridge; print(syncbridge.__file__)"],
                              env=self.env(dict(os.environ if base is None else base)), cwd=self.cwd,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.label}: cannot import syncbridge from {self.path}:\n{proc.stderr[-2000:]}")
        found = Path(proc.stdout.strip()).resolve()
        if found != (self.path / "syncbridge" / "__init__.py").resolve():
            raise SystemExit(f"{self.label}: imports {found}, not the tree {self.path}")
        return str(found)


def current_tree() -> Tree:
    """This checkout (the code under test, "after")."""
    return Tree(ROOT, "after")


def before_tree(rev: str, work: Path) -> Tree:
    """Revision ``rev`` extracted under ``work/before-tree`` ("before")."""
    return Tree(extract_revision(rev, work / "before-tree"), "before")


def announce(trees: list[Tree], rev: str, base: dict[str, str] | None = None, file=None) -> None:
    """Print, once, which revision is "before" and which file each tree really imports."""
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "syncbridge"],
                           capture_output=True, text=True).stdout.strip()
    after = describe("HEAD") + (" + uncommitted changes to syncbridge/" if dirty else "")
    print(f"before: {describe(rev)}\nafter:  {after}", file=file, flush=True)
    for tree in trees:
        print(f"  {tree.label:<7} imports {tree.check(base)}", file=file, flush=True)
