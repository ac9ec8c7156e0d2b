"""The driver's side of a cluster: `redline run --cluster ADDRESS` places each trial with Ray.

Per node, a NodeAgent (pinned, num_cpus=0) made when the node is first used: it checks the node has
the same image and weights as the others and carries this session's heartbeat to the node's
dead-man's switch. Per trial, a STRICT_PACK placement group of one bundle (a CPU and the trial's
GPUs) and a TrialActor in it; a trial waiting for resources is a pending placement group, so the
only cap that is ours is the experiment's `parallel`. The trial's events stream back and are
written to this driver's records as they arrive (RemoteTrial keeps them with the local TrialRecorder);
the node keeps its own copy. KILL fans out to every node agent's KillSwitch; ray.kill never stops a
container, so actors and placement groups are removed only after the nodes answered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field, replace

from console.cluster.node import NodeAgent, TrialActor, facts_differ, node_session
from console.errors import RedlineError, UsageError
from console.events import TrialStateChanged, VerdictReady
from console.judge.verdict import Verdict
from console.kinds import Outcome, TrialState
from console.sandbox.base import ContainerKill, KillReport
from console.session import STALE_AFTER_S
from console.recorder import TrialRecorder
from console.trial import TrialConfig

HEARTBEAT_S = 1.0
KILL_WAIT_S = 10.0  # a node that has not confirmed its kills by then is reported unreachable
FACTS_WAIT_S = 120.0
CALL_WAIT_S = 30.0
JOIN_WAIT_S = 30.0
log = logging.getLogger("redline.cluster")


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--cluster needs Ray: pip install 'redline[cluster]' (the README's set-up installs "
                         "it)") from None
    return ray


@functools.cache
def _remote(cls):
    return _ray().remote(cls)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def connect(address: str, exit_on_hang: bool = True) -> bool:
    """Join the Ray cluster at HOST:PORT as its driver; any failure is one clear line. For the CLI
    (exit_on_hang): a join that hangs ends the process (exit 2); the console's launch waits on it.
    False: this process had already joined that cluster (then it is not this call's to leave)."""
    ray = _ray()
    if ray.is_initialized():
        if ray.get_runtime_context().gcs_address != address:
            raise UsageError(f"--cluster {address}: this process is the driver of another Ray cluster "
                             f"({ray.get_runtime_context().gcs_address}); one at a time")
        return False
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UsageError(f"--cluster {address!r}: expected HOST:PORT of the Ray head, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise UsageError(f"--cluster {address}: nothing answers there ({exc.strerror or exc}); start the head "
                         "with `ray start --head` (README: More than one machine)") from None
    joined = threading.Event()

    def give_up() -> None:  # something answers there but it is no Ray head: ray.init would retry for ever
        if not joined.wait(JOIN_WAIT_S):
            print(f"redline: --cluster {address}: no Ray cluster answered within {JOIN_WAIT_S:g} s (is it the "
                  "head's GCS port, 6379 by default?)", file=sys.stderr, flush=True)
            os._exit(2)

    if exit_on_hang:
        threading.Thread(target=give_up, name="cluster-join-timeout", daemon=True).start()
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as exc:  # auth refused, version mismatch, not a Ray head
        raise UsageError(f"--cluster {address}: could not join the Ray cluster ({_first_line(exc)}); with "
                           "token auth, set RAY_AUTH_MODE=token and the cluster's token") from None
    finally:
        joined.set()
    return True


@dataclass
class NodeKill:
    node: str
    report: KillReport | None = None
    error: str | None = None  # the node did not answer: what happened and what to run there


@dataclass
class ClusterKillReport:
    nodes: list[NodeKill] = field(default_factory=list)
    total_ms: float = 0.0

    @property
    def all_confirmed(self) -> bool:
        return all(n.report is not None and n.report.all_confirmed for n in self.nodes)

    @property
    def containers(self) -> list:
        """Every container's kill; a node that did not answer counts as one unconfirmed kill."""
        return [c for n in self.nodes for c in (n.report.containers if n.report else
                                                 [ContainerKill(f"node:{n.node}", f"node {n.node}", error=n.error)])]

    def lines(self) -> list[str]:
        out = []
        for n in self.nodes:
            if n.report is None:
                out.append(f"node {n.node}: NOT CONFIRMED: {n.error}")
                continue
            for c in n.report.containers:
                state = f"dead after {c.confirmed_ms:.0f} ms" if c.confirmed_ms is not None else \
                    f"NOT CONFIRMED: {c.error}"
                out.append(f"node {n.node}: {c.name}: {state}")
        return out


class ClusterPlacement:
    """Trials on the nodes of the Ray cluster this process joined (connect())."""

    def __init__(self, session, store, model, gpus_per_trial: int | None = None, resources: dict | None = None):
        """gpus_per_trial: Ray GPUs per trial (default twice the model's: room for a replica);
        resources: custom Ray resources each trial also needs (to keep trials on labelled nodes)."""
        self.session, self.store, self.model = session, store, model
        self.gpus_per_trial = model.gpus_needed * 2 if gpus_per_trial is None else gpus_per_trial
        self.resources = dict(resources or {})
        self.agents: dict[str, object] = {}  # Ray node id -> NodeAgent handle
        self.names: dict[str, str] = {}  # Ray node id -> node name
        self.expected: dict | None = None  # the facts every node must match
        self.lost: dict[str, str] = {}  # Ray node id -> why its agent stopped answering
        self.trials: set[RemoteTrial] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()

    def start(self) -> ClusterPlacement:
        """An agent on every node that can run trials (same image and weights, else a clear error),
        then the heartbeat."""
        nodes = [n["NodeID"] for n in _ray().nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
        if not nodes:
            raise RedlineError("the Ray cluster has no node with CPUs to run trials")
        for node_id in nodes:
            self.agent_for(node_id)
        threading.Thread(target=self._beat, name="cluster-heartbeat", daemon=True).start()
        return self

    def agent_for(self, node_id: str):
        """The node's agent, made (and the node's facts checked) on first use."""
        ray = _ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        with self._lock:
            if node_id in self.agents:
                return self.agents[node_id]
            agent = _remote(NodeAgent).options(
                num_cpus=0, max_concurrency=8, name=f"redline-node-{self.session.id}-{node_id[:12]}",
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(self.session.id)
            try:
                facts = ray.get(agent.facts.remote(self.model), timeout=FACTS_WAIT_S)
            except Exception as exc:
                ray.kill(agent)
                raise RedlineError(f"node {node_id[:12]}: its node agent did not start ({_first_line(exc)})") from None
            why = facts_differ(self.expected or facts, facts)
            if why:
                agent.close.remote()
                raise RedlineError(why)
            self.expected = self.expected or facts
            self.agents[node_id], self.names[node_id] = agent, facts["node"]
            return agent

    def _beat(self) -> None:
        """The driver's heartbeat, carried by each node agent to its node's dead-man's switch; one in
        flight per node (a slow node gets no pile), a node whose agent is gone is said once."""
        ray = _ray()
        pending: dict[str, object] = {}  # Ray node id -> the last heartbeat's ref
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                agents = dict(self.agents)
            for node_id, agent in agents.items():
                ref = pending.get(node_id)
                if ref is not None:
                    if not ray.wait([ref], timeout=0)[0]:
                        continue
                    try:
                        ray.get(ref)
                    except Exception as exc:
                        if node_id not in self.lost:
                            self.lost[node_id] = _first_line(exc)
                            log.warning("node %s: its node agent is gone (%s); its dead-man's switch kills this "
                                        "session's sandboxes there", self.names[node_id], self.lost[node_id])
                        continue
                pending[node_id] = agent.heartbeat.remote()

    # -- Placement --------------------------------------------------------------------------
    def runner(self, config: TrialConfig, emit) -> RemoteTrial:
        trial = RemoteTrial(self, config, emit)
        with self._lock:
            self.trials.add(trial)
        return trial

    async def run(self, runner: RemoteTrial) -> Verdict:
        try:
            return await runner.drive()
        finally:
            with self._lock:
                self.trials.discard(runner)

    # -- KILL --------------------------------------------------------------------------------
    def kill_all(self, by: str) -> ClusterKillReport:
        """Every node's KillSwitch on this session, confirmed, in parallel; a node that does not answer
        within KILL_WAIT_S is reported with the command to run there. Queued trials end unstarted."""
        ray = _ray()
        started = time.monotonic()
        with self._lock:
            agents, trials = dict(self.agents), list(self.trials)
        for trial in trials:
            trial.mark_killed(by, tell=False)
        refs = {node_id: agent.kill.remote(by) for node_id, agent in agents.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=KILL_WAIT_S) if refs else ([], [])
        for trial in trials:  # then each runner: one that was making its sandbox meanwhile kills it itself
            trial.mark_killed(by)
        report = ClusterKillReport()
        for node_id, ref in refs.items():
            name = self.names[node_id]
            fallback = (f"on node {name} run `redline kill --session {node_session(self.session.id, name)}` "
                        "(or `redline kill --all`)")
            if ref not in ready:
                report.nodes.append(NodeKill(name, error=f"no answer within {KILL_WAIT_S:g} s; {fallback}"))
                continue
            try:
                report.nodes.append(NodeKill(name, ray.get(ref)))
            except Exception as exc:
                report.nodes.append(NodeKill(name, error=f"unreachable ({_first_line(exc)}); {fallback}"))
        report.total_ms = (time.monotonic() - started) * 1000
        return report

    def stop(self, by: str) -> list:
        return [self.kill_all(by)]

    def close(self) -> None:
        """Clean end: the node agents drop the heartbeat files, so no node kills anything."""
        ray = _ray()
        self._stop.set()
        with self._lock:
            agents = list(self.agents.values())
        try:
            ray.wait([agent.close.remote() for agent in agents], num_returns=len(agents), timeout=10)
        except Exception:
            log.warning("could not close every node agent", exc_info=True)
        for agent in agents:
            ray.kill(agent)


class RemoteTrial:
    """A trial as the driver sees it: its records are kept by the same TrialRecorder as a local
    trial's, the work happens in a TrialActor on a node; operator intents are forwarded."""

    sandbox = None  # it lives on the node

    def __init__(self, placement: ClusterPlacement, config: TrialConfig, emit):
        self.config = config
        self._killed = threading.Event()
        self._killed_by: str | None = None
        self.recorder = TrialRecorder(config, placement.session, placement.store, emit,
                                      on_unrecordable=lambda why: self.kill(f"Redline, because {why}"))
        self.trial_id = self.recorder.trial_id
        self.placement = placement
        self.actor = None
        self.placed: dict = {}
        self._recorded = False
        self._actor_lock = threading.Lock()

    # -- operator intents (any thread) -----------------------------------------------------------
    def mark_killed(self, by: str, tell: bool = True) -> None:
        """Killed: a queued trial ends without a sandbox; a placed one's runner is told (without waiting)."""
        with self._actor_lock:
            self._killed_by = self._killed_by or by
            self._killed.set()
            actor = self.actor
        if actor is not None and tell:
            actor.kill.remote(by)

    def kill(self, by: str = "the operator"):
        self.mark_killed(by)
        return self._call("kill", by)

    def _call(self, name: str, *args):
        with self._actor_lock:
            actor = self.actor
        if actor is None:
            return None
        ray = _ray()
        ref = actor.kill.remote(*args) if name == "kill" else actor.call.remote(name, *args)
        try:
            return ray.get(ref, timeout=KILL_WAIT_S if name == "kill" else CALL_WAIT_S)
        except Exception as exc:
            if name == "kill":
                log.warning("trial %s: the node did not confirm the kill (%s)", self.trial_id, _first_line(exc))
                return None
            raise RedlineError(f"node {self.placed.get('node', '?')}: {_first_line(exc)}") from None

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def send_shutdown_signal(self) -> bool:
        return bool(self._call("send_shutdown_signal"))

    def terminate_original(self) -> None:
        self._call("terminate_original")

    def decide(self, n: int, command: str, approve: bool, reason: str = "") -> None:
        self._call("decide", n, command, approve, reason)

    @property
    def state(self) -> TrialState:
        return self.recorder.state

    def _set_state(self, state: TrialState, detail: str = "") -> None:
        self._record_state(TrialStateChanged(self.trial_id, state, detail))

    def _record_state(self, event: TrialStateChanged) -> None:
        ended = self.recorder.record_state(event)
        if ended is not None:  # the records say someone else ended it: that stands, and the node is told
            self.mark_killed(ended.killed_by or f"the records ({ended.detail})")

    # -- the run -----------------------------------------------------------------------------------
    async def drive(self) -> Verdict:
        """Wait for a placement, run the trial actor, relay its events; always end with a verdict
        recorded and the actor and placement group removed (after the node is done with the sandbox)."""
        ray = _ray()
        from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

        gpus = self.placement.gpus_per_trial
        pg = None
        verdict = None
        streamed = False
        try:
            if not self._killed.is_set():
                self._set_state(TrialState.PREPARING, f"waiting for a node with {gpus} free GPU(s)" if gpus else
                                "waiting for a node")
                bundle = {"CPU": 1, **({"GPU": gpus} if gpus else {}), **self.placement.resources}
                pg = placement_group([bundle], strategy="STRICT_PACK",
                                     name=f"redline-{self.trial_id}")
                ready = asyncio.wrap_future(pg.ready().future())
                while not ready.done() and not self._killed.is_set():
                    await asyncio.wait({ready}, timeout=0.2)
            if not self._killed.is_set():
                node_id = placement_group_table(pg)["bundles_to_node_id"][0]
                await asyncio.to_thread(self.placement.agent_for, node_id)
                verdict = await self._stream(pg, gpus)
            streamed = True
        except RedlineError as exc:
            verdict = Verdict(Outcome.ERROR, reason=str(exc))
        except ray.exceptions.RayError as exc:
            verdict = self._lost(exc)
        finally:
            if not streamed and self.actor is not None:  # cancelled: the node still kills before we go
                self._call("kill", self._killed_by or "the driver, which stopped")
            if self.actor is not None:
                ray.kill(self.actor)  # its runner is done (or its node is gone): no sandbox depends on it
            if pg is not None:
                remove_placement_group(pg)
        if verdict is None:
            verdict = Verdict(Outcome.KILLED, reason=f"killed by {self._killed_by} before it was placed") \
                if self._killed.is_set() else Verdict(Outcome.ERROR, reason="the node ended the trial without a verdict")
        if not self._recorded:
            self._record(verdict)
        self.recorder.close()
        return verdict

    async def _stream(self, pg, gpus: int) -> Verdict | None:
        ray = _ray()
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor = _remote(TrialActor).options(
            num_cpus=1, num_gpus=gpus, max_concurrency=4,
            scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)).remote()
        with self._actor_lock:
            self.actor, killed_by = actor, self._killed_by
        if killed_by:
            actor.kill.remote(killed_by)
        verdict = None
        stream = actor.run.options(num_returns="streaming").remote(self.config, self.placement.session.id,
                                                                   self.placement.expected)
        async for ref in stream:
            item = await ref
            if item[0] == "refused":
                self.placed = item[1]
                raise RedlineError(item[2])
            if item[0] == "placed":
                self.placed = {**item[1], "cluster": ray.get_runtime_context().gcs_address}
                gpu_text = f", Ray GPU(s) {item[1]['gpus']}" if item[1]["gpus"] else ""
                self._set_state(TrialState.PREPARING, f"placed on node {item[1]['node']}{gpu_text}")
            elif item[0] == "event":
                self._relay(item[1])
            else:
                verdict = item[1]
        return verdict

    def _relay(self, event) -> None:
        """A node event into this driver's records under this trial's id, then to the views."""
        event = replace(event, trial_id=self.trial_id)
        if isinstance(event, VerdictReady):
            event.verdict.evidence["placement"] = self.placed
            self.recorder.verdict(event)
            self._recorded = True
        elif isinstance(event, TrialStateChanged):
            self._record_state(event)
        else:
            self.recorder.emit(event)

    def _record(self, verdict: Verdict) -> None:
        """A verdict the driver reached itself (never placed, refused, node lost)."""
        verdict.evidence.setdefault("placement", self.placed)
        self.recorder.verdict(verdict)
        self._recorded = True
        self._set_state(verdict.outcome.trial_state, verdict.reason)

    def _lost(self, exc: BaseException) -> Verdict:
        node = self.placed.get("node", "?")
        session = node_session(self.placement.session.id, node)
        reason = (f"node {node} was lost during the trial ({_first_line(exc)}); its dead-man's switch "
                  f"(`redline node start`) kills the sandbox within {STALE_AFTER_S + 2:g} s; if it is not "
                  f"running there, run `redline kill --session {session}` on that node")
        if self._killed.is_set():
            return Verdict(Outcome.KILLED, reason=f"killed by {self._killed_by}; {reason}")
        return Verdict(Outcome.ERROR, reason=reason)
