"""The watcher's schedule on a fake clock: what is due when, without threads, sleeps or a store.

Each test drives :class:`~syncbridge.watch.scheduler.Schedule` the way the watcher's threads do
(``mark_ready`` from the reader and scanner, ``take_due`` from the dispatcher, ``finish`` from a
worker) with ``now`` chosen by the test.
"""

from __future__ import annotations

import logging

import attrs
import pytest

from syncbridge.watch.scheduler import (KEY_SPACING_SECONDS, MAX_SETTLE_SECONDS, SETTLE_SECONDS,
                                        STORE_PROBE_MAX_SECONDS, Item, Outcome, Schedule, Unfinished, quiet_by_mtime,
                                        quiet_left, UNSENT)

T0 = 1000.0  # a monotonic clock far from zero, as on a real machine


@attrs.frozen
class Pushed:
    size: int = 10
    latency: float = 0.5


def schedule(*, concurrency: int = 4, batch_delay: float = 0.0, fatal_retry_seconds: float = 300.0) -> Schedule:
    s = Schedule(concurrency=concurrency, batch_delay=batch_delay, rand=lambda: 0.0,
                 fatal_retry_seconds=fatal_retry_seconds)
    s.accepting = True
    return s


def ready(s: Schedule, rel: str, now: float, *, closed: bool = True) -> bool:
    return s.mark_ready(rel, trust_owner=True, now=now, wall=1.7e9, closed=closed)


def due(s: Schedule, now: float) -> list[str]:
    """What the dispatcher would send now (the journal rows are taken first, as the dispatcher writes them)."""
    uploads, to_journal, to_forget = s.take_due(now=now)
    if to_journal or to_forget:
        assert not uploads  # journal before uploading
        uploads, _, _ = s.take_due(now=now)
    return [i.rel for i in uploads]


def test_a_closed_file_is_due_at_once_and_journalled_first() -> None:
    s = schedule()
    assert ready(s, "a.png", T0)
    uploads, to_journal, to_forget = s.take_due(now=T0)
    assert uploads == [] and to_journal == [("a.png", 1.7e9)] and to_forget == []
    assert due(s, T0) == ["a.png"] and set(s.inflight) == {"a.png"}
    assert s.next_wake() is None  # nothing waits on the clock


def test_not_accepting_takes_nothing() -> None:
    s = schedule()
    s.accepting = False
    assert not ready(s, "a.png", T0)
    assert s.idle


def test_batch_deadline_is_fixed_at_the_first_event() -> None:
    s = schedule(batch_delay=1.0)
    ready(s, "a.png", T0)
    assert due(s, T0) == [] and s.next_wake() == T0 + 1.0
    ready(s, "b.png", T0 + 0.9)  # a later file does not move the deadline
    assert due(s, T0 + 0.99) == []
    assert s.next_wake() == T0 + 1.0
    assert due(s, T0 + 1.0) == ["a.png", "b.png"]


def test_concurrency_caps_what_is_in_flight() -> None:
    s = schedule(concurrency=2)
    for name in "abc":
        ready(s, name, T0)
    assert due(s, T0) == ["a", "b"]
    assert due(s, T0) == []  # the third waits for a worker
    item = s.inflight["a"]
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 0.1)
    assert due(s, T0 + 0.1) == ["c"]


def test_an_event_during_the_upload_pushes_again_spaced_one_second_from_the_last_put() -> None:
    s = schedule()
    ready(s, "a.png", T0)
    [rel] = due(s, T0)
    assert not ready(s, "a.png", T0 + 0.1)  # in flight: only marked dirty
    item = s.inflight[rel]
    assert item.dirty
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 0.2)
    assert s.waiting["a.png"].why == "spacing"
    assert due(s, T0 + 0.2 + KEY_SPACING_SECONDS - 0.01) == []
    assert s.next_wake() == pytest.approx(T0 + 0.2 + KEY_SPACING_SECONDS)
    assert due(s, T0 + 0.2 + KEY_SPACING_SECONDS) == ["a.png"]


