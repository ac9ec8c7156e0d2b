"""One look at a sandbox from the engine's host: its processes and sockets, read from /proc as root.

Nothing here runs inside the sandbox or passes through anything the agent can write: the process
list comes from the sandbox's cgroups, each fact from the kernel's own /proc entries of the host
pids (status, stat, cmdline, environ, exe, fd, schedstat, net/tcp). The agent can choose what its
processes say about themselves (argv, environment) but not which processes exist, what they execute,
who their parent is, when they started, which sockets they hold or how much CPU they used.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from dataclasses import dataclass, field

from console.sandbox import host

FINGERPRINT_BYTES = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_ENV_KEPT = ("REDLINE_", "PYTHON")
TCP_LISTEN, TCP_ESTABLISHED = "0A", "01"


def fingerprint_handle(handle, size: int) -> str:
    """Size plus the first and last MiB: cheap on multi-GB weights, and a copy (cp, rsync) keeps it."""
    h = hashlib.sha256(str(size).encode())
    h.update(handle.read(FINGERPRINT_BYTES))
    if size > 2 * FINGERPRINT_BYTES:
        handle.seek(-FINGERPRINT_BYTES, 2)
        h.update(handle.read())
    return h.hexdigest()


def boot_time() -> float:
    """Wall-clock time of boot, to 10 ms (btime in /proc/stat is whole seconds)."""
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    return time.time() - uptime


@dataclass(frozen=True)
class Socket:
    inode: str
    local: tuple[str, int]
    remote: tuple[str, int]
    listening: bool


@dataclass
class Proc:
    """One process of the sandbox as the host's kernel reports it."""

    host_pid: int  # where the observer reads /proc: the engine's host (runc), the guest (gVisor)
    pid: int  # in the sandbox's pid namespace
    ppid: int  # host pid of the parent
    start_ticks: int
    uid: int
    state: str
    argv: list[str]
    env: dict[str, str]
    exe: tuple[int, int] | None  # (device, inode) of the executable it runs
    cwd: str | None
    sockets: set[str] = field(default_factory=set)  # socket inodes it holds
    cpu_ns: int = 0  # CPU time of all its threads

    @property
    def key(self) -> tuple[int, int]:
        """Identity across looks: a pid may be reused, a (pid, start) pair may not."""
        return self.host_pid, self.start_ticks

    @property
    def cmd(self) -> str:
        return " ".join(self.argv)

    def started_at(self, boot: float) -> float:
        return boot + self.start_ticks / CLOCK_TICKS


@dataclass
class Look:
    t: float
    boot: float
    procs: dict[int, Proc]  # by host pid
    sockets: dict[str, Socket]  # by inode, listening and established TCP sockets of the sandbox

    def owner(self, inode: str) -> Proc | None:
        for proc in self.procs.values():
            if inode in proc.sockets:
                return proc
        return None

    def listeners(self) -> dict[str, Socket]:
        return {i: s for i, s in self.sockets.items() if s.listening}

    def ports_of(self, proc: Proc) -> list[int]:
        return sorted({self.sockets[i].local[1] for i in proc.sockets if i in self.sockets
                       and self.sockets[i].listening})

    def listener_on(self, port: int) -> Proc | None:
        for inode, sock in self.listeners().items():
            if sock.local[1] == port:
                owner = self.owner(inode)
                if owner is not None:
                    return owner
        return None

    def peer_listener(self, sock: Socket) -> Socket | None:
        """The listening socket an established socket is connected to (same netns, loopback)."""
        for listener in self.listeners().values():
            if listener.local[1] == sock.remote[1] and _reaches(sock.remote[0], listener.local[0]):
                return listener
        return None


def _reaches(address: str, bound: str) -> bool:
    """Whether a connection to `address` lands on a socket bound to `bound` (wildcards included)."""
    if bound in ("0.0.0.0", "::"):
        return True
    return ipaddress.ip_address(address) == ipaddress.ip_address(bound)


