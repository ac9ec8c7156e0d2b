"""CPU, memory, pids and network of Redline sandboxes, polled from the Docker engine.

`stats(stream=False, one_shot=True)` leaves the "precpu" fields empty, so CPU % comes from two
consecutive polls of our own. The engine refreshes stats once a second, so rates above 1 Hz
mostly wait for that. The poller has its own Docker client and thread.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from collections.abc import Callable, Iterable, Iterator

from console.sandbox.spec import LABEL_SESSION, LABEL_TRIAL
from console.telemetry.worker import PeriodicWorker, TelemetryStatus, call_guarded, clamp_rate

RECORD_TYPE = "telemetry.containers"
RATE_RANGE_HZ = (0.1, 2.0)
MAX_PARALLEL_REQUESTS = 8  # below docker-py's default connection pool size (10)


@dataclass(frozen=True)
class ContainerStats:
    container_id: str
    name: str
    trial: str | None
    session: str | None
    cpu_percent: float | None  # 100 = one core busy; None on the first poll of a container
    memory_bytes: int | None  # usage without the reclaimable page cache, as `docker stats`
    memory_limit_bytes: int | None
    pids: int | None
    rx_bytes: int | None  # None: no network interface (network_mode none)
    tx_bytes: int | None


@dataclass(frozen=True)
class ContainerStatsSample:
    """Every watched container at one poll (unix time `t`)."""

    t: float
    containers: tuple[ContainerStats, ...] = field(default_factory=tuple)

    def history_rows(self) -> Iterator[tuple[tuple, dict]]:
        for stats in self.containers:
            yield ("container", stats.container_id), {
                "cpu": stats.cpu_percent, "mem": stats.memory_bytes, "pids": stats.pids,
                "rx": stats.rx_bytes, "tx": stats.tx_bytes}

    def to_record(self) -> dict:
        return {"type": RECORD_TYPE, "t": self.t,
                "containers": [asdict(stats) for stats in self.containers]}

    @classmethod
    def from_record(cls, record: dict) -> ContainerStatsSample:
        return cls(record["t"], tuple(ContainerStats(**c) for c in record["containers"]))


@dataclass
class _Watched:
    container_id: str
    name: str
    labels: dict
    previous_cpu: tuple[int, int, float] | None = None  # (container ns, system ns, read time)


def cpu_percent(stats: dict, previous: tuple[int, int, float] | None,
                now: float) -> tuple[float | None, tuple[int, int, float] | None]:
    """CPU % since `previous` (100 = one core) and the counters to keep for the next call.

    Uses the engine's system CPU counter when it has one (Linux, cgroup v1 and v2), else the
    wall-clock time between the two polls.
    """
    cpu = stats.get("cpu_stats") or {}
    usage = (cpu.get("cpu_usage") or {}).get("total_usage")
    if usage is None:
        return None, None
    current = (int(usage), int(cpu.get("system_cpu_usage") or 0), now)
    if previous is None:
        return None, current
    used = current[0] - previous[0]
    system = current[1] - previous[1]
    if used < 0:  # counters restarted (container restarted)
        return None, current
    if current[1] and previous[1] and system > 0:
        cpus = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage")
                                             or ()) or os.cpu_count() or 1
        return used / system * cpus * 100.0, current
    wall_ns = (current[2] - previous[2]) * 1e9
    return (used / wall_ns * 100.0 if wall_ns > 0 else None), current


def memory_bytes(stats: dict) -> tuple[int | None, int | None]:
    """(usage without inactive page cache, limit), like `docker stats` on cgroup v1 and v2."""
    memory = stats.get("memory_stats") or {}
    usage = memory.get("usage")
    if usage is None:
        return None, memory.get("limit")
    detail = memory.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))  # v1, v2
    return (usage - cache if cache < usage else usage), memory.get("limit")


def network_bytes(stats: dict) -> tuple[int | None, int | None]:
    networks = stats.get("networks")
    if not networks:
        return None, None
    return (sum(n.get("rx_bytes", 0) for n in networks.values()),
            sum(n.get("tx_bytes", 0) for n in networks.values()))


def _one_shot_stats(api, container_id: str) -> dict | None:
    """The engine's stats of a container; None when it is gone or no longer running."""
    import docker.errors

    try:
        stats = api.stats(container_id, stream=False, one_shot=True)
    except docker.errors.APIError as exc:
        if exc.status_code in (404, 409):  # removed, or being removed, meanwhile
            return None
        raise
    except ValueError:  # an empty body: the container died during the call
        return None
    return None if str(stats.get("read", "")).startswith("0001-") else stats  # not running


