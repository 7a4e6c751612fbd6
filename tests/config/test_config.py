"""Configuration: precedence, every problem reported together, TOML lines, booleans,
provider inference, state directory, the embedded default, STORAGE_MODE."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from syncbridge.tomlsrc import line_of as _line_of
from syncbridge.config import infer_provider, is_mount_point, load_config, parse_bool, reference_markdown
from syncbridge.errors import ConfigError
from syncbridge.rclone.argv import remote_env

from ..conftest import ACCESS_KEY, SECRET_KEY

R2 = "https://0123456789abcdef.r2.cloudflarestorage.com"


@pytest.fixture
def base(tmp_path: Path) -> dict[str, str]:
    """An environment with nothing set but HOME (and a workspace that is not a mount)."""
    return {"HOME": str(tmp_path / "home"), "SYNCBRIDGE_WORKSPACE": str(tmp_path / "ws")}


def write(tmp_path: Path, text: str, name: str = "sb.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


# -- precedence ---------------------------------------------------------------------------


def test_defaults(base):
    config = load_config(base)
    assert config.remote.bucket == "runpod"
    assert config.watch.dir == Path("/workspace/ComfyUI/output")
    assert config.watch.enabled is False
    assert config.rclone.transfers == 8
    assert config.bisync.conflict_resolve == "newer" and config.bisync.conflict_loser == "num"
    assert config.bisync.max_delete == 50


def test_precedence_defaults_toml_env_overrides(base, tmp_path):
    toml = write(tmp_path, "[rclone]\ntransfers = 3\n[remote]\nbucket = \"from-toml\"\n[watch]\nprefix = \"t\"\n")
    assert load_config(base).rclone.transfers == 8                       # default
    config = load_config(base, config_file=toml)
    assert (config.rclone.transfers, config.remote.bucket, config.watch.prefix) == (3, "from-toml", "t")  # TOML
    env = {**base, "SYNCBRIDGE_TRANSFERS": "5", "R2_BUCKET": "from-env"}
    config = load_config(env, config_file=toml)
    assert (config.rclone.transfers, config.remote.bucket, config.watch.prefix) == (5, "from-env", "t")  # env > TOML
    config = load_config(env, config_file=toml, overrides={"rclone.transfers": 7, "watch.prefix": "o"})
    assert (config.rclone.transfers, config.remote.bucket, config.watch.prefix) == (7, "from-env", "o")  # args > env


def test_config_file_from_env_and_flag_wins(base, tmp_path):
    by_env = write(tmp_path, "[remote]\nbucket = \"by-env\"\n", "env.toml")
    by_flag = write(tmp_path, "[remote]\nbucket = \"by-flag\"\n", "flag.toml")
    env = {**base, "SYNCBRIDGE_CONFIG": str(by_env)}
    assert load_config(env).remote.bucket == "by-env"
    assert load_config(env, config_file=by_flag).remote.bucket == "by-flag"
    assert load_config(env).config_file == by_env


def test_empty_env_var_is_unset(base):
    # templates write ENV R2_ENDPOINT="" and ENV R2_BUCKET="runpod"
    config = load_config({**base, "R2_ENDPOINT": "", "R2_ACCESS_KEY": "", "R2_SECRET_KEY": "", "GPU_TIER": " "})
    assert config.remote.is_local and config.gpu_tier == "auto"


def test_reads_only_the_mapping_passed_in(base, monkeypatch):
    monkeypatch.setenv("R2_BUCKET", "from-os-environ")
    monkeypatch.setenv("R2_ENDPOINT", R2)
    config = load_config(base)
    assert config.remote.bucket == "runpod" and config.remote.is_local


def test_override_unknown_key_and_bad_value(base):
    with pytest.raises(KeyError, match="did you mean 'rclone.transfers'"):
        load_config(base, overrides={"rclone.transfer": 3})
    with pytest.raises(ConfigError) as exc:
        load_config(base, overrides={"rclone.transfers": "many"})
    assert problems(exc) == ["argument rclone.transfers: expected a whole number, got 'many'"]


# -- problems, all at once ----------------------------------------------------------------


def test_every_problem_reported_together_with_names_and_lines(base, tmp_path):
    toml = write(tmp_path, (
        "[remote]\n"                 # 1
        "bucket = \"ok-bucket\"\n"   # 2
        "buckt = \"typo\"\n"         # 3
        "\n"                         # 4
        "[watch]\n"                  # 5
        "enabled = \"maybe\"\n"      # 6
        "concurrency = 0\n"          # 7
        "[remot]\n"                  # 8
        "x = 1\n"                    # 9
    ))
    env = {**base, "R2_ENDPOINT": R2, "R2_ACCESS_KEY": ACCESS_KEY, "SYNCBRIDGE_TRANSFERS": "lots",
           "ENABLE_R2_SYNC": "on"}
    with pytest.raises(ConfigError) as exc:
        load_config(env, config_file=toml)
    got = problems(exc)
    want = [
        f"TOML key remote.buckt ({toml}:3): unknown key; did you mean 'bucket'?",
        f"TOML key watch.enabled ({toml}:6): expected a boolean (true/false/1/0/yes/no), got 'maybe'",
        f"TOML key watch.concurrency ({toml}:7): must be at least 1, got 0",
        f"TOML section [remot] ({toml}:8): unknown section; did you mean 'remote'?",
        "environment variable SYNCBRIDGE_TRANSFERS: expected a whole number, got 'lots'",
        "environment variable ENABLE_R2_SYNC: expected a boolean (true/false/1/0/yes/no), got 'on'",
        "environment variable R2_SECRET_KEY (or TOML key remote.secret_key): is required when an endpoint is set "
        "(R2_ENDPOINT); it is not set",
    ]
    assert sorted(got) == sorted(want)
    text = str(exc.value)
    assert text.startswith("invalid configuration (7 problems):")
    assert ACCESS_KEY not in text


def test_missing_both_keys_with_an_endpoint(base):
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "R2_ENDPOINT": R2})
    got = problems(exc)
    assert len(got) == 2
    assert got[0].startswith("environment variable R2_ACCESS_KEY") and got[1].startswith("environment variable "
                                                                                          "R2_SECRET_KEY")


def test_missing_secret_named_by_toml_key_when_endpoint_is_in_toml(base, tmp_path):
    toml = write(tmp_path, f"[remote]\nendpoint = \"{R2}\"\naccess_key = \"{ACCESS_KEY}\"\n")
    with pytest.raises(ConfigError) as exc:
        load_config(base, config_file=toml)
    assert problems(exc) == ["environment variable R2_SECRET_KEY (or TOML key remote.secret_key): is required when "
                             "an endpoint is set (R2_ENDPOINT); it is not set"]
    assert ACCESS_KEY not in str(exc.value)


def test_secrets_never_in_errors_or_repr(base):
    env = {**base, "R2_ENDPOINT": R2, "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY}
    config = load_config(env)
    assert SECRET_KEY not in repr(config) and ACCESS_KEY not in repr(config)
    assert set(config.secrets) == {ACCESS_KEY, SECRET_KEY}
    with pytest.raises(ConfigError) as exc:
        load_config({**env, "R2_BUCKET": "Bad_Bucket"})
    assert SECRET_KEY not in str(exc.value) and "R2_BUCKET" in str(exc.value)


def test_malformed_toml_names_file_and_line_and_keeps_env_problems(base, tmp_path):
    toml = write(tmp_path, "[remote]\nbucket = \"x\"\nendpoint = \n")
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "GPU_TIER": "huge"}, config_file=toml)
    got = problems(exc)
    assert got[0].startswith(f"config file {toml}: is not valid TOML:") and "line 3" in got[0]
    assert got[1].startswith("environment variable GPU_TIER: expected one of auto, consumer")


def test_unreadable_and_missing_config_file(base, tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml: cannot be read"):
        load_config(base, config_file=tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[remote]\nbucket = \"caf\xe9\"\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(base, config_file=bad)


def test_unknown_keys_did_you_mean(base, tmp_path):
    toml = write(tmp_path, (
        "bucket = \"top\"\n"          # 1: a setting outside its table
        "[remote]\n"                  # 2
        "transfers = 4\n"             # 3: right name, wrong table
        "zzz = 1\n"                   # 4: nothing close
        "[remote.extra]\n"            # 5: a sub-table
        "y = 2\n"                     # 6
        "[[folder]]\n"                # 7
        "local = \"/a\"\n"            # 8
        "prefix = \"a\"\n"            # 9
        "[[folder]]\n"                # 10
        "local = \"/b\"\n"            # 11
        "prefix = \"b\"\n"            # 12
        "mdoe = \"bisync\"\n"         # 13
    ))
    with pytest.raises(ConfigError) as exc:
        load_config(base, config_file=toml)
    assert sorted(problems(exc)) == sorted([
        f"TOML key bucket ({toml}:1): unknown top-level key; settings go in a table: did you mean [remote] bucket = "
        "...?",
        f"TOML key remote.transfers ({toml}:3): unknown key; did you mean [rclone] transfers?",
        f"TOML key remote.zzz ({toml}:4): unknown key",
        f"TOML key remote.extra ({toml}:5): unknown key",
        f"TOML key [[folder]] #2 mdoe ({toml}:13): unknown key; did you mean 'mode'?",
    ])


def test_folder_table_problems_name_the_entry_line(base, tmp_path):
    toml = write(tmp_path, "[[folder]]\nlocal = \"/a\"\nprefix = \"a\"\n\n"
                           "[[folder]]\nprefix = \"../up\"\nlocal=\"/b\"\n"
                           "[[folder]]\nlocal = \"/c\"\nprefix = \"c\"\nmode = \"mirror\"\n")
    with pytest.raises(ConfigError) as exc:
        load_config(base, config_file=toml)
    assert problems(exc) == [
        f"TOML table [[folder]] #2 ({toml}:5): prefix must be a relative key prefix without '..' or '\\', got "
        "'../up'",
        f"TOML table [[folder]] #3 ({toml}:8): mode must be one of pull, push, bisync, got 'mirror'",
    ]


def test_folders_from_toml_and_env(base, tmp_path):
    toml = write(tmp_path, "[[folder]]\nlocal = \"/w/workflows\"\nprefix = \"workflows/\"\nmode = \"bisync\"\n"
                           "exclude = [\"*.tmp\"]\n")
    config = load_config({**base, "SYNCBRIDGE_FOLDERS": "pull:/w/input=inputs; push:/w/out=outs"}, config_file=toml)
    got = [(str(f.local), f.prefix, f.mode, f.exclude) for f in config.folders]
    assert got == [("/w/workflows", "workflows", "bisync", ("*.tmp",)), ("/w/input", "inputs", "pull", ()),
                   ("/w/out", "outs", "push", ())]
    with pytest.raises(ConfigError, match="environment variable SYNCBRIDGE_FOLDERS: entry 'sync:/x=y' is not"):
        load_config({**base, "SYNCBRIDGE_FOLDERS": "sync:/x=y"})


@pytest.mark.parametrize(("text", "line"), [
    ("[remote]\nbucket = 1\n", 2),
    ("[watch]\nbucket = 1\n[remote]\n# c\n  bucket   = 1\n", 5),
    ("[remote]\n'bucket' = 1\n", 2),
    ("[ remote ]  # comment\nbucket=1\n", 2),
    ("[remote.sub]\nbucket = 1\n", None),
    ("x = 1\nremote.bucket = 1\n", 2),          # a dotted key above every table
    ("[watch]\nremote.bucket = 1\n", None),     # that is watch.remote.bucket
])
def test_line_of_key_in_section(text, line):
    assert _line_of(text, "remote", "bucket") == line


def test_line_of_headers_and_folder_entries():
    text = "a = 1\n[x]\nk = 1\n[[folder]]\nlocal = 1\n[[folder]]\nmode = 2\n[[folder]]\nmode = 3\n[x.y]\n"
    assert _line_of(text, None, "a") == 1
    assert _line_of(text, None, "x") == 2                       # a table header by its name
    assert _line_of(text, "folder", None, index=0) == 4
    assert _line_of(text, "folder", None, index=2) == 8
    assert _line_of(text, "folder", "mode", index=1) == 7
    assert _line_of(text, "folder", "mode", index=2) == 9
    assert _line_of(text, "folder", "local", index=1) is None
    assert _line_of(text, "x", "y") == 10                       # a sub-table [x.y]


# -- booleans ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("Yes", True), (" true ", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
])
def test_booleans_accepted(base, text, value):
    assert parse_bool(text) is value
    assert load_config({**base, "ENABLE_R2_SYNC": text}).watch.enabled is value


@pytest.mark.parametrize("text", ["on", "off", "y", "n", "2", "enabled", "truee", "-1", "nope"])
def test_booleans_anything_else_is_an_error(base, text):
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "ENABLE_R2_SYNC": text})
    assert problems(exc) == [f"environment variable ENABLE_R2_SYNC: expected a boolean (true/false/1/0/yes/no), "
                             f"got {text!r}"]


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("false", False), ("1", True), ("0", False),
                                            ('"yes"', True), ('"no"', False)])
def test_toml_booleans(base, tmp_path, raw, value):
    toml = write(tmp_path, f"[watch]\nenabled = {raw}\n")
    assert load_config(base, config_file=toml).watch.enabled is value


@pytest.mark.parametrize("raw", ["2", '"on"', "1.0", "[]"])
def test_toml_bad_booleans(base, tmp_path, raw):
    toml = write(tmp_path, f"[watch]\nenabled = {raw}\n")
    with pytest.raises(ConfigError, match=rf"TOML key watch.enabled \({toml}:2\): expected a boolean"):
        load_config(base, config_file=toml)


# -- provider and region ----------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "provider", "region"), [
    (R2, "Cloudflare", "auto"),
    ("https://0123456789abcdef.eu.r2.cloudflarestorage.com", "Cloudflare", "auto"),
    ("https://s3.amazonaws.com", "AWS", "us-east-1"),
    ("https://s3.eu-west-2.amazonaws.com", "AWS", "eu-west-2"),
    ("https://s3-us-west-1.amazonaws.com", "AWS", "us-west-1"),
    ("https://s3.wasabisys.com", "Wasabi", "us-east-1"),
    ("http://10.0.0.5:9000", "Other", "us-east-1"),
    ("http://127.0.0.1:9000", "Other", "us-east-1"),
])
def test_provider_and_region_inferred(base, endpoint, provider, region):
    assert infer_provider(endpoint) == (provider, region)
    config = load_config({**base, "R2_ENDPOINT": endpoint, "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY})
    assert (config.remote.provider, config.remote.region) == (provider, region)
    env = remote_env(config.remote)
    assert env["RCLONE_CONFIG_SYNCBRIDGE_PROVIDER"] == provider
    assert env["RCLONE_CONFIG_SYNCBRIDGE_REGION"] == region
    assert env["RCLONE_CONFIG_SYNCBRIDGE_NO_CHECK_BUCKET"] == "true"


@pytest.mark.parametrize("name, expected", [("ca.pem", None), ("a,b.pem", '"{}"'), ('a"b.pem', '"{}"')])
def test_ca_bundle_reaches_rclone_and_is_checked(base, tmp_path, name, expected):
    remote = {**base, "R2_ENDPOINT": "https://minio.example:9000", "R2_ACCESS_KEY": ACCESS_KEY,
              "R2_SECRET_KEY": SECRET_KEY}
    bundle = tmp_path / name
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    config = load_config({**remote, "SYNCBRIDGE_CA_BUNDLE": str(bundle)})
    assert config.remote.ca_bundle == bundle
    quoted = str(bundle).replace('"', '""')
    assert remote_env(config.remote)["RCLONE_CA_CERT"] == (expected.format(quoted) if expected else str(bundle))
    assert load_config({**remote, "AWS_CA_BUNDLE": str(bundle)}).remote.ca_bundle == bundle  # boto3's name too
    assert "RCLONE_CA_CERT" not in remote_env(load_config(remote).remote)
    with pytest.raises(ConfigError) as exc:
        load_config({**remote, "SYNCBRIDGE_CA_BUNDLE": str(tmp_path / "missing.pem")})
    assert "SYNCBRIDGE_CA_BUNDLE" in str(exc.value) and "missing.pem" in str(exc.value)


def test_provider_and_region_set_explicitly(base):
    env = {**base, "R2_ENDPOINT": "https://minio.example:9000", "R2_ACCESS_KEY": ACCESS_KEY,
           "R2_SECRET_KEY": SECRET_KEY, "SYNCBRIDGE_PROVIDER": "minio", "SYNCBRIDGE_REGION": "eu-central-7"}
    config = load_config(env)
    assert (config.remote.provider, config.remote.region) == ("Minio", "eu-central-7")
    with pytest.raises(ConfigError, match="SYNCBRIDGE_PROVIDER: expected one of .* got 'Cloudflair'; did you mean "
                                          "'Cloudflare'"):
        load_config({**env, "SYNCBRIDGE_PROVIDER": "Cloudflair"})


@pytest.mark.parametrize("endpoint", ["r2.cloudflarestorage.com", "ftp://x.example", "http://", "http://["])
def test_bad_endpoint(base, endpoint):
    with pytest.raises(ConfigError, match="environment variable R2_ENDPOINT: must be an http"):
        load_config({**base, "R2_ENDPOINT": endpoint, "R2_ACCESS_KEY": ACCESS_KEY, "R2_SECRET_KEY": SECRET_KEY})


@pytest.mark.parametrize("endpoint, bucket, hint", [
    ("https://acct.r2.cloudflarestorage.com/my-bucket", "my-bucket", "R2_BUCKET=my-bucket"),  # as R2's dashboard
    ("https://acct.r2.cloudflarestorage.com/my-bucket/", "other", "R2_BUCKET=my-bucket"),  # R2 has no path at all
    ("https://minio.example:9000/gw/my-bucket", "my-bucket", None),  # another service: not ending with the bucket
    ("https://acct.r2.cloudflarestorage.com?x=1", "my-bucket", None),
])
def test_endpoint_with_the_bucket_on_it(base, endpoint, bucket, hint):
    """The address with the bucket on the end was taken as the endpoint, and every object went to
    /<that bucket>/<bucket>/<key> without a word."""
    with pytest.raises(ConfigError) as caught:
        load_config({**base, "R2_ENDPOINT": endpoint, "R2_BUCKET": bucket, "R2_ACCESS_KEY": ACCESS_KEY,
                     "R2_SECRET_KEY": SECRET_KEY})
    text = str(caught.value)
    assert "environment variable R2_ENDPOINT: must be the service's address without the bucket" in text, text
    assert endpoint in text and SECRET_KEY not in text
    assert (hint in text) if hint else "R2_BUCKET=" not in text


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:8787/cdn-cgi/local/r2/s3", "https://gw.example/s3/"])
def test_endpoint_with_a_path_that_is_not_the_bucket(base, endpoint):
    """A gateway's prefix (and the R2 emulator's) is a path, and is kept."""
    config = load_config({**base, "R2_ENDPOINT": endpoint, "R2_BUCKET": "my-bucket", "R2_ACCESS_KEY": ACCESS_KEY,
                          "R2_SECRET_KEY": SECRET_KEY})
    assert config.remote.endpoint == endpoint.rstrip("/")


# -- state directory, storage mode, embedded default -------------------------------------------


def test_state_dir_defaults(base, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    assert load_config({**base, "STORAGE_MODE": "persistent"}).state_dir == ws / ".syncbridge"
    assert load_config({**base, "STORAGE_MODE": "ephemeral"}).state_dir == \
        tmp_path / "home" / ".local" / "state" / "syncbridge"
    xdg = {**base, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    assert load_config(xdg).state_dir == tmp_path / "xdg" / "syncbridge"
    assert load_config({**xdg, "SYNCBRIDGE_STATE_DIR": str(tmp_path / "explicit")}).state_dir == tmp_path / "explicit"
    # auto: persistent exactly when the workspace is a mount point (the template's detect_storage_mode)
    assert load_config(base, is_mount=lambda p: p == str(ws)).state_dir == ws / ".syncbridge"


@pytest.mark.parametrize(("mode", "is_dir", "mounted", "want"), [
    ("", True, True, "persistent"),          # unset = auto
    ("auto", True, True, "persistent"),
    ("AUTO", True, False, "ephemeral"),
    ("auto", False, True, "ephemeral"),      # [ -d /workspace ] fails
    ("persistent", False, False, "persistent"),
    ("ephemeral", True, True, "ephemeral"),
])
def test_storage_mode_like_detect_storage_mode(base, tmp_path, mode, is_dir, mounted, want):
    if is_dir:
        (tmp_path / "ws").mkdir()
    config = load_config({**base, "STORAGE_MODE": mode}, is_mount=lambda _p: mounted)
    assert config.storage_mode == want


def test_storage_mode_typo_is_an_error_not_a_silent_ephemeral(base):
    # detect_storage_mode() in the templates turns a typo into "ephemeral" silently; syncbridge names it.
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "STORAGE_MODE": "persistant"})
    assert problems(exc) == ["environment variable STORAGE_MODE: expected one of auto, persistent, ephemeral, got "
                             "'persistant'; did you mean 'persistent'?"]


def test_is_mount_point_reads_the_mount_table_like_mountpoint(tmp_path):
    ws = tmp_path / "work space"
    ws.mkdir()
    assert not is_mount_point(str(ws))  # a plain folder
    escaped = str(ws).replace(" ", "\\040")
    table = tmp_path / "mountinfo"
    table.write_text(f"36 35 98:0 / {escaped} rw,noatime master:1 - ext4 /dev/sda1 rw\n")
    # a bind mount of the same file system: os.path.ismount says no, mountpoint -q says yes
    assert not os.path.ismount(str(ws))
    assert is_mount_point(str(ws), mountinfo=str(table))
    assert is_mount_point("/")


def test_embedded_default_needs_no_credentials(base, tmp_path):
    config = load_config({**base, "SYNCBRIDGE_STATE_DIR": str(tmp_path / "st"), "R2_BUCKET": "mine"})
    assert config.remote.is_local and config.remote.provider == "local"
    assert config.remote.local_bucket_dir == tmp_path / "st" / "buckets" / "mine"
    assert "local bucket 'mine'" in config.remote.describe() and "no endpoint set" in config.remote.describe()
    assert remote_env(config.remote) == {"RCLONE_CONFIG_SYNCBRIDGE_TYPE": "local"}
    other = load_config({**base, "SYNCBRIDGE_LOCAL_BUCKET_DIR": str(tmp_path / "lb")})
    assert other.remote.local_bucket_dir == tmp_path / "lb" / "runpod"


def test_state_dir_is_created_0700_by_the_first_command(local_env, tmp_path):
    from syncbridge.bulk import push

    config = load_config(local_env)
    assert not config.state_dir.exists()
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    push(config, src, "x")
    assert stat.S_IMODE(config.state_dir.stat().st_mode) == 0o700
    assert (config.remote.local_bucket_dir / "x" / "a.txt").read_text() == "a"


def test_bucket_names(base):
    for good in ("abc", "my-bucket.1", "a" * 63):
        assert load_config({**base, "R2_BUCKET": good}).remote.bucket == good
    for bad in ("ab", "UPPER", "under_score", "a..b", "-x-", "a" * 64, "../etc"):
        with pytest.raises(ConfigError, match="environment variable R2_BUCKET: .* is not a valid bucket name"):
            load_config({**base, "R2_BUCKET": bad})


def test_reference_lists_every_template_variable():
    ref = reference_markdown()
    for name in ("R2_ENDPOINT", "R2_ACCESS_KEY", "R2_SECRET_KEY", "R2_BUCKET", "ENABLE_R2_SYNC", "COMFYUI_OUTPUT_DIR",
                 "STORAGE_MODE", "GPU_TIER", "SYNCBRIDGE_STATE_DIR"):
        assert f"`{name}`" in ref


# -- names: typos caught, one name per setting, old names still read ------------------------------------------

def test_a_mistyped_variable_is_an_error_with_did_you_mean(base):
    """Before, SYNCBRIDGE_WATCH_PREFX was ignored without a word and outputs went under the default prefix."""
    with pytest.raises(ConfigError) as exc:
        load_config({**base, "SYNCBRIDGE_WATCH_PREFX": "runs", "R2_SECRET": "x", "R2_SOMETHING": "y",
                     "SYNCBRIDGE_EMPTY_TYPO": ""})
    text = str(exc.value)
    assert ("environment variable SYNCBRIDGE_WATCH_PREFX: is not a syncbridge setting; did you mean "
            "'SYNCBRIDGE_WATCH_PREFIX'?") in text
    assert "environment variable R2_SECRET: is not a syncbridge setting; did you mean 'R2_SECRET_KEY'?" in text
    assert "R2_SOMETHING" not in text  # Cloudflare's namespace too: far from every setting, only warned about
    assert "SYNCBRIDGE_EMPTY_TYPO" not in text  # empty means unset, as for every setting
    assert len(exc.value.problems) == 2  # all at once
    config = load_config({**base, "R2_SOMETHING": "y"})
    assert "environment variable R2_SOMETHING is not a syncbridge setting (ignored)" in config.notices


def test_names_other_tools_and_the_app_see_are_allowed(base):
    config = load_config({**base, "SYNCBRIDGE_START_PID": "12", "SYNCBRIDGE_DEMO_EVENTS": "x",
                          "SYNCBRIDGE_GPU_TIER": "datacenter", "SYNCBRIDGE_STORAGE_MODE": "persistent"})
    # what `syncbridge start` gives the app is also accepted as input (it used to be ignored)
    assert config.gpu_tier == "datacenter" and config.storage_mode == "persistent"


def test_old_names_still_work_with_one_warning(base, tmp_path, caplog):
    import syncbridge.fmt as fmt

    fmt._SAID.clear()
    with caplog.at_level("WARNING", logger="syncbridge"):
        old = load_config({**base, "SYNCBRIDGE_CONDITIONAL_PUT": "on", "SYNCBRIDGE_BISYNC_LOSER": "delete",
                           "SYNCBRIDGE_BISYNC_CONFLICT": "older"})
        load_config({**base, "SYNCBRIDGE_CONDITIONAL_PUT": "on"})
    assert (old.watch.conditional, old.bisync.conflict_loser, old.bisync.conflict_resolve) == ("on", "delete", "older")
    said = [r.getMessage() for r in caplog.records]
    assert said.count("SYNCBRIDGE_CONDITIONAL_PUT is now SYNCBRIDGE_WATCH_CONDITIONAL; the old name still works "
                      "for now") == 1
    assert any("SYNCBRIDGE_BISYNC_LOSER is now SYNCBRIDGE_BISYNC_CONFLICT_LOSER" in m for m in said)
    new = load_config({**base, "SYNCBRIDGE_WATCH_CONDITIONAL": "on", "SYNCBRIDGE_BISYNC_CONFLICT_LOSER": "delete"})
    assert (new.watch.conditional, new.bisync.conflict_loser) == ("on", "delete") and not new.notices
    toml = tmp_path / "c.toml"
    toml.write_text(f'[remote]\nlocal_root = "{tmp_path / "lb"}"\n')
    renamed = load_config(base, config_file=toml)
    assert renamed.remote.local_bucket_dir == tmp_path / "lb" / "runpod"
    assert any("remote.local_root is now remote.local_bucket_dir" in n for n in renamed.notices)


def test_one_name_per_setting():
    """An environment name ends with its TOML key's name, so each setting reads the same in env, TOML and
    docs; the template's own inputs are the listed exceptions."""
    from syncbridge.config import SETTINGS

    template_inputs = {"watch.enabled": "ENABLE_R2_SYNC", "watch.dir": "COMFYUI_OUTPUT_DIR",
                       "models.manifests": "SYNCBRIDGE_MODELS", "start.folders_spec": "SYNCBRIDGE_FOLDERS",
                       "start.on_bucket_failure": "SYNCBRIDGE_ON_BUCKET_FAILURE"}
    drift = [(s.key, s.env[0]) for s in SETTINGS
             if s.key not in template_inputs and not s.env[0].endswith(s.name.upper())]
    assert not drift, drift
    assert all(next(s for s in SETTINGS if s.key == k).env[0] == v for k, v in template_inputs.items())


