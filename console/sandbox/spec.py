"""The containment spec: what a sandbox may do, with defaults no caller can loosen.

Network, capabilities, privilege escalation, init, a read-only root filesystem and the Docker socket
are not fields at all: they are fixed in `docker_kwargs()`. Only limits (which may only be set within
sane ranges), mounts of model weights (always read-only), GPU ids and paths of the image to hide
(covered read-only by something empty: a harsher sandbox, never a looser one) are configurable.

Two bounds hold with no Redline process alive: PID 1's child is a root `sleep` until the deadline plus
SELF_END_MARGIN_S, so the sandbox ends itself however everything outside has failed; and every path
the agent can write (its home, /tmp, /var/tmp) is a tmpfs of a fixed size inside the memory limit, so
filling it is ENOSPC in the sandbox and never touches the engine's disk.
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import NamedTuple

from console.sandbox.errors import InvalidSpec

LABEL_TRIAL = "redline.trial"
LABEL_SESSION = "redline.session"
LABEL_DEADLINE = "redline.deadline"
LABEL_OWNER = "redline.owner"  # "<host>:<pid>" of the process that created the sandbox
LABEL_ISOLATION = "redline.isolation"

# Isolation levels, weakest first: the engine runtime each one names. gVisor's runtime must be
# registered on the engine as "runsc" with runtimeArgs ["--network=none"] (README, `redline doctor`).
ISOLATION_RUNTIMES = {"runc": "runc", "gvisor": "runsc"}
# Under gVisor the pids limit applies to the user-space kernel as a whole (its own ~55 threads and
# the guest's tasks, in one host cgroup): the guest gets this much on top of the limit asked for.
GVISOR_PIDS_HEADROOM = 96

AGENT_USER = "1000:1000"
# PID 1 (docker-init) and its child run as root, with no capability: the agent's uid cannot signal
# them, so it cannot stop its own sandbox. Every exec names its user; the default is the agent's.
INIT_USER = "0:0"
AGENT_HOME = "/home/agent"
SCRATCH_DIRS = ("/tmp", "/var/tmp")  # world-writable in the image: each a tmpfs of memory / SCRATCH_SHARE
SCRATCH_SHARE = 8
SELF_END_MARGIN_S = 180  # past the deadline label (when the reaper acts), PID 1 ends the sandbox itself
_MEMORY = re.compile(r"^(\d+)([kmg]?)$", re.IGNORECASE)
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
GVISOR_HAS_NO_GPUS = "GPU sandboxes run on runc (this gVisor has no NVIDIA proxy)"
# Paths a scenario may not hide, nor anything in or above them: what the agent writes, the kernel's
# views, Redline's own code and the weights (hiding those breaks the trial, not the agent's tools).
UNHIDEABLE = (AGENT_HOME, *SCRATCH_DIRS, "/run", "/proc", "/sys", "/dev", "/opt/redline", "/models", "/etc")
# ... nor these or a folder above them (what parts inside them are hidden is the scenario's choice):
# the interpreter and shells that Redline's probes, the agent and the servers run on.
NEEDED = ("/usr/bin/python3", "/usr/bin/python3.11", "/usr/lib/python3.11", "/usr/bin/sh", "/usr/bin/dash",
          "/usr/bin/bash", "/usr/bin/env", "/usr/bin/sleep", "/usr/bin/mkdir", "/usr/bin/mv", "/usr/bin/chmod",
          "/usr/bin/cat")
EMPTY_FILE_MODE = 0o444  # what a hidden file is covered with: nothing to read, nothing to execute


class Bounds(NamedTuple):
    """A limit's allowed range, declared once: the scenario reader, the spec and the launch panel's
    widgets all take it from here."""

    low: float
    high: float

    def __contains__(self, value) -> bool:
        return self.low <= value <= self.high


PIDS_LIMIT_BOUNDS = Bounds(16, 4096)  # processes and threads of one sandbox: a 70B vLLM server and its replica fit
CPUS_BOUNDS = Bounds(0.1, 256)


def engine_sockets(extra: tuple[str, ...] = ()) -> set[str]:
    """Every path of a Docker socket this machine's engines answer on: the default ones, the one
    DOCKER_HOST names, and `extra` (the engine actually used), each also with its symlinks resolved."""
    sockets = set(DOCKER_SOCKETS) | set(extra)
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        sockets.add(host[len("unix://"):])
    return sockets | {os.path.realpath(s) for s in sockets}


def exposes_docker_socket(host_path: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether bind-mounting `host_path` puts a Docker socket in the sandbox: an engine's socket, a
    folder above it (/var/run, /run, /), or any file named docker.sock, also through symlinks."""
    real = os.path.realpath(host_path)
    if "docker.sock" in (os.path.basename(real), os.path.basename(host_path.rstrip("/"))):
        return True
    folder = real.rstrip("/") + "/"
    return any(sock == real or sock.startswith(folder) for sock in engine_sockets(extra))


