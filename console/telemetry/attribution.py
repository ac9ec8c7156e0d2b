"""Who owns a host pid: the host, a Redline sandbox, and which instance inside it.

NVML reports host pids. A pid's `/proc/<pid>/cgroup` names its Docker container; the container's
labels name the trial and session; the TrialRunner tells which host pids started each instance
(`set_instance_pids`), and a process belongs to an instance when that pid is the process itself
or one of its ancestors inside the container. Any other process in a Redline sandbox is a
*candidate* (a replica, or something the agent started); processes outside Redline sandboxes are
*host*; pids we cannot see (gone, or another pid namespace) are *unknown*.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from os import PathLike
from collections.abc import Iterable, Mapping

from console.errors import RedlineError
from console.sandbox.spec import LABEL_SESSION, LABEL_TRIAL

log = logging.getLogger(__name__)

KIND_INSTANCE = "instance"  # a known instance of a trial (e.g. "original")
KIND_CANDIDATE = "candidate"  # in a Redline sandbox, not (yet) attributed to an instance
KIND_HOST = "host"  # outside any Redline sandbox (host, or a container Redline does not own)
KIND_UNKNOWN = "unknown"  # not visible in /proc, or the engine could not be asked

MAX_ANCESTRY = 64  # parent links followed from a process towards its instance's first pid

# cgroup v1 ".../docker/<id>", cgroup v2 systemd ".../docker-<id>.scope"; nested: the last wins.
_CONTAINER_IN_CGROUP = re.compile(
    r"(?:^|/)docker(?:/([0-9a-f]{64})|-([0-9a-f]{64})\.scope)(?=/|$)")


@dataclass(frozen=True)
class Attribution:
    kind: str
    container_id: str | None = None
    trial: str | None = None
    session: str | None = None
    instance: str | None = None
    container_pid: int | None = None  # the pid inside the container's pid namespace

    @property
    def owner(self) -> str:
        """The label a view shows: the instance id, else the kind ("candidate", "host", ...)."""
        return self.instance or self.kind


HOST = Attribution(KIND_HOST)
UNKNOWN = Attribution(KIND_UNKNOWN)


def container_id_from_cgroup(text: str) -> str | None:
    """The (innermost) Docker container id in the text of a /proc/<pid>/cgroup file."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        found = _CONTAINER_IN_CGROUP.findall(path)
        if found:
            v1_id, v2_id = found[-1]
            return v1_id or v2_id
    return None


@dataclass(frozen=True)
class _Container:
    labels: Mapping[str, str]
    init_pid: int | None

    @property
    def is_redline(self) -> bool:
        return LABEL_SESSION in self.labels or LABEL_TRIAL in self.labels


class _EngineUnreachable(Exception):
    pass


