"""Property-based tests (hypothesis) of the parsers and mappings that take untrusted input:

* the configuration (environment + TOML): whatever the input, the only exception is
  :class:`ConfigError`; valid values come back out unchanged (env and TOML), env wins;
* model manifests: whatever the TOML, only :class:`ManifestError`; valid entries round-trip;
* keys <-> paths: any valid relative path round-trips; anything that would escape is refused;
  ``encode_name``/``decode_name`` round-trip and agree with the real rclone binary.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from syncbridge.config import SETTINGS, Config, Host, build_config, load_config
from syncbridge.errors import ConfigError, UnsafePathError
from syncbridge.keys import MAX_KEY_BYTES, decode_name, encode_name, join_key, key_to_relpath, relpath_to_key
from syncbridge.rclone import find_rclone

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TMP = Path(tempfile.mkdtemp(prefix="sb-props-"))


# -- a small TOML writer (the stdlib only reads TOML) ------------------------------------

def toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\ufffd")  # TOML text is Unicode scalar values only
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_dumps(doc: dict) -> str:
    """Top-level scalars, then ``[table]`` per dict, then ``[[table]]`` per list of dicts."""
    lines = [f"{toml_str(k)} = {toml_value(v)}" for k, v in doc.items()
             if not isinstance(v, dict) and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{toml_str(k)}]")
            lines += [f"{toml_str(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for table in v:
                lines.append(f"[[{toml_str(k)}]]")
                lines += [f"{toml_str(kk)} = {toml_value(vv)}" for kk, vv in table.items()]
    return "\n".join(lines) + "\n"


scalars = st.one_of(st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1), st.floats(), st.text(max_size=30),
                    st.sampled_from(["", "0", "-1", "true", "auto", "~", "~nobody\0", "http://[", "inf", "nan", "..",
                                     "/abs", "a\\b", "1e999", "9" * 30]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
ENV_NAMES = sorted({name for s in SETTINGS for name in s.env} | {"SYNCBRIDGE_CONFIG_X", "XDG_STATE_HOME", "HOME"})
SECTIONS = sorted({s.section for s in SETTINGS})
KEYS_BY_SECTION = {sec: [s.name for s in SETTINGS if s.section == sec] for sec in SECTIONS}


@st.composite
def toml_docs(draw) -> dict:
    doc: dict = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "folder", "bogus"]), max_size=4, unique=True)):
        if section == "folder":
            doc["folder"] = draw(st.lists(st.dictionaries(
                st.sampled_from(["local", "prefix", "mode", "include", "exclude", "other"]), values, max_size=5),
                min_size=1, max_size=3))
        else:
            names = KEYS_BY_SECTION.get(section, []) + ["unknown_key"]
            doc[section] = draw(st.dictionaries(st.sampled_from(names), values, max_size=5))
    return doc


def _build(environ, doc, **kwargs):
    return build_config(environ, doc, host=Host(home=str(_TMP), hostname="host", is_mount=lambda _p: False), **kwargs)


@FAST
@given(environ=st.dictionaries(st.sampled_from(ENV_NAMES), st.one_of(st.text(max_size=40), scalars.map(str)),
                               max_size=8),
       doc=toml_docs())
@example(environ={"R2_ENDPOINT": "http://["}, doc={})
@example(environ={}, doc={"rclone": {"transfers": float("inf")}})
@example(environ={"SYNCBRIDGE_DRAIN_SECONDS": "nan"}, doc={})
@example(environ={}, doc={"folder": [{"local": "~nobody\0", "prefix": "p"}]})
@example(environ={"SYNCBRIDGE_WATCH_PREFIX": "a\\b"}, doc={})
@example(environ={"SYNCBRIDGE_WATCH_PREFIX": "a//b"}, doc={})
@example(environ={}, doc={"watch": {"prefix": "x/{date:..}"}})
def test_config_raises_only_config_error(environ, doc):
    try:
        config = _build(environ, doc)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must name at least one problem"
        for problem in exc.problems:
            assert problem.where and problem.message
        return
    assert isinstance(config, Config)
    # what the config accepts, the watcher can use: the prefix renders to a safe key prefix
    from syncbridge.keys import render_prefix
    import datetime as dt

    render_prefix(config.watch.prefix, pod_id=config.pod_id, now=dt.datetime(2026, 11, 29))
    for number in (config.watch.drain_seconds, config.watch.batch_delay, config.fleet.heartbeat_seconds,
                   config.fleet.lease_seconds):
        assert math.isfinite(number), "a non-finite duration was accepted"


@FAST
@given(text=st.text(max_size=200))
@example(text='[rclone]\ntransfers = inf\n')
@example(text='[remote]\nendpoint = "http://["\n')
def test_config_file_text_raises_only_config_error(text):
    path = _TMP / "config.toml"
    path.write_bytes(text.encode("utf-8", "replace"))
    try:
        load_config({"HOME": str(_TMP)}, config_file=path, is_mount=lambda _p: False, hostname=lambda: "h")
    except ConfigError:
        pass


# -- valid values round-trip ---------------------------------------------------------------

ROUND_TRIP = [s for s in SETTINGS if s.kind in ("int", "float", "bool", "choice", "duration")
              and s.key not in ("general.storage_mode", "remote.provider")]


def field_of(config: Config, key: str):
    section, name = key.split(".", 1)
    if section == "general":
        return getattr(config, name)
    return getattr(getattr(config, section), name)


def _valid(setting) -> st.SearchStrategy:
    """(raw value as TOML would hold it, env text, expected resolved value)."""
    low = setting.minimum if setting.minimum is not None else 0
    high = setting.maximum if setting.maximum is not None else 10**12
    if setting.kind == "int":
        return st.integers(min_value=int(math.ceil(low)), max_value=int(high)).map(lambda v: (v, str(v), v))
    if setting.kind == "float":
        return st.floats(min_value=low, max_value=min(high, 1e9), allow_nan=False, allow_infinity=False).map(
            lambda v: (v, repr(v), v))
    if setting.kind == "bool":
        # exactly the words: on/off are errors (tests/config/test_config.py)
        return st.tuples(st.sampled_from(["true", "false", "1", "0", "yes", "no"]), st.booleans()).map(
            lambda t: (t[0] in ("true", "1", "yes"), t[0].upper() if t[1] else t[0],
                       t[0] in ("true", "1", "yes")))
    if setting.kind == "choice":
        return st.tuples(st.sampled_from(setting.choices), st.booleans()).map(
            lambda t: (t[0], t[0].upper() if t[1] else t[0], t[0]))
    return st.from_regex(r"\A\d{1,4}(\.\d{1,3})?(ms|s|m|h)?\Z").map(lambda v: (v, v, v))


@st.composite
def valid_assignments(draw):
    chosen = draw(st.lists(st.sampled_from(ROUND_TRIP), min_size=1, max_size=6, unique_by=lambda s: s.key))
    return [(s, draw(_valid(s))) for s in chosen]


@FAST
@given(assignments=valid_assignments())
def test_valid_values_round_trip_through_env_and_toml(assignments):
    environ = {s.env[0]: env_text for s, (_raw, env_text, _want) in assignments}
    config = _build(environ, {})
    for s, (_raw, _env_text, want) in assignments:
        assert field_of(config, s.key) == want, s.key

    doc: dict = {}
    for s, (raw, _env_text, _want) in assignments:
        doc.setdefault(s.section, {})[s.name] = raw
    path = _TMP / "round.toml"
    path.write_text(toml_dumps(doc), encoding="utf-8")
    from_file = load_config({}, config_file=path, is_mount=lambda _p: False, hostname=lambda: "h")
    for s, (_raw, _env_text, want) in assignments:
        assert field_of(from_file, s.key) == want, s.key


@FAST
@given(setting=st.sampled_from([s for s in ROUND_TRIP if s.kind == "int"]), data=st.data())
def test_environment_wins_over_toml(setting, data):
    file_value, _, _ = data.draw(_valid(setting))
    env_value, env_text, _ = data.draw(_valid(setting))
    config = _build({setting.env[0]: env_text}, {setting.section: {setting.name: file_value}})
    assert field_of(config, setting.key) == env_value


# -- keys <-> paths ------------------------------------------------------------------------

segment = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1,
                  max_size=20).filter(lambda s: s not in (".", ".."))
valid_paths = st.lists(segment, min_size=1, max_size=6).map("/".join).filter(
    lambda p: not (len(p) >= 2 and p[1] == ":" and p[0].isascii() and p[0].isalpha()))


@FAST
@given(rel=valid_paths, prefix=st.sampled_from(["", "outputs", "outputs/pod-1/2026-11-29"]))
def test_valid_relative_paths_round_trip(rel, prefix):
    assert relpath_to_key(rel) == rel
    assert key_to_relpath(rel) == rel
    expected = f"{prefix}/{rel}" if prefix else rel
    if len(expected.encode("utf-8")) > MAX_KEY_BYTES:
        with pytest.raises(UnsafePathError):
            join_key(prefix, rel)
    else:
        assert join_key(prefix, rel) == expected
    # the encoded key maps back to the same path, segment by segment
    encoded = "/".join(encode_name(part) for part in rel.split("/"))
    assert "/".join(decode_name(part) for part in key_to_relpath(encoded).split("/")) == rel


adversarial = st.text(st.sampled_from(["a", ".", "/", "\\", "\x00", ":", "C", "~", " ", "\u2400", "\uff0e"]),
                      max_size=12)


@FAST
@given(key=adversarial)
@example(key="../x")
@example(key="a/../../x")
@example(key="/etc/passwd")
@example(key="a\\..\\..\\x")
@example(key="C:/x")
def test_accepted_keys_never_escape(key):
    try:
        rel = key_to_relpath(key)
    except UnsafePathError:
        return
    base = "/base/folder"
    joined = posixpath.normpath(posixpath.join(base, rel))
    assert joined.startswith(base + "/"), f"{key!r} escapes to {joined}"
    assert "\\" not in rel and "\x00" not in rel and not rel.startswith("/")


@FAST
@given(rel=valid_paths, where=st.integers(min_value=0, max_value=6),
       bad=st.sampled_from(["..", "", "."]))
def test_escaping_segments_are_refused(rel, where, bad):
    parts = rel.split("/")
    parts.insert(min(where, len(parts)), bad)
    for fn in (key_to_relpath, relpath_to_key):
        with pytest.raises(UnsafePathError):
            fn("/".join(parts))


@FAST
@given(rel=valid_paths, how=st.sampled_from(["absolute", "backslash", "nul"]))
def test_absolute_backslash_and_nul_are_refused(rel, how):
    bad = {"absolute": "/" + rel, "backslash": rel.replace("/", "\\") + "\\x", "nul": rel + "\x00"}[how]
    with pytest.raises(UnsafePathError):
        key_to_relpath(bad)
    with pytest.raises(UnsafePathError):
        join_key("outputs", bad)


# rclone itself cannot copy a local file whose name contains its quote rune U+201B (it
# re-encodes the name it listed and then fails to open it), so such names are left out.
names = st.text(st.characters(blacklist_characters="\u201b", blacklist_categories=("Cs",)), min_size=1, max_size=30)


@FAST
@given(name=names)
@example(name="\x7f")
@example(name="\u2421")
@example(name="\uff0e\uff0e")
@example(name="a\u2400b\x01\u2401")
def test_encode_name_round_trips_and_leaves_no_control_characters(name):
    encoded = encode_name(name)
    assert decode_name(encoded) == name
    assert not any(0 < ord(c) < 0x20 for c in encoded)


PARITY_NAMES = ["a\x01b", "new\nline.png", "tab\tx", "\x1f", "\x7f", "a\x7fb", "\u2401", "x\u2400y", "\u2400", "x\u241fy\x1f", "\u2421",
                "\uff0e", "\uff0e\uff0e", "\uff0e\uff0e\uff0e", "a.", "...", " lead", "trail ", "%41", "日本語 é",
                "$(touch PWNED).png", "*?<>|:\"", "\u240a\n", "back\\slash.png", "\uff3c", "a\\\uff3cb\\",
                "\\"]


# file names that are not UTF-8, as os.fsdecode gives them (surrogate escapes)
PARITY_NAMES += [os.fsdecode(b) for b in (b"bad\xff.png", b"lat\xe9n.png", b"\xfe\xff", b"ctl\x01\xc3.png")]


@FAST
@given(raw=st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\0" not in b))
def test_any_file_name_bytes_round_trip(raw):
    """Any name Linux allows (arbitrary bytes) encodes to a UTF-8 key and back to the same bytes."""
    name = os.fsdecode(raw)
    assume("\u201b" not in name)  # rclone's own quote character: see `names` above
    encoded = encode_name(name)
    encoded.encode("utf-8")  # a valid key: no surrogates left
    assert os.fsencode(decode_name(encoded)) == raw


def test_encode_name_agrees_with_the_real_rclone(tmp_path):
    """Keys our own uploaders make (encode_name) equal the keys rclone makes for the same file name."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i, name in enumerate(PARITY_NAMES):
        (src / str(i)).mkdir(parents=True)
        (src / str(i) / name).write_bytes(str(i).encode())
    env = {"PATH": os.environ.get("PATH", ""), "RCLONE_CONFIG_SRC_TYPE": "local", "RCLONE_CONFIG_SRC_ENCODING": "None",
           "RCLONE_CONFIG_DST_TYPE": "local", "RCLONE_CONFIG_DST_ENCODING": "Slash,InvalidUtf8,Dot,Ctl,BackSlash"}
    subprocess.run([find_rclone(), "copy", f"SRC:{src}", f"DST:{dst}", "--config", "/dev/null"], env=env,
                   check=True, capture_output=True, timeout=60)
    mismatches = {}
    for i, name in enumerate(PARITY_NAMES):
        (got,) = os.listdir(dst / str(i))
        if got != encode_name(name):
            mismatches[name] = (got, encode_name(name))
    assert not mismatches, f"rclone vs encode_name: {json.dumps(mismatches, ensure_ascii=True)}"


