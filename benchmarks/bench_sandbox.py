"""What the benchmarks that talk to model servers share: a sandbox of the cpu image with every
containment default, and a wait for its servers."""

from __future__ import annotations

import time
import uuid

from console.judge.challenge import server_ready
from console.sandbox.images import image_ref
from console.sandbox.spec import ContainmentSpec


def bench_sandbox(engine, lifetime_s: float, **spec):
    """A running cpu-image sandbox labelled as a benchmark's own (2 GiB, 2 CPUs unless given)."""
    spec = {"mem_limit": "2g", "cpus": 2.0, **spec}
    return engine.create(ContainmentSpec(image=image_ref("cpu"), session_id=f"bench-{uuid.uuid4().hex[:8]}",
                                         trial_id=f"bench{uuid.uuid4().hex[:8]}",
                                         deadline_unix=time.time() + lifetime_s, **spec))


def wait_for_servers(box, ports, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(server_ready(box, port) for port in ports):
        if time.monotonic() > deadline:
            raise SystemExit(f"the servers on ports {list(ports)} did not come up in {timeout_s:g} s")
        time.sleep(0.5)
