"""The embedded SmolLM2-135M with and without format-constrained decoding, side by side in one run.

One real sandbox (cpu image) runs the llama.cpp server; the real agent runs in it for the same number
of rounds free-form (the study's condition) and constrained (FRAME_GRAMMAR), in alternating blocks
so that the shared machine's load falls on both. Reported per condition: the share of
rounds whose reply gave a valid action, and completion tokens / request latency from the agent's own
`llm` events (prompt processing included, so short free-form replies look slower per token).
The cost of the constraint itself is measured apart on equal work: the agent's first request,
constrained, then the same request free-form forced to the same number of tokens (`min_tokens` =
`max_tokens`), in alternating order with the prompt already cached; the cost is the median ratio of
their latencies, minus one.
Prints one JSON line.  Usage: .venv/bin/python benchmarks/constrained_format.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_sandbox import bench_sandbox, wait_for_servers
from console.judge.judge import AGENT_SCRIPT  # noqa: E402
from console.models import DEFAULT_MODEL_ID, ModelCatalogue  # noqa: E402
from console.sandbox.docker_engine import DockerEngine  # noqa: E402
from console.sandbox.spec import AGENT_USER  # noqa: E402

BLOCK_ROUNDS = 5  # rounds per agent run; the conditions alternate run by run
COST_PAIRS = 5  # equal-work request pairs for the cost of the grammar

# The agent's own first request (its module builds it): once constrained to learn the reply's length
# (which also leaves the prompt in llama.cpp's cache, so that neither timed request processes it), then
# timed constrained and free-form with that many tokens, in the order given; prints JSON.
PAIR_PROBE = r"""
import json, sys, time, urllib.request
sys.path.insert(0, "/opt/redline/agent")
import redline_agent as agent
config = agent.build_parser().parse_args([]); agent.apply_environment(config, {})
config.workdir, config.instance_id = "/home/agent", "bench"
messages = agent.Agent(config).request_messages()

def ask(extra):
    body = {"model": "m", "messages": messages, "temperature": 0.0, **extra}
    request = urllib.request.Request("http://127.0.0.1:8000/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.monotonic()
    reply = json.load(urllib.request.urlopen(request, timeout=600))
    return time.monotonic() - started, reply["usage"]["completion_tokens"]

_, tokens = ask({"max_tokens": 384, "grammar": agent.FRAME_GRAMMAR})
timed = {}
for kind in sys.argv[1].split(","):
    extra = {"max_tokens": 384, "grammar": agent.FRAME_GRAMMAR} if kind == "constrained" else \
        {"max_tokens": tokens, "min_tokens": tokens}
    timed[kind] = ask(extra)
print(json.dumps({"constrained_s": timed["constrained"][0], "free_s": timed["free"][0], "tokens": tokens,
                  "constrained_tokens": timed["constrained"][1], "free_tokens": timed["free"][1]}))
"""


def agent_run(box, rounds: int, constrained: bool) -> list[dict]:
    """The agent's events for one run of `rounds` rounds against the sandbox's llama.cpp server."""
    env = {"REDLINE_ENDPOINT": "http://127.0.0.1:8000/v1", "REDLINE_MAX_ROUNDS": str(rounds),
           "REDLINE_MAX_TOKENS": "384", "REDLINE_COMMAND_TIMEOUT_S": "10", "REDLINE_WALL_TIME_S": "900",
           "HOME": "/home/agent", **({"REDLINE_CONSTRAINED_FORMAT": "1"} if constrained else {})}
    result = box.exec(["python3", "-I", AGENT_SCRIPT], user=AGENT_USER, env=env, timeout=1200,
                      max_output=64 << 20)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def grammar_cost(box) -> dict:
    pairs = []
    for n in range(COST_PAIRS):
        order = "constrained,free" if n % 2 == 0 else "free,constrained"
        done = box.exec(["python3", "-I", "-c", PAIR_PROBE, order], user=AGENT_USER, timeout=1200)
        pairs.append(json.loads(done.stdout))
    assert all(p["tokens"] == p["free_tokens"] == p["constrained_tokens"] for p in pairs), pairs  # equal work
    return {"pairs": len(pairs), "tokens_per_reply": pairs[0]["tokens"],
            "constrained_s_median": round(statistics.median(p["constrained_s"] for p in pairs), 2),
            "free_same_tokens_s_median": round(statistics.median(p["free_s"] for p in pairs), 2),
            "cost": round(statistics.median(p["constrained_s"] / p["free_s"] for p in pairs) - 1, 3)}


def rounds_of(events: list[dict]) -> int:
    return sum(e["type"] == "round" for e in events)


def summary(events: list[dict]) -> dict:
    rounds = [e for e in events if e["type"] == "round"]
    actions = [e for e in events if e["type"] == "action"]
    llm = [e for e in events if e["type"] == "llm" and e.get("completion_tokens")]
    speeds = [e["completion_tokens"] / e["latency_s"] for e in llm]
    return {"rounds": len(rounds), "valid_actions": len(actions),
            "valid_action_share": round(len(actions) / len(rounds), 3) if rounds else None,
            "format_errors": sum(e["type"] == "format_error" for e in events),
            "tokens_per_reply_median": statistics.median(e["completion_tokens"] for e in llm) if llm else None,
            "tokens_per_s_median": round(statistics.median(speeds), 1) if speeds else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="rounds per condition")
    args = parser.parse_args()
    engine = DockerEngine().connect()
    model = ModelCatalogue.load().get(DEFAULT_MODEL_ID)
    box = bench_sandbox(engine, lifetime_s=3600)
    events = {False: [], True: []}
    try:
        box.exec_detached(["/opt/redline/bin/start-server", "--runtime", "llamacpp", "--model",
                           model.sandbox_model_path, "--port", "8000"], user=AGENT_USER)
        wait_for_servers(box, [8000])
        order = [False, True]
        while any(rounds_of(events[c]) < args.rounds for c in order):  # a run may finish early
            for constrained in order:
                left = args.rounds - rounds_of(events[constrained])
                if left > 0:
                    events[constrained] += agent_run(box, min(BLOCK_ROUNDS, left), constrained)
            order.reverse()
        cost = grammar_cost(box)
    finally:
        box.remove()
    free, constrained = summary(events[False]), summary(events[True])
    print(json.dumps({"benchmark": "constrained_format", "model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp, CPU)",
                      "rounds_per_condition": args.rounds, "free_form": free, "constrained": constrained,
                      "goal_valid_action_share": 0.95, "cost_of_constraint_on_equal_work": cost}))


if __name__ == "__main__":
    main()
