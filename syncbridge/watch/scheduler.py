"""When each file goes out: the watcher's tables of what waits, what is due and what is in flight.

Pure bookkeeping: no threads, no I/O and no clock of its own. :class:`~syncbridge.watch.watcher.OutputWatcher`'s
threads call it under the watcher's one lock, and every decision takes ``now`` (monotonic seconds)
and, for a file's first sighting, ``wall`` (wall clock) from them, so tests drive it with a fake
clock and no sleeps.

A file is in one table at a time:

* ``batched``: ready, gathered until the batch deadline (``watch.batch_delay``, fixed at the
  first event: never a debounce);
* ``ready``: due now, oldest first;
* ``inflight``: handed to an upload worker;
* ``waiting``: due at ``not_before`` (a heap orders them) for a reason, :attr:`Item.why`:
  ``retry`` (backoff after a retryable error), ``settle`` (it changed during its upload: still
  being written; a longer wait each time), ``quiet`` (found by a scan, maybe still being
  written), ``spacing`` (pushed less than :data:`KEY_SPACING_SECONDS` ago);
* ``failed``: a fatal error (403, NoSuchBucket...), retried after ``fatal_retry_seconds``.

While the store is failing (retryable errors in a row) one upload at a time probes it, at most
:data:`STORE_PROBE_MAX_SECONDS` apart; the first success sends the backlog again at once.
"""

from __future__ import annotations

import bisect
import collections
import enum
import heapq
import logging
import math
from typing import Any, Callable, Protocol

import attrs

from ..retry import backoff_delay
from .events import DeadlineBatcher

__all__ = ["Schedule", "Item", "Outcome", "UNSENT", "Note", "Unfinished", "quiet_left", "quiet_by_mtime", "SETTLE_SECONDS",
           "MAX_SETTLE_SECONDS", "KEY_SPACING_SECONDS", "STORE_PROBE_MAX_SECONDS", "FATAL_RETRY_SECONDS"]

FATAL_RETRY_SECONDS = 300.0
UNSENT = "unsent"  # the detail of a CHANGED upload that wrote nothing (so no write to space from)
SETTLE_SECONDS = 0.3  # wait after a file changed during its upload, unless its close event comes first
MAX_SETTLE_SECONDS = 30.0
KEY_SPACING_SECONDS = 1.0  # R2 takes about one write per second per key (429 beyond)
# While the store is failing, one request probes it at most this often (cheap, and the
# backlog starts moving within this long of the store coming back).
STORE_PROBE_MAX_SECONDS = 2.0
FINISH_WAITS = ("quiet", "look", "writing")  # the waits of a file a scan found (see Unfinished)
DRAIN_WAIT_MAX = 0.2  # while draining, no backoff or gate waits longer than this
DRAIN_SETTLE = 0.05
OUTAGE_LOG_SECONDS = 10.0  # "upload failed, retrying" is logged at most this often
RECENT_PUTS_KEPT = 4096
LATENCY_WINDOW = 512
RECENT_OUTPUTS = 20  # the last outputs shown in status --json
# Upper bounds (seconds) of the push latency histogram served at /metrics by the status page.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUIET_MTIME_FUTURE = 86400 * 365  # an mtime this far back is another machine's clock, not an old file


class Outcome(enum.Enum):
    """How one upload attempt ended (the detail that goes with it is in brackets)."""

    PUSHED = "pushed"          # in the bucket (the PushedOutput)
    SKIPPED = "skipped"        # already there: unchanged since its upload, or identical bytes
    CHANGED = "changed"        # changed during the upload: push it again (UNSENT: nothing was written)
    GONE = "gone"              # deleted, or no longer a regular file
    RETRY = "retry"            # a retryable error (its text)
    FATAL = "fatal"            # no retry fixes it (its text)
    UNFINISHED = "unfinished"  # found by a scan, not known to be finished yet (detail: :class:`Unfinished`)


class Pushed(Protocol):
    """What :meth:`Schedule.finish` reads of a pushed output (a :class:`~syncbridge.watch.notify.PushedOutput`)."""

    size: int
    latency: float


