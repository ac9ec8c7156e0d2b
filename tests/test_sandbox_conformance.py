"""The contract every Sandbox implementation keeps (console/sandbox/base.py); Docker is the one today.
A new implementation (another runtime, a remote node) joins IMPLEMENTATIONS and must pass all of it."""

from __future__ import annotations

import time

import pytest

from console.sandbox.errors import ExecOutputLimit, ExecTimeout
from console.sandbox.spec import AGENT_USER, LABEL_SESSION, LABEL_TRIAL

IMPLEMENTATIONS = ["docker-runc", "docker-gvisor"]  # Docker, at each isolation level


@pytest.fixture(params=IMPLEMENTATIONS)
def sandbox(request, make_sandbox, cpu_image):
    return make_sandbox(image=cpu_image, isolation=request.param.split("-")[1])


def running(sandbox, pattern: str) -> list[str]:
    return [row.cmd for row in sandbox.top() if pattern in row.cmd]


def test_exec_gives_the_real_exit_code_output_and_runs_as_the_agent_by_default(sandbox):
    result = sandbox.exec(["sh", "-c", "id -u; echo oops >&2; exit 3"], timeout=30)
    assert (result.exit_code, result.stdout.strip(), result.stderr.strip()) == (3, "1000", "oops")
    assert sandbox.exec(["id", "-u"], user="0", timeout=30).stdout.strip() == "0"


def test_an_exec_past_its_timeout_is_killed_with_its_children(sandbox):
    started = time.monotonic()
    with pytest.raises(ExecTimeout):
        sandbox.exec(["sh", "-c", "sleep 301 & sleep 302"], timeout=1)
    assert time.monotonic() - started < 5
    time.sleep(0.3)
    assert not running(sandbox, "sleep 30"), sandbox.top()


def test_a_stopped_probe_times_out_and_is_killed(sandbox):
    """A process stopped with SIGSTOP never ends by itself: the caller gets ExecTimeout, not a hang."""
    code = "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"
    with pytest.raises(ExecTimeout):
        sandbox.exec(["python3", "-c", code, "stopped-probe"], timeout=1)
    time.sleep(0.3)
    assert not running(sandbox, "stopped-probe")


def test_a_flood_of_output_is_cut_and_its_writer_killed(sandbox):
    with pytest.raises(ExecOutputLimit):
        sandbox.exec(["yes", "flood"], timeout=30, max_output=1 << 20)
    time.sleep(0.3)
    assert not running(sandbox, "yes flood")


def test_pause_freezes_and_resume_thaws(sandbox):
    sandbox.pause()
    assert sandbox.status() == "paused" and sandbox.state()["Paused"]
    sandbox.unpause()
    assert sandbox.exec(["true"], timeout=30).exit_code == 0


def test_kill_confirms_death(sandbox):
    sandbox.exec_detached(["sleep", "300"], user=AGENT_USER)
    report = sandbox.kill()
    assert report.count == 1 and report.all_confirmed
    assert not sandbox.state()["Running"]


def test_the_process_table_is_the_sandboxes_own(sandbox):
    """Under gVisor `docker top` lists the host's processes: top() never does."""
    sandbox.exec_detached(["sleep", "301"], user=AGENT_USER)
    deadline = time.monotonic() + 10
    while not running(sandbox, "sleep 301") and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = sandbox.top()
    assert any("sleep 301" in row.cmd for row in rows), rows
    assert not any(word in row.cmd for row in rows for word in ("dockerd", "containerd", "pytest")), rows


def test_labels_name_the_trial_and_session(sandbox, session_id):
    assert sandbox.labels[LABEL_SESSION] == session_id and sandbox.labels[LABEL_TRIAL]


def test_the_containment_self_test_holds(engine, cpu_image, sandbox):
    from console.sandbox.selftest import containment_checks

    checks = containment_checks(engine, cpu_image, isolation=sandbox.isolation)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    assert f"isolation: {sandbox.isolation}" in {c.name for c in checks}
