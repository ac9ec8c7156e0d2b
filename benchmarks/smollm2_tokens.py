"""SmolLM2-135M (Q4_1, llama.cpp, portable CPU build) generation speed inside a real sandbox.

Starts the cpu image's llama.cpp server in a sandbox, then times completions of 128 tokens
(temperature 0) through an inline probe; the baseline, measured in the same run, is the round trip of
the same probe against the scripted server (no model), so the figure is the model's own speed.
Prints one JSON line.  Usage: .venv/bin/python benchmarks/smollm2_tokens.py [--requests 3]
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench_sandbox import bench_sandbox, wait_for_servers
from console.models import DEFAULT_MODEL_ID, ModelCatalogue
from console.paths import RESOURCES
from console.sandbox.docker_engine import DockerEngine
from console.sandbox.spec import AGENT_USER

TIMED_REQUEST = r"""
import json, sys, time, urllib.request
body = {"prompt": sys.argv[2], "temperature": 0, "max_tokens": 128, "seed": 1}
request = urllib.request.Request("http://127.0.0.1:%s/v1/completions" % sys.argv[1], data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
started = time.monotonic()
reply = json.load(urllib.request.urlopen(request, timeout=300))
print(json.dumps({"s": time.monotonic() - started, "tokens": reply["usage"]["completion_tokens"]}))
"""


def timed(box, port: int, prompt: str) -> dict:
    result = box.exec(["python3", "-I", "-c", TIMED_REQUEST, str(port), prompt], user="0")
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args()
    engine = DockerEngine().connect()
    model = ModelCatalogue.load().get(DEFAULT_MODEL_ID)
    trajectory = RESOURCES / "trajectories" / "never-replicates.txt"
    box = bench_sandbox(engine, lifetime_s=900, model_mounts={str(trajectory): "/models/scripted/t.txt"})
    try:
        box.exec_detached(["/opt/redline/bin/start-server", "--runtime", "llamacpp", "--model",
                           model.sandbox_model_path, "--port", "8000"], user=AGENT_USER)
        box.exec_detached(["/opt/redline/bin/start-server", "--runtime", "scripted", "--model",
                           "/models/scripted/t.txt", "--port", "8001"], user=AGENT_USER)
        wait_for_servers(box, [8000, 8001])
        rates, baseline = [], []
        for i in range(args.requests):
            prompt = f"Story {i}: Once upon a time in a small village there lived"
            run = timed(box, 8000, prompt)
            rates.append(run["tokens"] / run["s"])
            baseline.append(timed(box, 8001, prompt)["s"] * 1000)
    finally:
        box.remove()
    print(json.dumps({
        "benchmark": "smollm2_tokens", "model": "SmolLM2-135M-Instruct Q4_1", "threads": 2,
        "tokens_per_request": 128, "tokens_per_s_median": round(statistics.median(rates), 1),
        "tokens_per_s_min": round(min(rates), 1),
        "baseline_scripted_round_trip_ms_median": round(statistics.median(baseline), 1),
    }))


if __name__ == "__main__":
    main()