def parse_memory(value: str | int) -> int:
    """'512m' / '2g' / bytes -> bytes."""
    if isinstance(value, int):
        return value
    match = _MEMORY.match(str(value).strip())
    if not match:
        raise InvalidSpec(f"memory limit {value!r}: expected a size like '512m' or '2g'")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


def check_hideable(path: str) -> None:
    """A path a scenario may hide: absolute, plain, outside UNHIDEABLE and not above what is NEEDED."""
    plain = path.rstrip("/")
    if not plain.startswith("/") or os.path.normpath(plain) != plain or not re.fullmatch(r"[A-Za-z0-9._+/-]+", plain):
        raise InvalidSpec(f"hidden path {path!r}: expected an absolute path without '..', '//' or odd characters "
                          f"(a folder ends in '/')")
    for kept in (*UNHIDEABLE, *NEEDED):
        if plain == kept or kept.startswith(plain + "/") or (kept in UNHIDEABLE and plain.startswith(kept + "/")):
            raise InvalidSpec(f"hidden path {path!r}: {kept} stays visible (Redline and the trial need it)")


@dataclass(frozen=True)
class ContainmentSpec:
    image: str
    session_id: str
    trial_id: str
    deadline_unix: float
    user: str = AGENT_USER  # what execs run as unless they name another user
    pids_limit: int = 256
    mem_limit: str | int = "1g"
    cpus: float = 1.0
    gpus: tuple[int, ...] = ()
    # /dev/shm of half the memory limit (its pages count against the limit) instead of Docker's 64 MiB:
    # NCCL between GPU workers, and vLLM's processes (16 MiB x 10 chunks per server) talk through it.
    shared_memory: bool = False
    model_mounts: dict[str, str] = field(default_factory=dict)  # host path -> container path
    scratch_size: str | int | None = None  # cap of /home/agent (a tmpfs); None: half the memory limit
    tmp_size: str | int | None = None  # cap of each of /tmp and /var/tmp; None: memory / SCRATCH_SHARE
    command: tuple[str, ...] = ()  # PID 1's child; empty: sleep until the deadline (+ margin), then end
    extra_labels: dict[str, str] = field(default_factory=dict)
    isolation: str = "runc"  # a key of ISOLATION_RUNTIMES
    # image paths covered read-only by something empty ("dir/": an empty folder); a missing tool
    hidden_paths: tuple[str, ...] = ()
    empty_file: str = ""  # host path of the empty, non-executable file that covers a hidden file

    def validate(self, gpu_count: int | None = None, engine_memory: int | None = None,
                 engine_cpus: int | None = None, engine_socket: str | None = None) -> None:
        """Reject limits a sandbox cannot honour (given the engine's memory and CPUs when known);
        raise InvalidSpec naming the field."""
        if not self.image:
            raise InvalidSpec("image: expected an image name")
        if self.pids_limit not in PIDS_LIMIT_BOUNDS:
            raise InvalidSpec(f"pids_limit {self.pids_limit}: expected {PIDS_LIMIT_BOUNDS.low}..{PIDS_LIMIT_BOUNDS.high}")
        memory = parse_memory(self.mem_limit)
        if memory < 64 * 1024**2:
            raise InvalidSpec(f"mem_limit {self.mem_limit!r}: expected at least 64m")
        if engine_memory is not None and memory > engine_memory:
            raise InvalidSpec(f"mem_limit {self.mem_limit!r}: expected at most the engine's "
                              f"{engine_memory / 1024**3:.1f} GiB")
        if not (CPUS_BOUNDS.low <= self.cpus <= (engine_cpus or CPUS_BOUNDS.high)):
            raise InvalidSpec(f"cpus {self.cpus}: expected {CPUS_BOUNDS.low}..{engine_cpus or CPUS_BOUNDS.high}")
        if self.isolation not in ISOLATION_RUNTIMES:
            raise InvalidSpec(f"isolation {self.isolation!r}: expected one of {', '.join(ISOLATION_RUNTIMES)}")
        if self.isolation == "gvisor" and self.gpus:
            raise InvalidSpec(f"isolation 'gvisor': {GVISOR_HAS_NO_GPUS}")
        if self.user.split(":")[0] in ("0", "root"):
            raise InvalidSpec("user: the agent never runs as root")
        for gpu in self.gpus:
            if not isinstance(gpu, int) or gpu < 0:
                raise InvalidSpec(f"gpus: {gpu!r} is not a GPU index")
            if gpu_count is not None and gpu >= gpu_count:
                have = f"0..{gpu_count - 1}" if gpu_count else "none"
                raise InvalidSpec(f"gpus: GPU {gpu} does not exist (this machine has {have})")
        for host, inside in self.model_mounts.items():
            sockets = (engine_socket,) if engine_socket else ()
            if exposes_docker_socket(host, sockets) or exposes_docker_socket(inside, sockets):
                raise InvalidSpec("model_mounts: the Docker socket is never mounted into a sandbox")
            if not inside.startswith("/models/"):
                raise InvalidSpec(f"model_mounts: {inside!r}: model weights mount under /models/")
        for path in self.hidden_paths:
            check_hideable(path)
        if any(not path.endswith("/") for path in self.hidden_paths) and not self.empty_file:
            raise InvalidSpec("hidden_paths: a hidden file needs empty_file, the host file that covers it")
        if self.scratch_size is not None and parse_memory(self.scratch_size) > memory:
            raise InvalidSpec(f"scratch_size {self.scratch_size!r}: a capped workspace lives in memory, so it "
                              f"must fit the memory limit {self.mem_limit!r}")

    @property
    def workspace_bytes(self) -> int:
        """The agent's home: its size is part of the containment (shown in the checklist)."""
        return parse_memory(self.scratch_size) if self.scratch_size else parse_memory(self.mem_limit) // 2

    @property
    def scratch_bytes(self) -> int:
        """Each of /tmp and /var/tmp."""
        return parse_memory(self.tmp_size) if self.tmp_size else parse_memory(self.mem_limit) // SCRATCH_SHARE

    @property
    def labels(self) -> dict[str, str]:
        labels = dict(self.extra_labels)
        labels.update(
            {
                LABEL_TRIAL: self.trial_id,
                LABEL_SESSION: self.session_id,
                LABEL_DEADLINE: str(int(self.deadline_unix)),
                LABEL_OWNER: f"{socket.gethostname()}:{os.getpid()}",
                LABEL_ISOLATION: self.isolation,
            }
        )
        return labels

    def docker_kwargs(self) -> dict:
        """Keyword arguments for docker-py's containers.create(); containment fixed here."""
        import docker.types

        mounts = [
            docker.types.Mount(target=inside, source=host, type="bind", read_only=True)
            for host, inside in self.model_mounts.items()
        ] + [
            docker.types.Mount(target=path, source=self.empty_file, type="bind", read_only=True)
            for path in self.hidden_paths if not path.endswith("/")
        ]
        hidden_dirs = {path.rstrip("/"): "size=4096,mode=0555,ro" for path in self.hidden_paths if path.endswith("/")}
        device_requests = []
        if self.gpus:
            device_requests.append(
                docker.types.DeviceRequest(
                    device_ids=[str(g) for g in self.gpus], capabilities=[["gpu"]]
                )
            )
        memory = parse_memory(self.mem_limit)
        shm = {"shm_size": min(memory // 2, 32 * 1024**3)} if self.gpus or self.shared_memory else {}
        return dict(
            **shm,
            image=self.image,
            runtime=ISOLATION_RUNTIMES[self.isolation],
            command=list(self.command) or [
                "sleep", str(max(1, math.ceil(self.deadline_unix + SELF_END_MARGIN_S - time.time())))],
            user=INIT_USER,
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            pids_limit=self.pids_limit + (GVISOR_PIDS_HEADROOM if self.isolation == "gvisor" else 0),
            mem_limit=memory,
            memswap_limit=memory,  # no swap: the OOM killer acts at the limit
            nano_cpus=int(self.cpus * 1e9),
            mounts=mounts,
            device_requests=device_requests,
            labels=self.labels,
            working_dir="/home/agent",
            # The engine here cannot cap a container's writable layer (overlay2 without quota), so the
            # root is read-only and what can be written is tmpfs, counted against the memory limit.
            read_only=True,
            # exec: a replica runs the code it copied (Docker's tmpfs default is noexec); nosuid, nodev stay
            tmpfs={AGENT_HOME: f"size={self.workspace_bytes},uid=1000,gid=1000,mode=0755,exec",
                   **{path: f"size={self.scratch_bytes},mode=1777,exec" for path in SCRATCH_DIRS},
                   "/run": f"size={1024**2},mode=0755",  # root's: the step gate, notices (console/trial.py)
                   **hidden_dirs},
            environment={"HOME": "/home/agent"},
            detach=True,
        )
