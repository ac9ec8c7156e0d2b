"""Trials on a Ray cluster vs on this machine, and KILL latency across nodes (goals: <= 15 % slower,
kill p95 <= 300 ms with every container confirmed dead).

Starts a real local cluster (ray.cluster_utils.Cluster: a head without CPUs and two nodes, token auth
on, each node with its own records folder and `redline node start`), then runs the same N scripted
trials (scripted:success x the test scenario's short waits) with the same parallelism twice, in the
same run: on this machine (LocalPlacement, the baseline) and on the cluster (ClusterPlacement);
`slowdown` = cluster wall time / local wall time - 1. Then, `--kills` times, starts one trial per
trial slot on both nodes, waits until every agent runs, and times ClusterPlacement.kill_all from the
driver's call until every node confirmed its sandboxes dead; the same number of trials killed on this
machine (Session.kill_all) is the baseline (`local_kill_p95_ms`). Both share this machine's CPUs and
engine with everything else it runs: `load_average_1m` says how busy it was. Prints one JSON line.
Usage: .venv/bin/python benchmarks/cluster_scale.py [--trials 10] [--parallel 4] [--kills 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def experiment(placement, store, model, scenario, trials, parallel, pace=0.0, on_event=None, cluster=None):
    from console.experiment import Experiment, ExperimentPlan

    plan = ExperimentPlan(model, scenario, trials=trials, parallel=parallel, pace_s=pace, cluster=cluster)
    run = Experiment(plan, placement, store, emit=on_event or (lambda event: None))
    started = time.monotonic()
    verdicts = asyncio.run(run.run())
    return time.monotonic() - started, verdicts


def is_running(engine, cid: str) -> bool:
    import docker.errors

    try:
        return engine.api.inspect_container(cid)["State"]["Running"]
    except docker.errors.NotFound:
        return False


def one_kill(placement, kill, store, model, scenario, slots: int, engine, cluster=None) -> dict:
    """`slots` slow trials running, then `kill()`; its time until every sandbox is confirmed dead."""
    from console.events import TrialStateChanged

    running, ready, result = set(), threading.Event(), {}

    def on_event(event):
        if isinstance(event, TrialStateChanged) and event.state == "agent_running":
            running.add(event.trial_id)
            if len(running) == slots:
                ready.set()

    def killer():
        if ready.wait(300):
            result["report"] = kill()

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    experiment(placement, store, model, scenario, slots, slots, pace=5.0, on_event=on_event, cluster=cluster)
    thread.join(10)
    report = result["report"]
    dead = bool(report.containers) and all(not is_running(engine, c.container_id) for c in report.containers)
    return {"ms": report.total_ms, "confirmed": report.all_confirmed and dead, "containers": len(report.containers),
            "node_ms": [round(n.report.total_ms) for n in getattr(report, "nodes", []) if n.report]}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--kills", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="redline-cluster-bench-"))
    (work / "config" / "scenarios").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "scenarios" / "test-self-replication.toml", work / "config" / "scenarios")
    os.environ.update(REDLINE_HOME=str(work / "driver"), REDLINE_CONFIG=str(work / "config"),
                      RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    import ray
    from ray.cluster_utils import Cluster

    from console.cluster.placement import ClusterPlacement
    from console.experiment import LocalPlacement
    from console.models import ModelCatalogue
    from console.sandbox.docker_engine import DockerEngine
    from console.scenarios import get_scenario
    from console.session import Session
    from console.store import Store

    model, scenario = ModelCatalogue.load().get("scripted:success"), get_scenario("test-self-replication")
    engine = DockerEngine().connect()
    store = Store()
    cluster, watchdogs, placement, session = None, [], None, None
    try:
        # Baseline first, on a quiet machine (no Ray processes yet).
        local_session = Session(engine, store=store).start()
        try:
            local = LocalPlacement(engine, local_session, store)
            local_s, local_verdicts = experiment(local, store, model, scenario, args.trials, args.parallel)
            local_kills = [one_kill(local, local_session.kill_all, store, model, scenario, args.parallel, engine)
                           for _ in range(args.kills)]
        finally:
            local_session.close()
        print(f"local: {local_s:.1f} s", file=sys.stderr, flush=True)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        per_node = max(1, args.parallel // 2)
        for name in ("bench-n1", "bench-n2"):
            env = {"REDLINE_NODE": name, "REDLINE_HOME": str(work / name)}
            cluster.add_node(num_cpus=per_node, env_vars=env)
            watchdogs.append(subprocess.Popen([sys.executable, "-m", "console", "node", "start"],
                                              env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        session = Session(None, with_watchdog=False, store=store).start()
        started = time.monotonic()
        placement = ClusterPlacement(session, store, model).start()
        agents_s = time.monotonic() - started
        cluster_s, cluster_verdicts = experiment(placement, store, model, scenario, args.trials, args.parallel,
                                                 cluster=cluster.address)
        print(f"cluster: {cluster_s:.1f} s", file=sys.stderr, flush=True)
        kills = [one_kill(placement, lambda: placement.kill_all("the benchmark's KILL"), store, model, scenario,
                          per_node * 2, engine, cluster=cluster.address) for _ in range(args.kills)]
    finally:
        if placement is not None:
            placement.close()
        if session is not None:
            session.close()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for proc in watchdogs:
            proc.kill()
            proc.wait()
    kill_ms = sorted(k["ms"] for k in kills)
    print(json.dumps({
        "benchmark": "cluster_scale", "model": "scripted:success", "scenario": scenario.id, "trials": args.trials,
        "parallel": args.parallel, "nodes": 2,
        "local_s": round(local_s, 1), "cluster_s": round(cluster_s, 1),
        "slowdown": round(cluster_s / local_s - 1, 3), "slowdown_goal": 0.15,
        "node_agents_start_s": round(agents_s, 1),
        "outcomes_local": sorted({v.outcome for v in local_verdicts}),
        "outcomes_cluster": sorted({v.outcome for v in cluster_verdicts}),
        "kill_p95_ms": round(p95(kill_ms)), "kill_ms": [round(ms) for ms in kill_ms], "kill_goal_ms": 300,
        "kill_containers": [k["containers"] for k in kills], "kill_node_side_ms": [k["node_ms"] for k in kills],
        "local_kill_p95_ms": round(p95([k["ms"] for k in local_kills])),
        "every_container_confirmed_dead": all(k["confirmed"] for k in kills + local_kills),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }))


if __name__ == "__main__":
    main()
