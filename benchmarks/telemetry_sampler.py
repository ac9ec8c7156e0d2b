"""CPU cost of the GPU sampler: 8 fake GPUs x 20 processes at 10 Hz, with history and attribution.

The sampler thread's CPU time (its own thread CPU clock) is compared with a baseline thread that
only wakes at the same rate, measured over the same seconds. Prints one JSON line.

    .venv/bin/python benchmarks/telemetry_sampler.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from console.telemetry import GpuSampler, PidAttributor, TieredHistory  # noqa: E402

GPUS, PROCESSES_PER_GPU, RATE_HZ, GOAL_PERCENT = 8, 20, 10.0, 2


def load_fake_nvml():
    spec = importlib.util.spec_from_file_location("fake_nvml", ROOT / "tests" / "fake_nvml.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_nvml"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def host_pids(count: int) -> list[int]:
    """Real pids where there are enough (attribution reads their /proc files), then made-up ones."""
    real = sorted(int(name) for name in os.listdir("/proc") if name.isdigit())[:count]
    return real + [4_000_000 + i for i in range(count - len(real))]


def thread_cpu_s(thread: threading.Thread) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def find_thread(name: str) -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == name)


def idle_loop(stop: threading.Event) -> None:
    """The baseline: wake at the sampler's rate and do nothing."""
    while not stop.wait(1.0 / RATE_HZ):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    seconds = parser.parse_args().seconds

    fake = load_fake_nvml()
    pids = iter(host_pids(GPUS * PROCESSES_PER_GPU))
    nvml = fake.FakeNvml([
        fake.FakeDevice(name=f"Fake GPU {g}", uuid=f"GPU-{g:08d}",
                        processes=[fake.FakeProcess(next(pids), sm_util=g + p)
                                   for p in range(PROCESSES_PER_GPU)])
        for g in range(GPUS)])
    samples = []
    sampler = GpuSampler(nvml=nvml, rate_hz=RATE_HZ, attributor=PidAttributor(),
                         history=TieredHistory(), on_sample=samples.append)

    stop = threading.Event()
    baseline = threading.Thread(target=idle_loop, args=(stop,), name="baseline", daemon=True)

    sampler.start()
    while not samples:  # connect and first attribution are set-up, not steady state
        time.sleep(0.05)
    baseline.start()
    worker = find_thread(GpuSampler.thread_name)
    sampler_cpu0, baseline_cpu0, first = thread_cpu_s(worker), thread_cpu_s(baseline), len(samples)
    started = time.monotonic()
    time.sleep(seconds)
    sampler_cpu = thread_cpu_s(worker) - sampler_cpu0
    baseline_cpu = thread_cpu_s(baseline) - baseline_cpu0
    wall = time.monotonic() - started
    count = len(samples) - first
    sampler.stop()
    stop.set()

    processes = sum(len(g.processes) for g in samples[-1].gpus)
    print(json.dumps({
        "gpus": GPUS, "processes": processes, "rate_hz": RATE_HZ,
        "samples": count, "seconds": round(wall, 2),
        "per_sample_us": round(sampler_cpu / max(count, 1) * 1e6, 1),
        "cpu_percent_of_one_core": round(sampler_cpu / wall * 100, 3),
        "baseline_cpu_percent": round(baseline_cpu / wall * 100, 3),
        "goal_percent": GOAL_PERCENT,
    }))


if __name__ == "__main__":
    main()
