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
