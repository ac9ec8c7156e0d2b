"""The sandbox engine against a real Docker engine: containment, exec, streams, pause, kill, GC."""

from __future__ import annotations

import glob
import threading
import time
import uuid
from pathlib import Path

import pytest

from console.sandbox.errors import GpuRuntimeMissing, ImageMissing, InvalidSpec, SandboxError
from console.sandbox.killswitch import KillSwitch
from console.sandbox.selftest import containment_checks, fidelity_check, gpu_visible_check
from console.sandbox.spec import ContainmentSpec


@pytest.mark.parametrize("isolation", ["runc", "gvisor"])
def test_containment_holds_inside_a_running_sandbox(engine, base_image, isolation):
    checks = containment_checks(engine, base_image, isolation=isolation)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed
    assert {c.name for c in checks} >= {"network: only loopback", "capabilities: none", "not root",
                                        "pids limit in force", "no Docker socket", f"isolation: {isolation}",
                                        "no-new-privileges"}


def test_the_engine_started_by_the_set_up_offers_both_levels(engine):
    assert engine.isolation_levels() == ["runc", "gvisor"]


def test_the_default_level_is_the_strongest_under_which_the_agent_sees_the_same_system(engine, cpu_image):
    """Debian 12's gVisor fails `ls` (statx flags) and has no child subreaper: then it is never the
    default, only chosen on request."""
    runc = fidelity_check(engine, cpu_image, "runc")
    assert runc.ok, runc
    gvisor = fidelity_check(engine, cpu_image, "gvisor")
    assert engine.default_isolation(cpu_image) == ("gvisor" if gvisor.ok else "runc"), gvisor
    assert engine.default_isolation(cpu_image, gpus=(0,)) == "runc"


def test_a_gvisor_sandbox_never_gets_gpus_and_runc_never_a_privileged_exec(make_sandbox):
    with pytest.raises(InvalidSpec, match="GPU sandboxes run on runc"):
        make_sandbox(isolation="gvisor", gpus=(0,))
    box = make_sandbox()
    with pytest.raises(SandboxError, match="only made in a gVisor sandbox"):
        box.exec(["id", "-u"], user="0", privileged=True)
    with pytest.raises(SandboxError, match="only made in a gVisor sandbox"):
        box.root_channel(["cat"])


def test_the_gpu_check_fails_clearly_on_an_engine_without_the_nvidia_runtime(engine, base_image):
    """This machine has no GPU: `redline doctor`'s "GPU visible in a sandbox" must say why it fails,
    and leave no sandbox behind."""
    assert "nvidia" not in (engine.info().get("Runtimes") or {})
    check = gpu_visible_check(engine, base_image)
    assert not check.ok and check.detail.startswith("GPU 0 could not be given to a sandbox"), check
    assert not [box for box in engine.sandboxes() if box.name.startswith("redline-selftest-gpu-")]


def test_fork_bomb_is_stopped_by_the_pids_limit(make_sandbox):
    box = make_sandbox(pids_limit=40)
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 500:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped', n, e.errno)\n"
    )
    result = box.exec(["python3", "-c", bomb])
    assert result.stdout.startswith("stopped"), result
    forked = int(result.stdout.split()[1])
    assert forked < 40
    # The sandbox still answers once the bomb is cleared.
    box.exec(["pkill", "-f", "python3 -c"])
    assert box.exec(["echo", "alive"]).stdout.strip() == "alive"


def test_memory_hog_is_oom_killed_and_the_sandbox_survives(make_sandbox):
    box = make_sandbox(mem_limit="128m")
    hog = "b = []\nwhile True:\n    b.append(bytearray(16 * 1024 * 1024))\n"
    result = box.exec(["python3", "-c", hog])
    assert result.exit_code == 137  # SIGKILL from the OOM killer
    assert box.status() == "running"
    assert box.exec(["echo", "alive"]).stdout.strip() == "alive"


def test_exec_reports_the_real_exit_code_and_separates_streams(make_sandbox):
    box = make_sandbox()
    result = box.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_exec_streams_output_while_the_command_runs(make_sandbox):
    box = make_sandbox()
    arrivals = []
    result = box.exec(["sh", "-c", "echo first; sleep 1.5; echo second"],
                      on_output=lambda name, data: arrivals.append((time.monotonic(), data)))
    ended = time.monotonic()
    assert b"".join(d for _, d in arrivals) == b"first\nsecond\n"
    assert ended - arrivals[0][0] >= 1.0  # the first line came before the command finished
    assert result.exit_code == 0


