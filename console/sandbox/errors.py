"""Sandbox failures, each with a message that says what to do about it."""

from console.errors import RedlineError, UsageError


class SandboxError(RedlineError):
    """Something the engine refused or could not do."""


class EngineUnavailable(UsageError, SandboxError):
    """The engine at an address does not answer: the operator's to fix (exit 2), named with its address."""

    def __init__(self, detail: str, url: str | None = None):
        where = f" at {url}" if url else ""
        super().__init__(
            f"Docker engine{where} not reachable ({detail}). Start it (as root: "
            "`dockerd --bridge=none --iptables=false &`, or `python3 -m console.bootstrap run` "
            "which installs and starts it) or set DOCKER_HOST."
        )

    @classmethod
    def of(cls, exc: BaseException, url: str | None = None) -> "EngineUnavailable":
        """From whatever the Docker library raised, in words: the socket is missing, refused, ..."""
        text = str(exc)
        for needle, words in (("No such file", "no socket there"), ("Connection refused", "connection refused"),
                              ("Permission denied", "permission denied on its socket"),
                              ("timed out", "no answer in time"), ("Name or service not known", "unknown host")):
            if needle in text:
                return cls(words, url)
        return cls(text.split("(")[0].strip() or type(exc).__name__, url)


class ImageMissing(SandboxError):
    def __init__(self, image: str, logical: str | None = None):
        how = f"`redline images build {logical}`" if logical else "`redline images build`"
        super().__init__(f"Sandbox image {image!r} is not on this engine. Build it with {how}.")


class GpuRuntimeMissing(SandboxError):
    def __init__(self, detail: str):
        super().__init__(
            "This Docker engine cannot give containers GPUs: the NVIDIA container runtime is "
            "missing. Install the NVIDIA Container Toolkit and restart dockerd, or run without "
            f"GPUs. (engine said: {detail})"
        )


GVISOR_DAEMON_JSON = '{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}}'


class IsolationMissing(UsageError, SandboxError):
    def __init__(self, level: str, runtime: str):
        super().__init__(
            f"isolation {level!r}: this Docker engine has no {runtime!r} runtime. Install it (Debian: "
            f"`apt install {runtime}`), add {GVISOR_DAEMON_JSON} to the engine's daemon.json and restart "
            "dockerd, or choose --isolation runc; `redline doctor` lists the levels the engine has.")


class InvalidSpec(UsageError, SandboxError):
    """A containment setting out of range (limits, GPU ids)."""


class ExecTimeout(SandboxError):
    """A command in the sandbox ran past its time limit and was killed."""


class ExecOutputLimit(SandboxError):
    """A command in the sandbox wrote more than its output limit and was killed."""


def describe(exc: BaseException) -> str:
    """One line for an engine failure, whatever library raised it."""
    text = str(getattr(exc, "explanation", None) or exc)
    if "Connection refused" in text or "No such file or directory" in text and "sock" in text:
        return "the Docker engine does not answer (connection refused)"
    if "Connection aborted" in text or "RemoteDisconnected" in text:
        return "the Docker engine dropped the connection"
    if "Read timed out" in text:
        return "the Docker engine did not answer in time"
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
