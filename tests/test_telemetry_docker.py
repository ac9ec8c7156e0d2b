"""Telemetry against real sandbox containers: GPU pid attribution and container stats."""

import os
import queue
import threading
import time
import uuid

import docker
import pytest

from fake_nvml import FakeDevice, FakeNvml, FakeProcess

from console.sandbox.images import image_ref
from console.telemetry import ContainerStatsPoller, GpuSampler, PidAttributor


@pytest.fixture(scope="module")
def docker_client():
    client = docker.from_env()  # no engine is a failure, never a skip
    yield client
    client.close()


@pytest.fixture
def start_sandbox(docker_client, make_sandbox):
    """start_sandbox(command, trial=..., session=...) -> a running sandbox's container object."""

    def start(command, trial, session):
        box = make_sandbox(command=tuple(command), trial_id=trial, session_id=session)
        return docker_client.containers.get(box.id)

    return start


def host_pids(container, command):
    """Host pids of the container's processes whose command line is exactly `command`."""
    top = container.top(ps_args="-o pid,ppid,args")
    pid, args = top["Titles"].index("PID"), top["Titles"].index("COMMAND")
    return [int(row[pid]) for row in top["Processes"] if row[args] == command]


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.05)


def test_gpu_processes_are_attributed_to_real_sandboxes(docker_client, start_sandbox):
    session = f"test-{uuid.uuid4().hex[:8]}"
    original = start_sandbox(["sh", "-c", "sleep 300 & wait"], "trial-a", session)
    other = start_sandbox(["sleep", "301"], "trial-b", session)
    wait_for(lambda: host_pids(original, "sleep 300") and host_pids(other, "sleep 301"))
    (launcher,) = host_pids(original, "sh -c sleep 300 & wait")
    (server,) = host_pids(original, "sleep 300")
    (stranger,) = host_pids(other, "sleep 301")

    attributor = PidAttributor(docker_client=docker_client)
    attributor.set_instance_pids(original.id, {launcher: "original"})
    nvml = FakeNvml([FakeDevice(processes=[FakeProcess(server), FakeProcess(os.getpid())]),
                     FakeDevice(processes=[FakeProcess(stranger)])])
    sampler = GpuSampler(nvml=nvml, rate_hz=10, attributor=attributor)
    sampler.start()
    try:
        wait_for(lambda: sampler.latest() is not None)
        owners = {process.pid: process.attribution for _, process in sampler.latest().processes()}
    finally:
        sampler.stop()

    assert (owners[server].kind, owners[server].instance) == ("instance", "original")
    assert (owners[server].container_id, owners[server].trial, owners[server].session) == (
        original.id, "trial-a", session)
    assert owners[server].container_pid > 1
    assert (owners[stranger].kind, owners[stranger].container_id, owners[stranger].trial) == (
        "candidate", other.id, "trial-b")
    assert owners[os.getpid()].kind == "host"


def test_stats_of_a_busy_sandbox_and_its_removal(start_sandbox, monkeypatch):
    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    session = f"test-{uuid.uuid4().hex[:8]}"
    busy = start_sandbox(["sh", "-c", "while :; do :; done"], "trial-busy", session)
    samples, statuses = queue.Queue(), []
    poller = ContainerStatsPoller(session_id=session, rate_hz=2, on_stats=samples.put,
                                  on_status=statuses.append)
    poller.start()
    try:
        cpu_seen = []
        while not any(cpu > 20 for cpu in cpu_seen):
            sample = samples.get(timeout=15)
            for stats in sample.containers:
                assert stats.container_id == busy.id and stats.trial == "trial-busy"
                assert stats.memory_bytes > 0 and stats.pids >= 1
                assert stats.rx_bytes is None and stats.tx_bytes is None  # network_mode none
                if stats.cpu_percent is not None:
                    cpu_seen.append(stats.cpu_percent)
            assert len(cpu_seen) < 20, f"CPU % stayed low: {cpu_seen}"
        assert poller.status.available

        busy.remove(force=True)  # vanishes mid-poll
        while samples.get(timeout=15).containers:
            pass
        assert poller.running
    finally:
        poller.stop()
    assert [s.available for s in statuses] == [False, True, False]  # connecting, ok, stopped
    assert escaped == []