def test_account_id_gives_the_r2_endpoint(base):
    env = {k: v for k, v in base.items() if k != "R2_ENDPOINT"}
    config = load_config({**env, "R2_ACCOUNT_ID": "0123abcd", "R2_ACCESS_KEY": ACCESS_KEY,
                          "R2_SECRET_KEY": SECRET_KEY})
    assert config.remote.endpoint == "https://0123abcd.r2.cloudflarestorage.com"
    assert config.remote.provider == "Cloudflare"


def test_section_classes_and_the_settings_table_agree() -> None:
    """Each section object is filled from the table by field name: a setting without a field (or a field
    without a setting) would be dropped silently, so the two must name the same things."""
    import attrs

    from syncbridge.config import SETTINGS
    from syncbridge.config.build import SECTION_DERIVED
    from syncbridge.config.model import BisyncConfig, FleetConfig, JobsConfig, ModelsConfig, RcloneConfig, \
        StartConfig, WatchConfig

    for cls in (RcloneConfig, WatchConfig, ModelsConfig, BisyncConfig, StartConfig, FleetConfig, JobsConfig):
        section = cls.__name__.removesuffix("Config").lower()
        fields = {f.name for f in attrs.fields(cls)}
        settings = {s.name for s in SETTINGS if s.section == section and s.key != "start.folders_spec"}
        assert fields == settings, (cls.__name__, fields ^ settings)
        assert set(SECTION_DERIVED.get(cls, ())) <= fields


def test_a_tilde_in_a_path_is_the_home_of_the_environment_passed_in_or_of_the_user_named() -> None:
    """``~`` comes from HOME in the mapping passed in (not this process's); ``~user`` from the password
    database, as os.path.expanduser does; an unknown user is left as written."""
    import pwd

    from syncbridge.config.settings import expand_home

    config = load_config({"HOME": "/home/pod", "COMFYUI_OUTPUT_DIR": "~/out",
                          "SYNCBRIDGE_MODELS": f"~{pwd.getpwuid(0).pw_name}/m.toml:~nobody-such-user/n.toml"})
    assert config.watch.dir == Path("/home/pod/out")
    assert config.models.manifests == (Path(pwd.getpwuid(0).pw_dir) / "m.toml", Path("~nobody-such-user/n.toml"))
    assert expand_home("~/x", "/") == Path("/x") and expand_home("~", "/") == Path("/")
    assert expand_home("~/x", "/home/u/") == Path("/home/u/x") and expand_home("a/~", "/h") == Path("a/~")
