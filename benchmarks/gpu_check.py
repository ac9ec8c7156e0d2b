"""The GPU facts Redline relies on, checked on a machine with an NVIDIA GPU (no Docker needed).

It runs Redline's real NVML sampler (console.telemetry.GpuSampler on nvidia-ml-py) at 10 Hz while
child processes allocate and free GPU memory with torch, and reports:
- attribution by pid: every holder appears under its own pid with its own memory;
- memory freed in place (del + empty_cache) shows in the holder's figure;
- the time from SIGKILL of a process holding --hold-gb until NVML no longer lists it, polled at
  5 ms, and as the kill report measures it (`GpuSampler.wait_until_released` at 10 Hz).
Prints one JSON line. Without a GPU (or without torch) it says so and exits 2.

    python benchmarks/gpu_check.py [--hold-gb 20] [--holders 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# argv: GB to hold; then it waits for a line on stdin, frees in place, says so, and waits for ever.
HOLDER = r"""
import sys, torch
block = torch.ones(int(float(sys.argv[1]) * 1024**3), dtype=torch.uint8, device="cuda")
torch.cuda.synchronize()
print("holding", flush=True)
sys.stdin.readline()
del block
torch.cuda.empty_cache()
print("freed", flush=True)
sys.stdin.readline()
"""
GB = 1024**3


def unavailable(reason: str) -> int:
    print(json.dumps({"benchmark": "gpu_check", "ran": False, "reason": reason}))
    return 2


def wait_for(predicate, timeout_s: float, step_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return None


def nvml_pids(nvml) -> set[int]:
    """Every compute process on every GPU, straight from NVML."""
    return {process.pid for index in range(nvml.nvmlDeviceGetCount())
            for process in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(index))}


def sampled_memory(sampler, pids) -> dict[int, int]:
    """pid -> bytes on all GPUs in the sampler's latest sample, for `pids`."""
    found: dict[int, int] = {}
    sample = sampler.latest()
    for _, process in sample.processes() if sample else ():
        if process.pid in pids and process.used_memory_bytes is not None:
            found[process.pid] = found.get(process.pid, 0) + process.used_memory_bytes
    return found


def memory_if(sampler, pids, condition) -> dict[int, int] | None:
    """The sampled memory of `pids` once every one of them is listed and meets `condition`."""
    memory = sampled_memory(sampler, pids)
    return memory if set(memory) == pids and all(map(condition, memory.values())) else None


def in_mb(memory: dict[int, int] | None) -> dict[str, int]:
    return {str(pid): round(used / 2**20) for pid, used in (memory or {}).items()}


def holder(gb: float) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(gb)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    if child.stdout.readline().strip() != "holding":
        raise RuntimeError(f"a holder of {gb} GB failed to allocate (exit {child.wait()})")
    return child


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hold-gb", type=float, default=20.0, help="what the killed process holds")
    parser.add_argument("--holders", type=int, default=2, help="1 GB holders to tell apart by pid")
    args = parser.parse_args()
    from console.telemetry import GpuSampler, probe_gpus

    inventory = probe_gpus()
    if not inventory.names:
        return unavailable(f"no NVIDIA GPU: {inventory.status.message}")
    try:
        import pynvml
        import torch
    except ImportError as exc:
        return unavailable(f"missing {exc.name} (needs nvidia-ml-py and torch)")
    if not torch.cuda.is_available():
        return unavailable("torch sees no CUDA device")
    pynvml.nvmlInit()
    sampler = GpuSampler(rate_hz=10.0)
    sampler.start()
    children: list[subprocess.Popen] = []
    try:
        small = [holder(1.0) for _ in range(args.holders)]
        children += small
        pids = {child.pid for child in small}
        started = time.monotonic()
        seen = wait_for(lambda: memory_if(sampler, pids, lambda used: used >= GB), 10)
        seen_s = time.monotonic() - started
        for child in small:
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "freed"
        after_free = wait_for(lambda: memory_if(sampler, pids, lambda used: used < GB), 10)

        big = holder(args.hold_gb)
        children.append(big)
        listed = wait_for(lambda: sampled_memory(sampler, {big.pid}).get(big.pid, 0) >= args.hold_gb * GB * 0.9, 10)
        killed_at, killed = time.time(), time.monotonic()
        os.kill(big.pid, signal.SIGKILL)
        big.wait()
        exited_ms = (time.monotonic() - killed) * 1000
        gone = wait_for(lambda: big.pid not in nvml_pids(pynvml), 60, 0.005)
        nvml_freed_ms = (time.monotonic() - killed) * 1000 if gone else None
        released_at = sampler.wait_until_released(lambda p: p.pid == big.pid, killed_at, 60)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
        sampler.stop()
    print(json.dumps({
        "benchmark": "gpu_check", "ran": True, "gpus": inventory.names, "sampler_rate_hz": 10,
        "holders_seen_by_pid": bool(seen), "seconds_until_seen": round(seen_s, 2),
        "holder_memory_mb": in_mb(seen), "holder_memory_after_free_in_place_mb": in_mb(after_free),
        "hold_gb": args.hold_gb, "big_holder_seen": bool(listed),
        "sigkill_to_exit_ms": round(exited_ms, 1),
        "sigkill_to_nvml_freed_ms": round(nvml_freed_ms, 1) if nvml_freed_ms is not None else None,
        "kill_report_freed_ms": round((released_at - killed_at) * 1000, 1) if released_at else None,
    }))
    return 0 if seen and after_free and listed and gone and released_at else 1


if __name__ == "__main__":
    raise SystemExit(main())