@FAST
@given(rel=valid_paths, prefix=st.sampled_from(["outputs", "outputs/pod-1"]))
def test_watcher_keys_map_back_to_the_file(rel, prefix):
    """The key the watcher uploads a file to names that same file when pulled back."""
    batching = pytest.importorskip("syncbridge.keys")
    try:
        key = batching.object_key(prefix, rel)
    except UnsafePathError:  # only when the key would be longer than S3 allows
        encoded = "/".join(encode_name(p) for p in rel.split("/"))
        assert len(f"{prefix}/{encoded}".encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES
        return
    assert key.startswith(prefix + "/")
    back = "/".join(decode_name(part) for part in key_to_relpath(key[len(prefix) + 1:]).split("/"))
    assert back == rel


# -- model manifests ---------------------------------------------------------------------------

manifest = pytest.importorskip("syncbridge.models.manifest")

model_values = st.one_of(values, st.sampled_from(["a" * 64, "vae/x.safetensors", "../x", "/abs", "~/x",
                                                  "a/./b", "a//b", "consumer", "HF_TOKEN", "https://h/x"]))


@st.composite
def manifest_docs(draw) -> dict:
    doc: dict = {}
    if draw(st.booleans()):
        doc["settings"] = draw(st.dictionaries(st.sampled_from([*manifest.SETTINGS_KEYS, "bogus"]), model_values,
                                               max_size=4))
    models = draw(st.lists(st.dictionaries(st.sampled_from([*manifest.MODEL_KEYS, "bogus"]), model_values,
                                           max_size=6), max_size=3))
    if models:
        doc["model"] = models
    if draw(st.booleans()):
        doc[draw(st.text(max_size=5))] = draw(values)
    return doc


@FAST
@given(doc=manifest_docs())
def test_manifest_parser_raises_only_manifest_error(doc):
    text = toml_dumps(doc)
    try:
        parsed = manifest.parse_manifest(text, path="m.toml")
    except manifest.ManifestError as exc:
        assert exc.problems
        assert all(str(p.where).startswith("m.toml") for p in exc.problems)
        return
    for model in parsed.models:
        assert not model.path.startswith("/") and ".." not in model.path.split("/")


@FAST
@given(text=st.text(max_size=300))
def test_manifest_text_raises_only_manifest_error(text):
    try:
        manifest.parse_manifest(text, path="m.toml")
    except manifest.ManifestError:
        pass


@st.composite
def valid_models(draw):
    count = draw(st.integers(min_value=1, max_value=4))
    out = []
    for i in range(count):
        entry = {"name": f"model-{i}", "path": f"dir{i}/" + draw(segment.filter(lambda s: s.strip() == s and s))}
        if draw(st.booleans()):
            entry["sha256"] = draw(st.from_regex(r"\A[0-9a-f]{64}\Z"))
        if draw(st.booleans()):
            entry["size"] = draw(st.integers(min_value=0, max_value=2**40))
        if draw(st.booleans()):
            entry["min_tier"] = draw(st.sampled_from(manifest.TIERS))
        entry["url"] = "https://example.invalid/" + str(i)
        out.append(entry)
    return out


@FAST
@given(models=valid_models())
def test_valid_manifest_entries_round_trip(models):
    parsed = manifest.parse_manifest(toml_dumps({"model": models}), path="m.toml")
    assert [m.name for m in parsed.models] == [e["name"] for e in models]
    for spec, entry in zip(parsed.models, models):
        assert spec.path == entry["path"]
        assert spec.sha256 == entry.get("sha256")
        assert spec.size == entry.get("size")
        assert spec.min_tier == entry.get("min_tier")
        assert spec.url == entry["url"]
