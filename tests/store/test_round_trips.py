"""Round trips an upload costs on a real link: no wait for "100 Continue" below the threshold, the
no-clobber rule inside the PUT itself, and a connection made ready before it is needed.

The fault proxy records each request's headers as they reached it; the WAN proxy
(benchmarks/wanproxy.py) counts the TCP connections a client opens and closes idle ones as an edge does.
"""

from __future__ import annotations

import os

import pytest

from syncbridge.config import load_config
from syncbridge.errors import PreconditionFailedError
from syncbridge.store import S3Store

from benchmarks.wanproxy import WanProxy

from ..conftest import new_bucket, server_env, wait_for
from ..faultproxy import FaultProxy
from .test_tls import make_tls


def _puts(proxy: FaultProxy, n: int) -> list:
    """The PUTs to a test bucket, once the proxy has recorded ``n`` (it records after relaying the answer)."""
    puts = [s for s in proxy.seen(method="PUT") if s.path.startswith("/sb-")]
    return puts if len(puts) >= n else []


def _store(server, tmp_path, endpoint: str, **extra: str) -> S3Store:
    env = {**server_env(server, new_bucket(server), tmp_path), "R2_ENDPOINT": endpoint, **extra}
    return S3Store(load_config(env).remote, max_attempts=1)


@pytest.mark.parametrize("threshold", [None, "65536"])
def test_small_bodies_do_not_wait_for_100_continue_and_stay_conditional(moto_s3, tmp_path, threshold):
    extra = {"SYNCBRIDGE_EXPECT_CONTINUE_MIN": threshold} if threshold else {}
    limit = int(threshold) if threshold else 2 * 1024 * 1024
    with FaultProxy(moto_s3.endpoint) as proxy:
        store = _store(moto_s3, tmp_path, proxy.endpoint, **extra)
        small, large = tmp_path / "small.png", tmp_path / "large.bin"
        small.write_bytes(os.urandom(limit - 1))
        large.write_bytes(os.urandom(limit))
        store.put_file(small, "out/small.png", if_none_match=True)
        store.put_file(large, "out/large.bin", if_none_match=True)
        with pytest.raises(PreconditionFailedError):
            store.put_file(small, "out/large.bin", if_none_match=True)  # another's object is kept
        store.close()
        puts = wait_for(lambda: _puts(proxy, 3), timeout=5, what="the proxy to record the PUTs")
    assert [(s.path.rsplit("/", 1)[-1], s.length) for s in puts] == \
        [("small.png", limit - 1), ("large.bin", limit), ("large.bin", limit - 1)]
    # one request each, carrying the condition; only the body at the threshold asks to continue
    assert [s.headers.get("expect") for s in puts] == [None, "100-continue", None]
    assert [s.headers.get("if-none-match") for s in puts] == ["*", "*", "*"]
    assert len(proxy.seen(method="HEAD")) == 0


def test_zero_threshold_asks_for_every_body(moto_s3, tmp_path):
    with FaultProxy(moto_s3.endpoint) as proxy:
        store = _store(moto_s3, tmp_path, proxy.endpoint, SYNCBRIDGE_EXPECT_CONTINUE_MIN="0")
        store.put_bytes("a/b.png", b"x" * 10)  # the watcher's path for small files
        store.close()
        puts = wait_for(lambda: _puts(proxy, 1), timeout=5, what="the proxy to record the PUT")
    assert [s.headers.get("expect") for s in puts] == ["100-continue"]


def test_warm_replaces_a_connection_the_edge_closed_and_an_idle_one(moto_s3, tmp_path):
    ca_file, context = make_tls(tmp_path)
    with FaultProxy(moto_s3.endpoint, tls=context) as tls, WanProxy(tls.endpoint, idle_close=0.4) as wan:
        store = _store(moto_s3, tmp_path, wan.endpoint, SYNCBRIDGE_CA_BUNDLE=str(ca_file))
        store.put_bytes("k/1.png", b"1")
        assert wan.counts()["connections"] == 1
        assert store.warm(idle_after=30) is False  # connected: nothing to do
        wait_for(lambda: wan.open_now() == 0, timeout=5, what="the edge to close the idle connection")
        assert store.warm(idle_after=30) is True  # closed by the edge: a new one, handshakes done now
        assert wan.counts()["connections"] == 2
        assert store.warm(idle_after=30) is False
        store.put_bytes("k/2.png", b"2")  # on the warmed connection
        assert wan.counts()["connections"] == 2
        assert store.warm(idle_after=0.0) is True  # idle too long: re-opened before an edge would close it
        assert wan.counts()["connections"] == 3
        store.put_bytes("k/3.png", b"3")
        counts = wan.counts()
        store.close()
    assert counts["connections"] == 3
    assert tls.count("request") == 3  # warming sent no request


def test_a_failed_abort_of_a_multipart_upload_is_said(moto_s3, tmp_path, caplog):
    """An abort that fails leaves the upload's parts billable in the bucket: it used to pass without a word."""
    from ..faultproxy import Rule

    with FaultProxy(moto_s3.endpoint) as proxy:
        store = _store(moto_s3, tmp_path, proxy.endpoint)
        upload_id = store.create_multipart("out/clip.mp4")
        store.upload_part("out/clip.mp4", upload_id, 1, os.urandom(1024))
        proxy.add(Rule("error", method="DELETE", path=r"clip\.mp4", status=503, code="ServiceUnavailable", times=1))
        with caplog.at_level("WARNING", logger="syncbridge.store"):
            store.abort_multipart("out/clip.mp4", upload_id)  # never raises into the upload it ends
        assert proxy.count("error") == 1
        said = [r for r in caplog.records if getattr(r, "event", "") == "store.abort_failed"]
        assert len(said) == 1 and "out/clip.mp4" in said[0].getMessage() and upload_id in said[0].getMessage()
        assert len(store.client.list_multipart_uploads(Bucket=store.bucket)["Uploads"]) == 1  # still there
        store.abort_multipart("out/clip.mp4", upload_id)  # the next try ends it, silently
        assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")
        store.close()