def test_an_event_older_than_the_uploads_last_look_at_an_unchanged_file_pushes_nothing_more() -> None:
    s = schedule()
    ready(s, "a.png", T0, closed=False)  # found by a scan
    [rel] = due(s, T0)
    ready(s, "a.png", T0 + 0.1)  # its close event, read while the upload runs
    item = s.inflight[rel]
    item.verified_mono = T0 + 0.15  # the upload looked at the file after that: as it was sent
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 0.2)
    assert not s.pending() and "a.png" not in s.waiting
    # an event newer than the last look still pushes again (spaced)
    ready(s, "b.png", T0)
    [rel] = due(s, T0)
    ready(s, "b.png", T0 + 0.3)
    item = s.inflight[rel]
    item.verified_mono = T0 + 0.25
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 0.4)
    assert s.waiting["b.png"].why == "spacing"


def test_a_file_deleted_after_the_uploads_last_look_is_tried_again_and_forgotten() -> None:
    """Deleted between the upload's look at it (as sent) and the end of that upload: its journal row must go
    (a new file of that name is a new output, not a rewrite of the object the deleted one left)."""
    s = schedule()
    ready(s, "a.png", T0)
    [rel] = due(s, T0)
    item = s.inflight[rel]
    item.verified_mono, item.pushed_sig = T0 + 0.15, (10, 1, 2, 3)  # the upload looked: as it was sent
    s.mark_gone("a.png")  # then it was deleted, before the upload ended
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 0.2)
    assert s.find("a.png") is not None  # tried again: that try finds it gone and forgets its row
    # the next upload of that name starts afresh: the shortcut applies again
    [rel] = due(s, T0 + 2)
    ready(s, "a.png", T0 + 2.1)
    item = s.inflight[rel]
    item.verified_mono = T0 + 2.2
    s.finish(item, Outcome.PUSHED, Pushed(), now=T0 + 2.3)
    assert s.find("a.png") is None


def test_a_change_seen_before_anything_was_sent_does_not_space_the_next_try() -> None:
    s = schedule()
    ready(s, "a.png", T0, closed=False)
    [rel] = due(s, T0)
    ready(s, "a.png", T0 + 0.05)  # its close, during the read that saw it change
    s.finish(s.inflight[rel], Outcome.CHANGED, UNSENT, now=T0 + 0.1)
    assert due(s, T0 + 0.1) == ["a.png"]  # nothing was written to its key: no second to wait


def test_a_rewrite_right_after_a_push_waits_for_key_spacing() -> None:
    s = schedule()
    ready(s, "a.png", T0)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.PUSHED, Pushed(), now=T0 + 0.1)
    ready(s, "a.png", T0 + 0.3)  # closed again: a new item, but its key was written 0.2 s ago
    assert s.waiting["a.png"].why == "spacing"
    assert due(s, T0 + 0.5) == []
    assert due(s, T0 + 0.1 + KEY_SPACING_SECONDS) == ["a.png"]


def test_changed_during_upload_settles_longer_each_time_and_a_close_cuts_it_short() -> None:
    s = schedule()
    ready(s, "v.mp4", T0, closed=False)
    now = T0
    waits = []
    for _ in range(4):
        [rel] = due(s, now)
        item = s.inflight[rel]
        s.finish(item, Outcome.CHANGED, None, now=now)
        assert item.why == "settle" and not item.closed
        waits.append(item.not_before - now)
        now = item.not_before
    assert waits == pytest.approx([SETTLE_SECONDS * 2 ** i for i in range(4)])
    # the settle wait never exceeds its cap
    item.changes = 100
    s.finish(s.inflight[due(s, now)[0]], Outcome.CHANGED, None, now=now)
    assert s.waiting["v.mp4"].not_before - now == MAX_SETTLE_SECONDS
    assert ready(s, "v.mp4", now + 0.01)  # its close: due at once
    assert due(s, now + 0.01) == ["v.mp4"] and s.inflight["v.mp4"].closed


def test_unfinished_waits_for_quiet_and_a_scan_does_not_cut_it_short() -> None:
    s = schedule()
    ready(s, "f.bin", T0, closed=False)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.UNFINISHED, Unfinished(2.0), now=T0)
    assert s.waiting_to_finish == 1 and s.waiting["f.bin"].why == "quiet"
    assert not ready(s, "f.bin", T0 + 0.5, closed=False)  # a rescan found it again: it still waits
    assert due(s, T0 + 1.9) == []
    assert due(s, T0 + 2.0) == ["f.bin"]


