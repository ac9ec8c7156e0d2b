"""What a CPython 3.11 process really runs: its main script and its isolation, from its own memory.

A process can write anything into its command line (it is process memory), so argv cannot say which
program a Python process executes. The interpreter's own state can: the bottom frame of its main
thread is the `<module>` frame of the script it was started with, and `Py_IsolatedFlag` says whether
it runs with -I. Both are read from the host through /proc/<pid>/mem (root), following the layout of
CPython 3.11 on x86-64 (the sandbox image's Python; offsets checked against 3.11's own headers with
offsetof, see tests/test_judge_interpreter.py). A binary without the symbols, another version or a
torn read gives None: the process is then not taken for the agent.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

# offsetof() in CPython 3.11 (Include/internal/pycore_runtime.h, pycore_interp.h, pycore_frame.h,
# Include/cpython/pystate.h, code.h, unicodeobject.h), x86-64.
RUNTIME_MAIN_INTERPRETER = 48  # _PyRuntimeState.interpreters.main
RUNTIME_MAIN_THREAD = 80  # _PyRuntimeState.main_thread (pthread id)
INTERP_THREADS_HEAD = 16  # PyInterpreterState.threads.head
TSTATE_NEXT, TSTATE_CFRAME, TSTATE_THREAD_ID = 8, 56, 152  # PyThreadState
CFRAME_CURRENT_FRAME = 8  # _PyCFrame.current_frame
FRAME_CODE, FRAME_PREVIOUS = 32, 48  # _PyInterpreterFrame.f_code, .previous
CODE_FILENAME = 112  # PyCodeObject.co_filename
ASCII_LENGTH, ASCII_STATE, ASCII_DATA, COMPACT_DATA = 16, 32, 48, 72  # PyASCIIObject / compact unicode
MAX_FRAMES, MAX_THREADS, MAX_PATH = 2000, 256, 4096
SYMBOLS = ("_PyRuntime", "Py_IsolatedFlag")


@dataclass(frozen=True)
class MainScript:
    filename: str  # co_filename of the main thread's bottom frame: the script as the interpreter ran it
    isolated: bool  # started with -I


def elf_symbols(data: bytes, names=SYMBOLS) -> dict[str, int] | None:
    """Addresses (relative to the first loaded segment) of symbols of an ELF64 image, if all are there."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None  # only 64-bit little-endian
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    first_vaddr = min((struct.unpack_from("<Q", data, phoff + i * phentsize + 16)[0] for i in range(phnum)
                       if struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 1), default=0)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    found: dict[str, int] = {}
    for _, kind, _, _, offset, size, link, _, _, entsize in sections:
        if kind not in (2, 11) or not entsize:  # SHT_SYMTAB, SHT_DYNSYM
            continue
        strings = sections[link]
        for i in range(size // entsize):
            name_at, _, _, _, value, _ = struct.unpack_from("<IBBHQQ", data, offset + i * entsize)
            start = strings[4] + name_at
            name = data[start:data.index(b"\0", start)].decode("ascii", "replace")
            if name in names and value:
                found[name] = value - first_vaddr
    return found if all(n in found for n in names) else None


def locate(host_pid: int, cache: dict) -> tuple[int, dict[str, int]] | None:
    """(load address, symbols) of the object that holds the interpreter: the executable itself (a
    static build, as Debian's) or a libpython it maps. Files are opened through /proc/<pid>/map_files,
    i.e. the very files mapped, never a path (under gVisor, which has no map_files, /proc/<pid>/exe).
    Symbols are cached by file identity."""
    exe = os.readlink(f"/proc/{host_pid}/exe")
    with open(f"/proc/{host_pid}/maps") as fh:
        mappings = [line.split(None, 5) for line in fh]
    for parts in mappings:
        if len(parts) != 6 or int(parts[2], 16) != 0:
            continue
        path = parts[5].strip()
        if path != exe and "libpython3" not in os.path.basename(path):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        try:
            try:
                mapped = open(f"/proc/{host_pid}/map_files/{start:x}-{end:x}", "rb")
            except FileNotFoundError:  # no map_files (gVisor): the executable is still the very file
                if path != exe:
                    continue
                mapped = open(f"/proc/{host_pid}/exe", "rb")
            with mapped:
                info = os.fstat(mapped.fileno())
                key = (info.st_dev, info.st_ino, info.st_size, info.st_ctime_ns)
                if key not in cache:
                    cache[key] = elf_symbols(mapped.read())
        except OSError:
            continue
        if cache[key]:
            return start, cache[key]
    return None


class _Memory:
    def __init__(self, host_pid: int):
        self.fd = os.open(f"/proc/{host_pid}/mem", os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes:
        if not address:
            raise ValueError("null pointer")
        data = os.pread(self.fd, size, address)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def pointer(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def text(self, address: int) -> str:
        length = struct.unpack("<q", self.read(address + ASCII_LENGTH, 8))[0]
        state = struct.unpack("<I", self.read(address + ASCII_STATE, 4))[0]
        kind, compact, ascii = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or not 0 < length <= MAX_PATH or kind not in (1, 2, 4):
            raise ValueError("not a compact str")
        raw = self.read(address + (ASCII_DATA if ascii else COMPACT_DATA), length * kind)
        return raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind])

    def close(self) -> None:
        os.close(self.fd)


def main_script(host_pid: int, cache: dict) -> MainScript | None:
    """The script a CPython 3.11 process runs (its main thread's bottom frame) and its -I flag."""
    try:
        located = locate(host_pid, cache)
        if located is None:
            return None
        base, symbols = located
        memory = _Memory(host_pid)
    except (OSError, ValueError):
        return None
    try:
        runtime = base + symbols["_PyRuntime"]
        isolated = struct.unpack("<i", memory.read(base + symbols["Py_IsolatedFlag"], 4))[0] == 1
        main_thread = memory.pointer(runtime + RUNTIME_MAIN_THREAD)
        tstate = memory.pointer(memory.pointer(runtime + RUNTIME_MAIN_INTERPRETER) + INTERP_THREADS_HEAD)
        for _ in range(MAX_THREADS):
            if memory.pointer(tstate + TSTATE_THREAD_ID) == main_thread:
                break
            tstate = memory.pointer(tstate + TSTATE_NEXT)
        else:
            return None
        frame = memory.pointer(memory.pointer(tstate + TSTATE_CFRAME) + CFRAME_CURRENT_FRAME)
        for _ in range(MAX_FRAMES):
            below = memory.pointer(frame + FRAME_PREVIOUS)
            if not below:
                code = memory.pointer(frame + FRAME_CODE)
                return MainScript(memory.text(memory.pointer(code + CODE_FILENAME)), isolated)
            frame = below
        return None
    except (OSError, ValueError, UnicodeDecodeError, struct.error):
        return None
    finally:
        memory.close()
