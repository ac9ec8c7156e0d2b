"""Notices for what happens while nobody watches: a campaign ends or stops, a trial of it errs.

Always a line in the log (`<data dir>/logs/redline.log`); also a desktop notification when this
process runs in a desktop session that can show one (`notify-send` from libnotify, a display and a
session bus). A notice never blocks its caller for long and never fails it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

log = logging.getLogger("redline.notify")
SEND_TIMEOUT_S = 3


def notify(summary: str, body: str = "", urgent: bool = False) -> bool:
    """Log the notice; True when a desktop notification was also shown."""
    log.info("notice: %s%s", summary, f" ({body})" if body else "")
    sender = shutil.which("notify-send")
    desktop = (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and \
        os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    if not sender or not desktop:
        return False
    try:
        done = subprocess.run([sender, "--app-name=Redline", f"--urgency={'critical' if urgent else 'normal'}",
                               summary, body], stdin=subprocess.DEVNULL, capture_output=True, timeout=SEND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("notice not shown on the desktop: %s", exc)
        return False
    return done.returncode == 0
