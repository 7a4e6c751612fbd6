"""The README and the pages under docs/ stay true to the code."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from syncbridge.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_config_reference_is_current() -> None:
    text = (DOCS / "configuration.md").read_text()
    start = text.index("<!-- generated:config-reference")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /generated:config-reference -->")
    assert text[start:end] == reference_markdown(), \
        "docs/configuration.md's settings reference is stale: regenerate it with `syncbridge config --reference`"


def test_config_reference_is_generated_in_one_place() -> None:
    """Only docs/configuration.md holds the generated table, so there is one copy to keep current."""
    holders = [_rel(p) for p in PAGES if "<!-- generated:config-reference" in p.read_text()]
    assert holders == ["docs/configuration.md"]


def test_ci_runs_the_readme_test_command() -> None:
    readme = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in ci


def test_readme_demo_command_exists() -> None:
    """The first set-up command runs the main job on the embedded default."""
    readme = README.read_text()
    assert "bash scripts/demo.sh" in readme
    assert "syncbridge\" demo" in (ROOT / "scripts" / "demo.sh").read_text()


def test_pip_install_brings_the_bin_scripts_as_console_scripts(tmp_path) -> None:
    """`pip install` puts syncbridge-start, -watch and -pull-models on PATH (they were only in bin/)."""
    scripts = Path(sys.executable).parent
    for name in sorted(p.name for p in (ROOT / "bin").iterdir()):
        path = scripts / name
        assert path.is_file(), f"{name} is not installed as a console script next to {sys.executable}"
        proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: syncbridge" in proc.stdout, proc.stdout + proc.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert all(f'{p.name} = "syncbridge.cli:' in pyproject for p in (ROOT / "bin").iterdir())


# --- commands ---------------------------------------------------------------------------------------------------

def _subcommands(*words: str) -> list[str]:
    """The subcommands `syncbridge WORDS --help` lists (argparse's `{a,b,c}` choices)."""
    proc = subprocess.run([sys.executable, "-m", "syncbridge", *words, "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^  \{([a-z,_-]+)\}", proc.stdout, re.M)
    if match is None:  # argparse prints the choices as an indented list under the metavar
        block = proc.stdout.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
        return re.findall(r"^    ([a-z][a-z_-]*)(?:\s|$)", block, re.M)
    return match.group(1).split(",")


def _leaf_commands() -> list[str]:
    leaves = []
    todo = [[name] for name in _subcommands()]
    while todo:
        words = todo.pop(0)
        children = _subcommands(*words) if words[-1] in ("models", "cache", "fleet") else []
        if children:
            todo += [[*words, child] for child in children]
        else:
            leaves.append(" ".join(words))
    return leaves


def _command_table(path: Path) -> str:
    text = path.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `syncbridge ")]
    assert rows, f"{_rel(path)} has no command table"
    return "\n".join(rows)


@pytest.mark.parametrize("page", ["README.md", "docs/commands.md"])
def test_every_command_is_in_the_command_table(page: str) -> None:
    table = _command_table(ROOT / page)
    leaves = _leaf_commands()
    assert {"start", "watch", "models pull", "models cache push", "fleet status"} <= set(leaves), leaves
    missing = [c for c in leaves if f"| `syncbridge {c}" not in table]
    assert not missing, f"{page}'s command table lacks: {missing}"


# --- examples ---------------------------------------------------------------------------------------------------

def _python_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for path in PAGES:
        text = path.read_text()
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.M | re.S):
            blocks.append((_rel(path), text[:match.start()].count("\n") + 1, match.group(1)))
    return blocks


def test_the_docs_have_python_examples() -> None:
    assert any(page == "docs/library.md" for page, _, _ in _python_blocks())


@pytest.mark.parametrize("page,line,code", [pytest.param(*b, id=f"{b[0]}:{b[1]}") for b in _python_blocks()])
def test_python_examples_compile_and_their_imports_resolve(page: str, line: int, code: str) -> None:
    tree = ast.parse(code, filename=f"{page}:{line}")  # a SyntaxError names the page and line
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "syncbridge":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), \
                    f"{page}:{line}: `from {node.module} import {alias.name}` does not resolve"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "syncbridge":
                    importlib.import_module(alias.name)


def test_readme_library_example_runs_on_the_embedded_default(local_env: dict[str, str], tmp_path: Path) -> None:
    """The README's Python example, with a job that writes one output, pushes it to the embedded bucket."""
    page, _, code = next(b for b in _python_blocks() if b[0] == "README.md")
    job = ("def run_my_job():\n"  # writes where ComfyUI writes: the output folder itself
           "    (config.watch.dir / 'ComfyUI_00001_.png').write_bytes(b'result\\n' * 100)\n")
    script = code.replace("\nwith OutputWatcher", "\n" + job + "with OutputWatcher", 1)
    assert script != code, "the README's example no longer runs a job inside `with OutputWatcher(...)`"
    proc = subprocess.run([sys.executable, "-c", script], env=local_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = tmp_path / "state" / "buckets" / "runpod" / "outputs" / "ComfyUI_00001_.png"
    assert pushed.read_bytes() == b"result\n" * 100


# --- links ------------------------------------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # link syntax inside inline code is not a link
    return [m.group(1) for m in _LINK.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {_rel(dest)})")
    assert not broken, f"{_rel(page)} has broken links: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in _links(README)}
    orphans = [_rel(p) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link to: {orphans}"


def test_pointers_to_docs_pages_resolve() -> None:
    """`--help` texts, examples, scripts and benchmarks that name a docs page name one that exists."""
    sources = [p for d in ("syncbridge", "examples", "bin", "benchmarks", "scripts", "tests")
               for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in ("", ".py", ".sh", ".md", ".toml", ".yml")
               and "node_modules" not in p.parts]
    named = {}
    for path in sources:
        for match in re.finditer(r"\bdocs/([\w-]+\.md)", path.read_text(errors="replace")):
            named.setdefault(match.group(1), _rel(path))
    assert named, "nothing points at docs/ (the --help of `syncbridge models` should)"
    missing = {page: where for page, where in named.items() if not (DOCS / page).is_file()}
    assert not missing, f"pointers to docs pages that do not exist: {missing}"


def test_nothing_points_at_readme_sections_that_moved() -> None:
    """The reference moved from the README to docs/: no --help text or example sends readers to the README's
    sections any more."""
    stale = []
    for d in ("syncbridge", "examples", "bin", "benchmarks"):
        for path in (ROOT / d).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".sh", ".md", ".yml"):
                text = path.read_text(errors="replace")
                if re.search(r"README'?s? \w+ section|the README's", text):
                    stale.append(_rel(path))
    assert not stale, f"these still point at a README section: {stale}"
