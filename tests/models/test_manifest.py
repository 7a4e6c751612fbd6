"""Model manifests: validation names file, line and key; paths stay inside models_dir; merge; selection."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from syncbridge.models.manifest import (ManifestError, load_manifests, merge_manifests, parse_manifest, select_models)

def _doc(body: str) -> str:
    return body.strip() + "\n"


def test_full_manifest_parses_every_key():
    text = _doc(f'''
[settings]
models_dir = "/workspace/ComfyUI/models"
cache_prefix = "team/models/"
write_back = true
parallel = 4

[[model]]
name = "sdxl-vae"
path = "vae/sdxl_vae.safetensors"
sha256 = "{'AB' * 32}"
size = 334643268
enabled_by = "ENABLE_SDXL"
min_tier = "prosumer"
optional = true
write_back = false
hf = {{ repo = "stabilityai/sdxl-vae", file = "sdxl_vae.safetensors", revision = "main" }}
civitai = {{ version_id = 12345, file = "vae.safetensors" }}
url = "https://example.org/x.safetensors"

[[model]]
name = "clip"
path = "clip/openclip"
hf = {{ repo = "org/clip", snapshot = true, allow = ["*.json", "*.safetensors"], repo_type = "model" }}
''')
    parsed = parse_manifest(text, path="m.toml")
    manifest = merge_manifests([parsed])
    assert manifest.models_dir == Path("/workspace/ComfyUI/models")
    assert manifest.cache_prefix == "team/models"
    assert manifest.parallel == 4
    vae, clip = manifest.models
    assert vae.sha256 == "ab" * 32 and vae.size == 334643268
    assert vae.enabled_by == "ENABLE_SDXL" and vae.min_tier == "prosumer" and vae.optional
    assert vae.write_back is False  # the entry's own value wins over [settings]
    assert vae.hf.file == "sdxl_vae.safetensors" and vae.civitai.version_id == 12345
    assert vae.civitai.file == "vae.safetensors" and vae.url == "https://example.org/x.safetensors"
    assert clip.is_snapshot and clip.hf.allow == ("*.json", "*.safetensors") and clip.write_back is True
    assert vae.origin == "m.toml:7"


def test_errors_name_file_line_and_key_with_suggestions():
    text = _doc('''
[settings]
models_dri = "/x"

[[model]]
name = "a"
path = "a.safetensors"
sha265 = "00"

[[model]]
name = "b"
path = "b.safetensors"
min_tier = "datacentre"
hf = { repo = "o/r", fille = "x" }
size = -1
''')
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, path="/etc/sb/models.toml")
    text_err = str(info.value)
    assert "/etc/sb/models.toml:2: settings.models_dri: unknown key; did you mean 'models_dir'?" in text_err
    assert "/etc/sb/models.toml:7: model 'a' key sha265: unknown key; did you mean 'sha256'?" in text_err
    assert "/etc/sb/models.toml:12: model 'b' key min_tier" in text_err and "did you mean 'datacenter'" in text_err
    assert "/etc/sb/models.toml:13: model 'b' key hf: unknown key hf.fille; did you mean 'file'?" in text_err
    assert "/etc/sb/models.toml:14: model 'b' key size" in text_err
    assert len(info.value.problems) >= 5


def test_toml_syntax_error_names_the_line():
    with pytest.raises(ManifestError) as info:
        parse_manifest('[[model]]\nname = "a"\npath = oops\n', path="m.toml")
    assert "m.toml:3" in str(info.value)


@pytest.mark.parametrize("path", ["../../etc/x", "/etc/x", "a/../../x", "~/x", "a\\b", "a//b", "a/./b", ""])
def test_paths_that_leave_models_dir_are_refused(path):
    text = f'[[model]]\nname = "x"\npath = {path!r}\nurl = "https://h/x"\n'.replace("'", '"')
    if "\\" in path:
        text = '[[model]]\nname = "x"\npath = \'a\\b\'\nurl = "https://h/x"\n'
    with pytest.raises(ManifestError) as info:
        parse_manifest(text, path="m.toml")
    assert "m.toml:3: model 'x' key path" in str(info.value)


def test_duplicate_path_across_manifests_names_both(tmp_path):
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text('[[model]]\nname = "one"\npath = "vae/x.safetensors"\nurl = "https://h/1"\n')
    b.write_text('# second\n\n[[model]]\nname = "two"\npath = "vae/x.safetensors"\nurl = "https://h/2"\n')
    with pytest.raises(ManifestError) as info:
        load_manifests([a, b])
    msg = str(info.value)
    assert f"{b}:3" in msg and "'two'" in msg and "'one'" in msg and f"{a}:1" in msg


def test_snapshot_folder_overlap_and_conflicting_settings(tmp_path):
    a = tmp_path / "a.toml"
    b = tmp_path / "b.toml"
    a.write_text('[settings]\nmodels_dir = "/m1"\n[[model]]\nname = "s"\npath = "clip"\n'
                 'hf = { repo = "o/r", snapshot = true }\n')
    b.write_text('[settings]\nmodels_dir = "/m2"\n[[model]]\nname = "f"\npath = "clip/x.bin"\nurl = "https://h/x"\n')
    with pytest.raises(ManifestError) as info:
        load_manifests([a, b])
    msg = str(info.value)
    assert "overlaps the snapshot folder of model 's'" in msg
    assert f"{b}:2: settings.models_dir" in msg and "conflicts with '/m1'" in msg
    # SYNCBRIDGE_MODELS_DIR overrides both files' models_dir
    b.write_text('[settings]\nmodels_dir = "/m2"\n[[model]]\nname = "f"\npath = "other.bin"\nurl = "https://h/x"\n')
    merged = load_manifests([a, b], models_dir="/override")
    assert merged.models_dir == Path("/override") and [m.name for m in merged.models] == ["s", "f"]


def test_unreadable_and_missing_manifests(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_manifests([tmp_path / "nope.toml"])
    assert "nope.toml" in str(info.value) and "cannot be read" in str(info.value)
    with pytest.raises(ManifestError, match="SYNCBRIDGE_MODELS"):
        load_manifests([])


def test_select_by_enabled_by_and_min_tier():
    parsed = parse_manifest(_doc('''
[[model]]
name = "always"
path = "a"
url = "https://h/a"

[[model]]
name = "sdxl"
path = "b"
url = "https://h/b"
enabled_by = "ENABLE_SDXL"

[[model]]
name = "flux"
path = "c"
url = "https://h/c"
min_tier = "datacenter"
'''), path="m.toml")
    models = merge_manifests([parsed]).models
    sel = select_models(models, tier="consumer", environ={})
    assert [m.name for m in sel.enabled] == ["always"]
    reasons = {m.name: r for m, r in sel.skipped}
    assert "ENABLE_SDXL" in reasons["sdxl"] and "datacenter" in reasons["flux"]
    sel = select_models(models, tier="datacenter", environ={"ENABLE_SDXL": "yes"})
    assert [m.name for m in sel.enabled] == ["always", "sdxl", "flux"]
    sel = select_models(models, tier="prosumer", environ={"ENABLE_SDXL": "maybe"})
    assert [m.name for m in sel.enabled] == ["always"]
    assert "not a boolean" in dict((m.name, r) for m, r in sel.skipped)["sdxl"]


def test_snapshot_rules():
    with pytest.raises(ManifestError) as info:
        parse_manifest('[[model]]\nname = "s"\npath = "d"\nhf = { repo = "o/r", snapshot = true, file = "x" }\n'
                       '[[model]]\nname = "t"\npath = "e"\nsha256 = "' + "0" * 64 + '"\n'
                       'hf = { repo = "o/r", snapshot = true }\n', path="m.toml")
    msg = str(info.value)
    assert "m.toml:4: model 's' key hf: hf.file and hf.snapshot = true exclude each other" in msg
    assert "m.toml:8: model 't' key sha256: a snapshot is a folder" in msg
    with pytest.raises(ManifestError, match="only applies to snapshot"):
        parse_manifest('[[model]]\nname = "s"\npath = "d"\nhf = { repo = "o/r", file = "x", allow = ["*"] }\n',
                       path="m.toml")


def test_every_problem_of_a_manifest_in_one_run(tmp_path):
    """Before, this file took four fix-and-rerun rounds: a duplicate path and name were only checked
    once every entry parsed, a missing hf.repo said "got None", and optional = "yes" was refused
    though the configuration takes yes."""
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent('''
        [settings]
        models_dir = "/tmp/models"
        write_back = "yes"

        [[model]]
        name = "a"
        path = "loras/a.safetensors"
        hf = { repo = "org/a", file = "a.safetensors" }

        [[model]]
        name = "a"
        path = "loras/b.safetensors"
        optional = "yes"
        url = "https://example.com/b"

        [[model]]
        name = "c"
        path = "loras/a.safetensors"
        hf = { file = "c.safetensors" }

        [[model]]
        name = "d"
        path = "vae/d.safetensors"
        civitai = { }
        sha256 = "xyz"
        '''))
    with pytest.raises(ManifestError) as exc:
        load_manifests([path])
    text = str(exc.value)
    assert "hf.repo is missing: repo = \"owner/name\"" in text and "got None" not in text
    assert "civitai.version_id is missing" in text
    assert "sha256: must be 64 hex digits" in text
    assert "model name 'a' is also used at" in text
    assert "path 'loras/a.safetensors' is also the path of model 'a'" in text  # c is broken and still checked
    assert len(exc.value.problems) == 5, text
    assert "optional" not in text and "write_back" not in text  # the configuration's words work here too
