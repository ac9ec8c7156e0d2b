"""Faults a live supervision must survive, injected for real against a second Docker engine that these
tests start themselves (tests/second_engine.py): kill -9 of the CLI, of the CLI and its watchdog, of
everything including the reaper, an engine restart mid-trial, `redline kill --session` under
--parallel 2. Each asserts the states in the index, that no container is left and that the transcript
is intact, and prints the figures it measured (one JSON line, `pytest -s` shows them)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import install_test_config

MODEL = "scripted:never-replicates"
SCENARIO = "test-self-replication"


@pytest.fixture
def second(second_engine):
    return second_engine


@pytest.fixture
def env(second, tmp_path):
    install_test_config(tmp_path / "config")
    return second.env(REDLINE_HOME=str(tmp_path / "home"), REDLINE_CONFIG=str(tmp_path / "config"))


def client(second):
    from console.sandbox.docker_engine import DockerEngine

    return DockerEngine(second.url).connect()


def start_cli(env, *args, pace: float = 1.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console", "run", "--model", MODEL, "--scenario", SCENARIO,
                             "--pace", str(pace), "--json", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def heartbeat(env) -> dict:
    from pathlib import Path

    files = list((Path(env["REDLINE_HOME"]) / "sessions").glob("*.json"))
    return json.loads(files[0].read_text()) if files else {}


def seconds_until_gone(engine, session: str, limit_s: float) -> float:
    started = time.monotonic()
    wait_for(lambda: not engine.sandboxes(session_id=session), limit_s, f"the sandboxes of {session} to go")
    return time.monotonic() - started


def records(env):
    from console.store import Store

    home = env["REDLINE_HOME"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDLINE_HOME", home)
        store = Store()
    return store


def assert_closed_as_killed(env, by: str, timeout_s: float = 10):
    store = records(env)
    trial = wait_for(lambda: next((t for t in store.list_trials() if t.state == "killed"), None), timeout_s,
                     "the trial to be recorded killed")
    assert trial.verdict.outcome == "killed" and by in trial.verdict.reason, trial.verdict.reason
    transcript = store.read_transcript(trial.id)
    assert transcript[0]["event"] == "TrialCreated" and transcript[-1]["state"] == "killed", transcript[-1]
    return trial


def test_kill_9_of_the_cli_leaves_no_sandbox_and_a_closed_record(second, env):
    engine = client(second)
    cli = start_cli(env)
    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    time.sleep(1)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone = seconds_until_gone(engine, box.session_id, 10)
    assert gone <= 2.0, f"the watchdog took {gone:.1f} s"
    assert_closed_as_killed(env, "the watchdog")
    print(json.dumps({"fault": "kill -9 of the CLI", "seconds_to_no_container": round(gone, 2)}))


def test_kill_9_of_the_cli_and_its_watchdog_is_reaped_in_seconds(second, env):
    engine = client(second)
    cli = start_cli(env)
    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    watchdog = heartbeat(env)["watchdog"]
    cli.send_signal(signal.SIGKILL)
    subprocess.run(["kill", "-9", str(watchdog)])
    cli.wait()
    gone = seconds_until_gone(engine, box.session_id, 15)
    assert gone <= 10.0, f"the reaper took {gone:.1f} s"
    assert_closed_as_killed(env, "the reaper")
    print(json.dumps({"fault": "kill -9 of the CLI and its watchdog", "seconds_to_no_container": round(gone, 2)}))


def running_box(engine):
    """The CLI's sandbox once its agent runs (it has processes besides PID 1) and its watchdog has
    listed it (the watchdog looks every 0.5 s)."""
    from console.sandbox.host import host_pids

    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    wait_for(lambda: len(host_pids(box.id)) > 1, 60, "the agent to run")
    time.sleep(1)
    return box


def seconds_until_no_process(box, limit_s: float) -> float:
    from console.sandbox.host import host_pids

    started = time.monotonic()
    wait_for(lambda: not host_pids(box.id), limit_s, f"the processes of {box.name} to die")
    return time.monotonic() - started


@pytest.mark.parametrize("also_the_watchdog", [False, True], ids=["cli", "cli-and-watchdog"])
def test_a_frozen_engine_does_not_hold_up_the_kill(second, env, also_the_watchdog):
    """The engine hangs (SIGSTOP of dockerd: connections accepted, never answered), then the CLI (and
    its watchdog) die: the sandbox's processes are killed from the host within the watchdog's bound
    (the reaper's when the watchdog died too) with no engine at all; once the engine answers again the
    sandbox is removed and the trial recorded killed by whoever killed it."""
    engine = client(second)
    cli = start_cli(env)
    box = running_box(engine)
    watchdog = heartbeat(env)["watchdog"]
    second.freeze()
    try:
        cli.send_signal(signal.SIGKILL)
        if also_the_watchdog:
            subprocess.run(["kill", "-9", str(watchdog)])
        cli.wait()
        dead = seconds_until_no_process(box, 30)
    finally:
        second.thaw()
    bound, by = (10.0, "the reaper") if also_the_watchdog else (2.0, "the watchdog")
    assert dead <= bound, f"{by} took {dead:.1f} s with the engine frozen"
    gone = seconds_until_gone(engine, box.session_id, 30)
    assert_closed_as_killed(env, by)
    print(json.dumps({"fault": f"engine frozen, kill -9 of the CLI{' and its watchdog' if also_the_watchdog else ''}",
                      "seconds_to_no_process": round(dead, 2), "seconds_to_removed_after_thaw": round(gone, 2)}))


@pytest.mark.parametrize("who_kills", ["the watchdog", "something else"])
def test_a_record_blames_only_who_really_killed(second, env, who_kills):
    """The engine hangs under a live CLI: after ENGINE_DOWN_KILL_S the watchdog fails closed and kills
    the sandbox from the host, and the record says so. When something else killed the sandbox first
    (here the test, from the host), the watchdog kills nothing and the record must not blame it."""
    from console.sandbox.killswitch import KillSwitch

    engine = client(second)
    cli = start_cli(env)
    box = running_box(engine)
    log = env["REDLINE_HOME"] + "/logs/redline.log"
    second.freeze()
    try:
        if who_kills == "something else":
            assert KillSwitch.kill_host_pids(box.id) > 0
        failed_closed = wait_for(lambda: re.search(r"killed (\d+) process\(es\) of 1 sandbox\(es\) from the host "
                                                   r"\(fail closed\)", open(log).read()), 40, "the watchdog to fail closed")
    finally:
        second.thaw()
    out, err = cli.communicate(timeout=120)
    trial = records(env).list_trials()[0]
    if who_kills == "the watchdog":
        assert int(failed_closed.group(1)) > 0
        assert trial.state == "killed" and "the engine was unreachable" in trial.killed_by, (trial, err[-2000:])
    else:
        assert failed_closed.group(1) == "0"
        assert trial.killed_by is None and trial.state == "error", (trial, err[-2000:])
        assert "stopped from outside Redline" in trial.verdict.reason, trial.verdict.reason
    assert not engine.sandboxes(session_id=box.session_id)


def test_a_frozen_cli_is_killed_by_its_watchdog_and_never_reopens_the_record(second, env):
    """SIGSTOP of the CLI: its heartbeat goes stale, the watchdog kills the sandbox and closes the
    trial, and stays. On SIGCONT the runner finds the trial ended: the record stays `killed` by the
    watchdog (no `judging` after it), the CLI ends with the trial killed, and the watchdog with it."""
    from pathlib import Path

    def ended(pid: int) -> bool:  # gone, or a zombie its frozen parent cannot reap
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            return True

    engine = client(second)
    cli = start_cli(env)
    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    watchdog = heartbeat(env)["watchdog"]
    wait_for(lambda: "agent_running" in [t.state for t in records(env).list_trials()], 60, "the agent at work")
    cli.send_signal(signal.SIGSTOP)
    try:
        gone = seconds_until_gone(engine, box.session_id, 30)
        trial = assert_closed_as_killed(env, "the watchdog")
        time.sleep(2)
        assert not ended(watchdog)  # a watchdog that killed stays while its session may wake
    finally:
        cli.send_signal(signal.SIGCONT)
    out, err = cli.communicate(timeout=120)
    wait_for(lambda: ended(watchdog), 10, "the watchdog to leave with its session")
    assert "Traceback" not in err, err[-2000:]
    store = records(env)
    again = store.get_trial(trial.id)
    assert again.state == "killed" and "the watchdog" in again.verdict.reason, (again.state, again.detail)
    states = [r["state"] for r in store.read_transcript(trial.id) if r.get("event") == "TrialStateChanged"]
    assert "judging" not in states[states.index("killed"):], states
    assert json.loads(out)["killed"] == 1
    print(json.dumps({"fault": "SIGSTOP of the CLI", "seconds_to_no_container": round(gone, 2)}))


def test_a_dead_watchdog_is_replaced_and_the_new_one_does_its_job(second, env):
    """kill -9 of the watchdog alone: the session sees it gone with its next heartbeat and starts a new
    one; kill -9 of the CLI then is handled by the new watchdog as by the first."""
    engine = client(second)
    cli = start_cli(env)
    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    first = wait_for(lambda: heartbeat(env).get("watchdog"), 10, "the first watchdog")
    subprocess.run(["kill", "-9", str(first)])
    started = time.monotonic()
    second_watchdog = wait_for(lambda: (heartbeat(env).get("watchdog") or first) != first and heartbeat(env)["watchdog"],
                               10, "a new watchdog")
    replaced = time.monotonic() - started
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone = seconds_until_gone(engine, box.session_id, 10)
    assert gone <= 2.0, f"the new watchdog took {gone:.1f} s"
    assert_closed_as_killed(env, "the watchdog")
    subprocess.run(["kill", "-9", str(second_watchdog)], stderr=subprocess.DEVNULL)
    print(json.dumps({"fault": "kill -9 of the watchdog, then of the CLI", "seconds_to_new_watchdog": round(replaced, 2),
                      "seconds_to_no_container": round(gone, 2)}))


def test_the_next_start_closes_what_a_wholly_dead_session_left(second, env):
    """CLI, watchdog and reaper all killed: the next `redline run` removes the sandbox, closes the
    record and says so."""
    engine = client(second)
    cli = start_cli(env)
    box = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the CLI's sandbox")
    watchdog = heartbeat(env)["watchdog"]
    reaper = subprocess.run(["pgrep", "-f", "console.watchdog --reaper"], capture_output=True, text=True).stdout.split()
    subprocess.run(["kill", "-9", str(cli.pid), str(watchdog), *reaper])
    cli.wait()
    time.sleep(1)
    assert engine.sandboxes(session_id=box.session_id), "something else removed it"
    nxt = start_cli(env, pace=0)
    out, err = nxt.communicate(timeout=120)
    assert nxt.returncode == 0, err[-2000:]
    assert re.search(r"removed 1 sandbox\(es\) and closed 1 trial record", err), err[-2000:]
    assert not engine.sandboxes(session_id=box.session_id)
    assert_closed_as_killed(env, "the reaper at start")


def test_an_engine_restart_mid_trial_is_an_error_and_the_watchdog_rearms(second, env):
    engine = client(second)
    cli = start_cli(env, "--trials", "2")
    first = wait_for(lambda: next(iter(engine.sandboxes()), None), 60, "the first trial's sandbox")
    time.sleep(1)
    second.kill()
    time.sleep(3)
    second.start()
    back = time.time()
    try:
        other = wait_for(lambda: next((b for b in client(second).sandboxes() if b.trial_id != first.trial_id), None),
                         120, "the second trial's sandbox")
    except AssertionError:
        cli.kill()
        raise AssertionError(f"no second trial; the CLI said: {cli.communicate()[1][-3000:]}") from None
    log = (env["REDLINE_HOME"] + "/logs/redline.log")
    rearmed = wait_for(lambda: re.search(r"answers again after ([\d.]+) s", open(log).read()), 10,
                       "the watchdog to re-arm")
    time.sleep(1)
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    gone = seconds_until_gone(client(second), other.session_id, 10)
    assert gone <= 2.0, f"after the engine restart the watchdog took {gone:.1f} s"
    err = cli.stderr.read()
    assert "Traceback" not in err, err[-3000:]
    store = records(env)
    trials = {t.id: t for t in store.list_trials()}
    assert trials[first.trial_id].state == "error", trials[first.trial_id]
    assert "\n" not in trials[first.trial_id].detail
    rearm_after_back = float(rearmed.group(1))
    print(json.dumps({"fault": "engine killed and restarted 3 s later", "first_trial": trials[first.trial_id].detail,
                      "watchdog_outage_seen_s": rearm_after_back,
                      "seconds_to_no_container_after_kill_9": round(gone, 2),
                      "rearmed_within_s_of_engine_back": round(time.time() - back, 1)}))


def test_redline_kill_session_under_parallel_trials_records_them_killed(second, env):
    engine = client(second)
    cli = start_cli(env, "--trials", "2", "--parallel", "2")
    boxes = wait_for(lambda: (lambda b: b if len(b) == 2 else None)(engine.sandboxes()), 60, "two sandboxes")
    time.sleep(1)
    kill = subprocess.run([sys.executable, "-m", "console", "kill", "--session", boxes[0].session_id], env=env,
                          capture_output=True, text=True, timeout=60)
    assert kill.returncode == 0, kill.stderr
    out, err = cli.communicate(timeout=120)
    summary = json.loads(out)
    assert summary["killed"] == 2, [(r["outcome"], r["reason"]) for r in summary["results"]]
    assert all("redline kill --session" in r["reason"] for r in summary["results"]), summary["results"]
    assert cli.returncode == 0 and "Traceback" not in err
    assert not engine.sandboxes()


@pytest.mark.parametrize("scenario", ["test-self-replication", "test-shutdown-avoidance", "test-chain-of-replication"])
def test_the_cli_exits_right_after_its_summary(second, env, scenario):
    """No timer, thread or stream keeps `redline run` alive once it has printed its summary (the
    shutdown scenario's grace timer once held it for 600 s)."""
    cli = subprocess.Popen([sys.executable, "-m", "console", "run", "--model", "scripted:success", "--scenario",
                            scenario, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    summary = json.loads(cli.stdout.readline())
    printed = time.monotonic()
    cli.wait(timeout=30)
    delay = time.monotonic() - printed
    assert summary["replicated"] == 1 and cli.returncode == 0, summary["results"][0]["reason"]
    assert delay <= 2.0, f"{scenario}: the CLI exited {delay:.2f} s after its summary"
    print(json.dumps({"scenario": scenario, "cli_exit_delay_after_summary_s": round(delay, 2)}))


def test_gvisor_on_an_engine_without_it_is_a_usage_error_that_says_how_to_add_it(second, env):
    """The tests' second engine registers no runsc: asking for gVisor there is exit 2, one line, no
    sandbox made; the automatic level is runc."""
    result = subprocess.run([sys.executable, "-m", "console", "run", "--model", MODEL, "--scenario", SCENARIO,
                             "--isolation", "gvisor"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "isolation 'gvisor': this Docker engine has no 'runsc' runtime" in result.stderr
    assert '"runtimeArgs": ["--network=none"]' in result.stderr and "Traceback" not in result.stderr
    engine = client(second)
    assert engine.isolation_levels() == ["runc"] and not engine.sandboxes()
    assert engine.default_isolation("any-image") == "runc"
