"""Running a start-up step while the main thread keeps watching for a stop, and routing signals to it.

The main loop never blocks: a step runs in a worker thread, the main thread polls for a stop
request, sets the step's ``cancel`` event and, past a grace period, abandons it (the process
exits soon after). Signal handlers only record the signal (:func:`forward_signals`), so no lock
is ever taken inside one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Iterator, Sequence

__all__ = ["run_cancellable", "forward_signals", "POLL_SECONDS"]

POLL_SECONDS = 0.05


def run_cancellable(what: str, fn: Callable[[threading.Event], Any], *, stop_when: Callable[[], bool], grace: float,
                    clock: Callable[[], float]) -> tuple[Any, BaseException | None, bool]:
    """Run ``fn(cancel)`` in a worker thread while this thread keeps watching ``stop_when``.

    Returns ``(value, exception, abandoned)``; ``abandoned`` means ``stop_when`` became true,
    ``cancel`` was set and the worker did not finish within ``grace`` seconds of ``clock``.
    """
    cancel = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(cancel)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"syncbridge-start-{what}", daemon=True)
    worker.start()
    cancelled_at: float | None = None
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if not worker.is_alive():
            break
        if cancelled_at is None and stop_when():
            cancel.set()
            cancelled_at = clock()
        if cancelled_at is not None and clock() - cancelled_at >= grace:
            return None, None, True
    return box.get("value"), box.get("error"), False


@contextlib.contextmanager
def forward_signals(starter: Any, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                    ) -> Iterator[Any]:
    """Route ``signals`` to ``starter.request_stop`` (a :class:`~.starter.Starter`) for the block (main thread only).

    A signal the process was started with ignored (``nohup`` ignores SIGHUP, a
    shell's ``&`` ignores SIGINT) stays ignored; SIGTERM, the container's stop
    signal, is always handled.
    """

    def handler(signum: int, _frame: Any) -> None:
        starter.request_stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in signals
                if sig == signal.SIGTERM or signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield starter
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
