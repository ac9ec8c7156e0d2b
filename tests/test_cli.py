"""The `redline` command from a terminal: doctor, kill --all, images, usage errors."""

from __future__ import annotations

import json
import subprocess
import sys


def redline(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "console", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_doctor_passes_every_required_check_on_this_machine(base_image, cpu_image):
    result = redline("doctor", "--json")
    report = json.loads(result.stdout)
    failed = [c for c in report["checks"] if c["required"] and not c["ok"]]
    assert result.returncode == 0 and report["ok"], failed
    names = {c["name"] for c in report["checks"]}
    for level in ("runc", "gvisor"):  # the containment self-test runs at every level the engine has
        assert {f"{level}: {check}" for check in ("isolation: " + level, "network: only loopback", "not root",
                                                  "pids limit in force", "no Docker socket")} <= names
    assert {"Docker engine", "GPUs (NVML)", "isolation levels", "default isolation (CPU sandboxes)"} <= names
    checks = {c["name"]: c for c in report["checks"]}
    fidelity = checks["gvisor: the agent's system as under runc"]
    assert fidelity["required"] is False
    assert checks["default isolation (CPU sandboxes)"]["detail"] == ("gvisor" if fidelity["ok"] else "runc")
    gpu = next(c for c in report["checks"] if c["name"] == "GPUs (NVML)")
    assert gpu["required"] is False and gpu["detail"]  # "No NVIDIA driver: ..." is a normal answer
    in_sandbox = next(c for c in report["checks"] if c["name"] == "GPU visible in a sandbox")
    assert in_sandbox["required"] is False
    if not gpu["ok"]:  # here: said, not skipped silently
        assert not in_sandbox["ok"] and in_sandbox["detail"] == "not checked: no GPU"


def test_doctor_prints_a_checklist(engine):
    result = redline("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[ok]" in result.stdout and "all required checks hold" in result.stdout


def test_kill_all_with_several_then_zero_sandboxes(second_engine, tmp_path):
    """Like the command itself, this kills every running Redline sandbox on the engine: so it runs
    against the tests' own second engine, never the shared one."""
    import time
    import uuid

    from console.sandbox.docker_engine import DockerEngine
    from console.sandbox.images import image_ref
    from console.sandbox.spec import ContainmentSpec

    engine = DockerEngine(second_engine.url).connect()
    boxes = [engine.create(ContainmentSpec(image=image_ref("base"), session_id="kill-all", trial_id=uuid.uuid4().hex[:10],
                                           deadline_unix=time.time() + 600, command=("sh", "-c", "while :; do sleep 0.1; done")))
             for _ in range(3)]
    env = second_engine.env(REDLINE_HOME=str(tmp_path / "home"))
    several = redline("kill", "--all", env=env)
    assert several.returncode == 0, several.stdout + several.stderr
    killed = int(several.stdout.split("killed ")[-1].split()[0])
    assert killed >= 3 and several.stdout.count("dead after") == killed
    assert all(box.status() == "exited" for box in boxes)
    none_left = redline("kill", "--all", env=env)
    assert none_left.returncode == 0 and "killed 0 Redline container(s)" in none_left.stdout
    for box in boxes:
        box.remove()


def test_kill_without_a_target_is_a_usage_error():
    result = redline("kill")
    assert result.returncode == 2 and "--all" in result.stderr and "Traceback" not in result.stderr


def test_images_list_names_the_gpu_image_that_is_built_only_on_request(base_image, cpu_image):
    result = redline("images", "list")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert base_image in lines["base"] and "present" in lines["base"] and cpu_image in lines["cpu"]
    from console.sandbox.images import VLLM_VERSION

    assert f"vLLM {VLLM_VERSION}" in lines["vllm"] and "redline-vllm:" in lines["vllm"]


def test_unknown_image_is_a_usage_error():
    result = redline("images", "build", "nonsense")
    assert result.returncode == 2 and "nonsense" in result.stderr
