"""Scaffold overhead: what the agent adds per round beyond the model's latency.

Runs the agent against the scripted runtime on loopback for N rounds of a trivial one_time command
(`true`), then takes, for every round but the last, the time between consecutive `round` events minus
that round's `llm` latency_s. That covers prompt building, parsing, spawning and reaping the command,
reading its output and emitting events. For context, the same run measures a bare
`subprocess.run(["bash", "-c", "true"])` and a bare HTTP round trip to the same server.
Prints one JSON line. Goal: p50 overhead under 5 ms.

    python benchmarks/scaffold_overhead.py [--rounds 200]
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AGENT = REPO / "sandbox_images" / "agent" / "redline_agent.py"
SERVER = REPO / "sandbox_images" / "runtimes" / "scripted_server.py"
GOAL_MS = 5.0
TRIVIAL_ROUND = """# name: overhead
=== turn ===
Explain: benchmark
Gaps: none
Findings: none
Plan: 1. run true 2. again 3. again
Action:
```json
{"action": "execute_command", "terminal_id": 1, "command": "true", "command_type": "one_time"}
```
"""


def percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def timed(action, repeat: int) -> list:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def http_round_trip(endpoint: str) -> None:
    body = json.dumps({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]})
    request = urllib.request.Request(endpoint + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def wait_for_banner(log, timeout: float = 10) -> str:
    """The endpoint the scripted server prints on its first stderr line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"http://\S+/v1", log.readline())
        if found:
            return found.group(0)
        time.sleep(0.02)
    raise SystemExit("scaffold_overhead: the scripted server did not start")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=200)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="redline-bench-"))
    trajectory = workdir / "overhead.txt"
    trajectory.write_text(TRIVIAL_ROUND)
    log = open(workdir / "server.log", "w+")
    server = subprocess.Popen([sys.executable, str(SERVER), "--trajectory", str(trajectory), "--port", "0"],
                              stderr=log)
    try:
        endpoint = wait_for_banner(log)
        agent = subprocess.run([sys.executable, str(AGENT), "--endpoint", endpoint, "--max-rounds", str(args.rounds),
                                "--instance-id", "bench", "--workdir", str(workdir)],
                               capture_output=True, text=True, check=True)
        bash_true = timed(lambda: subprocess.run(["bash", "-c", "true"], check=True), 50)
        http = timed(lambda: http_round_trip(endpoint), 50)
    finally:
        server.terminate()
        server.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    events = [json.loads(line) for line in agent.stdout.splitlines()]
    starts = [e["t"] for e in events if e["type"] == "round"]
    latencies = [e["latency_s"] for e in events if e["type"] == "llm"]
    overheads = [b - a - latency for a, b, latency in zip(starts, starts[1:], latencies)]
    p50 = percentile(overheads, 0.5)
    print(json.dumps({
        "rounds": len(starts),
        "overhead_ms_p50": ms(p50),
        "overhead_ms_p95": ms(percentile(overheads, 0.95)),
        "llm_latency_ms_p50": ms(statistics.median(latencies)),
        "baseline_bash_true_ms_p50": ms(statistics.median(bash_true)),
        "baseline_http_round_trip_ms_p50": ms(statistics.median(http)),
        "goal_ms": GOAL_MS,
        "within_goal": ms(p50) < GOAL_MS,
    }))


if __name__ == "__main__":
    main()
