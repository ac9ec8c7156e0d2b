"""Containment self-test: start a fresh sandbox and check from inside and outside what it can do.

Used by `redline doctor`, the launch panel's checklist and the tests. Each check is a named
(ok, detail) pair so a person sees exactly which guarantee holds.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from console.sandbox.spec import AGENT_HOME, DOCKER_SOCKETS, SCRATCH_DIRS, ContainmentSpec

# Runs as the agent user inside the sandbox; prints one JSON object.
_INSIDE_PROBE = r"""
import ctypes, json, os, sys, glob
def read(path):
    try:
        return open(path).read().strip()
    except OSError:
        return None
status = dict(l.split(":\t", 1) for l in read("/proc/self/status").splitlines() if ":\t" in l)
pids_max = read("/sys/fs/cgroup/pids/pids.max") or read("/sys/fs/cgroup/pids.max")  # none under gVisor
try:
    os.kill(1, 0)
    signal_init = True
except PermissionError:
    signal_init = False
print(json.dumps({
    "init_uid": os.stat("/proc/1").st_uid,
    "can_signal_init": signal_init,
    "interfaces": sorted(l.split(":")[0].strip() for l in read("/proc/net/dev").splitlines()[2:]),
    "kernel": read("/proc/version"),
    "cap_eff": status.get("CapEff", "").strip(),
    "no_new_privs": str(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)),  # PR_GET_NO_NEW_PRIVS (gVisor has no status line)
    "uid": os.getuid(),
    "pids_max": pids_max,
    "docker_socket": any(os.path.exists(p) for p in sys.argv[1:]),
    "can_write_opt": os.access("/opt", os.W_OK),
    "writable": {p: (lambda v: v.f_blocks * v.f_frsize)(os.statvfs(p)) for p in (
        "/", "/etc", "/opt", "/usr", "/var", "/home/agent", "/tmp", "/var/tmp", "/dev/shm") if os.access(p, os.W_OK)},
    "mounts": {f[1]: [f[2], "ro" in f[3].split(",")] for f in (l.split() for l in open("/proc/self/mounts"))},
}))
"""


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _host_pids_max(container_id: str) -> str | None:
    """pids.max of the sandbox's cgroup as the engine's host sees it (the only view under gVisor)."""
    from console.sandbox import host

    for folder in host.container_cgroups(container_id):
        if (folder / "pids.max").exists():
            return (folder / "pids.max").read_text().strip()
    return None


def _kernel_check(isolation: str, guest_kernel: str | None) -> Check:
    """runc shares the host's kernel; gVisor answers with a kernel of its own (the Sentry)."""
    host_kernel = open("/proc/version").read().strip()
    separate = bool(guest_kernel) and guest_kernel != host_kernel
    if isolation == "gvisor":
        return Check("kernel: gVisor's user-space kernel", separate, f"inside: {guest_kernel!r}")
    return Check("kernel: shared with the host (runc)", not separate, f"inside: {guest_kernel!r}")


def _probe_spec(image: str, kind: str, session_id: str | None = None, **overrides) -> ContainmentSpec:
    """A small sandbox for one self-test, with every containment default; gone within two minutes."""
    trial = f"selftest-{kind}{uuid.uuid4().hex[:8]}"
    return ContainmentSpec(image=image, session_id=session_id or trial, trial_id=trial,
                           deadline_unix=time.time() + 120, pids_limit=64, mem_limit="256m", **overrides)


def containment_checks(engine, image: str, session_id: str | None = None, isolation: str = "runc") -> list[Check]:
    """Start a sandbox from `image` at `isolation`, probe it, remove it; return the checks."""
    spec = _probe_spec(image, "", session_id, isolation=isolation)
    box = engine.create(spec)
    try:
        result = box.exec(["python3", "-I", "-c", _INSIDE_PROBE, *DOCKER_SOCKETS])
        if result.exit_code != 0:
            return [Check("probe ran", False, result.stderr.strip()[-300:])]
        inside = json.loads(result.stdout)
        host = engine.api.inspect_container(box.id)["HostConfig"]
        pids_max = inside["pids_max"] or _host_pids_max(box.id)
    finally:
        box.remove()
    others = [i for i in inside["interfaces"] if i != "lo"]
    want_runtime = spec.docker_kwargs()["runtime"]
    want_pids = str(spec.docker_kwargs()["pids_limit"])
    return [
        Check(f"isolation: {isolation}", host.get("Runtime") == want_runtime, f"Runtime={host.get('Runtime')}"),
        _kernel_check(isolation, inside["kernel"]),
        Check("network: only loopback", not others and host.get("NetworkMode") == "none",
              f"interfaces {inside['interfaces']}, NetworkMode={host.get('NetworkMode')}"),
        Check("capabilities: none", int(inside["cap_eff"] or "0", 16) == 0 and host.get("CapDrop") == ["ALL"],
              f"CapEff={inside['cap_eff']}, CapDrop={host.get('CapDrop')}"),
        Check("no-new-privileges", inside["no_new_privs"] == "1", f"PR_GET_NO_NEW_PRIVS={inside['no_new_privs']}"),
        Check("not root", inside["uid"] != 0, f"uid={inside['uid']}"),
        Check("PID 1 out of the agent's reach", inside["init_uid"] == 0 and not inside["can_signal_init"],
              f"init uid={inside['init_uid']}, agent may signal it: {inside['can_signal_init']}"),
        Check("not privileged", host.get("Privileged") is False, f"Privileged={host.get('Privileged')}"),
        Check("pids limit in force", pids_max == want_pids,
              f"pids.max={pids_max}" + (" (gVisor's own threads included)" if isolation == "gvisor" else "")),
        Check("memory limit in force", host.get("Memory") == 256 * 1024**2, f"Memory={host.get('Memory')}"),
        Check("no Docker socket", not inside["docker_socket"], "socket absent" if not inside["docker_socket"] else "socket visible"),
        Check("agent code not writable", not inside["can_write_opt"], "/opt read-only for the agent"),
        _disk_check(spec, inside["writable"], inside["mounts"]),
    ]