class PidAttributor:
    """Maps host pids to Attribution; container labels are cached per container id.

    `attribute(pids)` is meant to be called once per sample with every pid seen: results are
    cached while a pid keeps appearing, so steady-state sampling reads no files.
    `docker_client`: a docker.DockerClient; None makes one (console.sandbox.client) on first need.
    """

    def __init__(self, docker_client=None, proc_root: str | PathLike = "/proc",
                 retry_interval_s: float = 30.0):
        self._proc = str(proc_root)
        self._client = docker_client
        self._owns_client = docker_client is None
        self._client_retry_at = 0.0
        self._retry_interval_s = retry_interval_s
        self._containers: dict[str, _Container] = {}
        self._instance_pids: dict[str, dict[int, str]] = {}
        self._cache: dict[int, Attribution] = {}
        self._lock = threading.RLock()

    def set_instance_pids(self, container_id: str, pids: Mapping[int, str]) -> None:
        """Declare which host pids started which instance in a container (replaces earlier ones)."""
        starters = {int(pid): str(i) for pid, i in pids.items()}
        with self._lock:
            if self._instance_pids.get(container_id) != starters:  # the judge repeats itself every look
                self._instance_pids[container_id] = starters
                self._drop_cached(container_id)

    def forget_container(self, container_id: str) -> None:
        """Drop everything known about a removed container."""
        with self._lock:
            self._instance_pids.pop(container_id, None)
            self._containers.pop(container_id, None)
            self._drop_cached(container_id)

    def _drop_cached(self, container_id: str) -> None:
        for pid in [p for p, a in self._cache.items() if a.container_id == container_id]:
            del self._cache[pid]

    def attribute(self, pids: Iterable[int]) -> dict[int, Attribution]:
        """Attribution of each pid; pids absent from this call are forgotten (pids get reused)."""
        with self._lock:
            wanted = set(pids)
            for pid in self._cache.keys() - wanted:
                del self._cache[pid]
            result = {}
            for pid in wanted:
                cached = self._cache.get(pid)
                if cached is None:
                    cached, reliable = self._resolve(pid)
                    if reliable:
                        self._cache[pid] = cached
                result[pid] = cached
            return result

    def close(self) -> None:
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
            self._client = None

    def _resolve(self, pid: int) -> tuple[Attribution, bool]:
        """(attribution, whether it may be cached while the pid lives)."""
        cgroup = self._read(pid, "cgroup")
        if cgroup is None:  # gone, or in a pid namespace we cannot see: stays so while it lives
            return UNKNOWN, True
        container_id = container_id_from_cgroup(cgroup)
        if container_id is None:
            return HOST, True
        try:
            container = self._container(container_id)
        except _EngineUnreachable:
            return Attribution(KIND_UNKNOWN, container_id=container_id), False
        if not container.is_redline:
            return Attribution(KIND_HOST, container_id=container_id), True
        instance = self._instance_of(pid, container_id, container.init_pid)
        return Attribution(
            KIND_INSTANCE if instance else KIND_CANDIDATE,
            container_id=container_id,
            trial=container.labels.get(LABEL_TRIAL),
            session=container.labels.get(LABEL_SESSION),
            instance=instance,
            container_pid=self._namespace_pid(pid),
        ), True

    def _instance_of(self, pid: int, container_id: str, init_pid: int | None) -> str | None:
        starters = self._instance_pids.get(container_id)
        if not starters:
            return None
        current: int | None = pid
        for _ in range(MAX_ANCESTRY):
            if current in starters:
                return starters[current]
            if current is None or current <= 1 or current == init_pid:
                return None
            current = self._parent(current)
        return None

    def _container(self, container_id: str) -> _Container:
        known = self._containers.get(container_id)
        if known is not None:
            return known
        client = self._docker()
        if client is None:
            raise _EngineUnreachable()
        import docker.errors

        try:
            attrs = client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            known = _Container({}, None)  # removed meanwhile: nothing to attribute it to
        except (docker.errors.DockerException, OSError) as exc:
            log.debug("inspect %s failed: %s", container_id[:12], exc)
            raise _EngineUnreachable() from exc
        else:
            known = _Container(dict((attrs.get("Config") or {}).get("Labels") or {}),
                               (attrs.get("State") or {}).get("Pid") or None)
        self._containers[container_id] = known
        return known

    def _docker(self):
        if self._client is None and time.monotonic() >= self._client_retry_at:
            import docker

            from console.sandbox.client import new_client

            try:
                self._client = new_client()
            except (docker.errors.DockerException, OSError, RedlineError) as exc:
                log.debug("Docker engine unreachable: %s", exc)
                self._client_retry_at = time.monotonic() + self._retry_interval_s
        return self._client

    def _read(self, pid: int, name: str) -> str | None:
        try:
            with open(f"{self._proc}/{pid}/{name}") as file:
                return file.read()
        except OSError:
            return None

    def _parent(self, pid: int) -> int | None:
        stat = self._read(pid, "stat")
        if stat is None:
            return None
        # "pid (comm) state ppid ...": comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 1:].split()
        return int(fields[1]) if len(fields) > 1 else None

    def _namespace_pid(self, pid: int) -> int | None:
        status = self._read(pid, "status")
        for line in (status or "").splitlines():
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
        return None
