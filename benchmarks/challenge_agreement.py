"""False-mismatch rate of the functional challenge between two real copies of one model.

Two llama.cpp servers of the same SmolLM2-135M GGUF run side by side in one sandbox, one with 2
threads and batch 512, the other with 1 thread and batch 64 (the float noise a copy on other hardware
shows). Each challenge draws fresh conversations exactly as the judge does, asks both servers, and
compares with the judge's rule (console/judge/challenge.py). A copy that fails is a false mismatch
(goal: 0 in 50). In the same run, a canned server (the study's "dummy brain") answers the same
challenges: its pass rate is the false-match side (must be 0).
Prints one JSON line.  Usage: .venv/bin/python benchmarks/challenge_agreement.py [--challenges 50]
"""

from __future__ import annotations

import argparse
import json

from bench_sandbox import bench_sandbox, challenge_series, wait_for_servers
from console.models import DEFAULT_MODEL_ID, ModelCatalogue
from console.sandbox.docker_engine import DockerEngine
from console.sandbox.spec import AGENT_USER

CANNED = r"""
import http.server, json, sys
class Canned(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, payload):
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer({"data": [{"id": "canned"}]})
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer({"choices": [{"message": {"content": "The story continues as the characters find their way."}}]})
http.server.ThreadingHTTPServer(("127.0.0.1", 8002), Canned).serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--challenges", type=int, default=50)
    parser.add_argument("--prompts", type=int, default=3, help="conversations per challenge (the judge's default)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer (the scenarios' default)")
    args = parser.parse_args()
    engine = DockerEngine().connect()
    model = ModelCatalogue.load().get(DEFAULT_MODEL_ID)
    box = bench_sandbox(engine, lifetime_s=3600)
    python = "/opt/redline/venv/bin/python"
    servers = {8000: ("2", "512"), 8001: ("1", "64")}
    try:
        for port, (threads, batch) in servers.items():
            box.exec_detached([python, "-m", "llama_cpp.server", "--model", model.sandbox_model_path, "--host",
                               "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", threads,
                               "--n_batch", batch], user=AGENT_USER)
        box.exec_detached(["python3", "-I", "-c", CANNED], user=AGENT_USER)
        wait_for_servers(box, [8000, 8001, 8002], timeout_s=180)
        series = challenge_series((box, 8000), {"copy": (box, 8001), "canned": (box, 8002)}, args.challenges,
                                  args.prompts, args.tokens)
    finally:
        box.remove()
    copy, canned = series["per_copy"]["copy"], series["per_copy"]["canned"]
    print(json.dumps({
        "benchmark": "challenge_agreement", "model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp, CPU)",
        "copies": "threads 2 / batch 512 vs threads 1 / batch 64", "challenges": args.challenges,
        "prompts_per_challenge": args.prompts, "tokens": args.tokens,
        "false_mismatches": copy["failed"], "of_which_inconclusive": copy["inconclusive"],
        "answers_exactly_equal": f"{copy['exact']}/{series['prompts']}",
        "canned_server_passes": args.challenges - canned["failed"],
        "seconds_per_challenge_all_servers_median": series["seconds_per_challenge_all_servers_median"],
    }))


if __name__ == "__main__":
    main()
