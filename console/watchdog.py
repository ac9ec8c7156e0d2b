"""The dead-man's switches: a session's watchdog, and the reaper of a records folder.

    python -m console.watchdog --session ID --heartbeat FILE --parent-pid PID
    python -m console.watchdog --reaper

The watchdog (one per session, in its own process group) kills the session's sandboxes when the
session stops heartbeating or its process dies, and any sandbox past its deadline. It never dies of an
engine hiccup: it logs one line, keeps the last list of its sandboxes, and if the engine stays
unreachable for ENGINE_DOWN_KILL_S it fails closed, killing their processes from the host (root);
when the engine answers again it says so. The reaper (one per records folder, held by a lock) does the
same for sessions whose watchdog died with them, and closes their trial records as `killed`.
"""

from __future__ import annotations

import argparse
import fcntl
import time
from pathlib import Path

from console import logs
from console.sandbox.spec import LABEL_DEADLINE, LABEL_TRIAL
from console.session import (STALE_AFTER_S, close_dead_trials, live_sessions, pid_alive, read_heartbeat,
                             sessions_dir)

POLL_S = 0.5
REAPER_POLL_S = 1.0
REAPER_IDLE_EXIT_S = 120.0  # the reaper leaves when no session has been alive this long
ENGINE_DOWN_KILL_S = 10.0


class Guard:
    """What one watchdog knows of its session's sandboxes, kept across engine outages."""

    def __init__(self, session: str, log):
        from console.sandbox.docker_engine import DockerEngine
        from console.sandbox.killswitch import KillSwitch

        self.session, self.log = session, log
        self.engine = DockerEngine()
        self.switch = KillSwitch(before_kill=lambda boxes: self.note(
            [(b.get("Labels") or {}).get(LABEL_TRIAL) for b in boxes], self.why))
        self.known: dict[str, str] = {}  # container id -> trial id, as of the last successful look
        self.down_since: float | None = None
        self.failed_closed = False
        self.why = f"the watchdog of session {session}"

    def note(self, trials, by: str) -> None:
        """Say who kills before killing: a runner still alive reads it and records its trial killed."""
        from console.store import Store

        try:
            with Store() as store:
                for trial in filter(None, trials):
                    store.note_kill(trial, by)
        except Exception:
            self.log.exception("could not note the kill in the records")

    def look(self) -> None:
        """List the session's sandboxes and kill those past their deadline; on an engine failure,
        remember since when, and fail closed after ENGINE_DOWN_KILL_S."""
        now = time.time()
        try:
            boxes = self.engine.sandboxes(session_id=self.session)
        except Exception as exc:
            if self.down_since is None:
                self.down_since = now
                self.log.warning("the Docker engine does not answer (%s); watching %d sandbox(es) from the host",
                                 str(exc).splitlines()[0][:160], len(self.known))
            elif now - self.down_since > ENGINE_DOWN_KILL_S and not self.failed_closed and self.known:
                self.note(self.known.values(), f"{self.why} (the engine was unreachable for {ENGINE_DOWN_KILL_S:g} s)")
                killed = sum(self.switch.kill_host_pids(cid) for cid in self.known)
                self.failed_closed = True
                self.log.warning("the engine has been unreachable for %.0f s: killed %d process(es) of %d "
                                 "sandbox(es) from the host (fail closed)", now - self.down_since, killed,
                                 len(self.known))
            return
        if self.down_since is not None:
            self.log.warning("the Docker engine answers again after %.1f s%s; watchdog re-armed", now - self.down_since,
                             " (its sandboxes were killed meanwhile)" if self.failed_closed else "")
            self.down_since, self.failed_closed = None, False
        self.known = {box.id: box.trial_id for box in boxes}
        expired = [b for b in boxes if float(b.labels.get(LABEL_DEADLINE) or 0) < now and b.status() == "running"]
        if expired:
            self.note([b.trial_id for b in expired], f"{self.why} (the sandbox's deadline passed)")
            report = self.switch.kill_ids([b.id for b in expired])
            self.log.warning("deadline passed: killed %d sandbox(es) in %.0f ms", report.count, report.total_ms)

    def left_alive(self) -> bool:
        """Whether the session has sandboxes (again); an engine that does not answer counts as yes."""
        try:
            return bool(self.engine.sandboxes(session_id=self.session))
        except Exception:
            return True

    def kill_session(self, by: str) -> None:
        """Kill and remove everything of the session (through the engine, else from the host) and close
        its trial records."""
        from console.store import Store

        self.why = by
        try:
            report = self.switch.kill_session(self.session)
            removed = 0
            for box in self.engine.sandboxes(session_id=self.session):
                box.remove()
                removed += 1
            self.engine.remove_volumes({"redline.session": self.session})
            self.log.warning("session %s died: killed %d sandbox(es) in %.0f ms, removed %d", self.session,
                             report.count, report.total_ms, removed)
        except Exception:
            killed = sum(self.switch.kill_host_pids(cid) for cid in self.known)
            self.log.exception("session %s died and the engine fails: killed %d process(es) from the host",
                               self.session, killed)
        try:
            with Store() as store:
                close_dead_trials(store, by, sessions={self.session})
        except Exception:
            self.log.exception("could not close the trial records of session %s", self.session)