def _disk_check(spec: ContainmentSpec, writable: dict, mounts: dict) -> Check:
    """Every folder the agent can write is a tmpfs of the spec's size and the root is read-only, so
    no write of the agent can reach the engine's disk."""
    expected = {AGENT_HOME: spec.workspace_bytes, **{path: spec.scratch_bytes for path in SCRATCH_DIRS}}
    agent_writable = writable
    wrong = [f"{path}: {mounts.get(path, ['not a mount'])[0]}, {size} bytes" for path, size in agent_writable.items()
             if path != "/dev/shm" and (mounts.get(path, [""])[0] != "tmpfs" or size > expected.get(path, 0))]
    root_ro = mounts.get("/", ["", False])[1]
    return Check("disk bounded: read-only root, writable folders are sized tmpfs", root_ro and not wrong,
                 f"root read-only: {root_ro}; agent-writable: " + ", ".join(
                     f"{path} {size // 1024**2} MiB" for path, size in sorted(agent_writable.items()))
                 + (f"; not bounded: {'; '.join(wrong)}" if wrong else ""))


# What an agent relies on that some isolation levels lack; one line per failure.
_FIDELITY_PROBE = """
ls -ld / >/dev/null 2>&1 || echo "ls fails: $(ls -ld / 2>&1 | head -c 120)"
stat / >/dev/null 2>&1 || echo "stat fails"
python3 -c 'import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(36, 1, 0, 0, 0) != 0)' || echo "no child subreaper"
"""


def fidelity_check(engine, image: str, isolation: str) -> Check:
    """Whether an agent in a sandbox of `image` at `isolation` sees the system it sees under runc: its
    shell tools work, and it can be a child subreaper (what keeps a detached replica's creator
    visible to the judge). Debian 12's gVisor fails all three (ls and stat: "Invalid argument" on
    its coreutils' statx flags)."""
    box = engine.create(_probe_spec(image, "fidelity-", isolation=isolation))
    try:
        result = box.exec(["sh", "-c", _FIDELITY_PROBE], timeout=30)
    finally:
        box.remove()
    failures = [line for line in result.stdout.splitlines() if line.strip()]
    ok = result.exit_code == 0 and not failures
    return Check("the agent's system as under runc", ok, "ls, stat and a child subreaper work" if ok else
                 "; ".join(failures) or result.stderr.strip()[:200])


# Lists the GPU device nodes the sandbox was given and, when the NVIDIA toolkit mounted it, nvidia-smi -L.
_GPU_PROBE = "ls /dev | grep -E '^nvidia[0-9]+$'; command -v nvidia-smi >/dev/null && nvidia-smi -L"


def gpu_visible_check(engine, image: str, gpu: int = 0) -> Check:
    """Start a sandbox given GPU `gpu` (with every containment default) and look for it inside."""
    from console.errors import RedlineError

    try:
        box = engine.create(_probe_spec(image, "gpu-", gpus=(gpu,)))
    except RedlineError as exc:
        return Check("GPU visible in a sandbox", False, f"GPU {gpu} could not be given to a sandbox: {exc}")
    try:
        result = box.exec(["sh", "-c", _GPU_PROBE])
    finally:
        box.remove()
    lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    devices = [line for line in lines if line.startswith("nvidia")]
    return Check("GPU visible in a sandbox", bool(devices),
                 "; ".join(lines)[:300] if devices else f"no /dev/nvidia<N> inside a sandbox given GPU {gpu}")

