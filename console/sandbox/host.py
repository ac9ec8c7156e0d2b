"""A sandbox's processes as the engine's host sees them: its cgroups, its host pids, a freezer.

Everything here runs on the engine's host, outside the agent's reach: inside the sandbox the cgroup
filesystem is read-only and the agent has no capability, so it can neither leave a cgroup nor thaw
one. Reading other users' /proc entries and writing cgroups needs root on the host; `available()`
says whether this process can, and callers that cannot say so instead of guessing.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
HELD = "redline-held"  # the child cgroup the judge freezes processes in
FREEZE_TIMEOUT_S = 5.0


def available() -> bool:
    """Whether this process may observe and freeze sandboxes from the host (root on a local engine)."""
    return os.geteuid() == 0 and CGROUP_ROOT.is_dir()


def container_cgroups(container_id: str) -> list[Path]:
    """The container's cgroup folders: one per v1 hierarchy, or its one v2 folder."""
    patterns = (f"*/docker/{container_id}*", f"docker/{container_id}*",
                f"system.slice/docker-{container_id}*.scope", f"*/system.slice/docker-{container_id}*.scope")
    found: list[Path] = []
    for pattern in patterns:
        found += [p for p in CGROUP_ROOT.glob(pattern) if p.is_dir() and p not in found]
    return found


def _read_pids(path: Path) -> set[int]:
    try:
        return {int(line) for line in path.read_text().split()}
    except (OSError, ValueError):
        return set()


def _files(folder: Path, name: str) -> list[Path]:
    """Every `name` in folder and its subfolders; cgroups vanish while a container dies, so a folder
    gone in the middle of the walk is skipped, not an error."""
    return [Path(root) / name for root, _, files in os.walk(folder) if name in files]


def host_pids(container_id: str) -> set[int]:
    """Host pids of every process of the container, in its cgroups and in any child cgroup."""
    pids: set[int] = set()
    for folder in container_cgroups(container_id):
        for procs in _files(folder, "cgroup.procs"):
            pids |= _read_pids(procs)
    return pids


def stat_fields(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses):
    [0] state, [1] parent, [11] utime, [12] stime, [19] start time in clock ticks. OSError if gone."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _stat_number(pid: int | str, index: int) -> int | None:
    try:
        return int(stat_fields(pid)[index])
    except (OSError, IndexError, ValueError):
        return None


def start_ticks(pid: int | str) -> int | None:
    """When the process started (clock ticks since boot): with the pid, its identity."""
    return _stat_number(pid, 19)


def parent(pid: int) -> int | None:
    return _stat_number(pid, 1)


def descendants(root: int, among: set[int]) -> set[int]:
    """`root` and every process of `among` that descends from it (by the current parent links)."""
    parents = {pid: parent(pid) for pid in among}
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if pid not in tree and ppid in tree:
                tree.add(pid)
                grew = True
    return tree


def keeper(tree: set[int]):
    """keep(pid): whether pid belongs to `tree` or descends from it (a fork since), by parent links."""
    def keep(pid: int) -> bool:
        seen = set()
        while pid and pid not in seen:
            if pid in tree:
                return True
            seen.add(pid)
            pid = parent(pid)
        return False
    return keep


def signal_process(pid: int, ticks: int | None, signum: int) -> bool:
    """Signal host pid `pid` if it is still the process that started at `ticks` (no pid reuse)."""
    if ticks is not None and start_ticks(pid) != ticks:
        return False
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_tree(pid: int, among: set[int] | None = None) -> int:
    """SIGKILL a host process and its descendants (among `among`, else among all processes)."""
    if among is None:
        among = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    killed = 0
    for target in descendants(pid, among):
        try:
            os.kill(target, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


class FreezeError(RuntimeError):
    pass


class Freezer:
    """Freezes every process of one sandbox except those the caller keeps, in a child cgroup.

    The held processes cannot run at all until `release()`: not through SIGCONT, not through
    ptrace, not by forking (a process migrated into a frozen cgroup freezes on arrival). Works with
    cgroup v1 (the freezer hierarchy) and v2 (cgroup.freeze).
    """

    def __init__(self, container_id: str):
        self.container_id = container_id
        self.parent = self._freezer_folder()
        self.v2 = not (self.parent / "freezer.state").exists()
        self.held_folder = self.parent / HELD
        self.held: set[int] = set()

    def _freezer_folder(self) -> Path:
        """The v1 freezer folder where there is one (what `docker pause` uses), else the v2 folder."""
        folders = container_cgroups(self.container_id)
        for name in ("freezer.state", "cgroup.freeze"):
            for folder in folders:
                if (folder / name).exists():
                    return folder
        raise FreezeError(f"no freezer cgroup for container {self.container_id[:12]} on this host")

    def _set_frozen(self, folder: Path, frozen: bool) -> None:
        if self.v2:
            (folder / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            (folder / "freezer.state").write_text("FROZEN" if frozen else "THAWED")

    def is_frozen(self) -> bool:
        try:
            if self.v2:
                return "frozen 1" in (self.held_folder / "cgroup.events").read_text()
            return (self.held_folder / "freezer.state").read_text().strip() == "FROZEN"
        except OSError:
            return False

    def hold(self, keep) -> set[int]:
        """Freeze every process of the sandbox for which keep(host_pid) is false; returns their pids.
        Loops until no unkept process is left outside (a fork during the loop is caught next round)."""
        self.held_folder.mkdir(exist_ok=True)
        self._set_frozen(self.held_folder, True)
        procs = self.parent / "cgroup.procs"
        for _ in range(50):
            loose = [pid for pid in _read_pids(procs) if not keep(pid)]
            if not loose:
                break
            for pid in loose:
                try:
                    (self.held_folder / "cgroup.procs").write_text(str(pid))
                except OSError as exc:
                    if exc.errno != errno.ESRCH:  # gone meanwhile: nothing to hold
                        raise FreezeError(f"could not hold pid {pid}: {exc}") from None
        else:
            raise FreezeError("processes kept appearing faster than they could be held")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while not self.is_frozen():
            if time.monotonic() > deadline:
                raise FreezeError("the held processes did not freeze within "
                                  f"{FREEZE_TIMEOUT_S:g} s")
            time.sleep(0.005)
        self.held = _read_pids(self.held_folder / "cgroup.procs")
        return set(self.held)

    def release(self) -> None:
        """Thaw and move every held process back; remove the child cgroup."""
        if not self.held_folder.exists():
            return
        self._set_frozen(self.held_folder, False)
        for pid in _read_pids(self.held_folder / "cgroup.procs"):
            try:
                (self.parent / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass  # gone, or the container is being removed
        try:
            self.held_folder.rmdir()
        except OSError:
            pass
        self.held = set()


def thaw_all(container_id: str) -> None:
    """Thaw every child cgroup Redline froze in this container (the kill switch calls this: a task
    frozen by cgroup v1 cannot die of SIGKILL until it is thawed)."""
    for folder in container_cgroups(container_id):
        for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            for path in _files(folder, name):
                if path.parent.name == HELD:
                    try:
                        path.write_text(thawed)
                    except OSError:
                        pass