def test_quiet_is_counted_on_the_callers_clock_and_restarts_on_a_change() -> None:
    item = Item("f.bin", 1.7e9, T0, False)
    sig = (1, 100, 7, 100)
    assert quiet_left(item, sig, now=T0, quiet=2.0) == 2.0
    assert quiet_left(item, sig, now=T0 + 1.5, quiet=2.0) == pytest.approx(0.5)
    assert quiet_left(item, sig, now=T0 + 2.0, quiet=2.0) == 0.0
    assert quiet_left(item, (2, 200, 7, 200), now=T0 + 2.5, quiet=2.0) == 2.0  # it grew: the quiet starts again
    assert quiet_by_mtime(100.0, wall=103.0, quiet=2.0)
    assert not quiet_by_mtime(100.0, wall=101.0, quiet=2.0)
    assert not quiet_by_mtime(100.0 + 3600, wall=101.0, quiet=2.0)  # mtime in the future: another clock


def test_retry_backs_off_and_the_store_gate_lets_one_probe_through() -> None:
    s = schedule(concurrency=4)
    for name in "ab":
        ready(s, name, T0)
    assert due(s, T0) == ["a", "b"]
    notes = s.finish(s.inflight["a"], Outcome.RETRY, "connection refused", now=T0)
    assert [n.extra["event"] for n in notes] == ["watch.retry"] and notes[0].level == logging.WARNING
    assert s.waiting["a"].why == "retry" and s.counters["retries"] == 1 and s.last_error == "connection refused"
    assert s.finish(s.inflight["b"], Outcome.RETRY, "refused", now=T0 + 0.01) == []  # said once per 10 s
    # rand=0: the file's backoff after 1 failure is 0.1 s; the store's gate after 2 failures, 0.2 s
    assert s.waiting["a"].not_before == pytest.approx(T0 + 0.1)
    assert s.store_failures == 2 and s.gate_until == pytest.approx(T0 + 0.01 + 0.2)
    assert due(s, T0 + 0.2) == []  # the store is failing and the gate is shut
    assert due(s, T0 + 0.21) == ["a"]  # one probe at a time
    assert due(s, T0 + 0.3) == []
    notes = s.finish(s.inflight["a"], Outcome.PUSHED, Pushed(), now=T0 + 0.3)
    assert [n.extra["event"] for n in notes] == ["watch.store_back"]
    assert s.store_failures == 0
    assert due(s, T0 + 0.3) == ["b"]  # its backoff is cut short: the failure was the store's


def test_backoff_and_the_store_gate_are_capped() -> None:
    s = Schedule(concurrency=1, batch_delay=0.0, rand=lambda: 0.999)
    item = Item("a", 1.7e9, T0, True)
    for _ in range(30):
        s.finish(item, Outcome.RETRY, "503", now=T0)
        assert s.gate_until - T0 <= STORE_PROBE_MAX_SECONDS
        assert item.not_before - T0 <= 5.0
    assert s.gate_until - T0 == pytest.approx(STORE_PROBE_MAX_SECONDS, abs=1e-3)
    assert item.attempts == 30 and s.counters["retries"] == 30


def test_fatal_waits_for_its_retry_interval_or_a_new_event() -> None:
    s = schedule(fatal_retry_seconds=6.0)
    ready(s, "a.png", T0)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.FATAL, "NoSuchBucket", now=T0)
    assert set(s.failed) == {"a.png"} and s.last_error == "NoSuchBucket" and s.idle
    assert due(s, T0 + 5.9) == []
    assert due(s, T0 + 6.0) == ["a.png"] and not s.inflight["a.png"].fatal
    s.finish(s.inflight["a.png"], Outcome.FATAL, "NoSuchBucket", now=T0 + 6.0)
    assert ready(s, "a.png", T0 + 7.0)  # written again: tried at once
    assert due(s, T0 + 7.0) == ["a.png"]


