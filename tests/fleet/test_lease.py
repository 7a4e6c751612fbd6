"""Leases in the bucket: the pure decisions, then the protocol against real S3 servers.

moto's server enforces conditional writes; ``rclone serve s3`` accepts the headers and
ignores them, and the lease code must refuse to pretend there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from syncbridge.config import load_config
from syncbridge.errors import PreconditionFailedError
from syncbridge.fleet.lease import (CLOCK_GRACE, Lease, LeaseBusyError, LeaseLostError, LeaseRecord, Leases,
                              LeaseUnsupportedError, LeaseView, Verdict, holder_must_give_up, judge, lease_key,
                              leases_enabled, poll_delay, renew_interval)
from syncbridge.store import open_store

from ..conftest import new_bucket, server_env

HERE = Path(__file__).resolve().parent
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)


def _view(record: LeaseRecord | None, *, age: float) -> tuple[LeaseView, dt.datetime]:
    return LeaseView("k", record, "etag", T0), T0 + dt.timedelta(seconds=age)


def _record(**kw) -> LeaseRecord:
    base = dict(owner="pod-a", purpose="bisync", acquired=0.0, renewed=0.0, ttl_seconds=60.0, token="t")
    return LeaseRecord(**{**base, **kw})


# -- pure -------------------------------------------------------------------------------------


def test_judge_absent_held_expired_released() -> None:
    assert judge(None, bucket_now=T0, default_ttl=60).state == "absent"
    view, now = _view(_record(), age=10)
    v = judge(view, bucket_now=now, default_ttl=60)
    assert (v.state, v.holder, v.takeable) == ("held", "pod-a", False)
    assert v.expires_in == pytest.approx(60 + CLOCK_GRACE - 10)
    assert "pod-a" in v.describe()
    view, now = _view(_record(), age=60 + CLOCK_GRACE + 0.5)
    assert judge(view, bucket_now=now, default_ttl=60).state == "expired"
    view, now = _view(_record(released=True), age=1)
    assert judge(view, bucket_now=now, default_ttl=60).state == "released"


def test_judge_ignores_the_holders_wall_clock() -> None:
    """The record's timestamps may be off by any amount: only Last-Modified vs bucket time counts."""
    far_past = time.time() - 10 * 3600
    view, now = _view(_record(acquired=far_past, renewed=far_past), age=5)
    assert judge(view, bucket_now=now, default_ttl=60).state == "held"
    far_future = time.time() + 10 * 3600
    view, now = _view(_record(acquired=far_future, renewed=far_future), age=600)
    assert judge(view, bucket_now=now, default_ttl=60).state == "expired"


def test_unreadable_lease_expires_after_the_default_ttl() -> None:
    view, now = _view(None, age=30)
    v = judge(view, bucket_now=now, default_ttl=60)
    assert (v.state, v.holder) == ("held", "?")
    view, now = _view(None, age=63)
    assert judge(view, bucket_now=now, default_ttl=60).state == "expired"


def test_record_round_trip_and_malformed_bodies() -> None:
    rec = _record(detail={"bytes": 5}, subject="workflows")
    assert LeaseRecord.from_json(rec.to_json()) == rec
    for bad in (b"", b"[]", b"{}", b'{"owner": "x", "ttl_seconds": -1}', b"\xff", b'{"owner": "x"}'):
        with pytest.raises(ValueError):
            LeaseRecord.from_json(bad)


def test_schedule_helpers() -> None:
    assert renew_interval(120) == 40
    assert not holder_must_give_up(since_renew_sent=50, ttl=120)
    assert holder_must_give_up(since_renew_sent=118, ttl=120)
    # the holder gives up before anyone may steal (ttl + grace after the bucket's stamp)
    assert holder_must_give_up(since_renew_sent=120 - CLOCK_GRACE, ttl=120)
    delays = [poll_delay(a, ttl=120, rng=lambda: 0.5) for a in range(12)]
    assert delays == sorted(delays) and delays[-1] <= 30 and delays[0] >= 0.05
    assert lease_key(".syncbridge/", "bisync", "workflows") == lease_key(".syncbridge", "bisync", "workflows")
    assert lease_key(".syncbridge", "bisync", "a") != lease_key(".syncbridge", "bisync", "b")


# -- against the servers that enforce conditional writes ---------------------------------------------


