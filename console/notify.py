"""Notices for what happens while nobody watches: a campaign ends or stops, a trial of it errs, a
tripwire fires.

Always a line in the log (`<data dir>/logs/redline.log`); also a desktop notification when this
process runs in a desktop session that can show one (`notify-send` from libnotify, a display and a
session bus). A notice never blocks its caller and never fails it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger("redline.notify")


def notify(summary: str, body: str = "", urgent: bool = False) -> bool:
    """Log the notice; True when a desktop notification was also sent. Never waits for the desktop:
    notify-send runs on its own (a GUI thread or a CLI about to exit may call this)."""
    log.info("notice: %s%s", summary, f" ({body})" if body else "")
    sender = shutil.which("notify-send")
    desktop = (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if not sender or not desktop:
        return False
    try:
        subprocess.Popen([sender, "--app-name=Redline", f"--urgency={'critical' if urgent else 'normal'}", summary, body],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError as exc:
        log.info("notice not shown on the desktop: %s", exc)
        return False
    return True
