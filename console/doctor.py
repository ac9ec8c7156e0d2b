"""`redline doctor`: a checklist of what a trial needs; exit 0 only if every required check holds."""

from __future__ import annotations

import json

from console.errors import RedlineError


def gpu_summary() -> tuple[bool, str]:
    """(has GPUs, text); no NVIDIA driver is a normal answer, not a failure."""
    from console.telemetry.gpu import probe_gpus

    inventory = probe_gpus()
    if not inventory.status.available:
        return False, inventory.status.message
    return True, ", ".join(f"GPU {i}: {name}" for i, name in enumerate(inventory.names))


def run_doctor(verbose: bool = True, as_json: bool = False) -> int:
    from console.sandbox.docker_engine import DockerEngine
    from console.sandbox.errors import GVISOR_DAEMON_JSON
    from console.sandbox.images import IMAGES
    from console.sandbox.selftest import containment_checks, gpu_visible_check

    rows: list[tuple[str, bool, bool, str]] = []  # name, ok, required, detail
    engine = DockerEngine()
    try:
        engine.connect()
        info = engine.info()
        rows.append(("Docker engine", True, True,
                     f"{info.get('ServerVersion')} ({info.get('Driver')}, cgroup v{info.get('CgroupVersion', '?')})"))
    except RedlineError as exc:
        rows.append(("Docker engine", False, True, str(exc)))
        engine = None
    if engine is not None:
        for info in IMAGES.values():
            present = engine.image_exists(info.ref())
            detail = info.ref() + ("" if present else f" missing: `redline images build {info.name}`")
            rows.append((f"image {info.name}", present, info.default, detail))
        runtimes = engine.info().get("Runtimes") or {}
        levels = engine.isolation_levels()
        rows.append(("isolation levels", "gvisor" in levels, False,
                     ", ".join(levels) + ("; GPU sandboxes: runc only" if "gvisor" in levels else
                                          f" only. For gVisor: `apt install runsc`, add {GVISOR_DAEMON_JSON} "
                                          "to the engine's daemon.json, restart dockerd")))
        rows.append(("NVIDIA container runtime", "nvidia" in runtimes, False,
                     "present" if "nvidia" in runtimes else "absent: GPU trials unavailable"))
    has_gpu, gpu_text = gpu_summary()
    rows.append(("GPUs (NVML)", has_gpu, False, gpu_text))
    if has_gpu and engine is not None and engine.image_exists(IMAGES["base"].ref()):
        check = gpu_visible_check(engine, IMAGES["base"].ref())
        rows.append((check.name, check.ok, False, check.detail))
    else:
        rows.append(("GPU visible in a sandbox", False, False,
                     "not checked: " + ("no GPU" if not has_gpu else "needs the engine and the base image")))
    if engine is not None and engine.image_exists(IMAGES["base"].ref()):
        for level in engine.isolation_levels():
            try:
                for check in containment_checks(engine, IMAGES["base"].ref(), isolation=level):
                    rows.append((f"{level}: {check.name}", check.ok, True, check.detail))
                fidelity = engine.fidelity(level, IMAGES["base"].ref())
                rows.append((f"{level}: {fidelity.name}", fidelity.ok, False, fidelity.detail if fidelity.ok else
                             f"{fidelity.detail}: never the default, only on request"))
            except RedlineError as exc:
                rows.append((f"{level}: containment self-test", False, True, str(exc)))
        if engine.image_exists(IMAGES["cpu"].ref()):
            rows.append(("default isolation (CPU sandboxes)", True, False,
                         engine.default_isolation(IMAGES["cpu"].ref())))
    else:
        rows.append(("containment self-test", False, True, "needs the engine and the base image"))
    healthy = all(ok for _, ok, required, _ in rows if required)
    if as_json:
        print(json.dumps({"ok": healthy, "checks": [
            {"name": n, "ok": ok, "required": r, "detail": d} for n, ok, r, d in rows]}))
    elif verbose:
        for name, ok, required, detail in rows:
            mark = "[ok]" if ok else ("[FAIL]" if required else "[--]")
            print(f"{mark:7}{name:44}{detail}")
        print("all required checks hold" if healthy else "some required checks FAILED")
    return 0 if healthy else 1