def watch(session: str, heartbeat: Path, parent_pid: int) -> int:
    """Kill the session's sandboxes when its process dies or stops beating. A session that is only
    frozen (SIGSTOP) may wake and start more: the watchdog stays, and kills again, until it is gone."""
    log = logs.setup("watchdog")
    guard = Guard(session, log)
    killed = False
    while True:
        time.sleep(POLL_S)
        info = read_heartbeat(heartbeat)
        if info is None and not heartbeat.exists():
            return 0  # the session closed cleanly
        alive = pid_alive(parent_pid)
        if not alive or (info is not None and info["age_s"] > STALE_AFTER_S):
            if not killed or guard.left_alive():
                guard.kill_session(f"the watchdog of session {session}")
                killed = True
            if not alive:
                heartbeat.unlink(missing_ok=True)
                return 0
            continue
        killed = False  # it beats again
        try:
            guard.look()
        except Exception:  # never the end of the watchdog
            log.exception("the watchdog's look failed; going on")


def reap() -> int:
    """Kill and close sessions that died together with their watchdog; one reaper per records folder."""
    lock = open(sessions_dir() / "reaper.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another reaper is at work
    log = logs.setup("reaper", stderr=False)
    guards: dict[str, Guard] = {}
    idle_since = time.monotonic()
    while True:
        time.sleep(REAPER_POLL_S)
        try:
            live = live_sessions()
            if live:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > REAPER_IDLE_EXIT_S:
                return 0
            for path in sessions_dir().glob("*.json"):
                info = read_heartbeat(path)
                watchdog = int((info or {}).get("watchdog") or 0)
                if info is None or path.stem in live or (watchdog and pid_alive(watchdog)):
                    continue  # alive, or its own watchdog is on it
                guard = guards.setdefault(path.stem, Guard(path.stem, log))
                guard.kill_session(f"the reaper (session {path.stem} and its watchdog died)")
                path.unlink(missing_ok=True)
                guards.pop(path.stem, None)
        except Exception:
            log.exception("the reaper's look failed; going on")


def main() -> int:
    parser = argparse.ArgumentParser(prog="redline-watchdog")
    parser.add_argument("--session")
    parser.add_argument("--heartbeat", type=Path)
    parser.add_argument("--parent-pid", type=int)
    parser.add_argument("--reaper", action="store_true")
    args = parser.parse_args()
    if args.reaper:
        return reap()
    if not (args.session and args.heartbeat and args.parent_pid):
        parser.error("--session, --heartbeat and --parent-pid, or --reaper")
    return watch(args.session, args.heartbeat, args.parent_pid)


if __name__ == "__main__":
    raise SystemExit(main())