@pytest.fixture(params=["moto", "r2"])
def cond_env(request, tmp_path: Path) -> dict[str, str]:
    """A bucket on each server that enforces conditional writes: moto, and R2's own emulator."""
    server = request.getfixturevalue(f"{request.param}_s3")
    return server_env(server, new_bucket(server), tmp_path)


@pytest.fixture
def store(cond_env):
    config = load_config(cond_env)
    st = open_store(config.remote, state_dir=config.state_dir)
    yield st
    st.close()


def _leases(store, owner: str, **kw) -> Leases:
    return Leases(store, owner=owner, prefix=".syncbridge", **kw)


def test_acquire_busy_renew_release(store) -> None:
    a, b = _leases(store, "pod-a"), _leases(store, "pod-b")
    key = lease_key(".syncbridge", "bisync", "workflows")
    got = a.try_acquire(key, purpose="bisync", ttl=60, subject="workflows")
    assert isinstance(got, Lease) and got.record.owner == "pod-a"
    body = json.loads(store.get_bytes(key)[0])
    assert {"owner", "purpose", "acquired", "renewed", "ttl_seconds"} <= set(body)
    verdict = b.try_acquire(key, purpose="bisync", ttl=60)
    assert isinstance(verdict, Verdict) and verdict.holder == "pod-a" and verdict.state == "held"
    with pytest.raises(LeaseBusyError) as info:
        b.acquire(key, purpose="bisync", ttl=60, subject="workflows", wait=False)
    assert info.value.holder == "pod-a" and "pod pod-a holds the lease" in str(info.value)
    renewed = a.renew(got)
    assert renewed.etag != got.etag
    # our old etag is stale now: a renew with it means we lost the lease
    with pytest.raises(LeaseLostError):
        a.renew(got)
    assert a.release(renewed)
    # released: another pod takes it at once, without waiting for expiry
    got_b = b.try_acquire(key, purpose="bisync", ttl=60)
    assert isinstance(got_b, Lease) and not got_b.stolen_from
    # a stale release does not touch b's lease
    assert not a.release(renewed)
    assert judge(b.read(key), bucket_now=b.bucket_clock.now(fresh=True), default_ttl=60).holder == "pod-b"


@pytest.mark.slow
def test_steal_only_after_expiry(store) -> None:
    a, b = _leases(store, "pod-a"), _leases(store, "pod-b")
    key = lease_key(".syncbridge", "models", "m1")
    assert isinstance(a.try_acquire(key, purpose="fill", ttl=1), Lease)  # a never renews: it "died"
    first = b.try_acquire(key, purpose="fill", ttl=1)
    assert isinstance(first, Verdict) and first.state == "held"
    started = time.monotonic()
    got = b.acquire(key, purpose="fill", ttl=1, timeout=20)
    waited = time.monotonic() - started
    assert got.stolen_from == "pod-a"
    assert waited >= 1.0  # not before the ttl ran out on the bucket's clock
    assert json.loads(store.get_bytes(key)[0])["owner"] == "pod-b"


@pytest.mark.slow
def test_pod_with_clock_ten_minutes_ahead_does_not_steal(store) -> None:
    """Pod b's wall clock is +10 min: a lease renewed 'long ago' by its clock is still live."""
    a = _leases(store, "pod-a")
    skewed = _leases(store, "pod-b", clock=lambda: time.time() + 600)
    key = lease_key(".syncbridge", "bisync", "shared")
    lease = a.try_acquire(key, purpose="bisync", ttl=30)
    assert isinstance(lease, Lease)
    view = skewed.read(key)
    naive_expired = skewed.clock() > view.record.renewed + view.record.ttl_seconds
    assert naive_expired, "the test needs a skew that would fool a local-clock check"
    verdict = skewed.try_acquire(key, purpose="bisync", ttl=30)
    assert isinstance(verdict, Verdict) and verdict.state == "held" and verdict.holder == "pod-a"
    # and a pod whose clock is 10 min behind does not keep a dead lease alive: expiry is the bucket's
    behind = _leases(store, "pod-c", clock=lambda: time.time() - 600)
    key2 = lease_key(".syncbridge", "bisync", "other")
    assert isinstance(behind.try_acquire(key2, purpose="bisync", ttl=1), Lease)
    got = a.acquire(key2, purpose="bisync", ttl=1, timeout=20)
    assert got.stolen_from == "pod-c"


