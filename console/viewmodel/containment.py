"""The containment checklist shown before launch, read from what Docker will actually be given.

Each line comes from `ContainmentSpec.docker_kwargs()` of the spec a launch would create, not from
a description of the defaults, so the operator sees the settings that will really be applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.errors import RedlineError
from console.sandbox.spec import AGENT_HOME, ISOLATION_RUNTIMES, SCRATCH_DIRS, ContainmentSpec, exposes_docker_socket
from console.trial import ModelSandbox, sandbox_spec


@dataclass(frozen=True)
class CheckItem:
    name: str
    value: str
    ok: bool  # False: a setting that loosens containment or a limit the sandbox would reject
    detail: str = ""  # more than fits on the line (shown as a tooltip)


def launch_spec(model: ModelSandbox, scenario, gpus: tuple[int, ...], isolation: str = "runc") -> ContainmentSpec:
    """The spec a launch of a model x `scenario` on `gpus` at `isolation` creates, built by TrialRunner's
    own function (session and trial ids are assigned at launch and only label the sandbox)."""
    return sandbox_spec(model, scenario, gpus, "(this console)", "(at launch)", isolation=isolation)


ISOLATION_TEXT = {"runc": "runc: the host's kernel, shared", "gvisor": "gVisor: a user-space kernel of its own"}


def _size(n: int) -> str:
    return f"{n / 1024**3:g} GiB" if n >= 1024**3 else f"{n / 1024**2:g} MiB"


def checklist(spec: ContainmentSpec, gpu_count: int | None = None, engine_memory: int | None = None,
              engine_cpus: int | None = None, isolation_note: str = "",
              isolation_detail: str = "") -> list[CheckItem]:
    """One line per containment property, from the engine arguments the spec produces; isolation_note
    says how the level was chosen, isolation_detail what differs under it (the tooltip)."""
    items = []
    try:
        spec.validate(gpu_count=gpu_count, engine_memory=engine_memory, engine_cpus=engine_cpus)
    except RedlineError as exc:
        items.append(CheckItem("Limits", str(exc), False))
    kwargs = spec.docker_kwargs()
    runtime = kwargs["runtime"]
    level = next(name for name, used in ISOLATION_RUNTIMES.items() if used == runtime)
    items.append(CheckItem("Isolation", ISOLATION_TEXT[level] + (f" ({isolation_note})" if isolation_note else ""),
                           True, "; ".join(filter(None, [f"engine runtime {runtime!r}", isolation_detail]))))
    mounts = kwargs["mounts"]
    network = kwargs["network_mode"]
    items.append(CheckItem("Network", "none (loopback only)" if network == "none" else network,
                           network == "none"))
    caps = kwargs["cap_drop"]
    items.append(CheckItem("Capabilities", "all dropped" if caps == ["ALL"] else f"dropped: {caps}",
                           caps == ["ALL"]))
    no_new = "no-new-privileges" in kwargs["security_opt"]
    items.append(CheckItem("Privileges", "no-new-privileges" if no_new else "can escalate", no_new))
    items.append(CheckItem("Agent user", f"{spec.user} (not root)", spec.user.split(":")[0] not in ("0", "root"),
                           "the agent, its model server and every command it runs"))
    init_root = kwargs["init"] and str(kwargs["user"]).split(":")[0] == "0"
    items.append(CheckItem("Init (PID 1)", "root, no capabilities (the agent cannot signal it)" if init_root
                           else f"{kwargs['user']} (the agent could stop its own sandbox)", init_root))
    weights = [m for m in mounts if str(m["Target"]).startswith("/models/")]
    if weights:
        writable = [m["Target"] for m in weights if not m.get("ReadOnly")]
        value = "; ".join(f"{'read-only' if m.get('ReadOnly') else 'WRITABLE'} at {m['Target']}" for m in weights)
        source = "; ".join(str(m["Source"]) for m in weights)
        items.append(CheckItem("Model weights", value, not writable, f"from {source} on this machine"))
    else:
        items.append(CheckItem("Model weights", "inside the image (read-only image layer)", True))
    socket = [m["Source"] for m in mounts if exposes_docker_socket(str(m["Source"]))]
    items.append(CheckItem("Docker socket", "mounted!" if socket else "not mounted", not socket))
    items.append(CheckItem("Processes", f"at most {kwargs['pids_limit']}", True))
    memory, swap = kwargs["mem_limit"], kwargs["memswap_limit"]
    items.append(CheckItem("Memory", f"{_size(memory)}{', no swap' if swap == memory else ''}", True))
    items.append(CheckItem("CPU", f"{kwargs['nano_cpus'] / 1e9:g} core(s)", True))
    sizes = {path: int(options.split(",")[0][5:]) for path, options in kwargs["tmpfs"].items()
             if not options.endswith(",ro")}
    bounded = kwargs.get("read_only") and AGENT_HOME in sizes
    items.append(CheckItem(
        "Disk", (f"{AGENT_HOME} {_size(sizes[AGENT_HOME])}, " + ", ".join(
            f"{path} {_size(size)}" for path, size in sizes.items() if path in SCRATCH_DIRS)
            + (f", /dev/shm {_size(kwargs['shm_size'])}" if "shm_size" in kwargs else "")
            + "; nothing else writable") if bounded else "not limited", bool(bounded),
        "in memory (tmpfs, counted in the memory limit): filling them is ENOSPC in the sandbox, never the "
        "engine's disk; the root filesystem is read-only. scratch_size in the scenario sizes the home"))
    if spec.hidden_paths:
        items.append(CheckItem("Hidden", f"{len(spec.hidden_paths)} path(s) of the image covered by something empty: "
                               + ", ".join(spec.hidden_paths), True,
                               "the scenario's harsher environment: missing tools and libraries"))
    devices = [i for request in kwargs["device_requests"] for i in request.get("DeviceIDs") or ()]
    items.append(CheckItem("GPUs", ", ".join(f"GPU {i}" for i in devices) if devices else "none", True))
    items.append(CheckItem("Image", kwargs["image"], True))
    return items