@attrs.define(eq=False)
class Item:
    """One file to push, as long as it is known to the schedule."""

    rel: str
    seen_wall: float  # when it first became pending (oldest pending age)
    event_mono: float  # latest event that made it ready (latency)
    trust_owner: bool  # may overwrite the object its journal row says we put there
    attempts: int = 0
    not_before: float = 0.0
    dirty: bool = False  # changed again while being uploaded
    fatal: bool = False
    changes: int = 0  # uploads in a row during which the file changed (it is still being written)
    last_put: float = 0.0  # when its last upload ended (R2 takes about one write per second per key)
    why: str = ""  # why it is waiting: retry, settle, spacing, or (found by a scan) quiet, look or writing
    closed: bool = False  # a close (or rename into place) said it is finished; a scan alone does not
    quiet_sig: tuple[int, int, int, int] | None = None  # the stat last seen while waiting to be quiet
    quiet_since: float = 0.0  # since when (monotonic) it has looked like that
    route: Any = None  # where it goes when not the watcher's own prefix (a job's: watch.upload.Route)
    verified_mono: float = 0.0  # when its last upload looked at the file after sending it (unchanged then)
    pushed_sig: tuple[int, int, int, int] | None = None  # the stat of what that upload sent
    gone_in_flight: bool = False  # deleted or moved away during its current upload


@attrs.frozen
class Note:
    """A log line decided under the watcher's lock, logged after it is released."""

    level: int
    message: str
    args: tuple[Any, ...]
    extra: dict[str, str]


@attrs.frozen
class Unfinished:
    """Why a file a scan found is not pushed yet, and for how long.

    ``writing``: a process has it open for writing (seen in /proc). ``look``: it only waits for the
    next look at /proc (a moment), because the last one was taken before its last change. Neither:
    it waits to be quiet (where /proc cannot tell, as on a network file system).

    A drain waits only for a ``look``: a file written just before the stop is pushed, not left
    behind. A file being written, or one that must first be quiet, stays in the journal rather than
    going out as a prefix of itself or holding the stop to its deadline.
    """

    seconds: float
    writing: bool = False
    look: bool = False

    @property
    def why(self) -> str:
        return "writing" if self.writing else "look" if self.look else "quiet"


def quiet_by_mtime(mtime: float, *, wall: float, quiet: float) -> bool:
    """Whether a file last changed ``quiet`` seconds ago or more (and not in the future: another machine's clock)."""
    return quiet <= wall - mtime < QUIET_MTIME_FUTURE


def quiet_left(item: Item, sig: tuple[int, int, int, int], *, now: float, quiet: float) -> float:
    """Seconds until a file found by a scan has looked the same (``sig``: size, mtime, inode, ctime)
    for ``quiet`` seconds by this machine's clock (0: it has). A change starts the quiet again."""
    if item.quiet_sig != sig:
        item.quiet_sig, item.quiet_since = sig, now  # changed (or first seen): the quiet starts now
    left = item.quiet_since + quiet - now
    return max(0.0, left) if left > 0.001 else 0.0


