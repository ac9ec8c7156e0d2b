"""Docker as the sandbox implementation.

One shared API client serves short calls; every long-lived stream (exec output, logs) gets a client
of its own so that closing it from another thread never disturbs anyone else.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable

import docker
import docker.errors
from docker.utils.socket import frames_iter

from console.sandbox import client, guest, host
from console.sandbox.base import (
    ExecResult,
    ExecStream,
    KillReport,
    ProcessRow,
    Sandbox,
    Stream,
)
from console.sandbox.errors import (
    EngineUnavailable,
    GpuRuntimeMissing,
    ImageMissing,
    InvalidSpec,
    IsolationMissing,
    SandboxError,
)
from console.sandbox.killswitch import KillSwitch
from console.sandbox.spec import (AGENT_USER, ISOLATION_RUNTIMES, LABEL_DEADLINE, LABEL_ISOLATION, LABEL_SESSION,
                                  LABEL_TRIAL, ContainmentSpec)

log = logging.getLogger("redline.sandbox")
_STREAM_NAMES = {1: "stdout", 2: "stderr"}


def _shutdown(sock) -> None:
    raw = getattr(sock, "_sock", sock)
    try:
        raw.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class DockerExecStream(ExecStream):
    """Output of one `docker exec`, demultiplexed; close() from any thread stops reading."""

    def __init__(self, sandbox: DockerSandbox, api: docker.APIClient, exec_id: str, sock, marker: str | None):
        self._sandbox, self._engine, self._api, self.exec_id, self._sock = sandbox, sandbox.engine, api, exec_id, sock
        self._marker = marker  # gVisor: the exec's mark on its guest process (console/sandbox/guest.py)
        self._guest_pid: int | None = None
        self._closed = threading.Event()

    def __iter__(self):
        try:
            for stream_id, data in frames_iter(self._sock, tty=False):
                if self._closed.is_set():
                    return
                yield _STREAM_NAMES.get(stream_id, "stdout"), data
        except (OSError, ValueError):
            if not self._closed.is_set():
                raise

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            _shutdown(self._sock)
            self._api.close()

    def exit_code(self) -> int | None:
        info = self._engine.api.exec_inspect(self.exec_id)
        return None if info.get("Running") else info.get("ExitCode")

    def pid(self) -> int | None:
        """Pid of the exec'd process where the sandbox's observer sees it: on the host under runc, in
        the guest under gVisor (whose host pid is only runsc's exec client). None once it ended."""
        if self._marker is None:
            return self._engine.api.exec_inspect(self.exec_id).get("Pid") or None
        deadline = time.monotonic() + EXEC_START_TIMEOUT_S
        while self._guest_pid is None and time.monotonic() < deadline:  # runsc may not have made it yet
            self._guest_pid = guest.exec_pid(self._sandbox, self._marker)
            if self._guest_pid is None and self.exit_code() is not None:
                break  # it ended: there is no process to find
        return self._guest_pid

    def kill(self) -> None:
        info = self._engine.api.exec_inspect(self.exec_id)
        if not info.get("Running"):
            return
        if self._marker is not None:  # killing runsc's exec client would leave the guest process
            guest.kill_exec(self._sandbox, self._marker)
        elif info.get("Pid"):
            host.kill_tree(info["Pid"])


class ExecChannel:
    """Lines to and from one exec's stdin and stdout (a probe that answers requests)."""

    def __init__(self, api: docker.APIClient, sock):
        self._api, self._sock = api, sock
        self._raw = getattr(sock, "_sock", sock)
        self._frames = frames_iter(sock, tty=False)
        self._buffer = b""

    def send(self, line: bytes) -> None:
        self._raw.sendall(line)

    def readline(self, timeout: float) -> bytes:
        """The next line of stdout (stderr is dropped); b"" when the exec ended or said nothing in time."""
        self._raw.settimeout(timeout)
        try:
            while b"\n" not in self._buffer:
                stream_id, data = next(self._frames)
                if stream_id == 1:
                    self._buffer += data
        except (StopIteration, OSError, ValueError):
            return b""
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line + b"\n"

    def close(self) -> None:
        _shutdown(self._sock)
        self._api.close()


class DockerLogStream(Stream):
    def __init__(self, api: docker.APIClient, stream):
        self._api, self._stream = api, stream

    def __iter__(self):
        for data in self._stream:
            yield "log", data

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._api.close()


EXEC_START_TIMEOUT_S = 10


class DockerSandbox(Sandbox):
    def __init__(self, engine: DockerEngine, container_id: str, name: str, labels: dict):
        self.engine, self.id, self.name, self.labels = engine, container_id, name, labels
        # dockerd answers exec_start before runc has started the process. A pause in between freezes
        # runc's set-up inside the container's cgroup and wedges the container (reproduced: inspect,
        # unpause and rm hang). So a pause waits until every exec it could meet has started.
        self._exec_or_pause = threading.Lock()

    @property
    def trial_id(self) -> str:
        return self.labels.get(LABEL_TRIAL, "")

    @property
    def session_id(self) -> str:
        return self.labels.get(LABEL_SESSION, "")

    @property
    def isolation(self) -> str:
        return self.labels.get(LABEL_ISOLATION, "runc")

    @property
    def gvisor(self) -> bool:
        return self.isolation == "gvisor"

    def _start_exec(self, api, cmd, user, env, workdir, privileged=False, stdin=False, **start):
        """Create and start an exec; return (id, what exec_start returned) once its process runs."""
        if privileged and not self.gvisor:  # runc: capabilities over the host's kernel, never
            raise SandboxError("a privileged exec is only made in a gVisor sandbox")
        with self._exec_or_pause:
            exec_id = api.exec_create(self.id, cmd, stdout=True, stderr=True, stdin=stdin, user=user or AGENT_USER,
                                      environment=env, workdir=workdir, privileged=privileged)["Id"]
            started = api.exec_start(exec_id, **start)
            deadline = time.monotonic() + EXEC_START_TIMEOUT_S
            while time.monotonic() < deadline:
                state = api.exec_inspect(exec_id)
                if state.get("Pid") or state.get("ExitCode") is not None:
                    break
                time.sleep(0.002)
            return exec_id, started

    def stream_exec(self, cmd, user=None, env=None, workdir=None, privileged=False) -> DockerExecStream:
        marker = uuid.uuid4().hex if self.gvisor else None
        if marker:
            env = {**(env or {}), guest.EXEC_MARKER: marker}
        api, exec_id, sock = self._open_exec(cmd, user, env, workdir, privileged=privileged)
        return DockerExecStream(self, api, exec_id, sock, marker)

    def _open_exec(self, cmd, user, env, workdir, **options):
        """An exec on a client of its own (a long-lived socket): (client, exec id, socket)."""
        api = self.engine.new_api()
        try:
            exec_id, sock = self._start_exec(api, cmd, user, env, workdir, socket=True, **options)
        except docker.errors.APIError as exc:
            api.close()
            raise SandboxError(f"exec in {self.name} failed: {exc.explanation or exc}") from None
        return api, exec_id, sock

    def root_exec(self, cmd, timeout: float) -> ExecResult:
        """Run an observer's probe as root with every capability, inside a gVisor guest only: there
        the capabilities are the user-space kernel's, and this is the only way to see its processes.
        Under runc the host observes from outside instead, and no privileged exec is ever made."""
        return self.exec(cmd, user="0", timeout=timeout, privileged=True)

    def root_channel(self, cmd) -> ExecChannel:
        """A long-lived root probe in a gVisor guest (see root_exec), spoken to through its stdin."""
        api, _, sock = self._open_exec(cmd, "0", None, "/", privileged=True, stdin=True)
        return ExecChannel(api, sock)

    def exec_detached(self, cmd, user=None, env=None, workdir=None) -> None:
        self._start_exec(self.engine.api, cmd, user, env, workdir, detach=True)

    def logs(self) -> DockerLogStream:
        api = self.engine.new_api()
        stream = api.logs(self.id, stream=True, follow=True, stdout=True, stderr=True)
        return DockerLogStream(api, stream)

    def top(self) -> list[ProcessRow]:
        """Process table: from the engine (host pids) under runc, from inside under gVisor, where
        `docker top` lists the host's processes instead of the sandbox's."""
        if self.gvisor:
            return [ProcessRow(p.pid, p.ppid, p.uid, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(p.started)),
                               p.cmd) for p in guest.processes(self)]
        now = time.time()
        try:
            table = self.engine.api.top(self.id, ps_args="-o pid,ppid,uid,etimes,args")
        except docker.errors.APIError as exc:
            raise SandboxError(f"top of {self.name} failed: {exc.explanation or exc}") from None
        rows = []
        for pid, ppid, uid, elapsed, cmd in table.get("Processes") or []:
            started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - int(elapsed)))
            rows.append(ProcessRow(int(pid), int(ppid), uid, started, cmd))
        return rows

    def stats(self) -> dict:
        return self.engine.api.stats(self.id, stream=False, one_shot=True)

    def exec_barrier(self):
        """Held, no exec is between exec_start and its process running: freezing then is safe."""
        return self._exec_or_pause

    def pause(self) -> None:
        with self.exec_barrier():
            self.engine.api.pause(self.id)

    def unpause(self) -> None:
        self.engine.api.unpause(self.id)

    def status(self) -> str:
        return self.state()["Status"]

    def state(self) -> dict:
        """The engine's State of the container (Status, Running, Paused, ExitCode, OOMKilled, ...)."""
        try:
            return self.engine.api.inspect_container(self.id)["State"]
        except docker.errors.NotFound:
            return {"Status": "removed", "Running": False}

    def host_pid(self) -> int | None:
        return self.engine.api.inspect_container(self.id)["State"].get("Pid") or None

    def kill(self) -> KillReport:
        return KillSwitch(self.engine.base_url).kill_ids([self.id])

    def remove(self) -> None:
        """Force-remove; first thaw what a judge that died mid-challenge left frozen (cgroup v1 tasks
        cannot die while frozen, and the engine then refuses the removal)."""
        host.thaw_all(self.id)
        try:
            self.engine.api.remove_container(self.id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        self.engine.remove_volumes({LABEL_TRIAL: self.trial_id})


class DockerEngine:
    """Connection to a Docker engine; creates and finds Redline sandboxes."""

    def __init__(self, base_url: str | None = None, timeout: int = 60):
        self.base_url, self.timeout = base_url, timeout
        self._client: docker.DockerClient | None = None
        self._resources: tuple[int, int] | None = None
        self._fidelity: dict = {}  # (level, image) -> Check

    def connect(self) -> DockerEngine:
        try:
            self._client = self.new_client()
            self._client.api.ping()
        except docker.errors.DockerException as exc:
            self._client = None
            raise EngineUnavailable.of(exc, client.engine_url(self.base_url)) from None
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self.connect()
        return self._client

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def new_client(self) -> docker.DockerClient:
        return client.new_client(self.base_url, self.timeout)

    def new_api(self) -> docker.APIClient:
        """A client of its own, for a long-lived stream or a path that must not queue."""
        return self.new_client().api

    def info(self) -> dict:
        return self.api.info()

    def socket_path(self) -> str | None:
        """The unix socket this engine is reached on (None for tcp://)."""
        url = client.engine_url(self.base_url)
        return url[len("unix://"):] if url.startswith("unix://") else None

    def resources(self) -> tuple[int, int]:
        """(memory in bytes, CPUs) of the engine's host: the most a sandbox can be given."""
        if self._resources is None:
            info = self.info()
            self._resources = (int(info["MemTotal"]), int(info["NCPU"]))
        return self._resources

    def isolation_levels(self) -> list[str]:
        """The isolation levels this engine can run, weakest first (a level needs its runtime registered)."""
        runtimes = self.info().get("Runtimes") or {}
        return [level for level, runtime in ISOLATION_RUNTIMES.items() if runtime in runtimes]

    def default_isolation(self, image: str, gpus: tuple[int, ...] = ()) -> str:
        """The strongest level this engine offers for a sandbox of `image` with these GPUs: gVisor has
        no GPUs here, and a level under which the agent would not see the system it sees under runc
        (`fidelity`) is never the default; it can still be asked for."""
        if gpus:
            return "runc"
        return next((level for level in reversed(self.isolation_levels())
                     if level == "runc" or self.fidelity(level, image).ok), "runc")

    def fidelity(self, level: str, image: str):
        """selftest.fidelity_check of `image` at `level` (its shell tools, a child subreaper), checked
        once per engine, image and level: it starts a sandbox."""
        from console.sandbox.selftest import fidelity_check

        if (level, image) not in self._fidelity:
            self._fidelity[(level, image)] = fidelity_check(self, image, level)
        return self._fidelity[(level, image)]

    def image_exists(self, ref: str) -> bool:
        try:
            self.api.inspect_image(ref)
            return True
        except docker.errors.ImageNotFound:
            return False

    def create(self, spec: ContainmentSpec, start: bool = True, gpu_count: int | None = None,
               logical_image: str | None = None) -> DockerSandbox:
        """Create (and start) a sandbox; every engine refusal becomes a clear SandboxError."""
        memory, cpus = self.resources()
        spec.validate(gpu_count=gpu_count, engine_memory=memory, engine_cpus=cpus, engine_socket=self.socket_path())
        if spec.isolation not in self.isolation_levels():
            raise IsolationMissing(spec.isolation, ISOLATION_RUNTIMES[spec.isolation])
        if not self.image_exists(spec.image):
            raise ImageMissing(spec.image, logical_image)
        kwargs = spec.docker_kwargs()
        name = f"redline-{spec.trial_id}"
        try:
            container = self.client.containers.create(name=name, **kwargs)
            if start:
                container.start()
        except docker.errors.APIError as exc:
            self._cleanup_failed(name)
            raise self._explain(exc, spec) from None
        return DockerSandbox(self, container.id, name, spec.labels)

    def _cleanup_failed(self, name: str) -> None:
        try:
            self.api.remove_container(name, force=True, v=True)
        except docker.errors.APIError:
            pass

    @staticmethod
    def _explain(exc: docker.errors.APIError, spec: ContainmentSpec) -> SandboxError:
        text = str(exc.explanation or exc)
        if "could not select device driver" in text or "nvidia" in text.lower():
            return GpuRuntimeMissing(text)
        if "Minimum memory limit" in text or "invalid" in text.lower() and "limit" in text.lower():
            return InvalidSpec(f"the engine rejected a limit: {text}")
        if "No such image" in text:
            return ImageMissing(spec.image)
        return SandboxError(f"could not create the sandbox: {text}")

    def sandboxes(self, session_id: str | None = None, trial_id: str | None = None) -> list[DockerSandbox]:
        """Every Redline container (running, paused or stopped), optionally of one session."""
        label = [LABEL_SESSION if session_id is None else f"{LABEL_SESSION}={session_id}"]
        if trial_id:
            label.append(f"{LABEL_TRIAL}={trial_id}")
        found = self.api.containers(all=True, filters={"label": label})
        return [
            DockerSandbox(self, c["Id"], c["Names"][0].lstrip("/"), c.get("Labels") or {})
            for c in found
        ]

    def remove_volumes(self, labels: dict[str, str]) -> int:
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        removed = 0
        for volume in self.api.volumes(filters=filters).get("Volumes") or []:
            try:
                self.api.remove_volume(volume["Name"], force=True)
                removed += 1
            except docker.errors.APIError:
                pass
        return removed

    def gc(self, is_leftover: Callable[[dict], bool], now: float | None = None) -> int:
        """Remove sandboxes (and volumes) whose labels `is_leftover` condemns or whose deadline passed."""
        now = time.time() if now is None else now

        def doomed(labels: dict) -> bool:
            deadline = float(labels.get(LABEL_DEADLINE) or 0)
            return bool(deadline and deadline < now) or is_leftover(labels)

        boxes = [box for box in self.sandboxes() if doomed(box.labels)]
        for box in boxes:
            try:
                box.remove()
            except docker.errors.APIError as exc:  # one stuck container must not stop a session's start
                log.warning("could not remove leftover sandbox %s: %s", box.name, exc.explanation or exc)
        for volume in self.api.volumes(filters={"label": [LABEL_SESSION]}).get("Volumes") or []:
            if doomed(volume.get("Labels") or {}):
                try:
                    self.api.remove_volume(volume["Name"], force=True)
                except docker.errors.APIError:
                    pass
        return len(boxes)