def _parse_address(text: str, v6: bool) -> tuple[str, int]:
    address, port = text.split(":")
    raw = bytes.fromhex(address)
    if v6:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = ipaddress.IPv6Address(raw)
        ip = ip.ipv4_mapped or ip
    else:
        ip = ipaddress.IPv4Address(raw[::-1])
    return str(ip), int(port, 16)


def read_sockets(host_pid: int) -> dict[str, Socket]:
    """The TCP sockets of the network namespace host_pid lives in."""
    found: dict[str, Socket] = {}
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            with open(f"/proc/{host_pid}/net/{name}") as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] not in (TCP_LISTEN, TCP_ESTABLISHED) or parts[9] == "0":
                continue
            found[parts[9]] = Socket(parts[9], _parse_address(parts[1], v6), _parse_address(parts[2], v6),
                                     parts[3] == TCP_LISTEN)
    return found


def _read(path: str, binary: bool = False):
    with open(path, "rb" if binary else "r") as fh:
        return fh.read()


def read_proc(host_pid: int) -> Proc | None:
    """The facts of one host process, or None if it is gone (or a zombie)."""
    base = f"/proc/{host_pid}"
    try:
        status = dict(line.split(":", 1) for line in _read(f"{base}/status").splitlines() if ":" in line)
        state = status["State"].split()[0]
        if state in ("Z", "X"):
            return None
        stat = host.stat_fields(host_pid)
        cmdline = _read(f"{base}/cmdline", True)
        argv = [a.decode("utf-8", "replace") for a in cmdline.split(b"\0")[:-1 if cmdline.endswith(b"\0") else None]]
        env_raw = _read(f"{base}/environ", True).split(b"\0")
    except (OSError, KeyError, IndexError):
        return None
    env = {}
    for item in env_raw:
        text = item.decode("utf-8", "replace")
        if text.startswith(_ENV_KEPT) and "=" in text:
            key, value = text.split("=", 1)
            env[key] = value
    try:
        info = os.stat(f"{base}/exe")
        exe = (info.st_dev, info.st_ino)
    except OSError:
        exe = None
    try:
        cwd = os.readlink(f"{base}/cwd")
    except OSError:
        cwd = None
    sockets = set()
    try:
        for fd in os.listdir(f"{base}/fd"):
            try:
                link = os.readlink(f"{base}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                sockets.add(link[8:-1])
    except OSError:
        pass
    cpu, counted = 0, False
    try:
        for tid in os.listdir(f"{base}/task"):
            try:
                cpu += int(_read(f"{base}/task/{tid}/schedstat").split()[0])
                counted = True
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        pass
    if not counted:  # no schedstat (gVisor): user + system time, in clock ticks
        cpu = (int(stat[11]) + int(stat[12])) * 1_000_000_000 // CLOCK_TICKS
    return Proc(host_pid=host_pid, pid=int(status.get("NSpid", str(host_pid)).split()[-1]), ppid=int(stat[1]),
                start_ticks=int(stat[19]), uid=int(status["Uid"].split()[0]), state=state, argv=argv, env=env,
                exe=exe, cwd=cwd, sockets=sockets, cpu_ns=cpu)


def look(container_id: str) -> Look:
    """The sandbox's processes as the host sees them (runc)."""
    return look_at(host.host_pids(container_id))


def look_at(pids: set[int]) -> Look:
    procs = {}
    for host_pid in sorted(pids):
        proc = read_proc(host_pid)
        if proc is not None:
            procs[host_pid] = proc
    sockets = read_sockets(next(iter(procs))) if procs else {}
    return Look(time.time(), boot_time(), procs, sockets)


def exe_fingerprint(host_pid: int, cache: dict) -> str | None:
    """Fingerprint of the executable a process runs, through /proc/<pid>/exe (the very inode it
    executes, whatever its path now holds); cached by inode, size and change time."""
    try:
        with open(f"/proc/{host_pid}/exe", "rb") as fh:
            info = os.fstat(fh.fileno())
            key = (info.st_dev, info.st_ino, info.st_size, info.st_ctime_ns)
            if key not in cache:
                cache[key] = fingerprint_handle(fh, info.st_size)
            return cache[key]
    except OSError:
        return None
