"""The README stays true to the code."""

from __future__ import annotations

from pathlib import Path

from syncbridge.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- generated:config-reference")
    start = text.index("\n", start) + 1
    end = text.index("<!-- /generated:config-reference -->")
    assert text[start:end] == reference_markdown(), \
        "README's configuration reference is stale: regenerate it with `syncbridge config --reference`"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in ci


def test_pip_install_brings_the_bin_scripts_as_console_scripts(tmp_path) -> None:
    """`pip install` puts syncbridge-start, -watch and -pull-models on PATH (they were only in bin/)."""
    import subprocess
    import sys

    scripts = Path(sys.executable).parent
    for name in sorted(p.name for p in (ROOT / "bin").iterdir()):
        path = scripts / name
        assert path.is_file(), f"{name} is not installed as a console script next to {sys.executable}"
        proc = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: syncbridge" in proc.stdout, proc.stdout + proc.stderr
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert all(f'{p.name} = "syncbridge.cli:' in pyproject for p in (ROOT / "bin").iterdir())