def test_log_stream_can_be_cancelled_from_another_thread(make_sandbox):
    box = make_sandbox(command=("sh", "-c", "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.02; done"))
    stream = box.logs()
    seen, finished = [], threading.Event()

    def follow():
        for _, data in stream:
            seen.append(data)
        finished.set()

    threading.Thread(target=follow, daemon=True).start()
    deadline = time.monotonic() + 10
    while len(seen) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(seen) >= 5
    stream.close()
    assert finished.wait(5), "the follower did not stop after close()"
    assert box.status() == "running"


def _log_lines(box) -> int:
    return len(box.engine.api.logs(box.id).splitlines())


def test_pause_freezes_a_busy_process_and_unpause_resumes_it(make_sandbox):
    box = make_sandbox(command=("sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done"))
    time.sleep(0.5)
    box.pause()
    assert box.status() == "paused"
    frozen = _log_lines(box)
    time.sleep(1.0)
    assert _log_lines(box) == frozen
    box.unpause()
    time.sleep(1.0)
    assert _log_lines(box) > frozen
    assert box.status() == "running"


def test_pausing_while_execs_start_never_wedges_the_sandbox(make_sandbox):
    """The judge probes while the operator pauses. A pause that froze runc's set-up of a starting exec
    wedged the container (inspect, unpause and rm hung; first cycle, every time, before the fix)."""
    box = make_sandbox()
    stop, cycles = threading.Event(), []

    def probe():
        while not stop.is_set():
            try:
                box.exec(["true"])
            except SandboxError:  # refused while paused, as it should be
                pass

    def operator():
        for _ in range(30):
            box.pause()
            time.sleep(0.05)
            box.unpause()
            time.sleep(0.02)
            cycles.append(1)

    threading.Thread(target=probe, daemon=True).start()
    pausing = threading.Thread(target=operator, daemon=True)
    pausing.start()
    pausing.join(timeout=90)
    stop.set()
    if len(cycles) < 30:  # wedged: thaw it by hand so that the fixture can remove it
        for state in glob.glob(f"/sys/fs/cgroup/freezer/docker/{box.id}*/freezer.state"):
            Path(state).write_text("THAWED")
    assert len(cycles) == 30, "pause/unpause wedged or failed while execs were starting"
    assert box.exec(["echo", "alive"]).stdout == "alive\n" and box.status() == "running"


def test_kill_stops_a_sandbox_with_many_busy_processes(make_sandbox):
    box = make_sandbox(command=("sh", "-c", "for i in $(seq 50); do (while :; do :; done) & done; wait"),
                       cpus=0.5)
    deadline = time.monotonic() + 20
    while len(box.top()) < 50 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(box.top()) >= 50
    report = box.kill()
    assert report.count == 1 and report.all_confirmed, report
    assert box.status() == "exited"


def test_kill_switch_kills_every_container_of_a_session_and_only_those(engine, make_sandbox, session_id):
    mine = [make_sandbox() for _ in range(3)]
    other = make_sandbox(session_id=f"other-{uuid.uuid4().hex[:8]}")
    try:
        report = KillSwitch().kill_session(session_id)
        assert report.count == 3 and report.all_confirmed
        assert all(box.status() == "exited" for box in mine)
        assert other.status() == "running"
    finally:
        other.remove()


@pytest.fixture
def own_engine(second_engine, base_image):
    """The tests' own engine (a sweep there touches nobody's sandboxes) and a maker of sandboxes on it."""
    from console.sandbox.docker_engine import DockerEngine

    engine = DockerEngine(second_engine.url).connect()

    def make(session: str, deadline: float = 600):
        return engine.create(ContainmentSpec(image=base_image, session_id=session, trial_id=uuid.uuid4().hex[:10],
                                             deadline_unix=time.time() + deadline))
    yield engine, make
    for box in engine.sandboxes():
        box.remove()


def test_gc_removes_leftovers_of_dead_sessions(own_engine):
    engine, make = own_engine
    dead = f"dead-{uuid.uuid4().hex[:8]}"
    leftovers = [make(dead) for _ in range(2)]
    alive = make("alive")
    removed = engine.gc(lambda labels: labels.get("redline.session") == dead)
    assert removed == 2
    assert all(box.status() == "removed" for box in leftovers)
    assert alive.status() == "running"


def test_gc_removes_sandboxes_past_their_deadline(own_engine):
    engine, make = own_engine
    expired, current = make("old", deadline=-1), make("current")
    assert engine.gc(lambda labels: False) == 1
    assert expired.status() == "removed" and current.status() == "running"


