"""Files of a sandbox, read from outside: fingerprints and change times, path rules of the sandbox.

A helper process on the host chroots into the sandbox's root (through /proc/<pid>/root), so a path
resolves exactly as it does inside the sandbox (symlinks included) and can never reach a host file.
It opens nothing but regular files (non-blocking, so a FIFO cannot stall it), reads as root (a
folder the agent made private is no obstacle), and is invisible to the agent: it lives in the host's
pid namespace. It only reports fingerprints and stat facts, never file contents.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading

from console.judge.observe import FINGERPRINT_BYTES

HELPER_TIMEOUT_S = 30.0

_HELPER = r"""
import hashlib, json, os, stat, sys
N = %(n)d
os.chroot(sys.argv[1])
os.chdir("/")
cache = {}
def fingerprint(path):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return {"error": "not a regular file"}
        key = (info.st_dev, info.st_ino, info.st_size, info.st_ctime_ns)
        if key not in cache:
            h = hashlib.sha256(str(info.st_size).encode())
            h.update(os.pread(fd, N, 0))
            if info.st_size > 2 * N:
                h.update(os.pread(fd, N, info.st_size - N))
            cache[key] = h.hexdigest()
        return {"fp": cache[key], "ctime_ns": info.st_ctime_ns, "size": info.st_size,
                "dev": info.st_dev, "ino": info.st_ino}
    finally:
        os.close(fd)
def files(items):
    out = {}
    for key, cwd_pid, path in items:
        if not path.startswith("/"):
            path = "/proc/%%d/cwd/%%s" %% (cwd_pid, path) if cwd_pid else path
        try:
            out[key] = fingerprint(path)
        except OSError as exc:
            out[key] = {"error": exc.strerror or str(exc)}
    return {"results": out}
def copies(roots, wanted, budget):
    found = []
    sizes = {int(s) for s in wanted.values()}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            for name in names:
                budget -= 1
                if budget < 0:
                    return {"found": found, "truncated": True}
                path = os.path.join(folder, name)
                try:
                    info = os.lstat(path)
                    if not stat.S_ISREG(info.st_mode) or info.st_size not in sizes:
                        continue
                    fp = fingerprint(path).get("fp")
                except OSError:
                    continue
                if fp in wanted:
                    found.append([path, fp])
    return {"found": found, "truncated": False}
def tree(root):
    paths = [root] if not os.path.isdir(root) else [
        os.path.join(folder, name) for folder, _, names in os.walk(root) for name in names]
    out = {}
    for path in paths:
        try:
            fact = fingerprint(path)
        except OSError:
            continue
        if "fp" in fact:
            out[path] = fact
    return {"tree": out}
for line in sys.stdin:
    request = json.loads(line)
    if request["op"] == "files":
        reply = files(request["items"])
    elif request["op"] == "tree":
        reply = tree(request["root"])
    else:
        reply = copies(request["roots"], request["wanted"], request["budget"])
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
""" % {"n": FINGERPRINT_BYTES}


class FileProbeError(RuntimeError):
    pass


class SandboxFiles:
    """Fingerprints and stat facts of paths inside one sandbox, from a chrooted host helper."""

    def __init__(self, root_source):
        """root_source() -> the sandbox's root folder: /proc/<pid>/root of a live process of the sandbox
        from the host, / from inside a gVisor guest."""
        self._root = root_source
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def root(self) -> str:
        return self._root()

    def _helper(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen([sys.executable, "-I", "-c", _HELPER, self._root()],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self._proc

    def _ask(self, request: dict) -> dict:
        with self._lock:
            proc = self._helper()
            try:
                proc.stdin.write((json.dumps(request) + "\n").encode())
                proc.stdin.flush()
                ready, _, _ = select.select([proc.stdout], [], [], HELPER_TIMEOUT_S)
                line = proc.stdout.readline() if ready else b""
            except OSError as exc:
                line, error = b"", str(exc)
            else:
                error = "no answer within %g s" % HELPER_TIMEOUT_S if not ready else "it exited"
            if not line:
                self.close()
                raise FileProbeError(f"the file probe failed: {error}")
            return json.loads(line)

    def facts(self, items: list[tuple[str, int | None, str]]) -> dict[str, dict]:
        """{key: {"fp", "ctime_ns", "size", "dev", "ino"} or {"error"}} for (key, cwd pid, path) items;
        a relative path is taken relative to that sandbox process's working folder."""
        if not items:
            return {}
        return self._ask({"op": "files", "items": [list(item) for item in items]})["results"]

    def tree(self, root: str) -> dict[str, dict]:
        """Facts of the regular files at root (a file, or every file under a folder)."""
        return self._ask({"op": "tree", "root": root})["tree"]

    def copies(self, roots: list[str], wanted: dict[str, int], budget: int = 20000) -> list[tuple[str, str]]:
        """Regular files under roots whose fingerprint is one of wanted ({fp: size})."""
        reply = self._ask({"op": "copies", "roots": roots, "wanted": wanted, "budget": budget})
        return [tuple(item) for item in reply["found"]]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
