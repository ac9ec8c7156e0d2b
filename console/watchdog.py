"""Watchdog process of one session: kills its sandboxes if the session dies or a deadline passes.

Runs as `python -m console.watchdog --session ID --heartbeat FILE --parent-pid PID`, in its own
process group so that signals meant for the console do not reach it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from console.session import STALE_AFTER_S, _pid_alive
from console.sandbox.spec import LABEL_DEADLINE

POLL_S = 0.5


def _log(text: str) -> None:
    print(f"[redline watchdog {os.getpid()}] {text}", file=sys.stderr, flush=True)


def watch(session: str, heartbeat: Path, parent_pid: int) -> int:
    from console.sandbox.docker_engine import DockerEngine
    from console.sandbox.killswitch import KillSwitch

    engine = DockerEngine().connect()
    switch = KillSwitch()
    while True:
        time.sleep(POLL_S)
        if not heartbeat.exists():
            return 0  # the session closed cleanly
        try:
            stale = time.time() - heartbeat.stat().st_mtime > STALE_AFTER_S
        except OSError:
            return 0
        if stale or not _pid_alive(parent_pid):
            report = switch.kill_session(session)
            removed = _remove_session(engine, session)
            _log(f"session {session} stopped heartbeating: killed {report.count} sandbox(es) in "
                 f"{report.total_ms:.0f} ms, removed {removed}")
            heartbeat.unlink(missing_ok=True)
            return 0
        now = time.time()
        expired = [b.id for b in engine.sandboxes(session_id=session)
                   if float(b.labels.get(LABEL_DEADLINE) or 0) < now and b.status() == "running"]
        if expired:
            report = switch.kill_ids(expired)
            _log(f"deadline passed: killed {report.count} sandbox(es) in {report.total_ms:.0f} ms")


def _remove_session(engine, session: str) -> int:
    boxes = engine.sandboxes(session_id=session)
    for box in boxes:
        box.remove()
    engine.remove_volumes({"redline.session": session})
    return len(boxes)


def main() -> int:
    parser = argparse.ArgumentParser(prog="redline-watchdog")
    parser.add_argument("--session", required=True)
    parser.add_argument("--heartbeat", required=True, type=Path)
    parser.add_argument("--parent-pid", required=True, type=int)
    args = parser.parse_args()
    return watch(args.session, args.heartbeat, args.parent_pid)


if __name__ == "__main__":
    raise SystemExit(main())
