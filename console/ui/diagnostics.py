"""Measuring the console's responsiveness: used by the UI tests and benchmarks/ui_latency.py."""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QObject, Qt, QTimer


class StallMeter(QObject):
    """Runs a 10 ms timer on the GUI thread and records the longest gap between two ticks.

    A gap longer than the interval is time the event loop spent on something else; the worst
    excess over the interval is the longest the GUI was unresponsive.
    """

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None):
        super().__init__(parent)
        self.interval_s = interval_ms / 1000.0
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last: float | None = None
        self.gaps: list[float] = []

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    @property
    def max_stall_ms(self) -> float:
        """The worst gap beyond the timer's own interval, in ms."""
        return max((gap - self.interval_s for gap in self.gaps), default=0.0) * 1000

    def percentile_stall_ms(self, fraction: float) -> float:
        if not self.gaps:
            return 0.0
        ordered = sorted(self.gaps)
        return max(ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] - self.interval_s, 0.0) * 1000


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