def test_orphans_are_sandboxes_whose_creating_process_is_gone(make_sandbox):
    import os
    import socket
    import subprocess

    from console.session import is_orphan

    box = make_sandbox()
    assert box.labels["redline.owner"] == f"{socket.gethostname()}:{os.getpid()}"
    assert not is_orphan(box.labels)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert is_orphan({**box.labels, "redline.owner": f"{socket.gethostname()}:{gone.pid}"})
    assert not is_orphan({**box.labels, "redline.owner": f"elsewhere:{gone.pid}"})


def test_gpu_request_without_nvidia_runtime_is_a_clear_error(engine, base_image, session_id):
    if "nvidia" in (engine.info().get("Runtimes") or {}):
        pytest.skip("this engine has the NVIDIA runtime, so it cannot refuse a GPU request for lack of it")
    spec = ContainmentSpec(image=base_image, session_id=session_id, trial_id=f"gpu{uuid.uuid4().hex[:8]}",
                           deadline_unix=time.time() + 60, gpus=(0,))
    with pytest.raises(GpuRuntimeMissing) as err:
        engine.create(spec)
    assert "NVIDIA" in str(err.value) and "could not select device driver" in str(err.value)
    assert engine.sandboxes(session_id=session_id) == []


def test_unknown_image_names_the_build_command(engine, session_id):
    spec = ContainmentSpec(image="redline-nonexistent:0", session_id=session_id, trial_id="x1",
                           deadline_unix=time.time() + 60)
    with pytest.raises(ImageMissing, match="redline images build"):
        engine.create(spec, logical_image="cpu")


@pytest.mark.parametrize("field, value, message", [
    ("pids_limit", 5, "pids_limit"),
    ("mem_limit", "lots", "memory limit"),
    ("mem_limit", "1m", "at least 64m"),
    ("cpus", 0, "cpus"),
    ("user", "0:0", "root"),
    ("gpus", (3,), "GPU 3 does not exist"),
    ("model_mounts", {"/var/run/docker.sock": "/models/x"}, "Docker socket"),
    ("model_mounts", {"/var/run": "/models/x"}, "Docker socket"),
    ("model_mounts", {"/": "/models/x"}, "Docker socket"),
    ("model_mounts", {"/tmp": "/opt/redline"}, "under /models/"),
])
def test_invalid_limits_are_named_errors(engine, base_image, session_id, field, value, message):
    spec = ContainmentSpec(image=base_image, session_id=session_id, trial_id="bad",
                           deadline_unix=time.time() + 60, **{field: value})
    with pytest.raises(InvalidSpec, match=message):
        engine.create(spec, gpu_count=2)


def test_a_link_to_the_docker_socket_is_refused_like_the_socket(tmp_path):
    from console.sandbox.spec import exposes_docker_socket

    (tmp_path / "weights").mkdir()
    (tmp_path / "run-link").symlink_to("/var/run")
    (tmp_path / "socket-link").symlink_to("/var/run/docker.sock")
    assert exposes_docker_socket(str(tmp_path / "run-link"))
    assert exposes_docker_socket(str(tmp_path / "socket-link"))
    assert not exposes_docker_socket(str(tmp_path / "weights"))
    spec = ContainmentSpec(image="x", session_id="s", trial_id="t", deadline_unix=time.time() + 60,
                           model_mounts={str(tmp_path / "run-link"): "/models/x"})
    with pytest.raises(InvalidSpec, match="Docker socket"):
        spec.validate()


