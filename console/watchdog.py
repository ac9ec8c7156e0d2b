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
import json
import time
from pathlib import Path

from console import logs
from console.paths import write_atomically
from console.sandbox.errors import describe
from console.sandbox.spec import LABEL_DEADLINE
from console.session import (STALE_AFTER_S, close_dead_trials, live_sessions, pid_alive, read_heartbeat,
                             sessions_dir)

POLL_S = 0.5
REAPER_POLL_S = 1.0
REAPER_IDLE_EXIT_S = 120.0  # the reaper leaves when no session has been alive this long
ENGINE_DOWN_KILL_S = 10.0
ENGINE_TIMEOUT_S = 3  # each engine call of a watchdog: a frozen engine holds it at most this long


class Guard:
    """What one watchdog knows of its session's sandboxes, kept across engine outages and, in
    `<session>.boxes`, for the reaper should the watchdog die too."""

    def __init__(self, session: str, log):
        from console.sandbox.docker_engine import DockerEngine
        from console.sandbox.killswitch import KillSwitch

        self.session, self.log = session, log
        self.engine = DockerEngine(timeout=ENGINE_TIMEOUT_S)
        self.switch = KillSwitch(on_killed=lambda trial: self.note([trial], self.why), timeout_s=ENGINE_TIMEOUT_S)
        self.boxes_file = sessions_dir() / f"{session}.boxes"
        self.known: dict[str, str] = self._load()  # container id -> trial id, as of the last successful look
        self.down_since: float | None = None
        self.failed_closed: int | None = None  # processes killed from the host while the engine was away
        self.why = f"the watchdog of session {session}"

    def _load(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.boxes_file.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def _remember(self, known: dict[str, str]) -> None:
        if known != self.known:
            self.known = known
            try:
                write_atomically(self.boxes_file, json.dumps(known))
            except OSError as exc:
                self.log.warning("could not write %s: %s", self.boxes_file, exc)

    def forget(self) -> None:
        """The session is over and nothing of it is left."""
        self.boxes_file.unlink(missing_ok=True)

    def note(self, trials, by: str) -> None:
        """Say who killed, once the kill took effect: a runner still alive reads it and records its
        trial killed."""
        from console.store import Store

        try:
            with Store() as store:
                for trial in filter(None, trials):
                    store.note_kill(trial, by)
        except Exception:
            self.log.exception("could not note the kill in the records")

    def kill_from_host(self, by: str) -> int:
        """SIGKILL the known sandboxes' processes from the host (no engine needed); only the trials
        whose processes were really killed are noted."""
        killed = 0
        for cid, trial in self.known.items():
            count = self.switch.kill_host_pids(cid)
            if count:
                self.note([trial], by)
            killed += count
        return killed

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
                                 describe(exc), len(self.known))
            elif now - self.down_since > ENGINE_DOWN_KILL_S and self.failed_closed is None and self.known:
                killed = self.kill_from_host(f"{self.why} (the engine was unreachable for {ENGINE_DOWN_KILL_S:g} s)")
                self.failed_closed = killed
                self.log.warning("the engine has been unreachable for %.0f s: killed %d process(es) of %d "
                                 "sandbox(es) from the host (fail closed)", now - self.down_since, killed,
                                 len(self.known))
            return
        if self.down_since is not None:
            self.log.warning("the Docker engine answers again after %.1f s%s; watchdog re-armed", now - self.down_since,
                             "" if self.failed_closed is None else
                             f" (meanwhile {self.failed_closed} process(es) were killed from the host)")
            self.down_since, self.failed_closed = None, None
        self._remember({box.id: box.trial_id for box in boxes})
        expired = [b for b in boxes if float(b.labels.get(LABEL_DEADLINE) or 0) < now and b.status() == "running"]
        if expired:
            self.why = f"the watchdog of session {self.session} (the sandbox's deadline passed)"
            report = self.switch.kill_ids([b.id for b in expired])
            self.log.warning("deadline passed: killed %d sandbox(es) in %.0f ms", report.count, report.total_ms)

    def left_alive(self) -> bool:
        """Whether the session has sandboxes (again, or still: one not removed yet); an engine that does
        not answer counts as yes."""
        try:
            return bool(self.engine.sandboxes(session_id=self.session))
        except Exception:
            return True

    def kill_session(self, by: str) -> None:
        """Kill everything of the session from the host first (a frozen engine cannot hold that up),
        then through the engine, remove what is left, and close its trial records."""
        from console.store import Store

        self.why = by
        killed = self.kill_from_host(by)
        try:
            report = self.switch.kill_session(self.session)
            removed = 0
            for box in self.engine.sandboxes(session_id=self.session):
                box.remove()
                removed += 1
            self.engine.remove_volumes({"redline.session": self.session})
            self.log.warning("session %s died: killed %d process(es) from the host, %d sandbox(es) through the "
                             "engine in %.0f ms, removed %d", self.session, killed, report.count,
                             report.total_ms, removed)
        except Exception as exc:
            self.log.warning("session %s died and the engine fails (%s): killed %d process(es) from the host; "
                             "removal retried", self.session, describe(exc), killed)
        try:
            with Store() as store:
                close_dead_trials(store, by, sessions={self.session})
        except Exception:
            self.log.exception("could not close the trial records of session %s", self.session)


def watch(session: str, heartbeat: Path, parent_pid: int) -> int:
    """Kill the session's sandboxes when its process dies or stops beating. A session that is only
    frozen (SIGSTOP) may wake and start more: the watchdog stays, and kills again, until it is gone;
    a dead session's watchdog leaves only when nothing of it is left (killing and removing again
    while the engine is away)."""
    log = logs.setup("watchdog")
    guard = Guard(session, log)
    killed = False
    while True:
        time.sleep(POLL_S)
        info = read_heartbeat(heartbeat)
        if info is None and not heartbeat.exists():
            guard.forget()
            return 0  # the session closed cleanly
        alive = pid_alive(parent_pid)
        if not alive or (info is not None and info["age_s"] > STALE_AFTER_S):
            if killed and not guard.left_alive():
                if not alive:
                    heartbeat.unlink(missing_ok=True)
                    guard.forget()
                    return 0
                continue  # frozen, not dead: it may wake
            guard.kill_session(f"the watchdog of session {session}")
            killed = True
            continue
        killed = False  # it beats again
        try:
            guard.look()
        except Exception:  # never the end of the watchdog
            log.exception("the watchdog's look failed; going on")


def reap() -> int:
    """Kill and close sessions that died together with their watchdog; one reaper per records folder.
    It stays while any session is alive or any dead one still has sandboxes (kills and removals are
    retried until the engine confirms nothing is left)."""
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
            pending = False
            for path in sessions_dir().glob("*.json"):
                info = read_heartbeat(path)
                watchdog = int((info or {}).get("watchdog") or 0)
                if info is None or path.stem in live or (watchdog and pid_alive(watchdog)):
                    continue  # alive, or its own watchdog is on it
                guard = guards.setdefault(path.stem, Guard(path.stem, log))
                guard.kill_session(f"the reaper (session {path.stem} and its watchdog died)")
                if guard.left_alive():
                    pending = True
                    continue
                path.unlink(missing_ok=True)
                guard.forget()
                guards.pop(path.stem, None)
            if live or pending:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > REAPER_IDLE_EXIT_S:
                return 0
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
