"""GpuSampler against a fake NVML: readings, every failure path, back-off, records."""

import json
import os
import threading
import time

import numpy as np
import pytest

from fake_nvml import (FakeDevice, FakeNvml, FakeProcess, NVMLError_DriverNotLoaded,
                       NVMLError_LibraryNotFound, NVMLError_LibRmVersionMismatch)

from console.telemetry import GpuSample, GpuSampler, TieredHistory, probe_gpus, replay_history

NOT_A_PID = 2**22 + 12345  # above the kernel's pid_max


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(0.02)


@pytest.fixture
def thread_errors(monkeypatch):
    """Exceptions that escaped any thread during the test."""
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    return errors


@pytest.fixture
def run_sampler(thread_errors):
    samplers = []

    def start(nvml, **options):
        sampler = GpuSampler(nvml=nvml, **{"rate_hz": 10, **options})
        samplers.append(sampler)
        sampler.start()
        return sampler

    yield start
    for sampler in samplers:
        sampler.stop()
        assert sampler.status.message == "stopped"
    assert thread_errors == []


def test_reads_every_field_and_process(run_sampler):
    nvml = FakeNvml([
        FakeDevice(name=b"Tesla V100-SXM2-16GB", uuid=b"GPU-1234", processes=[
            FakeProcess(os.getpid(), used_memory=3 << 30, sm_util=80),
            FakeProcess(NOT_A_PID, used_memory=None, sm_util=None),
            FakeProcess(NOT_A_PID + 1, used_memory=1 << 20, graphics=True),
        ]),
        FakeDevice(name="NVIDIA H100 80GB HBM3"),
    ])
    sampler = run_sampler(nvml)
    wait_until(lambda: sampler.latest() is not None)
    assert sampler.status.available and sampler.status.message == "sampling 2 GPUs at 10 Hz"
    gpu0, gpu1 = sampler.latest().gpus
    assert (gpu0.index, gpu0.name, gpu0.uuid) == (0, "Tesla V100-SXM2-16GB", "GPU-1234")
    assert gpu1.name == "NVIDIA H100 80GB HBM3" and gpu1.processes == ()
    assert gpu0.util_percent == 37 and gpu0.temperature_c == 61 and gpu0.sm_clock_mhz == 1755
    assert gpu0.memory_used_bytes == 20 * 1024**3 and gpu0.memory_total_bytes == 80 * 1024**3
    assert gpu0.power_w == 312.0 and gpu0.power_limit_w == 700.0

    by_pid = {p.pid: p for p in gpu0.processes}
    me = by_pid[os.getpid()]
    assert (me.kind, me.used_memory_bytes, me.sm_util_percent) == ("compute", 3 << 30, 80.0)
    assert me.attribution.kind == "host"
    quiet = by_pid[NOT_A_PID]
    assert quiet.used_memory_bytes is None and quiet.sm_util_percent == 0.0
    assert quiet.attribution.kind == "unknown"
    assert by_pid[NOT_A_PID + 1].kind == "graphics"
    assert sampler.gpu_names() == ["Tesla V100-SXM2-16GB", "NVIDIA H100 80GB HBM3"]


def test_unsupported_fields_are_none(run_sampler):
    every_field = {"nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetUtilizationRates",
                   "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
                   "nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetTemperature",
                   "nvmlDeviceGetClockInfo", "nvmlDeviceGetProcessUtilization"}
    nvml = FakeNvml([FakeDevice(not_supported=every_field, processes=[FakeProcess(os.getpid())])])
    sampler = run_sampler(nvml)
    wait_until(lambda: sampler.latest() is not None)
    (gpu,) = sampler.latest().gpus
    assert gpu.name is gpu.uuid is gpu.util_percent is gpu.memory_used_bytes is None
    assert gpu.power_w is gpu.power_limit_w is gpu.temperature_c is gpu.sm_clock_mhz is None
    (process,) = gpu.processes
    assert process.sm_util_percent is None and process.used_memory_bytes == 1 << 30
    assert sampler.status.available
    assert sampler.gpu_names() == ["GPU 0"]


def test_driver_without_v3_calls_falls_back_once(run_sampler):
    nvml = FakeNvml([FakeDevice(processes=[FakeProcess(os.getpid())])], has_v3=False)
    sampler = run_sampler(nvml)
    wait_until(lambda: nvml.calls["nvmlDeviceGetComputeRunningProcesses"] >= 3)
    assert [p.pid for p in sampler.latest().gpus[0].processes] == [os.getpid()]
    assert nvml.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


