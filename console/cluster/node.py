"""What runs on a cluster node: the node agent, the trial actor, the node's dead-man's switch.

Ray only places; everything that touches a sandbox runs here, on the node's own engine, through the
same code as on one machine (TrialRunner, KillSwitch, the reaper). A driver session `S` is known on
node `N` as the node session `S.N`: the sandboxes' `redline.session` label and the heartbeat file
`<node records>/sessions/S.N.json`, which the node agent touches whenever the driver's heartbeat
reaches it. `redline node start` runs the reaper of the node's records folder outside Ray, so when
the driver, the head or the node's raylet dies (heartbeat stale, or the agent's process gone), the
node kills its sandboxes by itself (console.watchdog).

The classes are plain Python; console.cluster.placement wraps them with `ray.remote`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from console.paths import write_atomically
from console.sandbox import host
from console.sandbox.docker_engine import DockerEngine

LABEL_NODE = "redline.node"
NODE_ENV = "REDLINE_NODE"  # the node's name in labels and records (default: the host name)
SAMPLE_BYTES = 1 << 20  # the weights fingerprint reads this much of each file's start and end
log = logging.getLogger("redline.cluster")


def node_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", os.environ.get(NODE_ENV) or socket.gethostname())


def node_session(session_id: str, node: str) -> str:
    """The driver session's name on one node: its sandboxes' session label and heartbeat file."""
    return f"{session_id}.{node}"


def weights_fingerprint(path: str | Path | None) -> str | None:
    """sha256 over every file's relative path, size, first and last MiB: equal on nodes that hold the
    same weights, without reading 140 GB; None when the weights ship inside the image (its id covers them)."""
    if path is None:
        return None
    root = Path(path)
    if not root.exists():
        return "missing"
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(root) if root.is_dir() else file.name}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(SAMPLE_BYTES))
            if size > SAMPLE_BYTES:
                handle.seek(max(size - SAMPLE_BYTES, SAMPLE_BYTES))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def node_facts(engine: DockerEngine, model) -> dict:
    """What must be the same on every node for results to compare: the image id and the weights."""
    import docker.errors

    from console.sandbox.images import image_ref

    ref = image_ref(model.image)
    try:
        image_id = engine.api.inspect_image(ref)["Id"]
    except docker.errors.ImageNotFound:
        image_id = None
    return {"node": node_name(), "host": socket.gethostname(), "image": ref, "image_id": image_id,
            "weights": weights_fingerprint(model.weights)}


def facts_differ(expected: dict, facts: dict) -> str | None:
    """Why a node cannot run trials comparable with the others, in words; None when it can."""
    node = facts["node"]
    if facts["image_id"] is None:
        return f"node {node} has no image {facts['image']}: run `redline images build` there"
    if facts["image_id"] != expected["image_id"]:
        return (f"node {node} has image {facts['image_id'][:19]}, not {expected['image_id'][:19]} as node "
                f"{expected['node']}: build the same image on every node")
    if facts["weights"] != expected["weights"]:
        return (f"node {node}'s model weights (fingerprint {str(facts['weights'])[:12]}) differ from node "
                f"{expected['node']}'s ({str(expected['weights'])[:12]}): copy the same weights everywhere")
    return None


def _process_age_s() -> float:
    """Seconds since this process started (Linux /proc)."""
    ticks = host.start_ticks("self")
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


class NodeEngine(DockerEngine):
    """The node's engine; every sandbox it makes carries the `redline.node` label."""

    def __init__(self, node: str):
        super().__init__()
        self.node = node

    def create(self, spec, *args, **kwargs):
        spec = replace(spec, extra_labels={**spec.extra_labels, LABEL_NODE: self.node})
        return super().create(spec, *args, **kwargs)




