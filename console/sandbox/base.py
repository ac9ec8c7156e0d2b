"""One small interface for a sandbox; Docker is its implementation (docker_engine.py)."""

from __future__ import annotations

import abc
import contextlib
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator

from console.sandbox.errors import ExecOutputLimit, ExecTimeout

EXEC_TIMEOUT_S = 120.0  # a default, not a promise: probes pass their own
EXEC_MAX_OUTPUT = 8 << 20  # bytes of stdout + stderr that exec() keeps before it gives up

OutputCallback = Callable[[str, bytes], None]  # (stream name "stdout"|"stderr", data)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class ProcessRow:
    """One process as the engine sees it (host pids; guest pids under gVisor)."""

    pid: int
    ppid: int
    uid: str
    start: str
    cmd: str


@dataclass
class ContainerKill:
    container_id: str
    name: str
    signal_ms: float = 0.0  # until the engine accepted SIGKILL
    confirmed_ms: float | None = None  # until the engine reported it not running
    escalated: bool = False  # host pids were SIGKILLed directly, not only through the engine
    error: str | None = None
    trial_id: str = ""  # from the container's label, when the kill switch listed it


@dataclass
class KillReport:
    containers: list[ContainerKill] = field(default_factory=list)
    total_ms: float = 0.0

    @property
    def count(self) -> int:
        return len(self.containers)

    @property
    def all_confirmed(self) -> bool:
        return all(c.confirmed_ms is not None for c in self.containers)


class Stream(abc.ABC):
    """A long-lived output stream that another thread may cancel with close()."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[tuple[str, bytes]]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class ExecStream(Stream):
    @abc.abstractmethod
    def exit_code(self) -> int | None:
        """The real exit code once the process ended (None while running)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGKILL the exec'd process and its descendants (closing the stream alone leaves them)."""


class Sandbox(abc.ABC):
    id: str
    name: str
    labels: dict[str, str]

    isolation: str  # "runc" | "gvisor" (console/sandbox/spec.py)

    @abc.abstractmethod
    def stream_exec(self, cmd: list[str], user: str | None = None, env: dict | None = None,
                    workdir: str | None = None, privileged: bool = False) -> ExecStream: ...

    def exec(self, cmd: list[str], user: str | None = None, env: dict | None = None,
             workdir: str | None = None, on_output: OutputCallback | None = None,
             timeout: float = EXEC_TIMEOUT_S, max_output: int = EXEC_MAX_OUTPUT,
             privileged: bool = False) -> ExecResult:
        """Run to completion, streaming chunks to on_output; returns the real exit code. Past `timeout`
        seconds (ExecTimeout) or `max_output` bytes of output (ExecOutputLimit) the process and its
        descendants are killed first, so a stalled or flooding command never holds the caller."""
        started = time.monotonic()
        out, err, size = [], [], 0
        stream = self.stream_exec(cmd, user=user, env=env, workdir=workdir, privileged=privileged)
        expired = threading.Event()
        timer = threading.Timer(timeout, lambda: (expired.set(), stream.close()))
        timer.daemon = True
        timer.start()
        try:
            for name, data in stream:
                size += len(data)
                if size > max_output:
                    stream.close()  # first: output nobody drains can hold up the engine's other execs
                    stream.kill()
                    raise ExecOutputLimit(f"{cmd[0]}: more than {max_output} bytes of output; killed")
                (out if name == "stdout" else err).append(data)
                if on_output:
                    on_output(name, data)
        finally:
            timer.cancel()
            stream.close()
        code = stream.exit_code()
        if expired.is_set() and code is None:
            stream.kill()
            raise ExecTimeout(f"{cmd[0]}: still running after {timeout:g} s; killed")
        return ExecResult(code, b"".join(out).decode("utf-8", "replace"), b"".join(err).decode("utf-8", "replace"),
                          time.monotonic() - started)

    def exec_barrier(self):
        """A context in which no exec of this sandbox is half-started (see DockerSandbox)."""
        return contextlib.nullcontext()

    @abc.abstractmethod
    def root_exec(self, cmd: list[str], timeout: float) -> ExecResult:
        """An observer's probe as root with the guest kernel's capabilities; gVisor sandboxes only."""

    @abc.abstractmethod
    def root_channel(self, cmd: list[str]):
        """A long-lived root probe (gVisor sandboxes only), spoken to line by line: send(bytes),
        readline(timeout) -> bytes (b"" when it ended or said nothing in time), close()."""

    @abc.abstractmethod
    def exec_detached(self, cmd: list[str], user: str | None = None, env: dict | None = None,
                      workdir: str | None = None) -> None: ...

    @abc.abstractmethod
    def logs(self) -> Stream: ...

    @abc.abstractmethod
    def top(self) -> list[ProcessRow]: ...

    @abc.abstractmethod
    def stats(self) -> dict: ...

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def unpause(self) -> None: ...

    @abc.abstractmethod
    def status(self) -> str: ...

    @abc.abstractmethod
    def state(self) -> dict:
        """Status, Running, Paused, ExitCode, OOMKilled (a "removed" Status once it is gone)."""

    @abc.abstractmethod
    def kill(self) -> KillReport: ...

    @abc.abstractmethod
    def remove(self) -> None: ...
