"""The judge's probes of a sandbox's processes, run where the processes are.

Under runc that is the engine's host (root, the sandbox's cgroups). Under gVisor the host sees none
of the guest's processes (only the user-space kernel that runs them), so the judge asks them where
they live: `GuestObserver` (console/judge/observer.py) starts `serve()` as a root exec with every
capability of the guest's kernel, its code (this module and observe.py, interpreter.py, files.py,
sandbox/host.py, unchanged) sent through its stdin, never read from a file the agent could edit.

What it trusts is gVisor's kernel: its /proc, its ptrace. The agent's uid (1000, no capability) cannot
signal, trace or read the memory of this root process, and cannot write what it answers.
Freezing uses ptrace instead of a cgroup (there is none inside): every thread of a held process is
seized and interrupted, and a tracee in a ptrace stop runs again only when its tracer lets it go,
whatever SIGCONT its owner sends; nobody else can trace it meanwhile. New threads are traced on
arrival. Root's own processes (init, Redline's probes) are never held: the agent cannot make one.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import sys
import time

from console.judge import interpreter, observe
from console.judge.files import SandboxFiles
from console.sandbox import host

PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT = 17, 0x4206, 0x4207
PTRACE_O_TRACECLONE = 8
PR_GET_CHILD_SUBREAPER = 37
WALL = 0x40000000
DEAD_STATES = ("Z", "X")  # exited: a zombie (not yet waited for) or dying
TRACE_STOPPED = "t"


class TraceFreezer:
    """Holds processes of the guest in ptrace stops (see the module's docstring)."""

    def __init__(self, pids):
        self._pids = pids  # () -> the guest's processes, the observer's own left out
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
        self.held: dict[int, set[int]] = {}  # pid -> its traced threads

    def _ptrace(self, request: int, tid: int, data: int = 0) -> int:
        if self._libc.ptrace(request, tid, None, ctypes.c_void_p(data)) == 0:
            return 0
        return ctypes.get_errno()

    @staticmethod
    def _tasks(pid: int) -> set[int]:
        try:
            return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
        except OSError:
            return set()

    @staticmethod
    def _state(tid: int) -> str | None:
        try:
            return host.stat_fields(tid)[0]
        except (OSError, IndexError):
            return None

    def hold(self, kept) -> list[int]:
        """Hold every non-root process for which kept(pid) is false; their pids. Loops until nothing
        unkept is left running (a fork or a thread started during the loop is caught next round)."""
        for _ in range(50):
            grew = False
            for pid in self._pids():
                if kept(pid) or self._uid(pid) in (0, None):
                    continue
                for tid in self._tasks(pid) - self.held.get(pid, set()):
                    failure = self._ptrace(PTRACE_SEIZE, tid, PTRACE_O_TRACECLONE)
                    if failure == errno.ESRCH:
                        continue  # gone meanwhile: nothing to hold
                    if failure:
                        raise host.FreezeError(f"could not trace pid {pid} (thread {tid}): {os.strerror(failure)}")
                    self._ptrace(PTRACE_INTERRUPT, tid)
                    self.held.setdefault(pid, set()).add(tid)
                    grew = True
            if not grew:
                break
        else:
            raise host.FreezeError("processes kept appearing faster than they could be held")
        deadline = time.monotonic() + host.FREEZE_TIMEOUT_S
        while not self.is_frozen():
            if time.monotonic() > deadline:
                raise host.FreezeError(f"the held processes did not stop within {host.FREEZE_TIMEOUT_S:g} s")
            time.sleep(0.005)
        return sorted(self.held)

    @staticmethod
    def _uid(pid: int) -> int | None:
        try:
            with open(f"/proc/{pid}/status") as fh:
                return int(next(line for line in fh if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            return None

    def is_frozen(self) -> bool:
        """Every thread of every held process (new ones too) is in a ptrace stop, or gone: a thread that
        exited while held is a zombie until this tracer waits for it (release), and runs nothing."""
        for pid in self.held:
            for tid in self._tasks(pid):
                state = self._state(tid)
                if state is not None and state not in (TRACE_STOPPED, *DEAD_STATES):
                    return False
        return True

    def release(self) -> None:
        for pid, tids in self.held.items():
            for tid in tids | self._tasks(pid):
                self._ptrace(PTRACE_DETACH, tid)
        self.held = {}
        while True:  # collect the stop reports of the threads let go (no zombie is left behind)
            try:
                if os.waitpid(-1, os.WNOHANG | WALL)[0] == 0:
                    break
            except ChildProcessError:
                break


class Probes:
    """The judge's questions about one sandbox's processes, answered from the /proc where it runs:
    the engine's host for runc (host pids, a cgroup freezer), the guest for gVisor (guest pids, the
    ptrace freezer above)."""

    description = "probes of the /proc they run on"
    host_pids = True  # its pids are the engine host's (False inside a gVisor guest: GPU telemetry skips them)

    def __init__(self, pids, files, freezer, barrier=contextlib.nullcontext):
        self.pids = pids  # () -> the sandbox's processes
        self.files, self.freezer, self._barrier = files, freezer, barrier
        self._exe_fps: dict = {}
        self._interpreters: dict = {}

    def look(self) -> observe.Look:
        return observe.look_at(self.pids())

    def read_proc(self, pid: int) -> observe.Proc | None:
        return observe.read_proc(pid)

    def read_sockets(self, pid: int) -> dict:
        return observe.read_sockets(pid)

    def start_ticks(self, pid: int) -> int | None:
        return host.start_ticks(pid)

    def descendants(self, pid: int) -> set[int]:
        return host.descendants(pid, self.pids())

    def exe_fingerprint(self, pid: int) -> str | None:
        return observe.exe_fingerprint(pid, self._exe_fps)

    def main_script(self, pid: int) -> interpreter.MainScript | None:
        return interpreter.main_script(pid, self._interpreters)

    def signal(self, pid: int, ticks: int | None, signum: int) -> bool:
        return host.signal_process(pid, ticks, signum)

    def kill_tree(self, pid: int) -> int:
        return host.kill_tree(pid, self.pids())

    @staticmethod
    def child_subreaper() -> bool:
        """Whether this kernel has child subreapers (Debian 12's gVisor has none): without them a replica
        started detached is re-parented to PID 1, and who started it cannot be seen."""
        value = ctypes.c_int()
        return ctypes.CDLL(None, use_errno=True).prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) == 0

    def hold(self, keep) -> set[int]:
        """Freeze every process outside `keep` (pids) and its descendants; the pids held."""
        with self._barrier():
            return set(self.freezer.hold(host.keeper(set(keep))))

    def is_frozen(self) -> bool:
        return self.freezer.is_frozen()

    def release(self) -> None:
        self.freezer.release()

    def facts(self, items) -> dict:
        return self.files.facts([tuple(item) for item in items])

    def disk_used(self, paths) -> int:
        """Bytes in use on the file systems that hold these paths of the sandbox (its home and scratch
        tmpfs): what the agent wrote there and has not removed."""
        root = self.files.root().rstrip("/")
        used, seen = 0, set()
        for path in paths:
            try:
                device = os.stat(root + path).st_dev
                info = os.statvfs(root + path)
            except OSError:
                continue
            if device not in seen:
                seen.add(device)
                used += (info.f_blocks - info.f_bfree) * info.f_frsize
        return used

    def tree(self, root: str) -> dict:
        return self.files.tree(root)

    def copies(self, roots, wanted, budget: int = 20000) -> list:
        return self.files.copies(roots, wanted, budget)

    def close(self) -> None:
        self.files.close()
        try:
            self.freezer.release()
        except OSError:
            pass


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Inside a gVisor guest: one request per line ({"op", "args"}), one reply per line ({"ok": value}
    or {"error": text}). Leaves (letting go of what it held) when its stdin closes."""
    me = os.getpid()

    def pids() -> set[int]:  # every process of the guest but this probe and its file helper
        everyone = {int(p) for p in os.listdir("/proc") if p.isdigit()}
        return everyone - host.descendants(me, everyone)

    probes = Probes(pids, SandboxFiles(lambda: "/"), TraceFreezer(pids))
    for line in stdin:
        request = json.loads(line)
        try:
            reply = {"ok": getattr(probes, request["op"])(*request["args"])}
        except Exception as exc:  # the judge decides what a failed probe means; this one stays up
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        stdout.write(json.dumps(reply, default=_plain) + "\n")
        stdout.flush()
    probes.close()
