"""Opens the console (no engine, no NVML) on the screen the platform gives it and prints, as one JSON
line, the window's geometry and whether Launch and KILL are wholly in sight; saves a screenshot when
given a path. Run by tests/test_screens.py under the offscreen platform with a screen of a given size."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication
from test_ui import offline_backend

from console.ui.main_window import MainWindow


def wholly_in_sight(widget, window) -> bool:
    """Shown, inside the window and not clipped by a scroll area or covered: its visible region is
    its whole rectangle."""
    if not widget.isVisible():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    inside = window.rect().contains(top_left) and window.rect().contains(top_left + widget.rect().bottomRight())
    return inside and widget.visibleRegion().boundingRect() == widget.rect()


def main() -> int:
    app = QApplication(sys.argv)
    window = MainWindow(QSettings(str(Path(tempfile.mkdtemp()) / "console.ini"), QSettings.IniFormat),
                        offline_backend)
    window.show()
    for _ in range(20):
        app.processEvents()
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