@pytest.mark.parametrize("error, message", [
    (NVMLError_LibraryNotFound(), "No NVIDIA driver: NVML library not found"),
    (NVMLError_DriverNotLoaded(), "NVIDIA driver not loaded"),
    (NVMLError_LibRmVersionMismatch(), "Driver/library version mismatch"),
])
def test_init_failures_are_reported_and_retried_slowly(run_sampler, error, message):
    nvml = FakeNvml([FakeDevice()], init_error=error)
    sampler = run_sampler(nvml)
    wait_until(lambda: sampler.status.message.startswith(message))
    time.sleep(0.5)
    assert not sampler.status.available and sampler.running
    assert nvml.calls["nvmlInit"] == 1, "retried before retry_interval_s"
    assert sampler.latest() is None
    assert probe_gpus(nvml).status.message.startswith(message)
    assert sampler.gpu_names() == []


def test_driver_failure_mid_run_backs_off_and_recovers(run_sampler):
    nvml = FakeNvml([FakeDevice()])
    sampler = run_sampler(nvml, retry_interval_s=0.25)
    wait_until(lambda: sampler.latest() is not None)
    nvml.errors["nvmlDeviceGetUtilizationRates"] = NVMLError_LibRmVersionMismatch()
    wait_until(lambda: not sampler.status.available)
    assert sampler.status.message.startswith("Driver/library version mismatch")
    inits = nvml.calls["nvmlInit"]
    time.sleep(1.0)
    assert nvml.calls["nvmlInit"] - inits <= 8, "reconnects faster than retry_interval_s"
    assert nvml.init_count <= 1, "a failed session was not shut down"

    del nvml.errors["nvmlDeviceGetUtilizationRates"]
    wait_until(lambda: sampler.status.available)
    before = sampler.latest().t
    wait_until(lambda: sampler.latest().t > before)


def test_lost_gpu_is_reported_and_not_polled(run_sampler):
    nvml = FakeNvml([FakeDevice(), FakeDevice()])
    sampler = run_sampler(nvml)
    wait_until(lambda: sampler.latest() is not None)
    nvml.devices[1].lost = True
    wait_until(lambda: "GPU 1 disappeared (GPU is lost)" in sampler.status.message)
    assert sampler.status.available
    calls = sum(nvml.calls.values())
    utilization_calls = nvml.calls["nvmlDeviceGetUtilizationRates"]
    time.sleep(0.5)
    assert [gpu.index for gpu in sampler.latest().gpus] == [0]
    # only GPU 0 is read now: one utilization call per sample, ~10 per field per second
    polls = nvml.calls["nvmlDeviceGetUtilizationRates"] - utilization_calls
    assert 1 <= polls <= 10
    assert sum(nvml.calls.values()) - calls < 200

    nvml.devices[0].lost = True
    wait_until(lambda: not sampler.status.available)
    assert sampler.status.message == (
        "GPU 0 disappeared (GPU is lost); GPU 1 disappeared (GPU is lost)")
    assert sampler.running


def test_lost_gpu_comes_back_after_retry_interval(run_sampler):
    nvml = FakeNvml([FakeDevice(), FakeDevice()])
    sampler = run_sampler(nvml, retry_interval_s=0.3)
    wait_until(lambda: sampler.latest() is not None)
    nvml.devices[1].lost = True
    wait_until(lambda: len(sampler.latest().gpus) == 1)
    nvml.devices[1].lost = False
    wait_until(lambda: len(sampler.latest().gpus) == 2)
    assert sampler.status.message == "sampling 2 GPUs at 10 Hz"


def test_unexpected_errors_and_failing_callbacks_stay_in_the_thread(run_sampler):
    failures = []

    def broken_subscriber(sample):
        failures.append(sample)
        raise RuntimeError("subscriber bug")

    nvml = FakeNvml([FakeDevice()])
    sampler = run_sampler(nvml, on_sample=broken_subscriber)
    wait_until(lambda: len(failures) >= 3)
    assert sampler.status.available

    nvml.errors["nvmlDeviceGetTemperature"] = ValueError("not an NVML error")
    wait_until(lambda: not sampler.status.available)
    assert sampler.status.message == "GPU sampling failed: ValueError('not an NVML error')"
    assert sampler.running


def test_no_gpu_and_probe(run_sampler):
    empty = FakeNvml([])
    sampler = run_sampler(empty)
    wait_until(lambda: sampler.status.message == "No NVIDIA GPU found")
    assert empty.init_count == 0

    nvml = FakeNvml([FakeDevice(name=b"A"), FakeDevice(name="B"), FakeDevice(lost=True)])
    inventory = probe_gpus(nvml)
    assert inventory.names == ("A", "B", "GPU 2 (GPU is lost)") and inventory.status.available
    assert nvml.init_count == 0
    assert GpuSampler(nvml=nvml).gpu_count() == 3


