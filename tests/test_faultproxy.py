"""The fault proxy's own tests: it relays faithfully, and each fault looks to a client like the real thing.

Clients are syncbridge's own S3Store (boto3, with retries off unless a test turns
them on), raw ``http.client`` where a test needs to see bytes, and the real rclone.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import time
from pathlib import Path

import pytest

from syncbridge.bulk import pull, push
from syncbridge.config import load_config
from syncbridge.errors import StoreError
from syncbridge.store import S3Store

from .conftest import new_bucket, server_env
from .faultproxy import FaultProxy, Rule, s3_error_body


@pytest.fixture
def proxy(rclone_s3):
    with FaultProxy(rclone_s3.endpoint) as p:
        yield p


def _store(server, proxy: FaultProxy, tmp_path: Path, *, attempts: int = 1, bucket: str | None = None) -> S3Store:
    env = server_env(server, bucket or new_bucket(server), tmp_path)
    env["R2_ENDPOINT"] = proxy.endpoint
    return S3Store(load_config(env).remote, max_attempts=attempts)


def _refused(port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_relays_every_kind_of_request(s3, tmp_path):
    """Small and 100-continue bodies, keep-alive, HEAD, list, delete; then rclone both ways."""
    with FaultProxy(s3.endpoint) as proxy:
        store = _store(s3, proxy, tmp_path)
        big = os.urandom(9 * 1024 * 1024 + 17)
        (tmp_path / "big.bin").write_bytes(big)
        store.put_bytes("a/small.txt", b"hello")
        store.put_file(tmp_path / "big.bin", "a/big.bin")
        assert store.get_bytes("a/small.txt")[0] == b"hello"
        assert store.get_bytes("a/big.bin")[0] == big
        assert store.head("a/big.bin").size == len(big)
        assert store.head("a/missing") is None
        assert sorted(o.key for o in store.list("a/")) == ["a/big.bin", "a/small.txt"]
        store.delete("a/small.txt")
        assert store.head("a/small.txt") is None

        env = server_env(s3, store.bucket, tmp_path)
        env["R2_ENDPOINT"] = proxy.endpoint
        config = load_config(env)
        src = tmp_path / "src"
        for i in range(5):
            (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 2}" / f"f{i}.bin").write_bytes(os.urandom(1000 * (i + 1)))
        (src / "d0" / "large.bin").write_bytes(big)
        push(config, src, "tree")
        pull(config, "tree", tmp_path / "dst")
        for p in src.rglob("*"):
            if p.is_file():
                assert (tmp_path / "dst" / p.relative_to(src)).read_bytes() == p.read_bytes()
        assert proxy.count("request") >= 10


@pytest.mark.parametrize("status,code", [(503, "SlowDown"), (429, "SlowDown"), (500, "InternalError"),
                                         (503, "ServiceUnavailable")])
def test_error_answers_are_s3_errors(rclone_s3, proxy, tmp_path, status, code):
    store = _store(rclone_s3, proxy, tmp_path)
    proxy.add(Rule("error", method="PUT", status=status, code=code, times=1))
    with pytest.raises(StoreError) as info:
        store.put_bytes("k.txt", b"data")
    assert info.value.status == status
    assert info.value.code == code
    assert info.value.retryable
    assert store.head("k.txt") is None, "an answered error must not reach the server"
    store.put_bytes("k.txt", b"data")  # the rule fired once; the connection is still usable
    assert store.get_bytes("k.txt")[0] == b"data"


def test_error_on_a_large_body_with_expect_continue(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    (tmp_path / "f").write_bytes(os.urandom(3 * 1024 * 1024))
    proxy.add(Rule("error", method="PUT", status=503, times=1))
    with pytest.raises(StoreError) as info:
        store.put_file(tmp_path / "f", "f")
    assert info.value.status == 503
    store.put_file(tmp_path / "f", "f")
    assert store.head("f").size == 3 * 1024 * 1024


def test_retries_get_past_a_few_errors(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path, attempts=4)
    proxy.add(Rule("error", method="PUT", status=503, times=2))
    store.put_bytes("r.txt", b"x" * 100)
    assert proxy.count("error") == 2
    assert store.get_bytes("r.txt")[0] == b"x" * 100


def test_head_error_has_no_body(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    store.put_bytes("h", b"1")
    proxy.add(Rule("error", method="HEAD", status=500, code="InternalError", times=1))
    with pytest.raises(StoreError) as info:
        store.head("h")
    assert info.value.status == 500 and info.value.retryable


def test_error_body_is_s3_xml():
    body = s3_error_body("SlowDown", "/b/k<&>", "id-1").decode()
    assert "<Code>SlowDown</Code>" in body and "<Resource>/b/k&lt;&amp;&gt;</Resource>" in body


def test_refuse_closes_without_answer(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    store.put_bytes("x", b"1")
    proxy.add(Rule("refuse", method="GET", times=1))
    with pytest.raises(StoreError) as info:
        store.get_bytes("x")
    assert info.value.retryable and info.value.status is None
    assert store.get_bytes("x")[0] == b"1"


def test_outage_refuses_connections_until_restored(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    store.put_bytes("o", b"1")
    proxy.outage()
    assert _refused(proxy.port)
    with pytest.raises(StoreError) as info:
        store.get_bytes("o")
    assert info.value.retryable
    proxy.restore()
    assert not _refused(proxy.port)
    assert store.get_bytes("o")[0] == b"1"


def test_scheduled_outage_ends_by_itself(proxy):
    started = time.monotonic()
    proxy.outage(0.6, delay=0.2)
    assert proxy.wait_for(lambda: not proxy.listening, 5)
    assert _refused(proxy.port)
    assert proxy.wait_for(lambda: proxy.listening, 5)
    assert time.monotonic() - started >= 0.7
    assert not _refused(proxy.port)


def test_accept_then_close(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    proxy.accept_mode = "close"
    with pytest.raises(StoreError):
        list(store.list(""))
    proxy.accept_mode = "relay"
    assert list(store.list("")) == []


def test_reset_mid_upload_stores_nothing(s3, tmp_path):
    with FaultProxy(s3.endpoint) as proxy:
        store = _store(s3, proxy, tmp_path)
        data = os.urandom(4 * 1024 * 1024)
        (tmp_path / "f").write_bytes(data)
        proxy.add(Rule("reset", method="PUT", phase="request", fraction=0.5, times=1))
        with pytest.raises(StoreError) as info:
            store.put_file(tmp_path / "f", "f")
        assert info.value.retryable
        assert proxy.count("reset") == 1
        assert store.head("f") is None
        store.put_file(tmp_path / "f", "f")
        assert store.get_bytes("f")[0] == data


def test_reset_mid_download(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    data = os.urandom(2 * 1024 * 1024)
    store.put_bytes("g", data)
    proxy.add(Rule("reset", method="GET", phase="response", fraction=0.5, times=1))
    with pytest.raises(StoreError) as info:
        store.get_bytes("g")
    assert info.value.retryable


def test_truncated_get_is_noticed(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    data = os.urandom(1024 * 1024)
    store.put_bytes("t", data)
    proxy.add(Rule("truncate", method="GET", fraction=0.3, times=1))
    with pytest.raises(StoreError) as info:
        store.get_bytes("t")
    assert info.value.retryable
    assert store.get_bytes("t")[0] == data


def test_lying_truncation_only_a_checksum_can_tell(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    data = os.urandom(100_000)
    store.put_bytes("lie", data)
    proxy.add(Rule("truncate", method="GET", after_bytes=1000, lie=True, times=1))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    # rclone serve s3 wants signed requests; a presigned URL keeps this test to raw HTTP.
    url = store.client.generate_presigned_url("get_object", Params={"Bucket": store.bucket, "Key": "lie"})
    conn.request("GET", url.split(str(proxy.port), 1)[1])
    resp = conn.getresponse()
    assert resp.status == 200
    body = resp.read()
    assert body == data[:1000]
    assert int(resp.getheader("Content-Length")) == 1000
    conn.close()


def test_stalls(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    store.put_bytes("s", b"abc" * 1000)
    proxy.add(Rule("stall", method="GET", phase="request", seconds=0.5, times=1))
    started = time.monotonic()
    assert store.get_bytes("s")[0] == b"abc" * 1000
    assert time.monotonic() - started >= 0.45
    proxy.add(Rule("stall", method="GET", phase="response", after_bytes=10, seconds=3, times=1))
    url = store.client.generate_presigned_url("get_object", Params={"Bucket": store.bucket, "Key": "s"})
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=0.5)
    conn.request("GET", url.split(str(proxy.port), 1)[1])
    resp = conn.getresponse()
    with pytest.raises(socket.timeout):
        resp.read()
    conn.close()


def test_probability_is_roughly_honoured(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    proxy.add(Rule("error", method="PUT", status=503, probability=0.2))
    failures = 0
    for i in range(100):
        try:
            store.put_bytes(f"p/{i}", b"1")
        except StoreError:
            failures += 1
    assert failures == proxy.count("error")
    assert 5 <= failures <= 40
    assert len(proxy.seen(method="PUT", action="error")) == failures


def test_rules_match_on_path_query_and_size(rclone_s3, proxy, tmp_path):
    store = _store(rclone_s3, proxy, tmp_path)
    proxy.add(Rule("error", method="PUT", path=r"/only-this/", status=503),
              Rule("error", method="PUT", min_body=1000, status=500, code="InternalError"),
              Rule("error", method="GET", query="list-type", status=503, skip=1))
    store.put_bytes("other/a", b"1")
    with pytest.raises(StoreError):
        store.put_bytes("only-this/a", b"1")
    with pytest.raises(StoreError) as info:
        store.put_bytes("other/b", b"x" * 1000)
    assert info.value.status == 500
    assert [o.key for o in store.list("other/")] == ["other/a"]  # first listing skipped by the rule
    with pytest.raises(StoreError):
        list(store.list("other/"))


def test_only_loopback_upstreams():
    with pytest.raises(ValueError):
        FaultProxy("http://example.com:80")
    with pytest.raises(ValueError):
        Rule("explode")
