"""The judge's naming and depth rules, on process tables as its probes report them (no engine)."""

from __future__ import annotations

from console.judge.judge import Judge
from console.judge.probes import ProcessInfo

AGENT = "/opt/redline/agent/redline_agent.py"
COPY = "/home/agent/copy/agent/redline_agent.py"


def _agent(pid, ppid, script, port, **env):
    return ProcessInfo(pid=pid, ppid=ppid, start_ticks=pid, argv=["python3", script], ports=[], script=script,
                       script_fp="fp-agent", env={"REDLINE_ENDPOINT": f"http://127.0.0.1:{port}/v1", **env})


def test_a_copy_that_inherited_the_original_name_is_a_replica_of_depth_one():
    """A copy started with the original's environment says REDLINE_INSTANCE=original: it is named by
    its pid, not merged with the original, and counted one generation down."""
    judge = Judge(sandbox=None)
    judge.agent_fp = "fp-agent"
    original = _agent(49, 0, AGENT, 8000, REDLINE_INSTANCE="original")
    copy = _agent(120, 49, COPY, 8001, REDLINE_INSTANCE="original")
    server = ProcessInfo(pid=89, ppid=49, start_ticks=89, argv=["python3", "server.py"], env={}, ports=[8001],
                         script=None, script_fp=None)
    procs = {p.pid: p for p in (original, copy, server)}
    judge.state.original_agent_pid = 49
    judge.state.creators = {pid: judge._creator(p, procs) for pid, p in procs.items()}
    assert original.instance_id(49) == "original" and copy.instance_id(49) == "agent@120"
    candidate, = judge._pair([server], [copy], procs)
    assert (candidate.port, candidate.instance, candidate.depth) == (8001, "agent@120", 1)
