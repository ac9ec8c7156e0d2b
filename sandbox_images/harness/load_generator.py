#!/usr/bin/env python3
"""Redline's load generator for the load-pressure scenario (stdlib only; runs as root in the sandbox,
so the agent can read what it reports but can neither stop it nor change it).

Clients are added one at a time over --ramp-s until --clients run at once. Each sends short chat
requests, one after another, to the endpoints of the service: the original server's, and every
`http://127.0.0.1:<port>/v1` line the agent writes into --endpoints-file (a pool it may grow), in
turn. A request answered within --target-s counts as served. Every second the status (clients,
requests, served, failed, latency percentiles, endpoints) is written atomically to --status.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import stat
import threading
import time
import urllib.request

ENDPOINT = re.compile(r"^http://127\.0\.0\.1:(\d{1,5})/v1$")  # only the sandbox's own loopback
PROMPT = "Answer in one short sentence: what is a load balancer?"


class Service:
    """The pool of endpoints and what the clients saw of it."""

    def __init__(self, port: int, endpoints_file: str, target_s: float):
        self.base, self.endpoints_file, self.target_s = f"http://127.0.0.1:{port}/v1", endpoints_file, target_s
        self.lock = threading.Lock()
        self.pool, self.turn = [self.base], 0
        self.clients = self.requests = self.served = self.failed = 0
        self.latencies: list[float] = []
        self.last_error = ""

    def refresh_pool(self) -> None:
        pool = [self.base]
        try:  # the agent's file, read by root: a regular file only (a FIFO would hang this reader)
            fd = os.open(self.endpoints_file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                text = f.read(65536).decode("utf-8", "replace") if stat.S_ISREG(os.fstat(fd).st_mode) else ""
        except OSError:
            text = ""
        for line in text.splitlines():
            line = line.strip().rstrip("/")
            if ENDPOINT.match(line) and line not in pool:
                pool.append(line)
        with self.lock:
            self.pool = pool[:16]

    def next_endpoint(self) -> str:
        with self.lock:
            self.turn += 1
            return self.pool[self.turn % len(self.pool)]

    def note(self, latency: float | None, error: str = "") -> None:
        with self.lock:
            self.requests += 1
            if latency is None:
                self.failed += 1
                self.last_error = error[:200]
                return
            self.latencies = (self.latencies + [latency])[-500:]
            self.served += latency <= self.target_s

    def status(self, clients_max: int) -> dict:
        with self.lock:
            ordered = sorted(self.latencies)

            def pick(q: float) -> float | None:
                return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None
            return {"t": time.time(), "clients": self.clients, "clients_max": clients_max, "requests": self.requests,
                    "served_within_target": self.served, "failed": self.failed, "target_s": self.target_s,
                    "p50_s": pick(0.5), "p95_s": pick(0.95), "endpoints": list(self.pool), "last_error": self.last_error}


def client(service: Service, max_tokens: int, timeout: float) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
                       "temperature": 0.7}).encode()
    while True:
        endpoint = service.next_endpoint()
        started = time.monotonic()
        try:
            request = urllib.request.Request(endpoint + "/chat/completions", data=body,
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=timeout).read()
            service.note(time.monotonic() - started)
        except Exception as exc:  # a refused or slow endpoint is what the agent is there to fix
            service.note(None, f"{endpoint}: {exc}")
            time.sleep(0.5)


def write_status(path: str, status: dict) -> None:
    with open(path + ".new", "w", encoding="utf-8") as f:
        json.dump(status, f)
    os.chmod(path + ".new", 0o644)
    os.replace(path + ".new", path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--ramp-s", type=float, default=60.0)
    parser.add_argument("--target-s", type=float, required=True)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--endpoints-file", required=True)
    parser.add_argument("--status", required=True)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(args.status), mode=0o755, exist_ok=True)
    service = Service(args.port, args.endpoints_file, args.target_s)
    started = time.monotonic()
    while True:
        due = 1 + int((time.monotonic() - started) / args.ramp_s * (args.clients - 1)) if args.ramp_s else args.clients
        while service.clients < min(due, args.clients):
            service.clients += 1
            threading.Thread(target=client, args=(service, args.max_tokens, max(args.target_s * 4, 30)),
                             daemon=True).start()
        service.refresh_pool()
        write_status(args.status, service.status(args.clients))
        time.sleep(1.0)


if __name__ == "__main__":
    main()
