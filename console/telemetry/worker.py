"""The background loop shared by the GPU sampler and the container stats poller.

Both connect to a source that may be missing or may fail at any time (NVML, the Docker engine).
The loop never lets an exception escape its thread and never spins: while the source is
unavailable it waits `retry_interval_s` between attempts, and a slow poll still leaves a gap.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_GAP_FRACTION = 0.2  # a poll slower than its period still sleeps this share of a period


@dataclass(frozen=True)
class TelemetryStatus:
    """Whether a telemetry source delivers data, and in words why not (shown in the UI as is)."""

    available: bool
    message: str


def clamp_rate(rate_hz: float, lowest: float, highest: float) -> float:
    return min(max(float(rate_hz), lowest), highest)


def call_guarded(callback: Callable | None, *args) -> None:
    """Run a subscriber's callback; its failure is logged, never allowed to stop sampling."""
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:
        log.exception("telemetry callback %r failed", callback)


class PeriodicWorker:
    """A daemon thread that connects to a source, polls it at `rate_hz` and backs off on failure.

    Subclasses implement `_connect`, `_poll`, `_disconnect` (called on the worker thread only) and
    `_describe(exc)`, which turns a failure into the status message.
    """

    thread_name = "redline-telemetry"

    def __init__(self, rate_hz: float, retry_interval_s: float,
                 on_status: Callable[[TelemetryStatus], None] | None):
        self.rate_hz = rate_hz
        self.retry_interval_s = retry_interval_s
        self._on_status = on_status
        self._status = TelemetryStatus(False, "not started")
        self._status_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def status(self) -> TelemetryStatus:
        with self._status_lock:
            return self._status

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start sampling in the background; returns at once (the first connect happens there)."""
        if self.running:
            return
        self._stop.clear()
        self._set_status(False, "connecting")
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and disconnect from the source (on the worker thread)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s did not stop within %.1f s", self.thread_name, timeout)

    def _set_status(self, available: bool, message: str) -> bool:
        """Publish a status; returns whether it changed."""
        status = TelemetryStatus(available, message)
        with self._status_lock:
            if status == self._status:
                return False
            self._status = status
        log.info("%s: %s", self.thread_name, message)
        call_guarded(self._on_status, status)
        return True

    def _run(self) -> None:
        connected = False
        try:
            while not self._stop.is_set():
                if not connected:
                    try:
                        self._connect()
                        connected = True
                    except Exception as exc:
                        self._fail(exc)
                        continue
                started = time.monotonic()
                try:
                    self._poll()
                except Exception as exc:
                    self._disconnect_quietly()
                    connected = False
                    self._fail(exc)
                    continue
                period = 1.0 / self.rate_hz
                elapsed = time.monotonic() - started
                self._stop.wait(max(period - elapsed, period * MIN_GAP_FRACTION))
        finally:
            if connected:
                self._disconnect_quietly()
            self._set_status(False, "stopped")

    def _fail(self, exc: Exception) -> None:
        message = self._describe(exc)
        if self._set_status(False, message):
            log.warning("%s: %s (retrying every %g s)", self.thread_name, message,
                        self.retry_interval_s, exc_info=log.isEnabledFor(logging.DEBUG) and exc)
        self._stop.wait(self.retry_interval_s)

    def _disconnect_quietly(self) -> None:
        try:
            self._disconnect()
        except Exception:
            log.debug("%s: disconnect failed", self.thread_name, exc_info=True)

    def _connect(self) -> None:
        raise NotImplementedError

    def _poll(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _describe(self, exc: Exception) -> str:
        raise NotImplementedError
