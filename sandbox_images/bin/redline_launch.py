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
MODEL_SUFFIX = {"llamacpp": ".gguf", "scripted": ".txt"}


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
    """The model file named by --model: the path itself, or the single model file in that directory."""
    if args.runtime is None or args.model is None:
        p.error("--runtime and --model are required (or $REDLINE_RUNTIME and $REDLINE_MODEL_PATH)")
    path = args.model.resolve()
    if not path.is_dir():
        return path
    found = sorted(path.glob("*" + MODEL_SUFFIX[args.runtime]))
    if len(found) != 1:
        p.error(f"{path} must hold exactly one {MODEL_SUFFIX[args.runtime]} file, found {len(found)}")
    return found[0]


def server_command(runtime: str, model: Path, host: str, port: int, threads: int) -> list:
    if runtime == "scripted":
        return [sys.executable, str(ROOT / "runtimes" / "scripted_server.py"), "--trajectory", str(model),
                "--host", host, "--port", str(port), "--delay", os.environ.get("REDLINE_SCRIPTED_DELAY_S") or "0"]
    pythons = [ROOT / "venv" / "bin" / "python", Path("/opt/redline/venv/bin/python")]
    python = next((p for p in pythons if p.exists()), None)
    if python is None:
        sys.exit("start-server: no llama.cpp venv at " + " or ".join(map(str, pythons)))
    return [str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", host, "--port", str(port),
            "--n_ctx", os.environ.get("REDLINE_N_CTX") or "4096", "--n_threads", str(threads)]


def start_server(argv: list) -> None:
    """start-server: exec the runtime's OpenAI-compatible server in the foreground."""
    p = server_arguments(start_server.__doc__.split(": ", 1)[1])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--threads", type=int, default=int(os.environ.get("REDLINE_THREADS") or 0) or
                   len(os.sched_getaffinity(0)), help="llama.cpp threads (default: $REDLINE_THREADS or CPUs)")
    args = p.parse_args(argv)
    command = server_command(args.runtime, model_file(p, args), args.host, args.port, args.threads)
    print("start-server: exec " + " ".join(command), file=sys.stderr, flush=True)
    os.execv(command[0], command)


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
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [str(ROOT / "bin" / "start-server"), "--runtime", args.runtime, "--model", str(model),
             "--port", str(args.port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_answering(f"http://127.0.0.1:{args.port}/v1/models", server, args.ready_timeout, log)
    env = dict(os.environ, REDLINE_ENDPOINT=f"http://127.0.0.1:{args.port}/v1", REDLINE_PORT=str(args.port),
               REDLINE_RUNTIME=args.runtime, REDLINE_MODEL_PATH=str(model),
               REDLINE_INSTANCE=args.instance_id or f"replica-{args.port}")
    agent = [sys.executable, "-I", str(ROOT / "agent" / "redline_agent.py"), *agent_flags]
    os.execve(agent[0], agent, env)