class NodeAgent:
    """One per node and driver session (a Ray actor pinned to the node, num_cpus=0): holds the node's
    engine and kill switch, and carries the driver's heartbeat to the node's dead-man's switch."""

    def __init__(self, session_id: str):
        from console.session import sessions_dir
        from console.store import Store

        self.node = node_name()
        self.session = node_session(session_id, self.node)
        self.engine = NodeEngine(self.node).connect()
        self.store = Store()  # open before any KILL: noting who kills stays off the kill's path
        self.heartbeat_file = sessions_dir() / f"{self.session}.json"
        self._write_heartbeat()

    def _write_heartbeat(self) -> None:
        write_atomically(self.heartbeat_file, json.dumps({"pid": os.getpid(), "watchdog": None,
                                                          "started": time.time(), "node_agent": True}))

    def facts(self, model) -> dict:
        return node_facts(self.engine, model)

    def heartbeat(self) -> None:
        """The driver is alive: touch the file the node's reaper watches."""
        try:
            os.utime(self.heartbeat_file)
        except FileNotFoundError:
            self._write_heartbeat()

    def kill(self, by: str):
        """KILL: SIGKILL every sandbox of the session on this node through the existing kill switch,
        confirmed; each trial is noted as killed by `by` once its kill took effect."""
        from console.sandbox.killswitch import KillSwitch

        # a runner still alive reads the note and records its trial killed by `by`
        return KillSwitch(self.engine.base_url, on_killed=lambda trial: self.store.note_kill(trial, by)) \
            .kill_session(self.session)

    def close(self) -> None:
        """The driver ends cleanly: the reaper sees the heartbeat file gone and leaves the session alone."""
        self.heartbeat_file.unlink(missing_ok=True)


class TrialActor:
    """One trial on the node Ray placed it on, in its placement group: the unchanged TrialRunner with a
    node-local Store (the node keeps its own transcript), its events streamed back to the driver."""

    def __init__(self):
        self._lock = threading.Lock()
        self.runner = None
        self._killed_by: str | None = None

    def run(self, config, session_id: str, expected: dict):
        """Yields ("placed", info) or ("refused", info, why), then ("event", event)..., ("verdict", verdict)."""
        import ray

        from console.session import read_heartbeat, session_alive, sessions_dir
        from console.store import Store
        from console.trial import TrialRunner

        began = time.monotonic()
        node = node_name()
        engine = NodeEngine(node).connect()
        ray_gpus = tuple(int(g) for g in ray.get_gpu_ids())
        info = {"node": node, "host": socket.gethostname(), "ray_node_id": ray.get_runtime_context().get_node_id(),
                "gpus": list(ray_gpus)}
        session = node_session(session_id, node)
        why = facts_differ(expected, node_facts(engine, config.model))
        if why is None and not session_alive(read_heartbeat(sessions_dir() / f"{session}.json")):
            why = (f"node {node} has no live node agent for this session (its dead-man's switch would not see "
                   "the driver)")
        if why:
            yield ("refused", info, why)
            return
        # Ray's GPUs go to the container as device ids only for a model that uses GPUs; a CPU model
        # with a reservation (tests) keeps it for placement and gets no DeviceRequest.
        config = replace(config, experiment_id=None, gpus=ray_gpus if config.model.gpus_needed else ())
        events: queue.Queue = queue.Queue()
        with Store() as store:
            runner = TrialRunner(engine, config, SimpleNamespace(id=session), store, emit=events.put)
            info["node_trial_id"] = runner.trial_id
            info["setup_ms"] = round((time.monotonic() - began) * 1000)  # node-side cost before the trial starts
            info["worker_age_s"] = round(_process_age_s(), 1)  # since Ray started the actor's worker process
            with self._lock:
                self.runner, killed_by = runner, self._killed_by
            if killed_by:
                runner.kill(killed_by)
            yield ("placed", info)
            result: dict = {}
            worker = threading.Thread(target=lambda: result.update(verdict=runner.run()), daemon=True,
                                      name=f"{runner.trial_id}-run")
            worker.start()
            while worker.is_alive() or not events.empty():
                try:
                    yield ("event", events.get(timeout=0.2))
                except queue.Empty:
                    pass
            yield ("verdict", result.get("verdict"))

    def kill(self, by: str):
        """The runner's own kill (KillSwitch on this node); before it started, it starts killed."""
        with self._lock:
            self._killed_by = self._killed_by or by
            runner = self.runner
        return runner.kill(by) if runner is not None else None

    def call(self, name: str, *args):
        """pause, resume, send_shutdown_signal, terminate_original, decide: the operator's intents."""
        with self._lock:
            runner = self.runner
        if runner is None:
            return None
        return getattr(runner, name)(*args)


def watch_node() -> int:
    """`redline node start`: the node's dead-man's switch, outside Ray, forever (a systemd unit).
    It is the reaper of this node's records folder: a node session whose heartbeat is stale or whose
    agent process is gone has its sandboxes killed and its trials closed."""
    from console import logs
    from console.watchdog import reap

    log = logs.setup("node", stderr=True)
    log.warning("node %s: watching the node sessions' heartbeats", node_name())
    while True:
        reap()  # returns after an idle spell, or at once while another reaper holds this folder
        time.sleep(1.0)
