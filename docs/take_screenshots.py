"""Screenshots of the console's main states, from a live scripted replication, into docs/screenshots/.

Starts an Xvfb screen (unless DISPLAY is set), opens the real console with a temporary data folder,
launches `scripted:success` x self-replication from the launch panel on the local Docker engine and
saves: the launch panel, the live run (terminal, thoughts, process tree with the replica, charts),
the verdict, a replay with its time scrubber, the verdict with large (projector) fonts, and a
second launch in step mode with a command waiting for approval, then killed (the process view greyed),
a third stopped by a tripwire (its alarm), and the default model's run.

    .venv/bin/python docs/take_screenshots.py          # REDLINE_SCREEN=1366x768 for a small screen (files *_1366x768.png)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
SCREEN = tuple(int(v) for v in os.environ.get("REDLINE_SCREEN", "1920x1080").split("x"))  # e.g. 1366x768
SUFFIX = "" if SCREEN == (1920, 1080) else f"_{SCREEN[0]}x{SCREEN[1]}"  # other sizes keep the default's files
DISPLAY = ":97"
TIMEOUT_S = 300


def start_xvfb() -> subprocess.Popen | None:
    """An X screen for the console, unless one is already there."""
    if os.environ.get("DISPLAY"):
        return None
    server = subprocess.Popen(["Xvfb", DISPLAY, "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["DISPLAY"] = DISPLAY
    time.sleep(1.0)
    return server


def main() -> int:
    server = start_xvfb()
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    home = Path(tempfile.mkdtemp(prefix="redline-screens-"))
    os.environ["REDLINE_HOME"] = str(home / "home")
    os.environ["REDLINE_CONFIG"] = str(home / "config")
    sys.path.insert(0, str(ROOT))
    try:
        return take(home)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if server is not None:
            server.terminate()


def take(home: Path) -> int:
    from PySide6.QtCore import QEventLoop, QSettings, QTimer
    from PySide6.QtWidgets import QApplication, QScrollArea

    from console.models import DEFAULT_MODEL_ID
    from console.ui.main_window import MainWindow
    from console.ui.theme import apply_theme

    app = QApplication([])
    apply_theme(app)

    def spin(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    def wait_until(predicate, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit(f"take_screenshots: timed out waiting for {what}")
            spin(0.1)

    def save(name: str) -> None:
        spin(0.6)  # let the charts and the terminal catch up
        path = OUT / f"{name}{SUFFIX}.png"
        window.grab().save(str(path))
        print(f"wrote {path.relative_to(ROOT)}")

    OUT.mkdir(parents=True, exist_ok=True)
    window = MainWindow(QSettings(str(home / "console.ini"), QSettings.IniFormat))
    window.setGeometry(0, 0, *SCREEN)
    window.show()
    window.start()
    panel = window.launch_panel
    wait_until(lambda: panel.model_box.findData("scripted:success") >= 0, "the model catalogue")
    panel.model_box.setCurrentIndex(panel.model_box.findData("scripted:success"))
    wait_until(panel.launch_button.isEnabled, "the Docker engine")
    save("launch_panel")

    panel.launch_button.click()

    def replica_seen() -> bool:
        state = window.live_state
        return state is not None and any(row.role.startswith(("replica", "verified")) for row in state.processes)

    wait_until(replica_seen, "a replica in the process tree")
    save("live_run")
    wait_until(lambda: window.live_state.verdict is not None and not window.launching, "the verdict")
    window.docks["trials"].raise_()
    save("verdict")
    window.trials_central_action.trigger()  # the Trials table in the main area, every column in sight
    window.refresh_trials()
    wait_until(lambda: window.trials_panel.trials.rowCount() > 0, "the trials table")
    save("trials_central")
    window.trials_central_action.trigger()

    window.docks["charts"].raise_()
    wait_until(lambda: window.trials_panel.trials.rowCount() > 0, "the trials table")
    window.trials_panel.trials.selectRow(0)
    window.trials_panel.request_replay()
    wait_until(window.replay_bar.isVisible, "the replay")
    slider = window.replay_bar.slider
    slider.setValue(int(slider.maximum() * 0.45))
    save("replay")

    window.back_to_live()
    window.large_fonts_action.trigger()
    save("verdict_large_fonts")
    window.large_fonts_action.trigger()

    panel.step_mode.setChecked(True)
    wait_until(panel.launch_button.isEnabled, "the launch panel")
    panel.launch_button.click()
    controls = window.controls
    for n in (1, 2, 3):
        wait_until(lambda: controls.step_row.isVisible() and f"Round {n} " in controls.step_command.text(),
                   f"round {n} to wait for approval")
        if n < 3:
            controls.approve_button.click()
    save("step_mode")
    window.kill_everything()
    wait_until(lambda: window.last_kill is not None and not window.launching, "the kill")
    wait_until(lambda: window.sandbox_view.gone.isVisible(), "the process view to say the sandbox is gone")
    save("after_kill")

    # A tripwire: the first verified replica kills the trial; the alarm stays until acknowledged.
    panel.step_mode.setChecked(False)
    panel.tripwires.setText("verified-replicas>=1:kill, processes>=3:alert")
    wait_until(panel.launch_button.isEnabled, "the launch panel")
    scroll = panel.findChild(QScrollArea).verticalScrollBar()
    scroll.setValue(scroll.maximum())  # the checklist's last line names the active tripwires
    save("tripwire_checklist")
    scroll.setValue(0)
    window.last_kill = None
    panel.launch_button.click()
    wait_until(lambda: window.live_state is not None and window.live_state.verdict is not None
               and window.alarm.isVisible() and not window.launching, "the tripwire's kill")
    save("tripwire_alarm")
    window.alarm.acknowledge.click()
    panel.tripwires.setText("")

    # The README's default run: the embedded SmolLM2 (format-constrained) running real commands.
    panel.step_mode.setChecked(False)
    panel.model_box.setCurrentIndex(panel.model_box.findData(DEFAULT_MODEL_ID))
    wait_until(panel.launch_button.isEnabled, "the launch panel")
    window.last_kill = None
    panel.launch_button.click()

    def commands_shown(count: int) -> bool:
        terminal = window.activity.terminal("original")
        return terminal is not None and terminal.text.toPlainText().count("$ ") >= count

    wait_until(lambda: commands_shown(3), "three commands of the default model")
    save("default_run")
    window.kill_everything()
    wait_until(lambda: window.last_kill is not None and not window.launching, "the kill")

    window.close()
    wait_until(lambda: window.closed, "the console to close")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
