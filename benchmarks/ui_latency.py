"""How fast agent output reaches the console's terminal, and whether the GUI stays responsive.

Runs the real MainWindow offscreen (no engine needed) and feeds it the way a TrialRunner does:
AgentEvent output records posted from a worker thread. Measures, in one run:
- baseline: the longest GUI stall of the idle window (a 10 ms timer's worst lateness);
- latency: from the moment an event is created on the worker thread until the terminal widget has
  rendered it, at a realistic rate (200 lines/s) and under the flood; per rendered batch we take
  the oldest event of the batch, so each number is the worst event of its batch (goal < 100 ms);
- flood: the longest stall at 20 000 lines/s plus 10 Hz GPU telemetry (a fake NVML, two GPUs)
  and 10 Hz container stats, with the charts visible (goal < 50 ms);
- memory: RSS growth while the flood continues. The goal is a flat RSS over 10 minutes; this
  run scales it to MEMORY_S seconds after a warm-up (REDLINE_BENCH_MEMORY_S overrides).
Prints one JSON line.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/ui_latency.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # fake_nvml

from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from console.events import AgentEvent  # noqa: E402
from console.telemetry import ContainerStats, ContainerStatsSample  # noqa: E402
from console.viewmodel.backend import ConsoleBackend  # noqa: E402
from console.ui.diagnostics import StallMeter, rss_bytes  # noqa: E402
from console.ui.main_window import MainWindow  # noqa: E402
from console.experiment import TrialStarted  # noqa: E402
from console.ui.theme import apply_theme  # noqa: E402
from fake_nvml import FakeDevice, FakeNvml  # noqa: E402

IDLE_S = 3.0
REALISTIC_RATE = 200
REALISTIC_S = 5.0
FLOOD_RATE = 20_000
FLOOD_S = 10.0
TELEMETRY_HZ = 10.0
MEMORY_WARMUP_S = 10.0
MEMORY_S = float(os.environ.get("REDLINE_BENCH_MEMORY_S", 60))
LATENCY_GOAL_MS = 100
STALL_GOAL_MS = 50
TRIAL = "t-bench"


def run_for(seconds: float) -> None:
    """Run the Qt event loop for `seconds` (the GUI thread does only Qt work meanwhile)."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


class Producer(threading.Thread):
    """Posts output records like a TrialRunner's worker thread, at `rate` lines a second."""

    def __init__(self, post, rate: int):
        super().__init__(daemon=True)
        self.post, self.rate = post, rate
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.halt.is_set():
            due = int((time.perf_counter() - started) * self.rate)
            while self.sent < due:
                record = {"v": 1, "type": "output", "terminal_id": 1, "stream": "stdout",
                          "data": f"line {self.sent} " + "x" * 60 + "\n"}
                self.post(AgentEvent(TRIAL, "original", record, "", time.time()))
                self.sent += 1
            time.sleep(0.002)


class ContainerFeed(threading.Thread):
    """Container stats into the console's history at TELEMETRY_HZ, as the poller would."""

    def __init__(self, history):
        super().__init__(daemon=True)
        self.history = history
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.halt.wait(1 / TELEMETRY_HZ):
            n += 1
            stats = ContainerStats("c" * 64, "redline-t-bench", TRIAL, "s-bench", 50 + n % 50,
                                   200 * 1024**2 + n * 1024, 4 * 1024**3, 12, None, None)
            self.history.add(ContainerStatsSample(time.time(), (stats,)))


class LatencyProbe:
    """Per rendered batch of the original's terminal: now minus the oldest event's creation."""

    def __init__(self):
        self.samples_ms: list[float] = []

    def __call__(self, oldest_t: float, count: int) -> None:
        self.samples_ms.append((time.time() - oldest_t) * 1000)

    def summary(self) -> dict:
        ordered = sorted(self.samples_ms) or [0.0]
        return {"batches": len(self.samples_ms), "p50_ms": round(statistics.median(ordered), 1),
                "p99_ms": round(ordered[min(int(0.99 * len(ordered)), len(ordered) - 1)], 1),
                "max_ms": round(ordered[-1], 1)}