def test_model_mount_is_read_only(make_sandbox, tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w" * 10)
    tmp_path.chmod(0o777)
    box = make_sandbox(model_mounts={str(tmp_path): "/models/test"})
    assert box.exec(["cat", "/models/test/weights.bin"]).stdout == "w" * 10
    result = box.exec(["sh", "-c", "echo x > /models/test/weights.bin"])
    assert result.exit_code != 0 and "Read-only" in result.stderr


def test_top_sees_what_the_agent_runs(make_sandbox):
    box = make_sandbox()
    box.exec_detached(["sleep", "77"])
    deadline = time.monotonic() + 5
    while not any("sleep 77" in p.cmd for p in box.top()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("sleep 77" in p.cmd for p in box.top())


def test_the_socket_of_the_engine_actually_used_is_never_mounted(tmp_path, monkeypatch):
    """An engine on another socket (DOCKER_HOST, or the engine a trial is created on): its folder, a
    folder above it, or a link to it is refused as weights, even without 'docker.sock' in a name."""
    import socket as sockets

    from console.sandbox.docker_engine import DockerEngine

    engine_dir = tmp_path / "engine" / "run"
    engine_dir.mkdir(parents=True)
    listener = sockets.socket(sockets.AF_UNIX)
    listener.bind(str(engine_dir / "api.sock"))
    (tmp_path / "weights-link").symlink_to(engine_dir)
    for weights in (engine_dir, tmp_path / "engine", tmp_path / "weights-link"):
        spec = ContainmentSpec(image="x", session_id="s", trial_id="t", deadline_unix=time.time() + 60,
                               model_mounts={str(weights): "/models/x"})
        spec.validate()  # the default engine's rules do not know this socket ...
        with pytest.raises(InvalidSpec, match="Docker socket"):  # ... the engine in use does
            spec.validate(engine_socket=DockerEngine(f"unix://{engine_dir}/api.sock").socket_path())
        monkeypatch.setenv("DOCKER_HOST", f"unix://{engine_dir}/api.sock")
        with pytest.raises(InvalidSpec, match="Docker socket"):
            spec.validate()
        monkeypatch.delenv("DOCKER_HOST")
    listener.close()


def test_a_sandbox_ends_itself_at_its_deadline_with_no_redline_process_acting(engine, make_sandbox):
    """The last line of defence: PID 1's own child sleeps until the deadline (+ margin), then the
    container exits and takes every process with it; the agent's uid cannot stop that sleep."""
    from console.sandbox.spec import SELF_END_MARGIN_S

    box = make_sandbox(deadline_unix=time.time() - SELF_END_MARGIN_S + 4)
    box.exec_detached(["sh", "-c", "exec sleep 600"])  # the agent's work, meant to outlive everything
    tried = box.exec(["sh", "-c", "for p in $(ps -o pid= -u 0); do kill -STOP $p 2>/dev/null && echo stopped $p; "
                              "done; echo tried"])  # the agent would keep its sandbox alive: it cannot
    assert tried.stdout.strip() == "tried", tried.stdout
    deadline = time.monotonic() + 60
    while engine.api.inspect_container(box.id)["State"]["Running"]:
        assert time.monotonic() < deadline, "the sandbox outlived its deadline"
        time.sleep(0.5)
    state = engine.api.inspect_container(box.id)["State"]
    assert state["Status"] == "exited", state


def test_an_agent_cannot_fill_the_engines_disk(engine, make_sandbox):
    """Every folder the agent can write is a sized tmpfs and the root is read-only: dd into each ends
    in ENOSPC inside, and the engine's data root does not grow."""
    import shutil

    box = make_sandbox(mem_limit="512m")
    root = engine.info()["DockerRootDir"]
    before = shutil.disk_usage(root).used
    wrote = box.exec(["sh", "-c", "for d in $HOME /tmp /var/tmp /; do dd if=/dev/zero of=$d/fill bs=1M count=1024 "
                      "2>&1 | grep -v records; done; df -k $HOME /tmp /var/tmp | tail -n +2"], timeout=120)
    assert wrote.stdout.count("No space left on device") == 3, wrote.stdout
    assert "Read-only file system" in wrote.stdout or "Permission denied" in wrote.stdout, wrote.stdout
    assert shutil.disk_usage(root).used - before < 64 * 1024**2  # what the agent wrote is not on disk
    sizes = [int(line.split()[1]) * 1024 for line in wrote.stdout.splitlines()[-3:]]
    assert sizes == [256 * 1024**2, 64 * 1024**2, 64 * 1024**2], wrote.stdout  # half and 1/8 of the memory


def test_scratch_size_caps_the_agents_workspace(make_sandbox):
    box = make_sandbox(scratch_size="64m", mem_limit="256m")
    wrote = box.exec(["sh", "-c", "dd if=/dev/zero of=$HOME/fill bs=1M count=100 2>&1; echo rc=$?; id -u; "
                      "stat -c %u $HOME"], timeout=60)
    assert "No space left on device" in wrote.stdout, wrote.stdout
    assert wrote.stdout.split()[-2:] == ["1000", "1000"]  # the workspace still belongs to the agent
    with pytest.raises(InvalidSpec, match="scratch_size"):
        ContainmentSpec(image="x", session_id="s", trial_id="t", deadline_unix=time.time() + 60,
                        scratch_size="2g", mem_limit="1g").validate()


def test_a_sandbox_the_judge_left_frozen_is_still_removed(engine, make_sandbox):
    """A judge that dies mid-challenge leaves processes in its frozen child cgroup; under cgroup v1
    they cannot die until thawed, and the engine then refuses `rm -f`. Removal thaws first."""
    from console.sandbox import host

    box = make_sandbox()
    box.exec_detached(["sh", "-c", "while :; do :; done"])
    time.sleep(0.2)
    held = host.Freezer(box.id).hold(lambda pid: False)
    assert held and host.Freezer(box.id).is_frozen()
    box.remove()  # no release(): as if the judge had died
    assert box.status() == "removed"