def test_gone_forgets_the_file_unless_it_is_in_flight() -> None:
    s = schedule()
    ready(s, "a.png", T0)
    assert s.mark_gone("a.png")
    assert s.idle and s.take_journal() == ([("a.png", 1.7e9)], ["a.png"])
    ready(s, "b.png", T0)
    assert due(s, T0) == ["b.png"]
    assert not s.mark_gone("b.png")  # in flight: dirty and no longer trusted to overwrite its key
    item = s.inflight["b.png"]
    assert item.dirty and not item.trust_owner
    s.finish(item, Outcome.GONE, None, now=T0 + 0.1)
    assert "b.png" in s.ready  # looked at again (it may be back under the same name)


def test_drain_makes_everything_due_except_files_still_being_written() -> None:
    s = schedule()
    ready(s, "writing", T0, closed=False)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.UNFINISHED, Unfinished(2.0, writing=True), now=T0)
    ready(s, "retry", T0)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.RETRY, "503", now=T0)
    s.begin_drain()
    assert list(s.ready) == ["writing", "retry"] and not s.waiting and s.gate_until == 0.0 and s.drain_busy
    assert due(s, T0) == ["writing"]  # the store failed last: one probe at a time, even now
    s.finish(s.inflight["writing"], Outcome.UNFINISHED, Unfinished(2.0, writing=True), now=T0)
    assert due(s, T0) == ["retry"]
    s.finish(s.inflight["retry"], Outcome.RETRY, "503", now=T0)
    # while draining, no wait is longer than a moment
    assert s.waiting["retry"].not_before - T0 <= 0.2 + 1e-9 and s.gate_until - T0 <= 0.2 + 1e-9
    assert due(s, T0 + 0.2) == ["retry"]
    s.finish(s.inflight["retry"], Outcome.PUSHED, Pushed(), now=T0 + 0.2)
    assert not s.drain_busy  # only the file a process still writes is left: journalled, not waited for
    assert set(s.left()) == {"writing"}


def test_drain_waits_for_a_scanned_file_that_only_lacks_evidence_of_its_end() -> None:
    """A file written into a new folder just before the stop is found by a scan, with no close event
    seen. When it only waits for the next look at /proc, the drain waits that moment and pushes it (it
    used to end without it, leaving the file in the journal until the next start). A file that must
    first be quiet (no /proc answer: a network file system) does not hold the stop to its deadline."""
    s = schedule()
    ready(s, "new/img.png", T0, closed=False)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.UNFINISHED, Unfinished(0.05, look=True), now=T0)
    assert s.waiting[rel].why == "look" and s.waiting_to_finish == 1
    s.begin_drain()
    assert due(s, T0) == [rel]
    s.finish(s.inflight[rel], Outcome.UNFINISHED, Unfinished(0.05, look=True), now=T0)  # the look is due soon
    assert s.drain_busy and s.waiting[rel].not_before == pytest.approx(T0 + 0.05)
    assert due(s, T0 + 0.05) == [rel]
    s.finish(s.inflight[rel], Outcome.PUSHED, Pushed(), now=T0 + 0.05)
    assert not s.drain_busy and not s.left()
    ready(s, "nfs/late.png", T0 + 0.1, closed=False)
    [rel] = due(s, T0 + 0.1)
    s.finish(s.inflight[rel], Outcome.UNFINISHED, Unfinished(2.0), now=T0 + 0.1)
    assert s.waiting[rel].why == "quiet" and not s.drain_busy and set(s.left()) == {rel}


def test_drain_sends_a_batch_before_its_deadline() -> None:
    s = schedule(batch_delay=5.0)
    ready(s, "a.png", T0)
    s.begin_drain()
    assert s.batch.deadline is None and not s.batched
    assert due(s, T0) == ["a.png"]


def test_pushed_outputs_are_counted() -> None:
    s = schedule()
    ready(s, "a.png", T0)
    [rel] = due(s, T0)
    s.finish(s.inflight[rel], Outcome.PUSHED, Pushed(size=123, latency=0.25), now=T0 + 0.25)
    assert s.counters["uploaded"] == 1 and s.counters["bytes"] == 123
    assert s.last_latency == 0.25 and list(s.latencies) == [0.25] and len(s.recent) == 1
    ready(s, "b.png", T0 + 3)
    [rel] = due(s, T0 + 3)
    s.finish(s.inflight[rel], Outcome.SKIPPED, None, now=T0 + 3)
    assert s.counters["skipped"] == 1 and s.idle