def test_threads_racing_exactly_one_wins(store) -> None:
    key = lease_key(".syncbridge", "bisync", "race")
    n = 8
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    pods = [_leases(store, f"pod-{i}") for i in range(n)]
    for p in pods:
        p.check_store()

    def go(i: int) -> None:
        barrier.wait()
        results[i] = pods[i].try_acquire(key, purpose="race", ttl=60)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Lease)]
    assert len(winners) == 1
    assert all(r.holder == winners[0].record.owner for r in results if isinstance(r, Verdict))


@pytest.mark.slow
def test_threads_racing_to_take_over_an_expired_lease(store) -> None:
    key = lease_key(".syncbridge", "bisync", "takeover")
    dead = _leases(store, "pod-dead")
    assert isinstance(dead.try_acquire(key, purpose="x", ttl=1), Lease)
    time.sleep(1 + CLOCK_GRACE + 1.2)
    n = 6
    barrier = threading.Barrier(n)
    pods = [_leases(store, f"pod-{i}") for i in range(n)]
    for p in pods:
        p.bucket_clock.now()
    results: list[object] = [None] * n

    def go(i: int) -> None:
        barrier.wait()
        results[i] = pods[i].try_acquire(key, purpose="x", ttl=60)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Lease)]
    assert len(winners) == 1 and winners[0].stolen_from == "pod-dead"


