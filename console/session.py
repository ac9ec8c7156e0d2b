"""A console or CLI session: heartbeat, its watchdog process, and reaping of dead sessions' leftovers.

Every sandbox is labelled with its session id and its creating process (host:pid). The session writes
a heartbeat file every second; a separate watchdog process (console.watchdog) kills the session's
sandboxes when that heartbeat stops (the console crashed or was `kill -9`ed) or a sandbox's deadline
passes. At start, sandboxes whose creating process on this host is gone are reaped.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from console.paths import data_dir
from console.sandbox.spec import LABEL_OWNER

HEARTBEAT_S = 1.0
STALE_AFTER_S = 5.0


def sessions_dir() -> Path:
    path = data_dir() / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def is_orphan(labels: dict) -> bool:
    """A sandbox whose creating process, on this host, is gone (the engine may serve other hosts)."""
    host, _, pid = labels.get(LABEL_OWNER, "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid))


class Session:
    def __init__(self, engine, with_watchdog: bool = True):
        self.engine = engine
        self.id = f"s{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.heartbeat_file = sessions_dir() / f"{self.id}.json"
        self.with_watchdog = with_watchdog
        self._stop = threading.Event()
        self._watchdog: subprocess.Popen | None = None

    def start(self) -> "Session":
        self.heartbeat_file.write_text(json.dumps({"pid": os.getpid(), "started": time.time()}))
        threading.Thread(target=self._beat, name="session-heartbeat", daemon=True).start()
        self.reaped = self.engine.gc(is_orphan)
        if self.with_watchdog:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "console.watchdog", "--session", self.id,
                 "--heartbeat", str(self.heartbeat_file), "--parent-pid", str(os.getpid())],
                stdin=subprocess.DEVNULL, start_new_session=True,  # survives Ctrl+C of our group
            )
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.heartbeat_file)
            except OSError:
                return

    def kill_all(self):
        from console.sandbox.killswitch import KillSwitch

        return KillSwitch(self.engine.base_url).kill_session(self.id)

    def close(self) -> None:
        """Clean exit: the watchdog sees the heartbeat file gone and leaves quietly."""
        self._stop.set()
        self.heartbeat_file.unlink(missing_ok=True)
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