class Schedule:
    """The tables, and every decision about when a file goes out.

    Args:
        concurrency: uploads at once (``watch.concurrency``).
        batch_delay: seconds from a batch's first ready file to its deadline (0: no batching).
        rand: a source of floats in ``[0, 1)`` for backoff jitter (``random.random`` in production).
        fatal_retry_seconds: how long a fatally failing file waits before it is tried again.
    """

    def __init__(self, *, concurrency: int, batch_delay: float, rand: Callable[[], float],
                 fatal_retry_seconds: float = FATAL_RETRY_SECONDS) -> None:
        self.concurrency = max(1, concurrency)
        self.fatal_retry_seconds = fatal_retry_seconds
        self._rand = rand
        self.accepting = False
        self.draining = False
        self.ready: collections.OrderedDict[str, Item] = collections.OrderedDict()
        self.waiting: dict[str, Item] = {}
        self.batch: DeadlineBatcher[str] = DeadlineBatcher(delay=batch_delay)
        self.batched: dict[str, Item] = {}
        self.inflight: dict[str, Item] = {}
        self.failed: dict[str, Item] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._recent_puts: dict[str, float] = {}  # key spacing: when each file's last upload ended
        self._to_journal: list[tuple[str, float]] = []
        self._to_forget: list[str] = []
        self.store_failures = 0
        self.gate_until = 0.0
        self._last_outage_log = -math.inf
        self.counters: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self.last_latency: float | None = None
        self.last_error: str | None = None
        self.recent: collections.deque[Any] = collections.deque(maxlen=RECENT_OUTPUTS)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket since start, the last one +Inf
        self.latency_sum = 0.0

    # -- intake ------------------------------------------------------------------------------------

    def find(self, rel: str) -> Item | None:
        """The item of ``rel`` in whichever table holds it (None: not known)."""
        for table in (self.inflight, self.ready, self.batched, self.waiting, self.failed):
            item = table.get(rel)
            if item is not None:
                return item
        return None

    def mark_ready(self, rel: str, *, trust_owner: bool, now: float, wall: float, seen_wall: float | None = None,
                   closed: bool = False) -> bool:
        """A file to push (from an event, a scan or the journal). Returns whether the dispatcher has news.

        ``closed``: its close (or rename into place) was seen, so it is finished; a file a scan
        found may still be being written (the upload waits for it: :attr:`Outcome.UNFINISHED`).
        """
        if not self.accepting:
            return False
        item = self.inflight.get(rel)
        if item is not None:
            item.dirty = True  # changed while being uploaded: push again when this upload ends
            item.event_mono = now
            item.closed = item.closed or closed
            return False
        item = self.ready.get(rel) or self.batched.get(rel)
        if item is not None:
            item.event_mono = now
            item.closed = item.closed or closed
            return False
        item = self.waiting.get(rel)
        if item is not None and item.why not in ("settle", *FINISH_WAITS):
            item.event_mono = now  # in a retry backoff, or spacing writes to one key: keep waiting
            item.closed = item.closed or closed
            return False
        if item is not None and item.why in FINISH_WAITS and not closed:
            return False  # a scan found it again: it still waits to be quiet
        item = self.waiting.pop(rel, None) or self.failed.pop(rel, None)
        if item is not None:  # a new event cuts a settle or quiet wait, or a fatal error's wait, short
            item.event_mono, item.not_before, item.fatal = now, 0.0, False
            item.closed = closed  # a scan finding it again says nothing of a close seen long ago
            self.ready[rel] = item
            return True
        item = Item(rel, seen_wall or wall, now, trust_owner, closed=closed)
        self._to_journal.append((rel, item.seen_wall))
        last_put = self._recent_puts.get(rel)
        if last_put is not None and last_put + KEY_SPACING_SECONDS > now:
            item.last_put = last_put  # pushed moments ago: space the writes to its key
            self._wait(item, last_put + KEY_SPACING_SECONDS, why="spacing")
        elif self.batch.delay > 0:
            self.batched[rel] = item
            self.batch.add(rel, now=now)
        else:
            self.ready[rel] = item
        return True

    def mark_gone(self, rel: str) -> bool:
        """A file was deleted or moved away: nothing to push, and a new file of that name is a new output.
        Returns whether the dispatcher has news."""
        item = self.inflight.get(rel)
        if item is not None:
            item.dirty, item.trust_owner, item.gone_in_flight = True, False, True
            return False
        for table in (self.ready, self.batched, self.waiting, self.failed):
            table.pop(rel, None)
        self._to_forget.append(rel)
        return True

    # -- dispatch ----------------------------------------------------------------------------------

    def take_due(self, *, now: float) -> tuple[list[Item], list[tuple[str, float]], list[str]]:
        """What the dispatcher does next: (files to upload, now in flight; rows to journal as
        pending; rows to forget). Journal rows come first: uploads wait until they are written
        (a pending row written after the upload's "done" would undo it)."""
        for rel in self.batch.take(now=now):
            item = self.batched.pop(rel, None)
            if item is not None:
                self.ready[rel] = item
        while self._heap and self._heap[0][0] <= now:
            _, _, rel = heapq.heappop(self._heap)
            for table in (self.waiting, self.failed):  # backoff over, or a fatal error's retry
                item = table.get(rel)
                if item is not None and item.not_before <= now:
                    del table[rel]
                    item.fatal = False
                    self.ready[rel] = item
        to_journal, to_forget = self.take_journal()
        uploads: list[Item] = []
        if not to_journal and not to_forget:
            limit = self.concurrency
            if self.store_failures:  # the store is failing: one probe at a time
                limit = 1 if now >= self.gate_until else 0
            while self.ready and len(self.inflight) < limit:
                rel, item = self.ready.popitem(last=False)
                item.gone_in_flight = False
                self.inflight[rel] = item
                uploads.append(item)
        return uploads, to_journal, to_forget

    def take_journal(self) -> tuple[list[tuple[str, float]], list[str]]:
        """The journal rows to write: (new pending files with when they were first seen, files to forget)."""
        to_journal, self._to_journal = self._to_journal, []
        to_forget, self._to_forget = self._to_forget, []
        return to_journal, to_forget

    def next_wake(self) -> float | None:
        """When something becomes due by the clock alone (``None``: only news can make it so)."""
        wake = [t for t in (self.batch.deadline, self._heap[0][0] if self._heap else None,
                            self.gate_until if self.store_failures and self.ready else None) if t is not None]
        return min(wake) if wake else None

    # -- outcomes ----------------------------------------------------------------------------------

    def finish(self, item: Item, outcome: Outcome, detail: Any, *, now: float, stopped: bool = False) -> list[Note]:
        """Record how an upload ended and decide what comes next for its file.

        Args:
            detail: what goes with the outcome (see :class:`Outcome`).
            stopped: the watcher has stopped: a file changed again is not queued again.

        Returns:
            Log lines for the caller to write once its lock is released.
        """
        notes: list[Note] = []
        self.inflight.pop(item.rel, None)
        if outcome in (Outcome.PUSHED, Outcome.SKIPPED, Outcome.CHANGED, Outcome.GONE):
            self._store_answers(notes)
        if outcome in (Outcome.PUSHED, Outcome.SKIPPED):
            item.changes = 0
            item.attempts = 0
        if outcome is Outcome.PUSHED or (outcome is Outcome.CHANGED and detail != UNSENT):
            item.last_put = now
            self._recent_puts[item.rel] = now
            if len(self._recent_puts) > RECENT_PUTS_KEPT:
                self._recent_puts = {r: t for r, t in self._recent_puts.items() if t + KEY_SPACING_SECONDS > now}
        if outcome is Outcome.PUSHED:
            self._count_pushed(detail)
        elif outcome is Outcome.SKIPPED:
            self.counters["skipped"] += 1
        elif outcome is Outcome.RETRY:
            self._store_fails(item, detail, now, notes)
        elif outcome is Outcome.FATAL:
            self.last_error = str(detail)
            item.attempts += 1
            item.fatal = True
        self._next_for(item, outcome, detail, now=now, stopped=stopped)
        return notes

    def _store_answers(self, notes: list[Note]) -> None:
        if self.store_failures:
            notes.append(Note(logging.INFO, "the store answers again; resuming uploads", (),
                              {"event": "watch.store_back"}))
            # Their failures were the store's: retry them now, not at the end of each backoff.
            for rel, waiting in list(self.waiting.items()):
                if waiting.why == "retry":
                    del self.waiting[rel]
                    waiting.not_before = 0.0
                    self.ready[rel] = waiting
        self.store_failures = 0
        self.gate_until = 0.0

    def _count_pushed(self, output: Pushed) -> None:
        self.counters["uploaded"] += 1
        self.counters["bytes"] += output.size
        self.latencies.append(output.latency)
        self.last_latency = output.latency
        self.recent.append(output)
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, output.latency)] += 1
        self.latency_sum += output.latency

    def _store_fails(self, item: Item, detail: Any, now: float, notes: list[Note]) -> None:
        self.counters["retries"] += 1
        self.last_error = str(detail)
        item.attempts += 1
        self.store_failures += 1
        gate = backoff_delay(self.store_failures, cap=STORE_PROBE_MAX_SECONDS, rand=self._rand)
        self.gate_until = now + (min(gate, DRAIN_WAIT_MAX) if self.draining else gate)
        if now - self._last_outage_log >= OUTAGE_LOG_SECONDS:
            self._last_outage_log = now
            notes.append(Note(logging.WARNING, "upload failed, retrying with backoff (%d files waiting): %s",
                              (len(self.ready) + len(self.waiting) + 1, detail),
                              {"event": "watch.retry", "path": item.rel}))

    def _next_for(self, item: Item, outcome: Outcome, detail: Any, *, now: float, stopped: bool) -> None:
        if outcome is Outcome.GONE and not item.dirty:
            pass  # nothing left to push
        elif item.dirty and outcome in (Outcome.PUSHED, Outcome.SKIPPED) and not item.gone_in_flight \
                and item.event_mono <= item.verified_mono:
            # The event that came during the upload (its close, a scan finding it) is older than the upload's
            # last look at the file, which found it as it was sent: the bucket has its newest content already.
            # (Not when it was deleted meanwhile: the next try finds it gone and forgets its journal row, so
            # a new file of that name is a new output, not a rewrite of the object this one left.)
            item.dirty = False
        elif item.dirty and not stopped:
            # Changed again during the upload: push the newest content, but at most about once a
            # second to one key (R2 answers 429 beyond that; a job rewriting a file 10 times a
            # second gets its last version pushed within a second, not 10 PUTs).
            item.dirty, item.fatal = False, False
            spacing = 0.0 if self.draining or not item.last_put else item.last_put + KEY_SPACING_SECONDS - now
            if spacing > 0:
                self._wait(item, now + spacing, why="spacing")
            else:
                item.not_before = 0.0
                self.ready[item.rel] = item
        elif outcome is Outcome.UNFINISHED:
            # Found by a scan and maybe still being written: its close event, the next look at /proc
            # or its quiet time says when it is done.
            self._wait(item, now + detail.seconds, why=detail.why)
        elif outcome is Outcome.CHANGED:
            item.closed = False  # written again since its close: finished at its next close, or quiet
            # Still being written (found by a scan while a job writes it): wait longer each
            # time, so a growing video is not re-sent in a loop; its close event cuts the wait.
            item.changes += 1
            settle = min(MAX_SETTLE_SECONDS, SETTLE_SECONDS * 2 ** (item.changes - 1))
            self._wait(item, now + (DRAIN_SETTLE if self.draining else settle), why="settle")
        elif outcome is Outcome.RETRY:
            delay = backoff_delay(item.attempts, rand=self._rand)
            self._wait(item, now + (min(delay, DRAIN_WAIT_MAX) if self.draining else delay), why="retry")
        elif outcome is Outcome.FATAL:
            self.failed[item.rel] = item
            self.counters["failures"] += 1
            item.not_before = now + self.fatal_retry_seconds
            self._push_heap(item)

    def _wait(self, item: Item, until: float, *, why: str) -> None:
        item.not_before = until
        item.why = why
        self.waiting[item.rel] = item
        self._push_heap(item)

    def _push_heap(self, item: Item) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (item.not_before, self._seq, item.rel))

    # -- the stop ----------------------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Everything waiting becomes due now (batches, backoffs, spacing); waits that remain are short."""
        self.draining = True
        for rel in list(self.batched):
            self.ready[rel] = self.batched.pop(rel)
        self.batch.take(now=0, force=True)
        for rel, item in list(self.waiting.items()):
            self.ready[rel] = item
        self.waiting.clear()
        self._heap.clear()
        self.gate_until = 0.0

    @property
    def drain_busy(self) -> bool:
        """Whether a drain still has work. Of the files a scan found, only one waiting for the next look
        at /proc is waited for (:class:`Unfinished`); one being written, or waiting to be quiet, stays
        pending in the journal rather than going out as a prefix of itself."""
        return bool(self.ready or self.inflight
                    or any(i.why not in ("writing", "quiet") for i in self.waiting.values()))

    def left(self) -> dict[str, Item]:
        """The files not pushed (failed ones apart)."""
        return {**self.ready, **self.waiting, **self.inflight}

    # -- figures -----------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing batched, ready, waiting or in flight (files failing fatally apart)."""
        return not (self.ready or self.inflight or self.waiting or self.batched)

    def pending(self) -> list[Item]:
        """Every file waiting or being uploaded (fatal failures not included)."""
        return [*self.ready.values(), *self.waiting.values(), *self.batched.values(), *self.inflight.values()]

    @property
    def waiting_to_finish(self) -> int:
        """Files found by a scan, waiting for their close or to be quiet."""
        return sum(1 for i in self.waiting.values() if i.why in FINISH_WAITS)