def test_rate_is_clamped():
    assert GpuSampler(nvml=FakeNvml(), rate_hz=1000).rate_hz == 10
    assert GpuSampler(nvml=FakeNvml(), rate_hz=0).rate_hz == 0.5


def test_stop_shuts_nvml_down_and_start_again_works(run_sampler):
    nvml = FakeNvml([FakeDevice()])
    sampler = run_sampler(nvml)
    wait_until(lambda: sampler.latest() is not None)
    sampler.stop()
    assert nvml.init_count == 0 and not sampler.running
    sampler.start()
    wait_until(lambda: sampler.status.available)


def test_records_round_trip_and_replay_into_the_same_history(run_sampler):
    records = []
    live = TieredHistory()
    nvml = FakeNvml([FakeDevice(processes=[FakeProcess(os.getpid())]),
                     FakeDevice(not_supported={"nvmlDeviceGetPowerUsage"})])
    sampler = run_sampler(nvml, history=live,
                          on_sample=lambda s: records.append(json.dumps(s.to_record())))
    wait_until(lambda: len(records) >= 5)
    sampler.stop()
    decoded = [json.loads(line) for line in records]
    assert GpuSample.from_record(decoded[-1]) == sampler.latest()

    replayed = replay_history(decoded)
    expected = live.snapshot()
    assert ("gpu", 1, "power") in expected
    for key, series in replayed.snapshot().items():
        np.testing.assert_array_equal(series.t, expected[key].t)
        np.testing.assert_array_equal(series.v, expected[key].v)
    assert replayed.keys() == live.keys()


def test_all_gpus_lost_at_start_is_reported_without_leaking_nvml_sessions(run_sampler):
    nvml = FakeNvml([FakeDevice(lost=True)])
    sampler = run_sampler(nvml, retry_interval_s=0.1)
    wait_until(lambda: sampler.status.message == "GPU 0 disappeared (GPU is lost)")
    wait_until(lambda: nvml.calls["nvmlInit"] >= 3)
    assert nvml.init_count <= 1


def test_the_device_check_says_there_is_no_gpu_and_exits_2():
    """benchmarks/gpu_check.py is run for real on a lent GPU machine; here it must refuse plainly."""
    import subprocess
    import sys
    from pathlib import Path

    if probe_gpus().names:
        pytest.skip("this machine has a GPU: run benchmarks/gpu_check.py itself")
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ran"] is False and report["reason"].startswith("no NVIDIA GPU"), report


def test_waiting_for_released_gpu_memory_sees_the_first_sample_without_the_process():
    device = FakeDevice(processes=[FakeProcess(os.getpid()), FakeProcess(NOT_A_PID)])
    sampler = GpuSampler(nvml=FakeNvml([device]), rate_hz=10)
    sampler.start()
    try:
        wait_until(lambda: sampler.latest() is not None)
        held = lambda process: process.pid == NOT_A_PID  # noqa: E731
        assert sampler.wait_until_released(held, time.time(), timeout_s=0.5) is None  # still listed
        released = time.time()
        device.processes = device.processes[:1]
        freed_at = sampler.wait_until_released(held, released, timeout_s=5)
        assert freed_at is not None and freed_at > released
    finally:
        sampler.stop()
    assert sampler.wait_until_released(held, time.time(), timeout_s=5) is None  # stopped: no wait, no claim


def test_the_gpu_memory_tripwire_reads_what_the_sandboxs_processes_hold_on_the_trials_gpus():
    """console.telemetry.gpu.GpuMemoryReader (the gpu-memory-gib tripwire) on the NVML double: only the
    given pids, only the trial's GPUs, a pid on both lists once, a size NVML cannot tell as nothing."""
    from console.telemetry.gpu import GpuMemoryReader

    nvml = FakeNvml([
        FakeDevice(processes=[FakeProcess(101, used_memory=3 << 30), FakeProcess(102, used_memory=None),
                              FakeProcess(999, used_memory=40 << 30)]),  # another sandbox's
        FakeDevice(processes=[FakeProcess(101, used_memory=1 << 29), FakeProcess(101, used_memory=1 << 29, graphics=True)]),
        FakeDevice(processes=[FakeProcess(101, used_memory=8 << 30)]),  # not this trial's GPU
    ])
    reader = GpuMemoryReader((0, 1), nvml).connect()
    try:
        assert reader.gib_of([101, 102, 7]) == 3.5 and reader.gib_of([]) == 0
    finally:
        reader.close()
    assert nvml.calls["nvmlShutdown"] == 1
