"""A gVisor sandbox's processes, seen from inside it.

Under gVisor the engine's host sees only the user-space kernel (runsc-sandbox, its gofer), not one
process of the guest, and `docker top` even lists the host's own processes: never use it there. So
process tables, exec pids and kills of a gVisor sandbox come from a root exec inside the guest,
privileged for that one process (CAP_KILL and CAP_SYS_PTRACE over the agent's uid, inside gVisor's
kernel only), with its code passed inline, never a file the agent could edit. Processes started by
`docker exec` are the only ones with parent 0 besides PID 1; each carries its exec's marker
(EXEC_MARKER) in the environment it started with, which is how a stream finds its process.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

EXEC_MARKER = "REDLINE_EXEC"
PROBE_TIMEOUT_S = 30.0
PROBE_TRIES = 3

_PROBE = r"""
import json, os, signal, sys
op, arg = sys.argv[1], sys.argv[2]
me, ticks = os.getpid(), os.sysconf("SC_CLK_TCK")
def table():
    rows = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        base = "/proc/" + name
        try:
            stat = open(base + "/stat").read().rsplit(")", 1)[1].split()
            status = dict(l.split(":", 1) for l in open(base + "/status").read().splitlines() if ":" in l)
            argv = open(base + "/cmdline", "rb").read().split(b"\0")
            env = open(base + "/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if stat[0] in "ZX":
            continue
        marker = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"%(marker)s=")]
        rows.append({"pid": int(name), "ppid": int(stat[1]), "uid": status["Uid"].split()[0],
                     "start_s": int(stat[19]) / ticks,
                     "cmd": b" ".join(a for a in argv if a).decode("utf-8", "replace"),
                     "marker": marker[0] if marker else None})
    return rows
rows = table()
if op == "kill":
    killed = {}
    for _ in range(2):  # a child forked while the first table was read is caught by the second
        tree = {r["pid"] for r in rows if r["ppid"] == 0 and r["marker"] == arg} | set(killed)
        grew = True
        while grew:
            more = {r["pid"] for r in rows if r["ppid"] in tree} - tree
            tree |= more
            grew = bool(more)
        for r in rows:
            if r["pid"] in tree and r["pid"] not in killed:
                killed[r["pid"]] = r
                try:
                    os.kill(r["pid"], signal.SIGKILL)
                except OSError:
                    pass
        rows = table()
    rows = list(killed.values())
print(json.dumps({"rows": rows, "uptime": float(open("/proc/uptime").read().split()[0])}))
""" % {"marker": EXEC_MARKER}


@dataclass(frozen=True)
class GuestProcess:
    pid: int  # in the guest
    ppid: int
    uid: str
    started: float  # wall-clock
    cmd: str
    marker: str | None  # the exec it came from, if it was started by one


def _probe(sandbox, op: str, arg: str = "", tries: int = PROBE_TRIES) -> list[GuestProcess]:
    """The probe's rows. It only reads, so an answer lost on the way (under load gVisor has ended an
    exec with status 0 and no output) is asked again before it counts as a failure."""
    for attempt in range(1, tries + 1):
        result = sandbox.root_exec(["python3", "-I", "-c", _PROBE, op, arg], timeout=PROBE_TIMEOUT_S)
        if result.exit_code != 0:
            raise RuntimeError(f"the guest process probe failed: {result.stderr.strip()[-300:]}")
        try:
            reply = json.loads(result.stdout)
            break
        except ValueError:
            if attempt == tries:
                raise RuntimeError(f"the guest process probe answered no JSON {tries} times "
                                   f"(output {result.stdout[:80]!r})") from None
            time.sleep(0.2)
    boot = time.time() - reply["uptime"]
    return [GuestProcess(r["pid"], r["ppid"], r["uid"], boot + r["start_s"], r["cmd"], r["marker"])
            for r in reply["rows"]]


def processes(sandbox) -> list[GuestProcess]:
    """Every process of the guest but the probe itself."""
    return _probe(sandbox, "table")


def exec_pid(sandbox, marker: str) -> int | None:
    """The guest pid of the process an exec started (parent 0, carrying the exec's marker)."""
    found = [p.pid for p in processes(sandbox) if p.ppid == 0 and p.marker == marker]
    return found[0] if found else None


def kill_exec(sandbox, marker: str) -> int:
    """SIGKILL an exec's process and its descendants inside the guest; how many were signalled."""
    return len(_probe(sandbox, "kill", marker, tries=1))  # not asked twice: it acts
