"""A second Docker engine that fault-injection tests start, break and restart themselves.

Its own socket, data root, exec root and pid file under a short temporary folder; the images the tests
need are copied in from the main engine (`docker save | docker load`). Killing or restarting it never
touches the engine the other tests (or anyone else) use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


class SecondEngine:
    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="rlf-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.log = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                 "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                 "--bridge=none", "--iptables=false", "--ip-masq=false"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            assert self.proc.poll() is None, f"the second dockerd exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "the second dockerd did not answer"
            time.sleep(0.2)

    def answers(self) -> bool:
        result = subprocess.run(["docker", "-H", self.url, "version", "--format", "{{.Server.Version}}"],
                                capture_output=True, timeout=10)
        return result.returncode == 0

    def kill(self) -> None:
        """SIGKILL the engine (its containerd and the containers' shims live on)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def freeze(self) -> None:
        """SIGSTOP dockerd: its socket still accepts connections, no call is ever answered (a hung
        engine); containerd and the containers run on."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def copy_images(self, refs: list[str]) -> None:
        for ref in refs:
            save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
            subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout, check=True,
                           stdout=subprocess.DEVNULL)
            assert save.wait() == 0

    def env(self, **extra) -> dict:
        return {**os.environ, "DOCKER_HOST": self.url, **extra}

    def stop(self) -> None:
        """Remove every container, stop the engine and its containerd, delete its folders."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(f"docker -H {self.url} ps -aq | xargs -r docker -H {self.url} rm -f", shell=True,
                           capture_output=True, timeout=60)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
