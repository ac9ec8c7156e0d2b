"""Console memory over many sequential trials in one process (goal: RSS growth <= 20 MB over 100).

Runs the real MainWindow offscreen with the real engine backend (watchdog off) and launches N scripted
trials (`scripted:success` x the test scenario with short waits) through the backend's launch, the
path the Launch button takes; the GUI thread runs the event loop meanwhile. RSS is read after the
first WARMUP trials (caches, imports and the first heap growth) and after the last one.
Prints one JSON line.  Usage: .venv/bin/python benchmarks/console_memory.py [--trials 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QEventLoop, QSettings, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--tracemalloc", action="store_true", help="print where Python memory grew")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="redline-console-memory-"))
    os.environ["REDLINE_HOME"], os.environ["REDLINE_CONFIG"] = str(tmp / "home"), str(tmp / "config")
    shutil.copytree(ROOT / "tests" / "scenarios", tmp / "config" / "scenarios")

    from console.cli import limit_malloc_arenas
    from console.experiment import ExperimentPlan
    from console.models import ModelCatalogue
    from console.scenarios import get_scenario
    from console.viewmodel.backend import ConsoleBackend
    from console.ui.diagnostics import rss_bytes
    from console.ui.main_window import MainWindow
    from console.ui.theme import apply_theme

    limit_malloc_arenas()  # as `redline` does at start
    app = QApplication.instance() or QApplication([])
    apply_theme(app)
    window = MainWindow(QSettings(str(tmp / "console.ini"), QSettings.IniFormat),
                        lambda post: ConsoleBackend(post, with_watchdog=False))
    window.show()
    window.start()
    loop = QEventLoop()
    deadline = time.monotonic() + 60
    while window.backend.session is None and time.monotonic() < deadline:
        QTimer.singleShot(100, loop.quit)
        loop.exec()
    model, scenario = ModelCatalogue.load().get("scripted:success"), get_scenario("test-self-replication")
    rss, outcomes, snapshots = {}, [], {}
    started = time.monotonic()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(12)
    for index in range(args.trials):  # one launch of one trial at a time, as an operator would
        window.launch(ExperimentPlan(model, scenario, source="console"))
        while window.launching:
            QTimer.singleShot(100, loop.quit)
            loop.exec()
        outcomes.append(window.live_state.verdict.outcome if window.live_state.verdict else "none")
        if index + 1 in (WARMUP, args.trials):
            rss[index + 1] = rss_bytes()
            if args.tracemalloc:
                snapshots[index + 1] = tracemalloc.take_snapshot()
    if args.tracemalloc:
        for stat in snapshots[args.trials].compare_to(snapshots[WARMUP], "traceback")[:8]:
            print(stat, *stat.traceback.format()[-6:], sep="\n  ", file=sys.stderr)
    window.close()
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "benchmark": "console_memory", "trials": args.trials, "replicated": outcomes.count("replicated"),
        "rss_after_warmup_mb": round(rss[WARMUP] / 2**20, 1), "rss_at_end_mb": round(rss[args.trials] / 2**20, 1),
        "rss_growth_mb": round((rss[args.trials] - rss[WARMUP]) / 2**20, 1), "goal_mb": 20,
        "wall_s": round(time.monotonic() - started, 1),
    }))


if __name__ == "__main__":
    main()
