"""Telemetry against real sandbox containers: GPU pid attribution and container stats."""

import os
import queue
import threading
import time
import uuid

import docker
import pytest

from fake_nvml import FakeDevice, FakeNvml, FakeProcess

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
