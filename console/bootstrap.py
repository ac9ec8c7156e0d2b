"""Set-up behind the README's two commands; stdlib only, because it runs before the venv exists.

    python3 -m console.bootstrap run    # venv + engine + images, then the console (embedded default)
    python3 -m console.bootstrap test   # the same set-up, then the whole test suite

Idempotent: a second run only checks (venv stamp, engine ping, image tags) and goes on.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from console.sandbox.errors import GVISOR_DAEMON_JSON  # stdlib only, like this module

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
DOCKER_SOCKET = "/var/run/docker.sock"
DOCKERD_LOG = "/var/log/redline-dockerd.log"
# The engine we start registers gVisor (isolation level "gvisor"); without --network=none this runsc
# refuses to start ("cannot run with network enabled in root network namespace").
DOCKERD_CONFIG = Path("/etc/redline/dockerd.json")
# Debian packages: the engine, gVisor, the offline base-image builder, a compiler for the llama.cpp
# wheel, and what Qt needs headless or on Xvfb.
SYSTEM_PACKAGES = [
    "docker.io", "runsc", "debootstrap", "python3-venv", "build-essential", "cmake", "libegl1", "libgl1",
    "libxkbcommon0", "libxkbcommon-x11-0", "libdbus-1-3", "libfontconfig1", "libxcb-cursor0", "libxcb-icccm4",
    "libxcb-keysyms1", "libxcb-shape0", "libxcb-xinerama0", "libxcb-randr0",
    "libxcb-render-util0", "libxcb-image0", "xvfb", "xauth",
]


def say(text: str) -> None:
    print(f"[redline setup] {text}", flush=True)


def fail(text: str) -> None:
    print(f"[redline setup] ERROR: {text}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def is_root() -> bool:
    return os.geteuid() == 0


def missing_debian_packages(names: list[str]) -> list[str]:
    if not shutil.which("dpkg-query"):
        return []
    missing = []
    for name in names:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True)
        if "install ok installed" not in out.stdout:
            missing.append(name)
    return missing


def ensure_system_packages() -> None:
    missing = missing_debian_packages(SYSTEM_PACKAGES)
    if not missing:
        return
    if not is_root():
        say(f"missing Debian packages (install them as root): {' '.join(missing)}")
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                   check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_venv() -> Path:
    """Create .venv and install the package when pyproject.toml changed since the last install."""
    python = VENV / "bin" / "python"
    if not python.exists():
        say("creating .venv")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    stamp = VENV / ".redline-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != want:
        say("installing redline and its dependencies into .venv")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-e", f"{ROOT}[test,inspect,cluster]"], check=True)
        stamp.write_text(want)
    return python


def engine_answers() -> bool:
    """GET /_ping on the engine's socket (or DOCKER_HOST's tcp address)."""
    host = os.environ.get("DOCKER_HOST", "")
    try:
        if host.startswith("tcp://"):
            addr = host[len("tcp://"):]
            conn = http.client.HTTPConnection(addr, timeout=3)
        else:
            path = host[len("unix://"):] if host.startswith("unix://") else DOCKER_SOCKET
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(3)
            sock.connect(path)
            conn = http.client.HTTPConnection("localhost", timeout=3)
            conn.sock = sock
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False


def ensure_engine() -> None:
    if engine_answers():
        return
    if not is_root():
        fail("no Docker engine answers and we are not root. Start one (`sudo systemctl start docker` "
             "or `sudo dockerd &`), add yourself to the `docker` group, or set DOCKER_HOST.")
    if not shutil.which("dockerd"):
        fail("dockerd is missing even after installing docker.io")
    say(f"starting dockerd (log: {DOCKERD_LOG}, settings: {DOCKERD_CONFIG})")
    DOCKERD_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    DOCKERD_CONFIG.write_text(GVISOR_DAEMON_JSON + "\n")
    with open(DOCKERD_LOG, "ab") as log:
        # No bridge and no iptables: sandboxes run with network 'none', and we never need one.
        subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", f"--config-file={DOCKERD_CONFIG}"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if engine_answers():
            say("dockerd is up")
            return
        time.sleep(0.5)
    fail(f"dockerd did not answer within 60 s; see {DOCKERD_LOG}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "test", "setup"):
        print(__doc__, file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    ensure_system_packages()
    python = ensure_venv()
    ensure_engine()
    redline = str(VENV / "bin" / "redline")
    if subprocess.run([redline, "images", "build", "base", "cpu"]).returncode != 0:
        fail("building the sandbox images failed (see above)")
    if what == "setup":
        return 0
    if what == "test":
        say("checking the import contracts (lint-imports, pyproject.toml)")
        if subprocess.run([str(VENV / "bin" / "lint-imports")], cwd=ROOT).returncode != 0:
            fail("an import contract is broken (see above)")
        say("linting (ruff, pyproject.toml)")
        if subprocess.run([str(VENV / "bin" / "ruff"), "check", "console", "tests", "benchmarks", "sandbox_images"],
                          cwd=ROOT).returncode != 0:
            fail("the lint found problems (see above)")
        # Two workers, a test file each at a time (module fixtures stay in one process): most tests
        # wait on containers, so this halves the wall time on 2 cores.
        os.execv(str(python), [str(python), "-m", "pytest", "-n", "2", "--dist", "loadfile", *rest])
    os.execv(redline, [redline, *rest])


if __name__ == "__main__":
    raise SystemExit(main())
