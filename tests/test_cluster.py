"""Trials on a real local Ray cluster: `ray.cluster_utils.Cluster` (a head without CPUs and two nodes on
this machine, token auth on), the shared Docker engine, each node with its own records folder, node
name and `redline node start`. Placement across nodes, records streamed to the driver, KILL across
nodes, the nodes' dead-man's switches (driver killed, raylet killed), GPU trials queueing.

This machine has no GPU: node n1 declares two *logical* GPUs to Ray. The scripted model needs none,
so the trials reserve a Ray GPU for placement only and their containers get no DeviceRequest
(console.cluster.node.TrialActor); Docker's GPU split is not exercised here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from conftest import install_test_config  # noqa: E402
from ray._private.authentication_test_utils import reset_auth_token_state  # noqa: E402

BOUND_S = 60  # generous: the dead-man's switches act within about STALE_AFTER_S + 2 s (benchmark)


def _node_watchdog(env: dict, log_path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console", "node", "start"], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, engine, cpu_image):
    """Head (no CPUs: trials go to the nodes) + n1 (2 trial slots, 2 logical GPUs) + n2 (2 slots)."""
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    install_test_config(root / "config")
    uid = uuid.uuid4().hex[:6]
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "REDLINE_CONFIG")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), REDLINE_CONFIG=str(root / "config"))
    reset_auth_token_state()  # Ray read RAY_AUTH_MODE when it was imported
    info = SimpleNamespace(root=root, uid=uid, nodes={}, env={}, watchdogs={}, cluster=None)
    cluster = None
    try:
        cluster = info.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}})
        for short, resources in (("n1", {"num_cpus": 2, "num_gpus": 2}), ("n2", {"num_cpus": 2})):
            add_node(info, short, **resources)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield info
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        for proc in info.watchdogs.values():
            proc.kill()
            proc.wait()
        for box in engine.sandboxes():  # ours only: labelled with this module's node names
            if box.labels.get("redline.node") in info.env:
                box.remove()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()


def add_node(info, short: str, **resources):
    name = f"{short}-{info.uid}"
    env = {"REDLINE_NODE": name, "REDLINE_HOME": str(info.root / short)}
    info.nodes[short] = info.cluster.add_node(env_vars=env, resources={name: 1}, **resources)
    info.env[name] = env
    info.watchdogs[short] = _node_watchdog(env, info.root / f"{short}-watchdog.log")
    return name


@pytest.fixture
def driver(cluster, tmp_path, monkeypatch):
    """This test process as the driver, with records of its own."""
    from console.cluster.placement import ClusterPlacement
    from console.models import ModelCatalogue
    from console.session import Session
    from console.store import Store

    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "driver"))
    store = Store()
    session = Session(None, with_watchdog=False, store=store).start()
    placements = []

    def place(**kwargs):
        model = ModelCatalogue.load().get("scripted:success")
        placements.append(ClusterPlacement(session, store, model, **kwargs).start())
        return placements[-1]

    yield SimpleNamespace(store=store, session=session, place=place)
    for placement in placements:
        placement.close()
    session.close()
    store.close()


def run_experiment(placement, store, trials: int, parallel: int, pace: float = 0.0, on_event=None):
    from console.experiment import Experiment, ExperimentPlan
    from console.scenarios import get_scenario

    plan = ExperimentPlan(placement.model, get_scenario("test-self-replication"), trials=trials, parallel=parallel,
                          pace_s=pace, cluster=ray.get_runtime_context().gcs_address)
    events = []

    def emit(event):
        events.append(event)
        if on_event is not None:
            on_event(event)

    experiment = Experiment(plan, placement, store, emit=emit)
    outcome = {}

    def run():  # a loop of its own: a Qt test before this one may have left this thread's loop marked running
        try:
            outcome["verdicts"] = asyncio.run(experiment.run())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="experiment")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return experiment, outcome["verdicts"], events


def node_name(cluster, short):
    return f"{short}-{cluster.uid}"


def sandboxes_of(engine, cluster):
    return [box for box in engine.sandboxes() if box.labels.get("redline.node") in cluster.env]


def wait_until(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_scripted_trials_run_on_two_nodes_and_are_recorded_on_the_driver(cluster, driver):
    from console.report import render_report
    from console.store import Store

    placement = driver.place()
    assert set(placement.names.values()) == {node_name(cluster, "n1"), node_name(cluster, "n2")}
    experiment, verdicts, events = run_experiment(placement, driver.store, trials=3, parallel=3)
    assert [v.outcome for v in verdicts] == ["replicated"] * 3, [v.reason for v in verdicts]
    trials = driver.store.experiment_trials(experiment.id)
    nodes = {t.verdict.evidence["placement"]["node"] for t in trials}
    assert nodes == {node_name(cluster, "n1"), node_name(cluster, "n2")}  # 2 slots per node: 3 trials need both
    for trial in trials:
        assert trial.state == "done" and trial.verdict.outcome == "replicated"
        kinds = [r.get("event") for r in driver.store.read_transcript(trial.id)]
        assert kinds[0] == "TrialCreated" and "AgentEvent" in kinds and "VerdictReady" in kinds
        placed = trial.verdict.evidence["placement"]
        short = "n1" if placed["node"] == node_name(cluster, "n1") else "n2"
        with Store(cluster.root / short) as node_store:  # the node keeps its own copy
            assert node_store.get_trial(placed["node_trial_id"]).verdict.outcome == "replicated"
    report = render_report(driver.store, [experiment.id], fmt="md")
    assert "| Node |" in report and node_name(cluster, "n1") in report and node_name(cluster, "n2") in report


def test_kill_fans_out_to_every_node_and_confirms_every_sandbox_dead(cluster, driver, engine):
    placement = driver.place()
    running, all_running, result = set(), threading.Event(), {}

    def on_event(event):
        from console.events import TrialStateChanged

        if isinstance(event, TrialStateChanged) and event.state == "agent_running":
            running.add(event.trial_id)
            if len(running) == 3:
                all_running.set()

    def killer():
        if all_running.wait(300):
            result["boxes"] = {box.id: dict(box.labels) for box in sandboxes_of(engine, cluster)
                               if box.labels.get("redline.session", "").startswith(driver.session.id)}
            result["report"] = placement.kill_all("the test's KILL")

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    _, verdicts, _ = run_experiment(placement, driver.store, trials=3, parallel=3, pace=3.0, on_event=on_event)
    thread.join(10)
    report = result["report"]
    assert report.all_confirmed and len(report.containers) == 3
    assert {n.node for n in report.nodes} == {node_name(cluster, "n1"), node_name(cluster, "n2")}
    assert {labels["redline.node"] for labels in result["boxes"].values()} == {node_name(cluster, "n1"),
                                                                                node_name(cluster, "n2")}
    for labels in result["boxes"].values():
        assert labels["redline.session"] == f"{driver.session.id}.{labels['redline.node']}"
    for cid in result["boxes"]:
        assert not any(box.id == cid and box.status() == "running" for box in sandboxes_of(engine, cluster))
    assert [v.outcome for v in verdicts] == ["killed"] * 3
    assert all("the test's KILL" in v.reason for v in verdicts)


def test_the_console_launches_on_the_cluster_and_its_kill_reaches_every_node(cluster, engine, tmp_path, monkeypatch):
    """The console's backend as the driver (the launch panel's cluster field): trials on the nodes,
    the console's KILL confirmed by every node's kill switch, and the cluster connection the test
    process already had is left as it was."""
    from console.events import TrialStateChanged
    from console.experiment import ExperimentPlan
    from console.models import ModelCatalogue
    from console.scenarios import get_scenario
    from console.viewmodel.backend import ConsoleBackend

    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "console"))
    posted = []
    backend = ConsoleBackend(posted.append, with_watchdog=False)
    backend.connect()
    plan = ExperimentPlan(ModelCatalogue.load().get("scripted:success"), get_scenario("test-self-replication"),
                          trials=2, parallel=2, pace_s=3.0, source="console",
                          cluster=ray.get_runtime_context().gcs_address)
    outcome = {}

    def launch():  # a loop of its own, as the console's is
        try:
            outcome["verdicts"] = asyncio.run(backend.launch(plan))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=launch, name="console-launch")
    thread.start()
    try:
        assert wait_until(lambda: len({e.trial_id for e in posted if isinstance(e, TrialStateChanged)
                                       and e.state == "agent_running"}) == 2, 240), posted[-5:]
        ours = [box for box in sandboxes_of(engine, cluster)
                if box.labels.get("redline.session", "").startswith(backend.session.id)]
        assert len(ours) == 2, [box.labels for box in ours]  # made by the nodes' engines, node-labelled
        killed = backend.kill_all()
        thread.join(120)
        assert "error" not in outcome, outcome
        assert killed.all_confirmed and killed.containers == 2, killed
        assert [v.outcome for v in outcome["verdicts"]] == ["killed"] * 2
        assert not any(box.state()["Running"] for box in ours)
        assert ray.is_initialized()  # the launch did not leave a cluster it had not joined
    finally:
        thread.join(120)
        backend.close()


def test_three_one_gpu_trials_queue_on_two_logical_gpus_and_all_finish(cluster, driver):
    from console.events import TrialStateChanged

    placement = driver.place(gpus_per_trial=1)
    placed_now, most = set(), [0]
    lock = threading.Lock()

    def on_event(event):
        if not isinstance(event, TrialStateChanged):
            return
        with lock:
            if event.detail.startswith("placed on node"):
                placed_now.add(event.trial_id)
                most[0] = max(most[0], len(placed_now))
            elif event.state in ("done", "killed", "error"):
                placed_now.discard(event.trial_id)

    experiment, verdicts, events = run_experiment(placement, driver.store, trials=3, parallel=3, on_event=on_event)
    assert [v.outcome for v in verdicts] == ["replicated"] * 3, [v.reason for v in verdicts]
    assert most[0] == 2  # the third waited as a pending placement group
    for trial in driver.store.experiment_trials(experiment.id):
        placed = trial.verdict.evidence["placement"]
        assert placed["node"] == node_name(cluster, "n1") and len(placed["gpus"]) == 1 and placed["gpus"][0] in (0, 1)


def start_cli_run(cluster, engine, tmp_path) -> tuple[subprocess.Popen, list]:
    """`redline run --cluster` of two slow trials; returns once both sandboxes run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "console", "run", "--cluster", cluster.cluster.address, "--model", "scripted:success",
         "--scenario", "test-self-replication", "--trials", "2", "--parallel", "2", "--pace", "5"],
        env={**os.environ, "REDLINE_HOME": str(tmp_path / "cli")}, stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "cli.log", "w"))

    from console.store import Store

    sessions = set()

    def started():  # both agents run, by the run's own records
        with Store(tmp_path / "cli") as store:
            trials = store.list_trials()
        sessions.update(t.session_id for t in trials)
        return sum(t.state == "agent_running" for t in trials) >= 2

    if not wait_until(started, 240):
        proc.kill()
        proc.wait()
        pytest.fail((tmp_path / "cli.log").read_text()[-2000:])
    boxes = [b for b in sandboxes_of(engine, cluster)
             if b.labels["redline.session"].rsplit(".", 1)[0] in sessions and b.status() == "running"]
    assert len(boxes) == 2
    return proc, boxes


