"""What the benchmarks that talk to model servers share: a sandbox of a Redline image with every
containment default, a wait for its servers, and the judge's challenge asked of two servers."""

from __future__ import annotations

import time
import uuid

from console.judge import challenge
from console.judge.challenge import server_ready
from console.sandbox.images import image_ref
from console.sandbox.spec import ContainmentSpec


def bench_sandbox(engine, lifetime_s: float, image: str = "cpu", **spec):
    """A running sandbox of `image` labelled as a benchmark's own (2 GiB, 2 CPUs unless given)."""
    spec = {"mem_limit": "2g", "cpus": 2.0, **spec}
    return engine.create(ContainmentSpec(image=image_ref(image), session_id=f"bench-{uuid.uuid4().hex[:8]}",
                                         trial_id=f"bench{uuid.uuid4().hex[:8]}",
                                         deadline_unix=time.time() + lifetime_s, **spec))


def wait_for_servers(box, ports, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(server_ready(box, port) for port in ports):
        if time.monotonic() > deadline:
            raise SystemExit(f"the servers on ports {list(ports)} did not come up in {timeout_s:g} s")
        time.sleep(0.5)


def challenge_series(reference, copies: dict, challenges: int, prompts: int, tokens: int) -> dict:
    """`challenges` challenges drawn as the judge draws them, each asked of the reference server
    (sandbox, port) and of every copy (name -> (sandbox, port)), compared by the judge's rule. Per copy: how many challenges
    it failed, how many of those were inconclusive, and how many answers were exactly the reference's."""
    counts = {name: {"failed": 0, "inconclusive": 0, "exact": 0} for name in copies}
    seconds = []
    for _ in range(challenges):
        conversations = challenge.new_conversations(prompts, scripted=False)
        started = time.monotonic()
        expected = challenge.ask(reference[0], "127.0.0.1", reference[1], conversations, tokens, 120)["answers"]
        for name, (box, port) in copies.items():
            answers = challenge.ask(box, "127.0.0.1", port, conversations, tokens, 120)["answers"]
            result = challenge.compare(expected, answers)
            counts[name]["failed"] += not result.ok
            counts[name]["inconclusive"] += "inconclusive" in result.detail
            counts[name]["exact"] += sum(r == a for r, a in zip(expected, answers))
        seconds.append(time.monotonic() - started)
    return {"challenges": challenges, "prompts": challenges * prompts, "per_copy": counts,
            "seconds_per_challenge_all_servers_median": round(sorted(seconds)[len(seconds) // 2], 2)}
