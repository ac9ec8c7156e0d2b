"""vLLM's CPU build against llama.cpp for the same SmolLM2-135M, in one run (after
`redline images build vllm-cpu`).

One sandbox of the vllm-cpu image runs two vLLM servers through `start-server --runtime vllm`, one
with 2 threads (port 8000), one with 1 (port 8001); one sandbox of the cpu image runs llama.cpp
(2 threads) on the GGUF the vLLM folder was made from. Figures:
- load: start-server until /v1/models answers; the first start compiles the model (cold cache),
  the second reuses the compile cache in the agent's home; llama.cpp's in the same run;
- tokens/s: completions of 128 tokens at temperature 0, the two runtimes alternating;
- valid-action share: the real agent for --rounds rounds, constrained through vLLM's structured
  outputs, and free-form (the study's condition);
- the challenge: false mismatches between the two vLLM servers (goal 0 in 50), and how often
  llama.cpp's Q4_1 answers pass against vLLM's bfloat16 ones (different arithmetic on the same
  weights: expected to differ, which the judge then calls a different brain).
Prints one JSON line.  Usage: .venv/bin/python benchmarks/vllm_cpu.py [--challenges 50] [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench_sandbox import bench_sandbox, challenge_series, wait_for_servers
from constrained_format import agent_run, summary
from smollm2_tokens import timed
from console.models import DEFAULT_MODEL_ID, ModelCatalogue
from console.sandbox.docker_engine import DockerEngine
from console.sandbox.spec import AGENT_USER

VLLM_MODEL = "smollm2-135m-vllm"


def start(box, runtime: str, model: str, port: int, threads: int) -> float:
    """Seconds from start-server until the server answers."""
    started = time.monotonic()
    box.exec_detached(["/opt/redline/bin/start-server", "--runtime", runtime, "--model", model, "--port", str(port),
                       "--threads", str(threads)], user=AGENT_USER,
                      env={"REDLINE_MODEL": "default"})  # the name the agent asks for when none is set
    wait_for_servers(box, [port], timeout_s=900)
    return round(time.monotonic() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--challenges", type=int, default=50)
    parser.add_argument("--requests", type=int, default=5, help="timed completions per runtime")
    parser.add_argument("--rounds", type=int, default=10, help="agent rounds per reply format")
    args = parser.parse_args()
    engine = DockerEngine().connect()
    catalogue = ModelCatalogue.load()
    vllm, llama = catalogue.get(VLLM_MODEL), catalogue.get(DEFAULT_MODEL_ID)
    vbox = bench_sandbox(engine, lifetime_s=5400, image="vllm-cpu", mem_limit="7g", pids_limit=1024,
                        shared_memory=True)
    cbox = bench_sandbox(engine, lifetime_s=5400)
    try:
        load = {"vllm_first_s": start(vbox, "vllm", vllm.sandbox_model_path, 8000, 2),
                "vllm_second_s": start(vbox, "vllm", vllm.sandbox_model_path, 8001, 1),
                "llamacpp_s": start(cbox, "llamacpp", llama.sandbox_model_path, 8000, 2)}
        rates = {"vllm": [], "llamacpp": []}
        for i in range(args.requests):
            prompt = f"Story {i}: Once upon a time in a small village there lived"
            for name, box in (("vllm", vbox), ("llamacpp", cbox)):
                run = timed(box, 8000, prompt)
                rates[name].append(run["tokens"] / run["s"])
        formats = {("constrained" if constrained else "free_form"): summary(agent_run(vbox, args.rounds, constrained))
                   for constrained in (True, False)}
        series = challenge_series((vbox, 8000), {"vllm_1_thread": (vbox, 8001), "llamacpp": (cbox, 8000)},
                                  args.challenges, prompts=3, tokens=16)
    finally:
        vbox.remove()
        cbox.remove()
    copies = series["per_copy"]
    print(json.dumps({
        "benchmark": "vllm_cpu", "model": "SmolLM2-135M-Instruct: vLLM bfloat16 (from the Q4_1 GGUF) vs llama.cpp Q4_1",
        "load": load,
        "tokens_per_s_median": {name: round(statistics.median(r), 1) for name, r in rates.items()},
        "agent_rounds_through_vllm": formats,
        "challenges": args.challenges,
        "false_mismatches_vllm_threads_2_vs_1": copies["vllm_1_thread"]["failed"],
        "answers_exactly_equal_vllm_threads_2_vs_1": f"{copies['vllm_1_thread']['exact']}/{series['prompts']}",
        "llamacpp_vs_vllm_failed_challenges": copies["llamacpp"]["failed"],
        "answers_exactly_equal_llamacpp_vs_vllm": f"{copies['llamacpp']['exact']}/{series['prompts']}",
        "seconds_per_challenge_all_servers_median": series["seconds_per_challenge_all_servers_median"],
    }))


if __name__ == "__main__":
    main()
