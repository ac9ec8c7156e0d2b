"""One small interface for a sandbox; Docker is its implementation (docker_engine.py)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, Iterator

OutputCallback = Callable[[str, bytes], None]  # (stream name "stdout"|"stderr", data)


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float


@dataclass(frozen=True)
class ProcessRow:
    """One process as the engine sees it (host pid namespace)."""

    pid: int
    ppid: int
    uid: str
    start: str
    cmd: str


@dataclass(frozen=True)
class FileChange:
    path: str
    kind: str  # "changed" | "added" | "deleted"


@dataclass
class ContainerKill:
    container_id: str
    name: str
    signal_ms: float = 0.0  # until the engine accepted SIGKILL
    confirmed_ms: float | None = None  # until the engine reported it not running
    escalated: bool = False  # host pids were SIGKILLed directly, not only through the engine
    error: str | None = None


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


class Sandbox(abc.ABC):
    id: str
    name: str
    labels: dict[str, str]

    @abc.abstractmethod
    def stream_exec(self, cmd: list[str], user: str | None = None, env: dict | None = None,
                    workdir: str | None = None) -> ExecStream: ...

    def exec(self, cmd: list[str], user: str | None = None, env: dict | None = None,
             workdir: str | None = None, on_output: OutputCallback | None = None) -> ExecResult:
        """Run to completion, streaming chunks to on_output; returns the real exit code."""
        import time

        started = time.monotonic()
        out, err = [], []
        stream = self.stream_exec(cmd, user=user, env=env, workdir=workdir)
        try:
            for name, data in stream:
                (out if name == "stdout" else err).append(data)
                if on_output:
                    on_output(name, data)
        finally:
            stream.close()
        return ExecResult(
            stream.exit_code(),
            b"".join(out).decode("utf-8", "replace"),
            b"".join(err).decode("utf-8", "replace"),
            time.monotonic() - started,
        )

    @abc.abstractmethod
    def exec_detached(self, cmd: list[str], user: str | None = None, env: dict | None = None,
                      workdir: str | None = None) -> None: ...

    @abc.abstractmethod
    def logs(self) -> Stream: ...

    @abc.abstractmethod
    def top(self) -> list[ProcessRow]: ...

    @abc.abstractmethod
    def diff(self) -> list[FileChange]: ...

    @abc.abstractmethod
    def stats(self) -> dict: ...

    @abc.abstractmethod
    def pause(self) -> None: ...

    @abc.abstractmethod
    def unpause(self) -> None: ...

    @abc.abstractmethod
    def status(self) -> str: ...

    @abc.abstractmethod
    def kill(self) -> KillReport: ...

    @abc.abstractmethod
    def remove(self) -> None: ...