@pytest.mark.slow
def test_processes_racing_exactly_one_wins(cond_env, tmp_path: Path) -> None:
    key = lease_key(".syncbridge", "bisync", "proc-race")
    start_at = time.time() + 4.0
    procs = []
    for i in range(6):
        env = {**cond_env, "SYNCBRIDGE_POD_ID": f"proc-{i}", "SYNCBRIDGE_STATE_DIR": str(tmp_path / f"s{i}"),
               "FLEET_START_AT": str(start_at), "PYTHONPATH": str(HERE.parent)}
        procs.append(subprocess.Popen([sys.executable, str(HERE / "fleet_pod.py"), "race", key], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        docs.append(json.loads(out.strip().splitlines()[-1]))
    winners = [d for d in docs if d["won"]]
    assert len(winners) == 1, docs
    assert {d["holder"] for d in docs if not d["won"]} == {winners[0]["pod"]}


@pytest.mark.slow
def test_hold_renews_in_the_background_and_releases(store) -> None:
    a, b = _leases(store, "pod-a"), _leases(store, "pod-b")
    key = lease_key(".syncbridge", "bisync", "hold")
    # ttl 5: a renew (every 1.7 s) has 1.3 s to land before the holder gives up at 3 s. With ttl 1.5
    # it had 0.25 s (give-up at 0.75 s), and one slow PUT to moto in a loaded CI run lost the lease.
    ttl = 5.0
    with a.hold(key, purpose="bisync", ttl=ttl, subject="hold") as held:
        first = held.lease.etag
        deadline = time.monotonic() + 15
        while held.lease.etag == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held.lease.etag != first, "the lease was not renewed"
        time.sleep(ttl + CLOCK_GRACE + 0.5)  # longer than the ttl: renewals keep it ours
        verdict = b.try_acquire(key, purpose="bisync", ttl=1.5)
        assert isinstance(verdict, Verdict) and verdict.holder == "pod-a"
        assert not held.lost.is_set()
    assert isinstance(b.try_acquire(key, purpose="bisync", ttl=1.5), Lease)


def test_holder_notices_a_lost_lease_and_cancels_its_work(store) -> None:
    a = _leases(store, "pod-a")
    key = lease_key(".syncbridge", "bisync", "lost")
    with pytest.raises(LeaseLostError):
        with a.hold(key, purpose="bisync", ttl=1.5) as held:
            # Another writer replaces the object (as a pod that judged it expired would).
            store.put_bytes(key, _record(owner="pod-z", ttl_seconds=60).to_json())
            assert held.cancel.wait(15), "the work was not cancelled"
            assert held.lost.is_set()
    assert json.loads(store.get_bytes(key)[0])["owner"] == "pod-z"  # and we did not release theirs


def test_wait_for_a_held_lease_then_get_it_on_release(store) -> None:
    a, b = _leases(store, "pod-a"), _leases(store, "pod-b")
    key = lease_key(".syncbridge", "bisync", "wait")
    lease = a.try_acquire(key, purpose="bisync", ttl=60)
    assert isinstance(lease, Lease)
    seen: list[Verdict] = []
    threading.Timer(1.0, a.release, args=(lease,)).start()
    got = b.acquire(key, purpose="bisync", ttl=60, timeout=30, on_wait=seen.append)
    assert got.record.owner == "pod-b" and not got.stolen_from
    assert seen and seen[0].holder == "pod-a"
    with pytest.raises(LeaseBusyError) as info:
        a.acquire(key, purpose="bisync", ttl=60, timeout=0.5)
    assert info.value.holder == "pod-b" and "waited" in str(info.value)


def test_precondition_on_stale_etag_is_enforced_by_this_store(store) -> None:
    """The premise of everything above: this store enforces If-Match."""
    info = store.put_bytes("x", b"1", if_none_match=True)
    store.put_bytes("x", b"2", if_match=info.etag)
    with pytest.raises(PreconditionFailedError):
        store.put_bytes("x", b"3", if_match=info.etag)


# -- the embedded local bucket: real conditional writes too ---------------------------------------


def test_local_bucket_leases(local_env) -> None:
    config = load_config(local_env)
    store = open_store(config.remote, state_dir=config.state_dir)
    a, b = _leases(store, "pod-a"), _leases(store, "pod-b")
    key = lease_key(".syncbridge", "bisync", "local")
    lease = a.try_acquire(key, purpose="bisync", ttl=60)
    assert isinstance(lease, Lease)
    assert b.try_acquire(key, purpose="bisync", ttl=60).holder == "pod-a"
    assert a.release(a.renew(lease))
    assert isinstance(b.try_acquire(key, purpose="bisync", ttl=60), Lease)


# -- rclone serve s3: ignores conditional writes -> refuse to pretend -----------------------------


def test_store_without_conditional_writes_is_refused(rclone_s3, tmp_path: Path, caplog) -> None:
    env = server_env(rclone_s3, new_bucket(rclone_s3), tmp_path)
    config = load_config(env)
    store = open_store(config.remote, state_dir=config.state_dir)
    leases = _leases(store, "pod-a")
    with pytest.raises(LeaseUnsupportedError) as info:
        leases.try_acquire(lease_key(".syncbridge", "bisync", "x"), purpose="bisync", ttl=60)
    assert "does not enforce conditional writes" in str(info.value)
    assert info.value.exit_code == 2
    with pytest.raises(LeaseUnsupportedError):
        leases_enabled(store, "on", prefix=".syncbridge", what="bisync workflows")
    with caplog.at_level(logging.WARNING, logger="syncbridge.fleet.lease"):
        assert leases_enabled(store, "auto", prefix=".syncbridge", what="bisync workflows") is False
    assert any("WITHOUT a lease" in r.getMessage() for r in caplog.records)
    assert leases_enabled(store, "off", prefix=".syncbridge", what="bisync workflows") is False
    store.close()


@pytest.mark.slow
def test_holder_cut_off_from_the_bucket_stops_before_anyone_takes_over(moto_s3, tmp_path: Path) -> None:
    """Renewals hang (a loopback proxy stalls them): the holder gives up before the lease can be stolen."""
    from ..faultproxy import FaultProxy, Rule

    bucket = new_bucket(moto_s3)
    with FaultProxy(moto_s3.endpoint) as proxy:
        env_a = {**server_env(moto_s3, bucket, tmp_path / "a"), "R2_ENDPOINT": proxy.endpoint}
        config_a = load_config(env_a)
        store_a = open_store(config_a.remote, state_dir=config_a.state_dir)
        config_b = load_config(server_env(moto_s3, bucket, tmp_path / "b"))
        store_b = open_store(config_b.remote, state_dir=config_b.state_dir)
        a, b = _leases(store_a, "pod-a"), _leases(store_b, "pod-b")
        key = lease_key(".syncbridge", "bisync", "cutoff")
        ttl = 5.0
        with pytest.raises(LeaseLostError):
            with a.hold(key, purpose="bisync", ttl=ttl) as held:
                # From now on every write of pod a hangs for 30 s, as on a dead connection.
                proxy.add(Rule("stall", method="PUT", seconds=30))
                got = b.acquire(key, purpose="bisync", ttl=ttl, timeout=60)
                b_got_it = time.monotonic()
                assert held.lost.is_set(), "pod b took the lease while pod a still believed it held it"
                assert held.cancel.is_set()
                assert got.stolen_from == "pod-a"
        assert b_got_it - (held.lease.sent_at) >= ttl  # b waited for the expiry, by the bucket's clock
        proxy.clear()
        store_a.close()
        store_b.close()