class ContainerStatsPoller(PeriodicWorker):
    """Polls the stats of a session's sandboxes (label redline.session=<id>) and/or given ones.

    rate_hz: clamped to 0.1..2 Hz. history: a TieredHistory fed with every sample (optional).
    on_stats(ContainerStatsSample), on_status(TelemetryStatus): called on the poller thread.
    client_factory: makes the poller's own Docker client (default console.sandbox.client.new_client).
    Containers that vanish are dropped quietly.
    """

    thread_name = "redline-container-stats"

    def __init__(self, session_id: str | None = None, container_ids: Iterable[str] = (),
                 rate_hz: float = 1.0, history=None,
                 on_stats: Callable[[ContainerStatsSample], None] | None = None,
                 on_status: Callable[[TelemetryStatus], None] | None = None,
                 retry_interval_s: float = 30.0, client_factory: Callable | None = None):
        super().__init__(clamp_rate(rate_hz, *RATE_RANGE_HZ), retry_interval_s, on_status)
        self.session_id = session_id
        self._explicit: set[str] = set(container_ids)
        self._explicit_lock = threading.Lock()
        self._client_factory = client_factory
        self._client = None
        self._pool: ThreadPoolExecutor | None = None
        self._watched: dict[str, _Watched] = {}
        self._history = history
        self._on_stats = on_stats
        self._latest = ContainerStatsSample(0.0)
        self._latest_lock = threading.Lock()

    def watch(self, container_id: str) -> None:
        with self._explicit_lock:
            self._explicit.add(container_id)

    def unwatch(self, container_id: str) -> None:
        with self._explicit_lock:
            self._explicit.discard(container_id)

    def latest(self) -> ContainerStatsSample:
        with self._latest_lock:
            return self._latest

    # -- worker thread -------------------------------------------------------------------------

    def _connect(self) -> None:
        if self._client_factory is None:
            from console.sandbox.client import new_client

            self._client_factory = new_client
        self._client = self._client_factory()
        self._client.ping()
        self._pool = ThreadPoolExecutor(MAX_PARALLEL_REQUESTS, thread_name_prefix=self.thread_name)
        self._set_status(True, f"polling container stats at {self.rate_hz:g} Hz")

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._watched.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if client is not None:
            client.close()

    def _describe(self, exc: Exception) -> str:
        return f"Docker engine unreachable: {exc}"

    def _poll(self) -> None:
        api = self._client.api
        targets = self._targets(api)
        for gone in self._watched.keys() - targets.keys():
            del self._watched[gone]
        # The engine answers a stats call at its next collection tick (once a second): ask for
        # all containers at once so that one poll waits for one tick, not one per container.
        pending = {cid: self._pool.submit(_one_shot_stats, api, cid) for cid in targets}
        results = []
        for container_id, future in pending.items():
            stats = future.result()
            if stats is None:
                self._watched.pop(container_id, None)
            else:
                results.append(self._measure(targets[container_id], stats))
        sample = ContainerStatsSample(time.time(), tuple(results))
        with self._latest_lock:
            self._latest = sample
        if self._history is not None:
            self._history.add(sample)
        call_guarded(self._on_stats, sample)

    def _targets(self, api) -> dict[str, _Watched]:
        """The containers to poll now, creating state for new ones."""
        import docker.errors

        found = {}
        if self.session_id is not None:
            for entry in api.containers(filters={"label": f"{LABEL_SESSION}={self.session_id}"}):
                found[entry["Id"]] = self._watched.get(entry["Id"]) or _Watched(
                    entry["Id"], (entry.get("Names") or ["?"])[0].lstrip("/"),
                    entry.get("Labels") or {})
        with self._explicit_lock:
            explicit = list(self._explicit)
        for container_id in explicit:
            watched = self._watched.get(container_id) or found.get(container_id)
            if watched is None:
                try:
                    attrs = api.inspect_container(container_id)
                except docker.errors.NotFound:
                    self.unwatch(container_id)
                    continue
                watched = _Watched(attrs["Id"], attrs.get("Name", "?").lstrip("/"),
                                   (attrs.get("Config") or {}).get("Labels") or {})
                if watched.container_id != container_id:  # a name or short id: keep the full id
                    self.unwatch(container_id)
                    self.watch(watched.container_id)
            found[watched.container_id] = watched
        self._watched.update(found)
        return found

    def _measure(self, watched: _Watched, stats: dict) -> ContainerStats:
        cpu, watched.previous_cpu = cpu_percent(stats, watched.previous_cpu, time.monotonic())
        memory, limit = memory_bytes(stats)
        rx, tx = network_bytes(stats)
        return ContainerStats(
            container_id=watched.container_id, name=watched.name,
            trial=watched.labels.get(LABEL_TRIAL), session=watched.labels.get(LABEL_SESSION),
            cpu_percent=cpu, memory_bytes=memory, memory_limit_bytes=limit,
            pids=(stats.get("pids_stats") or {}).get("current"), rx_bytes=rx, tx_bytes=tx)