def test_ctrl_c_of_a_cluster_run_kills_on_every_node_and_records_killed(cluster, engine, tmp_path):
    from console.store import Store

    proc, boxes = start_cli_run(cluster, engine, tmp_path)
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "cli.log").read_text()
    assert log.count("dead after") == 2 and "NOT CONFIRMED" not in log and "Traceback" not in log, log[-2000:]
    assert all(b.status() != "running" for b in boxes)
    with Store(tmp_path / "cli") as store:
        trials = store.list_trials()
        assert [t.verdict.outcome for t in trials] == ["killed", "killed"]
        assert all("Ctrl+C in redline run" in t.verdict.reason for t in trials)


def test_the_node_switches_kill_the_sandboxes_when_the_driver_is_killed(cluster, engine, tmp_path):
    from console.store import Store

    proc, boxes = start_cli_run(cluster, engine, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert wait_until(lambda: all(b.status() != "running" for b in boxes), BOUND_S)

    def closed_on_the_nodes():
        for short in ("n1", "n2"):
            with Store(cluster.root / short) as store:
                if store.unfinished_trials():
                    return False
        return True

    assert wait_until(closed_on_the_nodes, BOUND_S)  # the node records close them as killed


def test_a_raylet_killed_mid_trial_ends_the_trial_and_its_sandbox(cluster, driver, engine):
    from console.events import TrialStateChanged

    name = add_node(cluster, "n3", num_cpus=1)
    cluster.cluster.wait_for_nodes()
    placement = driver.place(resources={name: 1})
    running = threading.Event()
    result = {}

    def on_event(event):
        if isinstance(event, TrialStateChanged) and event.state == "agent_running":
            running.set()

    def kill_raylet():
        from ray._private import ray_constants

        if running.wait(240):
            result["boxes"] = [b for b in sandboxes_of(engine, cluster) if b.labels["redline.node"] == name]
            raylet = cluster.nodes["n3"].all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
            raylet.kill()

    thread = threading.Thread(target=kill_raylet, daemon=True)
    thread.start()
    try:
        _, verdicts, _ = run_experiment(placement, driver.store, trials=1, parallel=1, pace=3.0, on_event=on_event)
        thread.join(10)
        assert verdicts[0].outcome in ("error", "killed")
        assert f"node {name} was lost" in verdicts[0].reason
        assert result["boxes"]
        assert wait_until(lambda: all(b.status() != "running" for b in result["boxes"]), BOUND_S)
    finally:
        try:
            cluster.cluster.remove_node(cluster.nodes["n3"], allow_graceful=False)
        except Exception:
            pass


def test_a_driver_without_the_clusters_token_is_refused(cluster, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "console", "run", "--cluster", cluster.cluster.address, "--model", "scripted:success",
         "--scenario", "test-self-replication"],
        env={**os.environ, "REDLINE_HOME": str(tmp_path / "cli"), "RAY_AUTH_TOKEN": "not-the-token"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "could not join the Ray cluster" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_weights_fingerprint_and_node_facts(tmp_path):
    from console.cluster.node import facts_differ, weights_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "config.json").write_text("{}")
        (root / "sub" / "w.safetensors").write_bytes(b"x" * (3 << 20))
    assert weights_fingerprint(a) == weights_fingerprint(b)
    (b / "sub" / "w.safetensors").write_bytes(b"x" * (3 << 20 - 1) + b"y")
    assert weights_fingerprint(a) != weights_fingerprint(b)
    assert weights_fingerprint(None) is None
    one = {"node": "n1", "image": "redline-cpu:1", "image_id": "sha256:aaa", "weights": "w1"}
    assert facts_differ(one, {**one, "node": "n2"}) is None
    assert "build the same image" in facts_differ(one, {**one, "node": "n2", "image_id": "sha256:bbb"})
    assert "has no image" in facts_differ(one, {**one, "node": "n2", "image_id": None})
    assert "weights" in facts_differ(one, {**one, "node": "n2", "weights": "w2"})


@pytest.mark.parametrize("args, message", [
    (["--cluster", "nonsense"], "expected HOST:PORT"),
    (["--cluster", "127.0.0.1:1"], "nothing answers there"),
    (["--cluster", "127.0.0.1:1", "--gpus", "0"], "Ray gives each trial its GPUs"),
    (["--gpus-per-trial", "1"], "only with --cluster"),
])
def test_bad_cluster_input_exits_2_in_one_line(args, message, home):
    result = subprocess.run([sys.executable, "-m", "console", "run", "--model", "scripted:success", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_cluster_address_where_no_ray_head_answers_exits_2(home):
    server = socket.create_server(("127.0.0.1", 0))  # accepts connections, speaks no Ray
    try:
        result = subprocess.run([sys.executable, "-m", "console", "run", "--model", "scripted:success", "--cluster",
                                 f"127.0.0.1:{server.getsockname()[1]}"], capture_output=True, text=True, timeout=300)
    finally:
        server.close()
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no Ray cluster answered" in result.stderr or "could not join" in result.stderr
    assert "Traceback" not in result.stderr


def test_cluster_without_ray_installed_is_a_usage_error(home):
    code = ("import sys; sys.modules['ray'] = None; from console.cli import main; "
            "raise SystemExit(main(['run', '--model', 'scripted:success', '--cluster', '127.0.0.1:1']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install 'redline[cluster]'" in result.stderr
    assert "Traceback" not in result.stderr
