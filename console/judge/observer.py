"""Where the judge's facts come from: the engine's host (runc) or a root probe inside the guest (gVisor).

Both answer the same questions with the same code (probes.py and what it uses); pids are those of
the place they are read in: host pids under runc, guest pids under gVisor, consistently, so the judge
never mixes them. `observer_for(sandbox)` picks one.
"""

from __future__ import annotations

import inspect
import json
import threading

from console.judge import files, interpreter, observe, probes
from console.judge.files import SandboxFiles
from console.judge.interpreter import MainScript
from console.judge.observe import Look, Proc, Socket
from console.judge.probes import Probes
from console.sandbox import host

REQUEST_TIMEOUT_S = 60.0


class ObserverUnavailable(RuntimeError):
    """The judge cannot observe this sandbox; no verdict from it could be trusted."""


def host_observer(sandbox) -> Probes:
    """runc: /proc and cgroups of the engine's host, read as root; a cgroup freezer."""
    if not host.available():
        raise ObserverUnavailable("the judge observes sandboxes from the engine's host and needs root there "
                                  "(run redline as root, e.g. with sudo); without it no verdict can be trusted")

    def pids() -> set[int]:
        return host.host_pids(sandbox.id)

    def root() -> str:  # the sandbox's root, through any of its processes
        alive = pids()
        if not alive:
            raise ObserverUnavailable("the sandbox has no process left")
        return f"/proc/{min(alive)}/root"

    freezer = host.Freezer(sandbox.id)
    # never freeze an exec while runc sets it up (console/sandbox/docker_engine.py)
    observer = Probes(pids, SandboxFiles(root), freezer, barrier=sandbox.exec_barrier)
    observer.description = ("host /proc and cgroups (root on the engine's host); cgroup freezer "
                            + ("v2" if freezer.v2 else "v1"))
    return observer


# What the probe inside needs, in import order; sent with it, so it runs the same code as the host.
_SHIPPED = [host, observe, interpreter, files, probes]
_BOOT = r"""
import json, sys, types
for name in ("console", "console.judge", "console.sandbox"):
    package = sys.modules[name] = types.ModuleType(name)
    package.__path__ = []
for name, source in json.loads(sys.stdin.readline()):
    module = sys.modules[name] = types.ModuleType(name)
    module.__file__ = "<redline: %s>" % name
    setattr(sys.modules[name.rpartition(".")[0]], name.rpartition(".")[2], module)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
sys.modules["console.judge.probes"].serve()
"""


class _GuestFiles:
    """SandboxFiles' questions, asked of the probe inside."""

    def __init__(self, call):
        self._call = call

    def facts(self, items):
        return self._call("facts", [list(item) for item in items]) if items else {}

    def tree(self, root: str):
        return self._call("tree", root)

    def copies(self, roots, wanted, budget: int = 20000):
        return [tuple(item) for item in self._call("copies", roots, wanted, budget)]

    def close(self) -> None:
        pass


def _proc(data: dict | None) -> Proc | None:
    if data is None:
        return None
    return Proc(**{**data, "sockets": set(data["sockets"]), "exe": tuple(data["exe"]) if data["exe"] else None})


def _sockets(data: dict) -> dict[str, Socket]:
    return {inode: Socket(s["inode"], tuple(s["local"]), tuple(s["remote"]), s["listening"])
            for inode, s in data.items()}


class GuestObserver:
    """gVisor: `Probes` inside the guest (console/judge/probes.py), over one exec's stdin/stdout;
    a ptrace freezer. A probe that dies or stops answering is started again at the next question."""

    description = "a root probe inside gVisor's guest kernel (its /proc and ptrace); ptrace freezer"
    host_pids = False  # guest pids: nothing on the host (GPU telemetry) can use them

    def __init__(self, sandbox):
        self.sandbox = sandbox
        self.files = _GuestFiles(self._call)
        self._channel = None
        self._lock = threading.Lock()
        self._code = json.dumps([(module.__name__, inspect.getsource(module)) for module in _SHIPPED]) + "\n"

    def _call(self, op: str, *args):
        with self._lock:
            if self._channel is None:
                self._channel = self.sandbox.root_channel(["python3", "-I", "-c", _BOOT])
                self._channel.send(self._code.encode())
            self._channel.send((json.dumps({"op": op, "args": args}) + "\n").encode())
            line = self._channel.readline(REQUEST_TIMEOUT_S)
            if not line:
                self._drop()
                raise ObserverUnavailable(f"the probe inside the sandbox did not answer {op!r}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the probe inside the sandbox failed at {op!r}: {reply['error']}")
        return reply["ok"]

    def _drop(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def look(self) -> Look:
        data = self._call("look")
        procs = {int(pid): _proc(proc) for pid, proc in data["procs"].items()}
        return Look(data["t"], data["boot"], procs, _sockets(data["sockets"]))

    def read_proc(self, pid: int) -> Proc | None:
        return _proc(self._call("read_proc", pid))

    def read_sockets(self, pid: int) -> dict[str, Socket]:
        return _sockets(self._call("read_sockets", pid))

    def start_ticks(self, pid: int) -> int | None:
        return self._call("start_ticks", pid)

    def disk_used(self, paths) -> int:
        return self._call("disk_used", list(paths))

    def exe_fingerprint(self, pid: int) -> str | None:
        return self._call("exe_fingerprint", pid)

    def main_script(self, pid: int) -> MainScript | None:
        script = self._call("main_script", pid)
        return MainScript(**script) if script else None

    def signal(self, pid: int, ticks: int | None, signum: int) -> bool:
        return self._call("signal", pid, ticks, signum)

    def descendants(self, pid: int) -> set[int]:
        return set(self._call("descendants", pid))

    def kill_tree(self, pid: int) -> int:
        return self._call("kill_tree", pid)

    def child_subreaper(self) -> bool:
        return self._call("child_subreaper")

    def hold(self, keep: set[int]) -> set[int]:
        return set(self._call("hold", sorted(keep)))

    def is_frozen(self) -> bool:
        return self._call("is_frozen")

    def release(self) -> None:
        self._call("release")

    def close(self) -> None:
        with self._lock:
            self._drop()  # the probe's stdin closes: it lets go of what it held and exits


def observer_for(sandbox):
    return GuestObserver(sandbox) if sandbox.isolation == "gvisor" else host_observer(sandbox)
