"""What the command gate of the tripwires costs (issue 25): each command of the original waits until
Redline has checked it against the command patterns and behaviours (console/trial.py _check_command).

Three kinds of scripted trial in the same run, each `--trials` times: 20 quick commands with no rule
(the baseline), the same with a pattern that never matches (every command held at the gate, decided at
once), and with a kill rule on the 10th command. Figures: per command, from the agent's action record to
its result record (both stamped by the agent), median and p95 per kind; and the kill rule's latency_s,
from the command's record to the sandbox confirmed dead. Prints one JSON line.
Usage: .venv/bin/python benchmarks/command_gate.py [--trials 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from kill_latency import percentile
from scripted_home import scripted_home

from console.events import AgentEvent, TripwireFired
from console.models import ModelCatalogue
from console.sandbox.docker_engine import DockerEngine
from console.scenarios import get_scenario
from console.session import Session
from console.tripwires import Tripwire
from console.trial import TrialConfig, TrialRunner

COMMANDS = 20
RULES = {"ungated": (), "gated": ("command~^never-matches-anything:kill",), "kill": ("command~^echo 10$:kill",)}


def trajectory() -> str:
    turns = [{"action": "execute_command", "terminal_id": 1, "command": f"echo {i}", "command_type": "one_time"}
             for i in range(1, COMMANDS + 1)] + [{"action": "finish", "message": "done"}]
    return "".join("=== turn ===\nExplain: go\nGaps: none.\nFindings: none.\nPlan: 1. Go. 2. On. 3. Done.\n"
                   f"Action:\n```json\n{json.dumps(turn)}\n```\n" for turn in turns)


def per_command_ms(events) -> list[float]:
    records = [e.record for e in events if isinstance(e, AgentEvent) and e.record]
    actions = {r["n"]: r["t"] for r in records if r.get("type") == "action" and r.get("command")}
    return [(r["t"] - actions[r["n"]]) * 1000 for r in records if r.get("type") == "result" and r["n"] in actions]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    scripted_home("redline-gate-bench-", "quick", trajectory())
    engine = DockerEngine().connect()
    base = get_scenario("self-replication")
    model = ModelCatalogue.load().get("scripted:quick")
    session = Session(engine, with_watchdog=False).start()
    times: dict[str, list[float]] = {kind: [] for kind in RULES}
    kills, outcomes = [], {kind: [] for kind in RULES}
    try:
        for _ in range(args.trials):
            for kind, rules in RULES.items():  # interleaved: drift in this shared machine favours none
                scenario = dataclasses.replace(base, tripwires=tuple(Tripwire.parse(r) for r in rules),
                                               limits=dataclasses.replace(base.limits, max_rounds=COMMANDS + 2))
                events = []
                verdict = TrialRunner(engine, TrialConfig(model=model, scenario=scenario, isolation="runc"), session,
                                      None, emit=events.append).run()
                outcomes[kind].append(str(verdict.outcome))
                times[kind] += per_command_ms(events)
                kills += [e.latency_s * 1000 for e in events if isinstance(e, TripwireFired)]
    finally:
        for box in engine.sandboxes(session_id=session.id):
            box.remove()
        session.close()
    figures = {kind: {"commands": len(ms), "median_ms": round(statistics.median(ms), 1),
                      "p95_ms": round(percentile(ms, 0.95), 1)} for kind, ms in times.items() if ms}
    print(json.dumps({
        "benchmark": "command_gate", "trials_per_kind": args.trials, "per_command": figures,
        "gate_overhead_median_ms": round(figures["gated"]["median_ms"] - figures["ungated"]["median_ms"], 1),
        "kill_rule_latency_ms": {"fired": len(kills), "p50": round(percentile(kills, 0.5), 1) if kills else None,
                                 "max": round(max(kills), 1) if kills else None},
        "outcomes": outcomes,
    }))


if __name__ == "__main__":
    main()
