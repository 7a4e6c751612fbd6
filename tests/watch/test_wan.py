"""The watcher over an emulated wide-area link (benchmarks/wanproxy.py in front of the fault proxy).

* Over TLS with the suite's private CA: after the edge has closed the idle connection, the first
  output's upload opens no connection after the file's close (the handshakes were done when the
  file was created, or before the edge's idle timeout).
* Through a 50 ms round trip: a burst with rewrites and injected 503s lands whole, each key holding
  the file's last bytes, and the journal agrees with the bucket.
"""

from __future__ import annotations

import hashlib
import random
import time

import pytest

from syncbridge import watch
from syncbridge.watch.journal import DONE, JOURNAL_NAME, Journal

from benchmarks.wanproxy import WanProxy

from ..faultproxy import FaultProxy, Rule
from ..store.test_tls import make_tls
from .test_faults import PREFIX, Rig, wait_for, write_file


@pytest.fixture
def tls_link(moto_s3, tmp_path):
    """moto (it enforces If-None-Match, as R2 does: one PUT per new output) behind TLS, behind an edge
    that closes connections idle for 0.6 s and adds 10 ms each way."""
    ca_file, context = make_tls(tmp_path)
    with FaultProxy(moto_s3.endpoint, tls=context) as tls, \
            WanProxy(tls.endpoint, one_way=0.01, idle_close=0.6) as wan:
        yield moto_s3, tls, wan, ca_file


def _visible(rig: Rig, key: str) -> bool:
    return rig.store.head(key) is not None


def test_first_output_after_the_edge_closed_the_idle_connection_is_ready_at_its_create(tls_link, tmp_path):
    server, tls, wan, ca_file = tls_link
    # The periodic re-open is off: only the file's creation can make the connection ready.
    rig = Rig(server, tmp_path, wan, SYNCBRIDGE_CA_BUNDLE=str(ca_file), SYNCBRIDGE_WATCH_KEEP_WARM_SECONDS="600")
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        write_file(rig.out / "warmup.png", b"w" * 5000)
        assert watcher.wait_idle(20)
        assert wait_for(lambda: wan.open_now() == 0 and wan.counts().get("connections", 0) >= 1, 10), \
            wan.connections  # the edge closed every idle connection
        closed_by_edge = sum(1 for c in wan.connections if c.closed_by == "idle")
        before = wan.counts()["connections"]
        with open(rig.out / "first.png", "wb") as fh:  # IN_CREATE: the watcher connects now
            assert wait_for(lambda: wan.counts()["connections"] > before, 5), "no connection made at the create"
            fh.write(random.randbytes(100_000))
            closed = time.monotonic()
        assert wait_for(lambda: _visible(rig, f"{PREFIX}/first.png"), 10)
        assert watcher.wait_idle(10)
    assert closed_by_edge >= 1
    assert wan.opened_since(closed) == 0, [c for c in wan.connections if c.opened >= closed]


def test_an_idle_watcher_keeps_its_connection_past_the_edge_timeout(tls_link, tmp_path):
    server, tls, wan, ca_file = tls_link
    rig = Rig(server, tmp_path, wan, SYNCBRIDGE_CA_BUNDLE=str(ca_file), SYNCBRIDGE_WATCH_KEEP_WARM_SECONDS="0.4")
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        write_file(rig.out / "warmup.png", b"w" * 5000)
        assert watcher.wait_idle(20)
        requests = tls.count("request")
        time.sleep(1.5)  # idle for more than twice the edge's 0.6 s
        # Just after a re-open, so the next one is 0.4 s away and cannot be mistaken for the upload's.
        seen = wan.counts()["connections"]
        assert wait_for(lambda: wan.counts()["connections"] > seen, 3, interval=0.005)
        time.sleep(0.1)  # its TCP and TLS handshakes (three 10 ms trips) are done
        write_file(rig.out / "after-idle.png", random.randbytes(100_000))
        closed = time.monotonic()
        assert wait_for(lambda: _visible(rig, f"{PREFIX}/after-idle.png"), 10, interval=0.01)
        visible = time.monotonic()
        assert watcher.wait_idle(10)
    assert [c for c in wan.connections if closed <= c.opened <= visible] == []
    # keeping warm sent no request: only the output's PUT went through the TLS end
    assert wait_for(lambda: tls.count("request") == requests + 1, 5), tls.count("request") - requests


