"""Launch -> first agent round latency with the scripted model (goal < 3 s).

Measures, for N trials of scripted:success, the time from TrialRunner.run() to the agent's first
`round` event, split into its phases (sandbox created, model server answering, reference captured,
first round), against a baseline measured in the same run: a bare `docker run --rm` of the same
image doing nothing. Prints one JSON line.
Usage: .venv/bin/python benchmarks/trial_launch.py [--trials 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

from console.events import AgentEvent, TrialStateChanged
from console.models import ModelCatalogue
from console.sandbox.docker_engine import DockerEngine
from console.sandbox.images import image_ref
from console.scenarios import get_scenario
from console.session import Session
from console.trial import TrialConfig, TrialRunner


def one_trial(engine, session, model, scenario) -> dict:
    marks: dict[str, float] = {}
    runner: TrialRunner | None = None

    def on_event(event) -> None:
        now = time.monotonic()
        if isinstance(event, TrialStateChanged):
            marks.setdefault(f"{event.state}:{event.detail[:20]}", now)
        if isinstance(event, AgentEvent) and event.record and event.record.get("type") == "round":
            if "first_round" not in marks:
                marks["first_round"] = now
                runner.kill()  # the launch is what we measure; stop here

    runner = TrialRunner(engine, TrialConfig(model=model, scenario=scenario), session, None, emit=on_event)
    started = time.monotonic()
    runner.run()
    phases = sorted(((t - started) * 1000, name) for name, t in marks.items())
    return {"first_round_ms": (marks["first_round"] - started) * 1000, "phases_ms": {n: round(t) for t, n in phases}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("REDLINE_HOME", tempfile.mkdtemp(prefix="redline-bench-"))
    engine = DockerEngine().connect()
    session = Session(engine, with_watchdog=False).start()
    model, scenario = ModelCatalogue.load().get("scripted:success"), get_scenario("self-replication")
    runs, baseline = [], []
    try:
        for _ in range(args.trials):
            started = time.monotonic()
            subprocess.run(["docker", "run", "--rm", "--network", "none", image_ref("cpu"), "true"],
                           check=True, capture_output=True)
            baseline.append((time.monotonic() - started) * 1000)
            runs.append(one_trial(engine, session, model, scenario))
    finally:
        session.close()
    firsts = [r["first_round_ms"] for r in runs]
    print(json.dumps({
        "benchmark": "trial_launch", "model": "scripted:success", "trials": args.trials,
        "first_round_ms_p50": round(statistics.median(firsts)), "first_round_ms_max": round(max(firsts)),
        "baseline_docker_run_true_ms_p50": round(statistics.median(baseline)),
        "phases_ms_last": runs[-1]["phases_ms"], "goal_ms": 3000,
    }))


if __name__ == "__main__":
    main()
