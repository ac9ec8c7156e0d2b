"""Pid attribution from /proc cgroup files and container labels (a fake /proc and engine)."""

from types import SimpleNamespace

import docker.errors
import pytest

from console.telemetry import PidAttributor, container_id_from_cgroup

ID_A = "a" * 64
ID_B = "b" * 64
ID_FOREIGN = "f" * 64


@pytest.mark.parametrize("text, expected", [
    (f"9:name=systemd:/docker/{ID_A}\n4:memory:/docker/{ID_A}\n0::/docker/{ID_A}\n", ID_A),
    (f"0::/system.slice/docker-{ID_A}.scope\n", ID_A),
    (f"0::/docker/{ID_B}/docker/{ID_A}\n", ID_A),  # docker in docker: the innermost
    (f"0::/system.slice/docker-{ID_A}.scope/init.scope\n", ID_A),
    ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
    ("4:memory:/process_api/713a482d5e95bf252bb4fbf38170c860\n0::/\n", None),
    (f"0::/docker/{ID_A[:12]}\n", None),
    (f"0::/mydocker/{ID_A}\n", None),
])
def test_container_id_from_cgroup(text, expected):
    assert container_id_from_cgroup(text) == expected


class FakeEngine:
    """The one docker-py call the attributor makes: api.inspect_container."""

    def __init__(self, containers):
        self.containers = containers
        self.inspected = []
        self.down = False
        self.api = SimpleNamespace(inspect_container=self.inspect_container)

    def inspect_container(self, container_id):
        self.inspected.append(container_id)
        if self.down:
            raise docker.errors.DockerException("connection refused")
        if container_id not in self.containers:
            raise docker.errors.NotFound("no such container")
        labels, init_pid = self.containers[container_id]
        return {"Config": {"Labels": labels}, "State": {"Pid": init_pid}}


@pytest.fixture
def proc(tmp_path):
    """A fake /proc: add(pid, ppid, container_id, ns_pid)."""

    def add(pid, ppid, container_id=None, ns_pid=None):
        directory = tmp_path / str(pid)
        directory.mkdir()
        cgroup = f"/docker/{container_id}" if container_id else "/user.slice"
        (directory / "cgroup").write_text(f"0::{cgroup}\n")
        (directory / "stat").write_text(f"{pid} (python3 (x) y) S {ppid} {pid} 0 0\n")
        ns = f"\t{ns_pid}" if ns_pid else ""
        (directory / "status").write_text(f"Name:\tpython3\nNSpid:\t{pid}{ns}\n")

    add.root = tmp_path
    return add


@pytest.fixture
def tree(proc):
    """Sandbox A: init 100 -> start-instance 101 -> server 102 -> worker 103; 110 is a replica.
    Sandbox B (another trial): init 200 -> 201. A foreign container: 300. Host: 1, 50."""
    proc(1, 0)
    proc(50, 1)
    proc(90, 1)  # the engine's shim: the walk towards an instance stops at the init (100)
    for pid, ppid, ns in [(100, 90, 1), (101, 100, 7), (102, 101, 8), (103, 102, 9),
                          (110, 100, 20)]:
        proc(pid, ppid, ID_A, ns)
    proc(200, 1, ID_B, 1)
    proc(201, 200, ID_B, 5)
    proc(300, 1, ID_FOREIGN, 1)
    return FakeEngine({
        ID_A: ({"redline.trial": "trial-a", "redline.session": "s1"}, 100),
        ID_B: ({"redline.trial": "trial-b", "redline.session": "s1"}, 200),
        ID_FOREIGN: ({"com.example": "x"}, 300),
    })


def test_instances_candidates_host_and_unknown(proc, tree):
    attributor = PidAttributor(docker_client=tree, proc_root=proc.root)
    attributor.set_instance_pids(ID_A, {101: "original"})
    result = attributor.attribute([103, 101, 110, 201, 300, 50, 999])

    worker = result[103]
    assert (worker.kind, worker.instance, worker.trial, worker.session) == (
        "instance", "original", "trial-a", "s1")
    assert worker.container_id == ID_A and worker.container_pid == 9
    assert result[101].instance == "original"
    assert (result[110].kind, result[110].owner, result[110].trial) == (
        "candidate", "candidate", "trial-a")
    assert (result[201].kind, result[201].trial, result[201].container_pid) == (
        "candidate", "trial-b", 5)
    assert result[300].kind == "host" and result[300].container_id == ID_FOREIGN
    assert result[50].kind == "host" and result[50].container_id is None
    assert result[999].kind == "unknown"


def test_lookups_are_cached_and_instance_changes_apply(proc, tree):
    attributor = PidAttributor(docker_client=tree, proc_root=proc.root)
    for _ in range(3):
        attributor.attribute([102, 103, 110])
    assert tree.inspected == [ID_A], "one engine lookup per container"
    assert attributor.attribute([110])[110].kind == "candidate"

    attributor.set_instance_pids(ID_A, {101: "original", 110: "replica-1"})
    result = attributor.attribute([103, 110])
    assert (result[103].instance, result[110].instance) == ("original", "replica-1")
    assert tree.inspected == [ID_A]

    attributor.forget_container(ID_A)
    assert attributor.attribute([110])[110].kind == "candidate"
    assert tree.inspected == [ID_A, ID_A]


def test_engine_down_gives_unknown_until_it_answers(proc, tree):
    tree.down = True
    attributor = PidAttributor(docker_client=tree, proc_root=proc.root)
    first = attributor.attribute([201])[201]
    assert (first.kind, first.container_id) == ("unknown", ID_B)
    tree.down = False
    assert attributor.attribute([201])[201].trial == "trial-b"


def test_no_engine_at_all(proc, tree, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    attributor = PidAttributor(proc_root=proc.root, retry_interval_s=60)
    assert attributor.attribute([201])[201].kind == "unknown"
    assert attributor.attribute([50])[50].kind == "host"
