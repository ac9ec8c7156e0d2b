"""Getting results from worker threads onto the GUI thread without Qt calls on those threads.

Worker threads (trial runners, telemetry samplers, kill/pause calls) only append to a deque, which
is thread-safe in CPython and never blocks. A QTimer on the GUI thread drains it ~30 times a second
and hands the items over in one batch. Nothing on a worker thread touches Qt: emitting Qt signals
from plain Python threads has crashed PySide6 6.8+, and qasync's `call_soon_threadsafe` is itself a
signal emission from the calling thread. Batching also coalesces floods: 20 000 output lines a
second arrive as ~700 per tick, rendered at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer

from console.events import AgentEvent
from console.kinds import AgentRecordType
from console.viewmodel.state import OutputDropped

log = logging.getLogger(__name__)

FLUSH_INTERVAL_MS = 33
MAX_INBOX = 20_000  # events queued for the GUI before output chunks are only counted
DRAIN_BUDGET_S = 0.025  # a tick stops taking items after this long; the rest wait for the next tick


class _Call:
    """A function to run on the GUI thread (a finished worker's callback)."""

    __slots__ = ("function", "args")

    def __init__(self, function: Callable, args: tuple):
        self.function, self.args = function, args


class GuiDispatcher(QObject):
    """Runs blocking calls on worker threads and delivers events and results on the GUI thread.

    on_events(list) receives posted events in order, once per tick; `after_flush` callbacks run
    after each tick that delivered something (views render there).
    """

    def __init__(self, on_events: Callable[[list], None], parent: QObject | None = None,
                 max_workers: int = 4):
        super().__init__(parent)
        self._inbox: deque = deque()
        self._dropped: dict[str, int] = {}  # trial id -> output chunks not queued
        self._on_events = on_events
        self.after_flush: list[Callable[[], None]] = []
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="redline-ui-worker")
        self._timer = QTimer(self)
        self._timer.setInterval(FLUSH_INTERVAL_MS)
        self._timer.timeout.connect(self.flush)
        self._timer.start()

    # -- any thread ------------------------------------------------------------------------
    def post(self, event) -> None:
        """Queue an event for the GUI (any thread, never blocks). When the GUI falls MAX_INBOX events
        behind, agent output chunks are counted instead of queued (the transcript keeps them all) and
        the views are told how many they missed."""
        if len(self._inbox) > MAX_INBOX and isinstance(event, AgentEvent) \
                and AgentRecordType.of(event.record) == AgentRecordType.OUTPUT:
            self._dropped[event.trial_id] = self._dropped.get(event.trial_id, 0) + 1
            return
        self._inbox.append(event)

    def call_in_gui(self, function: Callable, *args) -> None:
        """Run function(*args) on the GUI thread at the next tick (any thread)."""
        self._inbox.append(_Call(function, args))

    # -- GUI thread ------------------------------------------------------------------------
    def submit(self, function: Callable, *args, on_done: Callable | None = None,
               on_error: Callable[[BaseException], None] | None = None,
               dedicated_thread: bool = False) -> Future:
        """Run function(*args) off the GUI thread; on_done(result) / on_error(exc) run on it.

        dedicated_thread: a thread of its own, for calls that must never queue behind busy
        workers (the kill switch).
        """
        if dedicated_thread:
            future: Future = Future()

            def run():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:
                    future.set_exception(exc)

            threading.Thread(target=run, name="redline-ui-urgent", daemon=True).start()
        else:
            future = self._pool.submit(function, *args)
        future.add_done_callback(lambda f: self.call_in_gui(self._finish, f, on_done, on_error))
        return future

    def _finish(self, future: Future, on_done, on_error) -> None:
        if future.cancelled():  # queued when the dispatcher shut down
            return
        error = future.exception()
        if error is None:
            if on_done is not None:
                on_done(future.result())
        elif on_error is not None:
            on_error(error)
        else:
            log.error("background call failed", exc_info=error)

    def flush(self) -> None:
        """Deliver what the workers queued (called by the timer; tests may call it directly)."""
        if self._dropped:
            dropped, self._dropped = self._dropped, {}
            self._inbox.extend(OutputDropped(trial, count) for trial, count in dropped.items())
        if not self._inbox:
            return
        deadline = time.monotonic() + DRAIN_BUDGET_S
        batch, taken, inbox = [], 0, self._inbox
        while inbox:
            taken += 1
            if taken % 256 == 0 and time.monotonic() > deadline:
                break
            item = inbox.popleft()
            if isinstance(item, _Call):
                self._deliver(batch)
                batch = []
                item.function(*item.args)
            else:
                batch.append(item)
        self._deliver(batch)
        for callback in self.after_flush:
            callback()

    def _deliver(self, batch: list) -> None:
        if batch:
            self._on_events(batch)

    def shutdown(self) -> None:
        self._timer.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