@pytest.fixture(params=["rclone", "moto"])
def wan_rig(request, tmp_path):
    server = request.getfixturevalue(f"{request.param}_s3")
    with FaultProxy(server.endpoint) as proxy, WanProxy(proxy.endpoint, one_way=0.025) as wan:
        rig = Rig(server, tmp_path, wan)
        rig.proxy = proxy
        yield rig


def test_a_burst_with_rewrites_and_503s_over_a_50ms_link_lands_whole_and_in_order(wan_rig):
    rig = wan_rig
    rng = random.Random(21)
    rig.proxy.add(Rule("error", method="PUT", path=f"/{PREFIX}/", status=503, code="SlowDown", probability=0.15))
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        for i in range(120):
            write_file(rig.out / f"r{i % 4}" / f"f{i}.png", rng.randbytes(2000 + i))
            if i % 10 == 9:  # rewrite earlier files while their uploads may be in flight
                for j in range(i - 9, i, 3):
                    write_file(rig.out / f"r{j % 4}" / f"f{j}.png", rng.randbytes(3000 + j))
        assert watcher.wait_idle(120), watcher.stats()
    assert rig.proxy.count("error") >= 5
    problems = rig.differences(full=True)  # every key holds its file's last bytes
    assert not problems, problems[:10]
    journal = Journal(rig.config.state_dir / "watch" / JOURNAL_NAME, root=str(rig.out.resolve()), template=PREFIX)
    try:
        objects = rig.objects()
        for path in rig.out.rglob("*.png"):
            rel = path.relative_to(rig.out).as_posix()
            row = journal.get(rel)
            assert row is not None and row.state == DONE, (rel, row)
            assert row.etag == objects[row.key] == hashlib.md5(path.read_bytes()).hexdigest(), rel
    finally:
        journal.close()


def test_a_rewrite_is_one_conditional_put_and_keeps_an_object_someone_else_put_there(moto_s3, tmp_path):
    with FaultProxy(moto_s3.endpoint) as proxy:
        rig = Rig(moto_s3, tmp_path, proxy)
        with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
            write_file(rig.out / "v.png", b"first" * 100)
            assert watcher.wait_idle(20)
            first_etag = rig.objects()[f"{PREFIX}/v.png"]
            mark = len(proxy.seen())
            write_file(rig.out / "v.png", b"second" * 100)  # our own object: replaced
            assert watcher.wait_idle(20)
            assert wait_for(lambda: len(proxy.seen()) > mark, 5)
            rewrite = [s for s in proxy.seen()[mark:] if s.path.endswith("/v.png")]
            # someone else replaces it; our next rewrite must not clobber theirs
            rig.store.put_bytes(f"{PREFIX}/v.png", b"theirs")
            write_file(rig.out / "v.png", b"third" * 100)
            assert watcher.wait_idle(20)
        objects = rig.objects()
    assert [(s.method, s.headers.get("if-match")) for s in rewrite] == [("PUT", f'"{first_etag}"')]
    assert objects[f"{PREFIX}/v.png"] == hashlib.md5(b"theirs").hexdigest()
    siblings = [k for k in objects if k.startswith(f"{PREFIX}/v.~")]
    assert len(siblings) == 1 and objects[siblings[0]] == hashlib.md5(b"third" * 100).hexdigest()


def test_the_server_down_during_a_burst_over_a_50ms_link(wan_rig):
    """The fault proxy behind the delaying link stops listening and drops its connections for 3 s in a
    200-file burst: every file arrives afterwards (the warm connection the watcher kept is gone too)."""
    rig = wan_rig
    rng = random.Random(7)
    with watch.OutputWatcher(rig.config, directory=rig.out, prefix=PREFIX) as watcher:
        for i in range(200):
            if i == 40:
                rig.proxy.outage(3.0)
            write_file(rig.out / f"batch{i % 10}" / f"img_{i:05d}_.png", rng.randbytes(rng.randint(200, 4000)))
        assert rig.proxy.count("outage") == 1
        assert wait_for(lambda: rig.proxy.listening, 15)
        assert watcher.wait_idle(120), watcher.stats()
        stats = watcher.stats()
    problems = rig.wait_converged(10)
    assert not problems, problems[:10]
    assert len(rig.objects()) == 200
    assert stats.retries > 0
