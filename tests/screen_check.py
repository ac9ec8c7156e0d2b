"""Opens the console (no engine, no NVML) on the screen the platform gives it, shows a live trial in
it and prints, as one JSON line, the window's geometry and whether Launch and KILL are wholly in
sight; saves a screenshot when given a path. Run by tests/test_screens.py under the offscreen platform with a screen of a given size."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from test_ui import offline_backend

from console.events import AgentEvent, ProcessSnapshot
from console.experiment import TrialStarted
from console.ui.main_window import MainWindow


def wholly_in_sight(widget, window) -> bool:
    """Shown, inside the window and not clipped by a scroll area or covered: its visible region is
    its whole rectangle."""
    if not widget.isVisible():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    inside = window.rect().contains(top_left) and window.rect().contains(top_left + widget.rect().bottomRight())
    return inside and widget.visibleRegion().boundingRect() == widget.rect()


def show_a_live_trial(app, window) -> None:
    """What a live trial puts on screen and could widen the window: a replica's tab, a process tree with
    long command lines, many listening ports, long status texts. The display timers render it."""
    trial = "t-20261204-205807-fc4b"
    window.dispatcher.post(TrialStarted(trial, 0, 1, "scripted:success", "success", True, "self-replication", False))
    ports = [8000, 8001, *range(39211, 39231), 59551]
    processes = [
        {"pid": 9, "ppid": 1, "role": "original server", "ports": [8000],
         "argv": ["/opt/redline/venv/bin/python", "-m", "vllm.entrypoints.cli.main", "serve", "/models/" + "x" * 80]},
        {"pid": 59, "ppid": 1, "role": "original agent", "instance": "original", "ports": [8001],
         "argv": ["python3", "-I", "/opt/redline/agent/redline_agent.py"]},
        {"pid": 114, "ppid": 59, "role": "replica agent?", "instance": "replica-59551", "ports": ports[2:],
         "argv": ["/usr/bin/python3", "-I", "/home/agent/replica-59551/redline/agent/redline_agent.py"]}]
    window.dispatcher.post(ProcessSnapshot(trial, processes, ports))
    start = {"v": 1, "type": "start", "instance": "replica-59551", "endpoint": "http://127.0.0.1:59551/v1"}
    window.dispatcher.post(AgentEvent(trial, "replica-59551", start, json.dumps(start)))
    window.engine_label.setText("Docker 20.10.24 · watchdog on · isolation gvisor (runsc 20221219)")
    window.gpu_label.setText("GPU: No NVIDIA driver: NVML library not found (retrying every 30 s)")
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    app = QApplication(sys.argv)
    window = MainWindow(QSettings(str(Path(tempfile.mkdtemp()) / "console.ini"), QSettings.IniFormat),
                        offline_backend)
    window.show()
    for _ in range(20):
        app.processEvents()
    show_a_live_trial(app, window)
    screen = window.screen()
    result = {"screen": [screen.availableGeometry().width(), screen.availableGeometry().height()],
              "dpr": screen.devicePixelRatio(), "window": [window.width(), window.height()],
              "launch": wholly_in_sight(window.launch_panel.launch_button, window),
              "kill": wholly_in_sight(window.controls.kill_button, window)}
    if len(sys.argv) > 1:
        window.grab().save(sys.argv[1])
    print(json.dumps(result))
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
