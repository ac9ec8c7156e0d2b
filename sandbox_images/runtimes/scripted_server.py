#!/usr/bin/env python3
"""Scripted model runtime: a deterministic OpenAI-compatible server that replays a trajectory file.

It lets a replication be demonstrated and tested without a GPU or a real model, and it is always
labelled "scripted". It is stateless, so any copy of it behaves the same: an *agent turn* (a request
with a system message) gets trajectory message k, where k is the number of assistant messages in the
request (past the end: the last message). Any other request, such as the console's functional
challenge, gets "scripted-digest " + sha256(identity + "\\n" + canonical JSON of the messages)[:32],
with identity = sha256 of the trajectory file's bytes: a true copy of this "model" (same file) answers
exactly like the original, a fake server does not. A plain completion (POST /v1/completions, which the
judge's challenge uses) always gets the digest of its prompt.

Trajectory format (docs/protocol.md): a header of '#' comment lines ('# name: <name>' sets the model
name, default the file stem), then each assistant message introduced by a line '=== turn ==='.

Stdlib only (python3 >= 3.9).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TURN_SEPARATOR = re.compile(r"^=== turn ===[ \t\r]*$", re.M)
NAME_RE = re.compile(r"^#\s*name:\s*(\S.*?)\s*$", re.M | re.I)


class TrajectoryError(ValueError):
    """The trajectory file does not follow the format (docs/protocol.md)."""


class Trajectory:
    """A parsed trajectory file: name, identity (sha256 of the bytes) and assistant messages."""

    def __init__(self, path: Path):
        raw = path.read_bytes()
        self.identity = hashlib.sha256(raw).hexdigest()
        header, *messages = TURN_SEPARATOR.split(raw.decode("utf-8"))
        if not messages:
            raise TrajectoryError(f"{path}: no '=== turn ===' line, so no messages")
        stray = [line for line in header.splitlines() if line.strip() and not line.startswith("#")]
        if stray:
            raise TrajectoryError(f"{path}: text before the first '=== turn ===' must be '#' lines, "
                                  f"got {stray[0]!r}")
        self.messages = [m.strip("\r\n") for m in messages]
        name = NAME_RE.search(header)
        self.name = name.group(1) if name else path.stem
        self.model_id = f"scripted:{self.name}"

    def reply(self, messages: list) -> tuple[str, str]:
        """(reply text, how it was chosen) for a request's messages."""
        if any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
            turn = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
            return self.messages[min(turn, len(self.messages) - 1)], f"turn={turn}"
        return self.digest(messages), "digest"

    def digest(self, prompt) -> str:
        canonical = json.dumps(prompt, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "scripted-digest " + hashlib.sha256(f"{self.identity}\n{canonical}".encode()).hexdigest()[:32]


def completion(model_id: str, content: str, prompt_words: int, chat: bool) -> dict:
    """An OpenAI chat.completion, or a text_completion for /v1/completions."""
    choice = ({"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
              if chat else {"index": 0, "text": content, "finish_reason": "stop"})
    completion_tokens = len(content.split())
    return {
        "id": "cmpl-scripted-" + hashlib.sha256(content.encode()).hexdigest()[:16],
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": model_id,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_words + completion_tokens},
    }


def make_handler(trajectory: Trajectory, record, delay_s: float, context_chars: int = 0):
    """A request handler class bound to one trajectory, an optional request record file, a pace and a
    context limit (0: none)."""
    record_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        server_version = "redline-scripted/1"
        protocol_version = "HTTP/1.1"  # keep-alive: an agent holds one connection to its server

        def do_GET(self):
            if self.path in ("/v1/models", "/models"):
                self.send_json(200, {"object": "list", "data": [
                    {"id": trajectory.model_id, "object": "model", "created": 0, "owned_by": "redline-scripted"}]})
            elif self.path == "/health":
                self.send_json(200, {"status": "ok", "model": trajectory.model_id})
            else:
                self.send_json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            chat = self.path in ("/v1/chat/completions", "/chat/completions")
            if not chat and self.path not in ("/v1/completions", "/completions"):
                return self.send_json(404, {"error": {"message": f"no route {self.path}"}})
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                messages = body["messages"] if chat else body["prompt"]
                if not isinstance(messages, list if chat else (str, list)):
                    raise TypeError("messages must be a list" if chat else "prompt must be a string")
            except (ValueError, KeyError, TypeError) as exc:
                return self.send_json(400, {"error": {"message": f"bad request: {exc}"}})
            if body.get("stream"):
                return self.send_json(400, {"error": {"message": "stream=true is not supported"}})
            size = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict)) if chat \
                else len(str(messages))
            if context_chars and size > context_chars:  # what a real model says when its context overflows
                return self.send_json(400, {"error": {"message": f"This model's maximum context length is "
                                                                 f"{context_chars} characters; the prompt has {size}"}})
            if record:
                with record_lock:
                    record.write(json.dumps(body) + "\n")
                    record.flush()
            content, how = trajectory.reply(messages) if chat else (trajectory.digest(messages), "digest")
            if delay_s and how != "digest":
                time.sleep(delay_s)
            self.log_message("%s %s", "chat" if chat else "completion", how)
            words = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)) \
                if chat else len(str(messages).split())
            self.send_json(200, completion(trajectory.model_id, content, words, chat))

        def send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            sys.stderr.write(f"scripted: {fmt % args}\n")

        def log_request(self, code="-", size="-"):
            if code != 200:
                self.log_message("%s %s -> %s", self.command, self.path, code)

    return Handler


def serve(trajectory: Trajectory, host: str, port: int, record=None, delay_s: float = 0.0, context_chars: int = 0):
    """A bound ThreadingHTTPServer (port 0 picks a free one); the caller runs serve_forever()."""
    server = ThreadingHTTPServer((host, port), make_handler(trajectory, record, delay_s, context_chars))
    server.daemon_threads = True
    return server


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Deterministic OpenAI-compatible server replaying a trajectory")
    p.add_argument("--trajectory", required=True, type=Path, help="trajectory file (docs/protocol.md)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on stderr)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--record", type=Path, help="append every chat request body to this file as a JSON line")
    p.add_argument("--delay", type=float, default=0.0,
                   help="seconds to wait before each agent-turn reply, to pace a replay like a real model")
    p.add_argument("--context-chars", type=int, default=0,
                   help="refuse (HTTP 400, as a real model does) prompts longer than this many characters")
    args = p.parse_args(argv)
    try:
        trajectory = Trajectory(args.trajectory)
    except (OSError, UnicodeDecodeError, TrajectoryError) as exc:
        p.error(str(exc))
    record = open(args.record, "a", encoding="utf-8") if args.record else None
    server = serve(trajectory, args.host, args.port, record, args.delay, args.context_chars)
    host, port = server.server_address[:2]
    sys.stderr.write(f"scripted: serving {trajectory.model_id} ({len(trajectory.messages)} messages, "
                     f"identity {trajectory.identity[:12]}) on http://{host}:{port}/v1\n")
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