class ListedWhileAlive(list):
    """NVML's process list as a driver keeps it: a process is listed until the kernel has reaped it."""

    def __iter__(self):
        return (p for p in list(super().__iter__()) if _alive(p.pid))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def gpu_backend(engine, home):
    """connect(gpu_processes) -> a ConsoleBackend on the real engine whose (fake) NVML lists
    `gpu_processes` on one GPU, and a running sandbox of its session with two busy processes."""
    from console.sandbox.spec import ContainmentSpec
    from console.viewmodel.backend import ConsoleBackend

    backends, boxes = [], []

    def connect(gpu_processes: list):
        backend = ConsoleBackend(lambda item: None, with_watchdog=False,
                                 nvml=FakeNvml([FakeDevice(processes=gpu_processes)]))
        backends.append(backend)
        backend.connect()
        backend.start_gpu_telemetry()
        box = engine.create(ContainmentSpec(image=image_ref("base"), session_id=backend.session.id,
                                            trial_id=f"t{uuid.uuid4().hex[:8]}", deadline_unix=time.time() + 600,
                                            command=("sh", "-c", "sleep 300 & sleep 301 & wait")))
        boxes.append(box)
        container = docker.from_env().containers.get(box.id)
        wait_for(lambda: host_pids(container, "sleep 300") and host_pids(container, "sleep 301"))
        servers = host_pids(container, "sleep 300") + host_pids(container, "sleep 301")
        gpu_processes.extend(FakeProcess(pid) for pid in servers)
        gpu_processes.append(FakeProcess(os.getpid()))  # the host's own: never held against the kill
        wait_for(lambda: backend._gpu_processes_of_session() == tuple(sorted(servers)))
        return backend, tuple(sorted(servers))

    yield connect
    for backend in backends:
        backend.close()
    for box in boxes:  # killed by the test, removed here
        box.remove()


def test_the_kill_report_times_the_release_of_the_sandboxes_gpu_memory(gpu_backend):
    backend, servers = gpu_backend(ListedWhileAlive())
    killed = backend.kill_all()  # the report does not wait for the GPU
    assert killed.containers == 1 and killed.all_confirmed, killed
    assert killed.gpu_processes == servers and not killed.gpu_checked
    outcome = backend.gpu_release(killed)
    assert outcome.gpu_checked and outcome.gpu_freed_ms is not None and 0 < outcome.gpu_freed_ms < 20_000, outcome
    assert not {p.pid for _, p in backend._gpu_sampler.latest().processes()} & set(servers)


def test_gpu_memory_still_held_after_the_kill_is_reported_not_freed(gpu_backend, monkeypatch):
    """A driver that keeps a dead process's memory (NVML still lists its pid): the report must not
    say it was freed."""
    monkeypatch.setattr("console.viewmodel.backend.GPU_RELEASE_WAIT_S", 1.5)
    backend, servers = gpu_backend([])  # listed for ever
    killed = backend.kill_all()
    assert killed.containers == 1 and killed.all_confirmed, killed
    outcome = backend.gpu_release(killed)
    assert outcome.gpu_processes == servers and outcome.gpu_checked and outcome.gpu_freed_ms is None, outcome


def test_the_judges_looks_tie_model_servers_to_instances():
    """What the console gives the attributor from a snapshot: agents and servers with an instance,
    nothing for processes the judge has not tied to one."""
    from console.events import ProcessSnapshot

    rows = [{"pid": 7, "host_pid": 1007, "role": "original agent", "instance": "original", "serves": None},
            {"pid": 8, "host_pid": 1008, "role": "original server", "instance": None, "serves": "original"},
            {"pid": 9, "host_pid": 1009, "role": "verified replica", "instance": None, "serves": "replica-1"},
            {"pid": 10, "host_pid": 1010, "role": "model server?", "instance": None, "serves": None}]
    assert ProcessSnapshot("t", rows, []).instance_pids() == {1007: "original", 1008: "original",
                                                               1009: "replica-1"}
