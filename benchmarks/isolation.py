"""runc and gVisor side by side, in one run: launch -> first round, scaffold overhead, kill latency.

For each isolation level, in alternation (the machine is shared and noisy):
- launch: TrialRunner.run() of a scripted model to the agent's first `round` event (sandbox, model
  server, the judge's fingerprints and bank, agent start), as benchmarks/trial_launch.py;
- scaffold overhead: in the same trial, the time between consecutive `round` events minus that
  round's model latency, over --rounds rounds of the trivial command `true` (as
  benchmarks/scaffold_overhead.py, but inside the sandbox, where the level's kernel serves every
  fork, pipe and read);
- model: the embedded default (SmolLM2-135M on llama.cpp, CPU) for --model-rounds rounds, tokens
  per second of its replies (llama.cpp's threads meet in the level's kernel at every token);
- kill: a sandbox running 20 processes, SIGKILLed by the kill switch until the engine confirms it.
Prints one JSON line: per level p50/max, and gVisor's figures over runc's.

    .venv/bin/python benchmarks/isolation.py [--trials 3] [--rounds 40] [--model-rounds 3] [--kills 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from scaffold_overhead import TRIVIAL_ROUND  # the same trivial round (benchmarks/ is on sys.path)

LEVELS = ("runc", "gvisor")


def one_trial(engine, session, model, scenario, level: str, rounds: int) -> dict:
    from console.events import AgentEvent
    from console.trial import TrialConfig, TrialRunner

    marks: dict = {"rounds": [], "latencies": [], "tokens_per_s": []}
    runner: TrialRunner | None = None

    def on_event(event) -> None:
        if not (isinstance(event, AgentEvent) and event.record):
            return
        kind = event.record.get("type")
        if kind == "round":
            marks.setdefault("first_round", time.monotonic())
            marks["rounds"].append(event.record["t"])
            if len(marks["rounds"]) > rounds:
                runner.kill("the benchmark")
        elif kind == "llm":
            marks["latencies"].append(event.record["latency_s"])
            if event.record.get("completion_tokens"):
                marks["tokens_per_s"].append(event.record["completion_tokens"] / event.record["latency_s"])

    config = TrialConfig(model=model, scenario=scenario, isolation=level)
    runner = TrialRunner(engine, config, session, None, emit=on_event)
    started = time.monotonic()
    runner.run()
    starts, latencies = marks["rounds"], marks["latencies"]
    overheads = [(b - a - latency) * 1000 for a, b, latency in zip(starts, starts[1:], latencies)]
    return {"first_round_ms": (marks["first_round"] - started) * 1000, "overheads_ms": overheads,
            "tokens_per_s": marks["tokens_per_s"]}


def one_kill(engine, session_id: str, level: str) -> float:
    from console.sandbox.killswitch import KillSwitch
    from console.sandbox.images import image_ref
    from console.sandbox.spec import ContainmentSpec

    spec = ContainmentSpec(image=image_ref("cpu"), session_id=session_id, trial_id=f"bench-kill-{level}",
                           deadline_unix=time.time() + 300, isolation=level)
    box = engine.create(spec)
    try:
        box.exec(["sh", "-c", "for i in $(seq 20); do sleep 300 & done"], timeout=30)
        report = KillSwitch().kill_ids([box.id])
        assert report.all_confirmed, report
        return report.containers[0].confirmed_ms
    finally:
        box.remove()


def summary(values: list[float]) -> dict:
    return {"p50": round(statistics.median(values), 1), "max": round(max(values), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--model-rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="redline-bench-"))
    os.environ.setdefault("REDLINE_HOME", str(work / "home"))
    os.environ["REDLINE_CONFIG"] = str(work / "config")
    (work / "config" / "models").mkdir(parents=True)
    (work / "trivial.txt").write_text(TRIVIAL_ROUND)
    (work / "config" / "models" / "bench.toml").write_text(
        f'id = "scripted:isolation-benchmark"\nruntime = "scripted"\nweights = "{work / "trivial.txt"}"\n')

    from console.models import DEFAULT_MODEL_ID, ModelCatalogue
    from console.sandbox.docker_engine import DockerEngine
    from console.scenarios import get_scenario
    from console.session import Session

    engine = DockerEngine().connect()
    missing = [level for level in LEVELS if level not in engine.isolation_levels()]
    if missing:
        raise SystemExit(f"isolation benchmark: this engine lacks {missing} (see `redline doctor`)")
    model = ModelCatalogue.load().get("scripted:isolation-benchmark")
    scenario = get_scenario("self-replication")
    scenario = dataclasses.replace(scenario, limits=dataclasses.replace(scenario.limits, max_rounds=args.rounds + 5))
    session = Session(engine, with_watchdog=False).start()
    results = {level: {"first_round_ms": [], "overhead_ms": [], "model_tokens_per_s": [], "kill_ms": []}
               for level in LEVELS}
    smollm2 = ModelCatalogue.load().get(DEFAULT_MODEL_ID)
    try:
        for _ in range(args.trials):
            for level in LEVELS:
                trial = one_trial(engine, session, model, scenario, level, args.rounds)
                results[level]["first_round_ms"].append(trial["first_round_ms"])
                results[level]["overhead_ms"] += trial["overheads_ms"]
        for level in LEVELS:
            trial = one_trial(engine, session, smollm2, scenario, level, args.model_rounds)
            results[level]["model_tokens_per_s"] += trial["tokens_per_s"]
        for _ in range(args.kills):
            for level in LEVELS:
                results[level]["kill_ms"].append(one_kill(engine, session.id, level))
    finally:
        session.close()
    figures = {level: {name: summary(values) for name, values in measured.items()}
               for level, measured in results.items()}
    print(json.dumps({
        "benchmark": "isolation", "trials": args.trials, "rounds": args.rounds, "kills": args.kills,
        **figures,
        "gvisor_over_runc_p50": {name: round(figures["gvisor"][name]["p50"] / figures["runc"][name]["p50"], 2)
                                 for name in figures["runc"]},
    }))


if __name__ == "__main__":
    main()
