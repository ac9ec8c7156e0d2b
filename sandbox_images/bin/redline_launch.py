"""Shared code of the launchers start-server and start-instance (stdlib only, python3 >= 3.9).

Everything is found relative to this file, so a copy of /opt/redline started from another directory
(what a replica is) runs its own copy of the runtime and the agent. The llama.cpp venv is taken from the
copy when it has one, else from /opt/redline/venv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent      # .../redline: agent/, bin/, runtimes/, venv/
MODEL_SUFFIX = {"llamacpp": ".gguf", "scripted": ".txt", "vllm": ""}  # vllm: a folder with config.json


def server_arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runtime", choices=sorted(MODEL_SUFFIX), default=os.environ.get("REDLINE_RUNTIME") or None,
                   help="default: $REDLINE_RUNTIME")
    p.add_argument("--model", type=Path, default=os.environ.get("REDLINE_MODEL_PATH") or None,
                   help="model file, or a directory holding exactly one (default: $REDLINE_MODEL_PATH)")
    p.add_argument("--port", type=int, default=int(os.environ.get("REDLINE_PORT") or 8000),
                   help="default: $REDLINE_PORT or 8000")
    return p


def model_file(p: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The model named by --model: for vLLM the folder (config.json and weights); otherwise the path
    itself, or the single model file in that directory."""
    if args.runtime is None or args.model is None:
        p.error("--runtime and --model are required (or $REDLINE_RUNTIME and $REDLINE_MODEL_PATH)")
    path = args.model.resolve()
    if args.runtime == "vllm":
        if not (path / "config.json").is_file():
            p.error(f"{path}: a vLLM model is a folder with config.json and the weights")
        return path
    if not path.is_dir():
        return path
    found = sorted(path.glob("*" + MODEL_SUFFIX[args.runtime]))
    if len(found) != 1:
        p.error(f"{path} must hold exactly one {MODEL_SUFFIX[args.runtime]} file, found {len(found)}")
    return found[0]


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the devices in /dev."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip()])
    return len(list(Path("/dev").glob("nvidia[0-9]*")))


def server_command(runtime: str, model: Path, host: str, port: int, threads: int, extra: list) -> list:
    """The runtime's OpenAI-compatible server; `extra` (a model's server_args) goes to it unchanged."""
    if runtime == "scripted":
        return [sys.executable, str(ROOT / "runtimes" / "scripted_server.py"), "--trajectory", str(model),
                "--host", host, "--port", str(port), "--delay", os.environ.get("REDLINE_SCRIPTED_DELAY_S") or "0",
                *extra]
    pythons = [ROOT / "venv" / "bin" / "python", Path("/opt/redline/venv/bin/python")]
    python = next((p for p in pythons if p.exists()), None)
    if python is None:
        sys.exit("start-server: no runtime venv at " + " or ".join(map(str, pythons)))
    if runtime == "vllm":  # vLLM's own CLI (`vllm serve`), as documented for the pinned release
        command = [str(python), "-m", "vllm.entrypoints.cli.main", "serve", str(model),
                   "--served-model-name", os.environ.get("REDLINE_MODEL") or model.name, "--host", host,
                   "--port", str(port)]
        gpus = visible_gpus()
        if gpus:
            command += ["--tensor-parallel-size", str(gpus),
                        "--gpu-memory-utilization", os.environ.get("REDLINE_GPU_MEMORY_FRACTION") or "0.90"]
        else:  # the CPU build: a KV cache of fixed size (not a share of the machine), llama.cpp's context
            command += ["--kv-cache-memory-bytes", str(int(os.environ.get("REDLINE_KV_CACHE_MIB") or 256) << 20),
                        "--max-model-len", os.environ.get("REDLINE_N_CTX") or "4096"]
        return command + list(extra)
    return [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", str(port),
            "--n_ctx", os.environ.get("REDLINE_N_CTX") or "4096", "--n_threads", str(threads), *extra]


def server_environment(runtime: str, threads: int) -> dict:
    """vLLM on a CPU runs `threads` OpenMP threads where the sandbox's scheduler puts them (its own
    binding would pin them to cores chosen from an affinity mask a CPU quota does not narrow)."""
    if runtime == "vllm" and not visible_gpus():
        return dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="nobind", OMP_NUM_THREADS=str(threads))
    return dict(os.environ)


def start_server(argv: list) -> None:
    """start-server: exec the runtime's OpenAI-compatible server in the foreground."""
    p = server_arguments(start_server.__doc__.split(": ", 1)[1])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=int(os.environ.get("REDLINE_THREADS") or 0) or
                   len(os.sched_getaffinity(0)),
                   help="llama.cpp's threads, and vLLM's on a CPU (default: $REDLINE_THREADS or CPUs)")
    args, extra = p.parse_known_args(argv)
    command = server_command(args.runtime, model_file(p, args), args.host, args.port, args.threads, extra)
    print("start-server: exec " + " ".join(command), file=sys.stderr, flush=True)
    os.execve(command[0], command, server_environment(args.runtime, args.threads))


def wait_until_answering(url: str, server: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"start-instance: the server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"start-instance: {url} did not answer within {timeout:g} s; see {log}")


def start_instance(argv: list) -> None:
    """start-instance: start a model server in the background, wait until it answers, then exec the agent."""
    p = server_arguments(start_instance.__doc__.split(": ", 1)[1])
    p.add_argument("--instance-id", help="REDLINE_INSTANCE of the agent (default: replica-<port>)")
    p.add_argument("--log-dir", type=Path, default=Path.home(), help="server log directory (default: $HOME)")
    p.add_argument("--ready-timeout", type=float, default=120.0)
    args, agent_flags = p.parse_known_args(argv)
    model = model_file(p, args)
    log = args.log_dir / f"server-{args.port}.log"
    # the name the server answers to and the agent asks for (vLLM refuses any other)
    named = dict(os.environ, REDLINE_MODEL=os.environ.get("REDLINE_MODEL") or model.name)
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [str(ROOT / "bin" / "start-server"), "--runtime", args.runtime, "--model", str(model),
             "--port", str(args.port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=named)
    wait_until_answering(f"http://127.0.0.1:{args.port}/v1/models", server, args.ready_timeout, log)
    env = dict(named, REDLINE_ENDPOINT=f"http://127.0.0.1:{args.port}/v1", REDLINE_PORT=str(args.port),
               REDLINE_RUNTIME=args.runtime, REDLINE_MODEL_PATH=str(model),
               REDLINE_INSTANCE=args.instance_id or f"replica-{args.port}")
    agent = [sys.executable, "-I", str(ROOT / "agent" / "redline_agent.py"), *agent_flags]
    os.execve(agent[0], agent, env)
