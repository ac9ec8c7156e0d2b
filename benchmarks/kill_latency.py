"""Kill latency: KillSwitch vs raw `docker kill` on 4 busy sandboxes (~50 processes each).

Each round starts 4 fresh sandboxes full of busy processes, then kills them either through the
KillSwitch (until every death is confirmed) or with one `docker kill` of the same containers
(the baseline, measured in the same run, alternating order). Prints one JSON line.
Usage: .venv/bin/python benchmarks/kill_latency.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import uuid

from console.sandbox.docker_engine import DockerEngine
from console.sandbox.images import image_ref
from console.sandbox.killswitch import KillSwitch
from console.sandbox.spec import ContainmentSpec

BUSY = ("sh", "-c", "for i in $(seq 49); do (while :; do :; done) & done; wait")


def start_busy(engine, session: str) -> list:
    boxes = []
    for _ in range(4):
        spec = ContainmentSpec(image=image_ref("base"), session_id=session, trial_id=f"bench{uuid.uuid4().hex[:8]}",
                               deadline_unix=time.time() + 300, command=BUSY, cpus=0.4)
        boxes.append(engine.create(spec))
    deadline = time.monotonic() + 30
    while any(len(b.top()) < 50 for b in boxes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return boxes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    engine = DockerEngine().connect()
    session = f"bench-{uuid.uuid4().hex[:8]}"
    switch, ours, raw, processes = KillSwitch(), [], [], []
    try:
        for i in range(args.rounds * 2):
            boxes = start_busy(engine, session)
            processes.append(sum(len(b.top()) for b in boxes))
            if i % 2 == 0:
                report = switch.kill_ids([b.id for b in boxes])
                assert report.all_confirmed, report
                ours.append(report.total_ms)
            else:
                started = time.monotonic()
                subprocess.run(["docker", "kill", *[b.id for b in boxes]], check=True, capture_output=True)
                raw.append((time.monotonic() - started) * 1000)
            for box in boxes:
                box.remove()
    finally:
        for box in engine.sandboxes(session_id=session):
            box.remove()
    print(json.dumps({
        "benchmark": "kill_latency", "sandboxes": 4, "processes_per_round_mean": statistics.mean(processes),
        "rounds": args.rounds, "p50_ms": round(percentile(ours, 0.5), 1), "p95_ms": round(percentile(ours, 0.95), 1),
        "docker_kill_p50_ms": round(percentile(raw, 0.5), 1), "docker_kill_p95_ms": round(percentile(raw, 0.95), 1),
        "ratio_vs_docker_kill": round(percentile(ours, 0.5) / percentile(raw, 0.5), 2),
        "goal": {"p95_ms": 300, "ratio": 1.5},
    }))


if __name__ == "__main__":
    main()
