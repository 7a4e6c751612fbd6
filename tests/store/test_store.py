"""Object stores against both loopback servers and the local bucket: the interface,
conditional writes (probed, never pretended), errors carrying data, R2-safe checksums."""

from __future__ import annotations

import ast
import io
import os
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.errors import PreconditionFailedError, StoreError
from syncbridge.demo.localserver import free_port
from syncbridge.store import LocalStore, S3Store, check_endpoint, make_s3_client, open_store

from ..conftest import SECRET_KEY, new_bucket, server_env

PKG = Path(__file__).resolve().parents[2] / "syncbridge"


@pytest.fixture(params=["rclone", "moto", "local"])
def store_and_kind(request, tmp_path):
    if request.param == "local":
        env = {"HOME": str(tmp_path / "home"), "SYNCBRIDGE_STATE_DIR": str(tmp_path / "state")}
    else:
        server = request.getfixturevalue(f"{request.param}_s3")
        env = server_env(server, new_bucket(server), tmp_path)
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    yield store, request.param
    store.close()


def test_put_get_head_list_delete(store_and_kind, tmp_path):
    store, _kind = store_and_kind
    assert store.head("a/b.txt") is None
    info = store.put_bytes("a/b.txt", b"hello", metadata={"sha256": "abc"})
    assert info.size == 5 and info.etag
    head = store.head("a/b.txt")
    assert head.size == 5 and head.etag == info.etag and head.metadata.get("sha256") == "abc"
    assert head.last_modified.tzinfo is not None
    data, got = store.get_bytes("a/b.txt")
    assert data == b"hello" and got.size == 5
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(100_000))
    store.put_file(src, "a/c/f.bin")
    buf = io.BytesIO()
    store.download_to("a/c/f.bin", buf, offset=60_000)
    assert buf.getvalue() == src.read_bytes()[60_000:]
    assert [o.key for o in store.list("a/")] == ["a/b.txt", "a/c/f.bin"]
    assert [o.key for o in store.list("a/c")] == ["a/c/f.bin"]
    store.delete("a/b.txt")
    store.delete("a/b.txt")  # deleting what is gone is fine
    assert store.head("a/b.txt") is None
    store.check_bucket()


def test_listing_and_head_times_agree_and_match_botocore(store_and_kind):
    store, _kind = store_and_kind
    store.put_bytes("t/x", b"x")
    listed = next(iter(store.list("t/")))
    head = store.head("t/x")
    assert listed.last_modified.tzinfo is not None
    assert abs((listed.last_modified - head.last_modified).total_seconds()) < 1


@pytest.mark.parametrize("value", ["2026-11-29T07:31:36.000Z", "2026-11-29T07:31:36Z", "2026-11-29T07:31:36.5Z",
                                   "2026-11-29T07:31:36.123456+02:00", "2026-11-29T07:31:36",
                                   "Sun, 29 Nov 2026 07:31:36 GMT", 1764401496, "1764401496"])
def test_fast_timestamp_parser_agrees_with_botocore(value):
    from botocore.utils import parse_timestamp

    from syncbridge.store.s3 import _parse_timestamp

    ours, theirs = _parse_timestamp(value), parse_timestamp(value)
    assert ours == theirs and ours.utcoffset() == theirs.utcoffset()


def test_missing_object_error_carries_data(store_and_kind):
    store, _kind = store_and_kind
    with pytest.raises(StoreError) as exc:
        store.get_bytes("no/such/key")
    err = exc.value
    assert err.key == "no/such/key" and err.code == "NoSuchKey" and err.status == 404 and not err.retryable
    assert isinstance(err, OSError)


def test_conditional_writes_are_probed_not_pretended(store_and_kind):
    store, kind = store_and_kind
    enforced = store.conditional_writes()
    # moto and the local bucket enforce If-None-Match; rclone serve s3 accepts and ignores it
    assert enforced is (kind != "rclone")
    assert list(store.list(".syncbridge/probe")) == []  # the probe cleans up
    store.put_bytes("lease", b"1", if_none_match=True)
    if enforced:
        with pytest.raises(PreconditionFailedError) as exc:
            store.put_bytes("lease", b"2", if_none_match=True)
        assert exc.value.status == 412 and exc.value.key == "lease"
        etag = store.head("lease").etag
        store.put_bytes("lease", b"3", if_match=etag)  # compare-and-swap wins
        with pytest.raises(PreconditionFailedError):
            store.put_bytes("lease", b"4", if_match=etag)  # the old etag loses
        assert store.get_bytes("lease")[0] == b"3"


def test_multipart_upload_has_equal_parts(moto_s3, tmp_path):
    config = load_config(server_env(moto_s3, new_bucket(moto_s3), tmp_path))
    store = S3Store(config.remote, multipart_threshold=1)
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(17 * 1024 * 1024))
        info = store.put_file(src, "models/big.bin")
        assert info.etag.endswith("-3")  # 8 MiB + 8 MiB + 1 MiB
        assert store.get_bytes("models/big.bin")[0] == src.read_bytes()
        listed = store.client.list_multipart_uploads(Bucket=store.bucket)
        assert not listed.get("Uploads")
    finally:
        store.close()


