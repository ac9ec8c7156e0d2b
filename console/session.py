"""A console or CLI session: heartbeat, its watchdog, the host's reaper, and closing what dead sessions left.

Every sandbox is labelled with its session id and its creating process (host:pid), every trial record
with its session. The session writes a heartbeat file every second (`<data dir>/sessions/<id>.json`,
holding its pid and its watchdog's). Its watchdog process (console.watchdog) kills the session's
sandboxes within about a second of the session dying; if the watchdog dies too, the reaper (one per
records folder, also console.watchdog) does within STALE_AFTER_S + 1 s. At start, sandboxes whose
creating process on this host is gone are removed, and trials that dead sessions left open are closed
as `killed`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from console.paths import data_dir, write_atomically
from console.sandbox.spec import LABEL_OWNER

WATCHDOG = (sys.executable, "-m", "console.watchdog")
HEARTBEAT_S = 1.0
STALE_AFTER_S = 5.0
log = logging.getLogger("redline.session")


def sessions_dir() -> Path:
    path = data_dir() / "sessions"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_alive(pid: int) -> bool:
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
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def read_heartbeat(path: Path) -> dict | None:
    """{"pid", "watchdog", "started", "age_s"} of a session's heartbeat file, None if unreadable."""
    try:
        info = json.loads(path.read_text())
        info["age_s"] = time.time() - path.stat().st_mtime
        return info
    except (OSError, ValueError):
        return None


def session_alive(info: dict | None) -> bool:
    return info is not None and info["age_s"] <= STALE_AFTER_S and pid_alive(int(info.get("pid", 0)))


def live_sessions() -> set[str]:
    return {path.stem for path in sessions_dir().glob("*.json") if session_alive(read_heartbeat(path))}


def close_dead_trials(store, by: str, sessions: set[str] | None = None) -> list[str]:
    """Close as killed the unfinished trials of sessions that are not alive (or of `sessions`)."""
    live = live_sessions()
    closed = []
    for trial in store.unfinished_trials():
        dead = trial.session_id in sessions if sessions is not None else trial.session_id not in live
        if trial.session_id and dead and store.close_killed(trial.id, by, "its session died before it ended"):
            closed.append(trial.id)
    return closed


class Session:
    def __init__(self, engine, with_watchdog: bool = True, store=None):
        self.engine, self.store = engine, store
        self.id = f"s{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.heartbeat_file = sessions_dir() / f"{self.id}.json"
        self.with_watchdog = with_watchdog
        self._stop = threading.Event()
        self._watchdog: subprocess.Popen | None = None
        self._info = {"pid": os.getpid(), "started": time.time(), "watchdog": None}
        self.reaped, self.closed = 0, []

    def start(self) -> Session:
        self._write_heartbeat()
        threading.Thread(target=self._beat, name="session-heartbeat", daemon=True).start()
        self.reaped = self.engine.gc(is_orphan) if self.engine is not None else 0  # None: a cluster driver
        if self.store is not None:
            self.closed = close_dead_trials(self.store, "the reaper at start")
        if self.reaped or self.closed:
            log.warning("removed %d sandbox(es) and closed %d trial record(s) left by sessions that died",
                        self.reaped, len(self.closed))
        if self.with_watchdog:
            self._start_watchdog()
            subprocess.Popen([*WATCHDOG, "--reaper"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)  # exits at once if one runs
        return self

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [*WATCHDOG, "--session", self.id, "--heartbeat", str(self.heartbeat_file), "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, start_new_session=True,  # survives Ctrl+C of our group
        )
        self._info["watchdog"] = self._watchdog.pid
        self._write_heartbeat()

    def _check_watchdog(self) -> None:
        """With every heartbeat: a watchdog that has ended (poll() reaps a zombie, which kill(0) would
        take for alive) is replaced at once, so the session is never without one."""
        if self._watchdog is not None and not self._stop.is_set() and self._watchdog.poll() is not None:
            log.warning("the session's watchdog (pid %d) ended with %s; starting a new one",
                        self._watchdog.pid, self._watchdog.returncode)
            self._start_watchdog()

    def _write_heartbeat(self) -> None:
        write_atomically(self.heartbeat_file, json.dumps(self._info))

    def _beat(self) -> None:
        """Touch the heartbeat every second; a failure is logged and retried, never the end of it."""
        failing = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if self.heartbeat_file.exists():
                    os.utime(self.heartbeat_file)
                else:
                    self._write_heartbeat()
                self._check_watchdog()
                if failing:
                    log.warning("the session heartbeat works again")
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning("the session heartbeat cannot be written (%s); retrying", exc)
                failing = True

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
        self.heartbeat_file.with_suffix(".boxes").unlink(missing_ok=True)  # the watchdog's list, for the reaper