def measure(meter: StallMeter, seconds: float) -> dict:
    meter.start()
    run_for(seconds)
    meter.stop()
    return {"max_stall_ms": round(meter.max_stall_ms, 1), "p99_stall_ms": round(meter.percentile_stall_ms(0.99), 1)}


def main() -> int:
    app = QApplication([])
    apply_theme(app)
    home = tempfile.mkdtemp(prefix="redline-bench-")
    os.environ["REDLINE_HOME"] = home
    os.environ["REDLINE_CONFIG"] = home
    nvml = FakeNvml(devices=[FakeDevice(), FakeDevice(util=80)])
    window = MainWindow(QSettings(f"{home}/console.ini", QSettings.IniFormat),
                        lambda post: ConsoleBackend(post, with_watchdog=False, nvml=nvml, use_engine=False))
    window.resize(1600, 1000)
    window.show()
    window.start()
    window.charts.show_history(window.backend.history, TRIAL)
    window.dispatcher.post(TrialStarted(TRIAL, 0, 1, "scripted:bench", "bench", True, "self-replication",
                                        False))
    run_for(1.0)
    window.backend._gpu_sampler.rate_hz = TELEMETRY_HZ  # the sampler's top rate
    meter = StallMeter()
    baseline = measure(meter, IDLE_S)

    probe = LatencyProbe()
    first = Producer(window.dispatcher.post, 1)
    first.start()
    run_for(1.5)  # the first output creates the terminal
    first.halt.set()
    terminal = window.activity.terminal("original")
    terminal.batchRendered.connect(probe)

    realistic_producer = Producer(window.dispatcher.post, REALISTIC_RATE)
    realistic_producer.start()
    realistic = measure(meter, REALISTIC_S)
    realistic_producer.halt.set()
    realistic.update(probe.summary(), lines_per_s=REALISTIC_RATE)

    probe.samples_ms.clear()
    containers = ContainerFeed(window.backend.history)
    containers.start()
    flood_producer = Producer(window.dispatcher.post, FLOOD_RATE)
    flood_producer.start()
    flood = measure(meter, FLOOD_S)
    flood.update(probe.summary(), lines_per_s_target=FLOOD_RATE,
                 lines_per_s_sent=round(flood_producer.sent / FLOOD_S), telemetry_hz=TELEMETRY_HZ)

    run_for(MEMORY_WARMUP_S)
    rss_start = rss_bytes()
    run_for(MEMORY_S)
    rss_end = rss_bytes()
    flood_producer.halt.set()
    containers.halt.set()
    memory = {"flood_s": MEMORY_S, "after_warmup_s": MEMORY_WARMUP_S,
              "rss_start_mb": round(rss_start / 1024**2, 1), "rss_end_mb": round(rss_end / 1024**2, 1),
              "growth_mb": round((rss_end - rss_start) / 1024**2, 1),
              "lines": flood_producer.sent,
              "terminal_lines_kept": terminal.text.document().blockCount(),
              "scaled_from": "a 10-minute goal, scaled to this run's duration"}

    result = {
        "benchmark": "ui_latency", "cpus": os.cpu_count(), "qt_platform": os.environ["QT_QPA_PLATFORM"],
        "baseline_idle": baseline, "realistic": realistic, "flood": flood, "memory": memory,
        "goals": {"latency_ms": LATENCY_GOAL_MS, "stall_ms": STALL_GOAL_MS},
        "met": {"latency": realistic["max_ms"] < LATENCY_GOAL_MS and flood["p99_ms"] < LATENCY_GOAL_MS,
                "stall": flood["max_stall_ms"] < STALL_GOAL_MS},
    }
    window.close()
    deadline = time.monotonic() + 30
    while not window.closed and time.monotonic() < deadline:
        run_for(0.1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