def test_local_store_refuses_escaping_keys_and_hides_temp_files(tmp_path):
    store = LocalStore(tmp_path / "bucket", lock_dir=tmp_path / "locks")
    for key in ("../evil", "a/../../evil", "/abs", "a\\b", "a//b", ""):
        with pytest.raises(StoreError) as exc:
            store.put_bytes(key, b"x")
        assert exc.value.code == "InvalidKey"
    assert not (tmp_path / "evil").exists()
    (tmp_path / "bucket" / "x").mkdir(parents=True)
    (tmp_path / "bucket" / "x" / ".y.1234.sbtmp").write_bytes(b"partial")
    (tmp_path / "bucket" / "x" / "z.partial").write_bytes(b"partial")
    store.put_bytes("x/done", b"ok")
    assert [o.key for o in store.list("x/")] == ["x/done"]


def test_open_store_picks_the_backend_and_a_private_state_dir(tmp_path, moto_s3):
    local = load_config({"HOME": str(tmp_path / "home"), "SYNCBRIDGE_STATE_DIR": str(tmp_path / "st")})
    store = open_store(local.remote, state_dir=local.state_dir)
    assert isinstance(store, LocalStore) and store.root == local.remote.local_bucket_dir
    assert (tmp_path / "st").stat().st_mode & 0o777 == 0o700
    s3 = load_config(server_env(moto_s3, "whatever", tmp_path))
    store = open_store(s3.remote, state_dir=s3.state_dir)
    assert isinstance(store, S3Store)
    store.close()


# -- checksums: when_required, everywhere ----------------------------------------------------------


def test_s3_client_uses_when_required_checksums(moto_s3, tmp_path):
    config = load_config(server_env(moto_s3, new_bucket(moto_s3), tmp_path))
    client = make_s3_client(config.remote)
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    sent: list[dict[str, str]] = []
    client.meta.events.register("before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers)))
    client.put_object(Bucket=config.remote.bucket, Key="k", Body=b"data")
    client.close()
    headers = {k.lower() for k in sent[0]}
    # what R2 rejects (boto/boto3#4392): no CRC32 header, no trailing checksum
    assert not [h for h in headers if h.startswith("x-amz-checksum") or h == "x-amz-sdk-checksum-algorithm"], headers


def test_every_boto3_client_in_the_package_sets_when_required():
    """Any `.client("s3", ...)` anywhere in syncbridge/ passes a botocore Config with both settings."""
    found = 0
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("client", "resource")):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "s3"):
                continue
            found += 1
            config = next((kw.value for kw in node.keywords if kw.arg == "config"), None)
            assert isinstance(config, ast.Call), f"{path.name}:{node.lineno}: boto3 client without config="
            settings = {kw.arg: getattr(kw.value, "value", None) for kw in config.keywords}
            for name in ("request_checksum_calculation", "response_checksum_validation"):
                assert settings.get(name) == "when_required", f"{path.name}:{node.lineno}: {name} not when_required"
    assert found >= 2  # store.make_s3_client and demo.localserver.create_bucket at least


def test_check_endpoint(moto_s3):
    assert check_endpoint(moto_s3.endpoint) >= 0
    port = free_port()
    with pytest.raises(StoreError) as exc:
        check_endpoint(f"http://127.0.0.1:{port}")
    assert exc.value.code == "ConnectionRefused" and exc.value.retryable
    assert f"127.0.0.1:{port}" in str(exc.value)
    with pytest.raises(StoreError) as exc:
        check_endpoint("https://nosuchhost.invalid")
    assert exc.value.code == "NameResolution"


def test_check_endpoint_wants_an_http_answer(rclone_s3):
    import socket
    import threading
    import time

    from ..faultproxy import FaultProxy, Rule

    assert check_endpoint(rclone_s3.endpoint) >= 0
    with FaultProxy(rclone_s3.endpoint) as proxy:
        proxy.add(Rule("stall", seconds=600))  # accepts connections, never answers
        started = time.monotonic()
        with pytest.raises(StoreError) as exc:
            check_endpoint(proxy.endpoint, answer_timeout=1)
        assert time.monotonic() - started < 5
        assert exc.value.code == "NoAnswer" and "no answer in 1 s" in str(exc.value)
        assert f"R2_ENDPOINT={proxy.endpoint}" in str(exc.value)
    listener = socket.create_server(("127.0.0.1", 0))  # accepts, then hangs up without a word

    def hang_up() -> None:
        conn, _ = listener.accept()
        conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    with pytest.raises(StoreError) as exc:
        check_endpoint(f"http://127.0.0.1:{listener.getsockname()[1]}", answer_timeout=5)
    listener.close()
    assert exc.value.code == "NoAnswer" and "closed the connection" in str(exc.value)


def test_wrong_secret_is_a_clear_store_error(rclone_s3, tmp_path):
    env = {**server_env(rclone_s3, new_bucket(rclone_s3), tmp_path), "R2_SECRET_KEY": "sbWRONG-0000000000000"}
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir, max_attempts=1)
    try:
        with pytest.raises(StoreError) as exc:
            store.put_bytes("k", b"x")
    finally:
        store.close()
    assert exc.value.code == "SignatureDoesNotMatch" and exc.value.status == 403 and not exc.value.retryable
    assert "set R2_SECRET_KEY" in str(exc.value) and SECRET_KEY not in str(exc.value)
    assert exc.value.setting == "R2_SECRET_KEY"
