"""`redline` with no arguments: the desktop console on a qasync event loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from PySide6.QtCore import QSettings  # PySide6 before qasync, so qasync binds to it
from PySide6.QtWidgets import QApplication


def run_console(argv: list[str] | None = None) -> int:
    """Open the main window (embedded default model and self-replication preselected) and run
    until it is closed; returns the exit status."""
    import qasync

    from console.ui.main_window import APPLICATION, ORGANIZATION, MainWindow, with_python_executor
    from console.ui.theme import apply_theme, icon

    app = QApplication.instance() or QApplication(sys.argv[:1] + list(argv or []))
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setWindowIcon(icon("redline"))
    app.setQuitOnLastWindowClosed(False)  # the window closes itself once the session is closed
    apply_theme(app)

    async def main() -> int:
        with_python_executor(asyncio.get_running_loop())
        window = MainWindow(QSettings(ORGANIZATION, APPLICATION))
        closed = asyncio.Event()
        window.closedCleanly.connect(closed.set)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C in the terminal: the same clean close
            loop.add_signal_handler(signum, window.close)
        window.show()
        window.start()
        logging.getLogger("redline.console").info("console window open")
        await closed.wait()
        return 0

    return qasync.run(main())
