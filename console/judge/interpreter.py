"""What a CPython 3.11 process really runs: its main script's code and its isolation, from its memory.

A process can write anything into its command line (it is process memory), and the file at a path
can change after the interpreter read it, so neither argv nor a file says which program a Python
process executes. The interpreter's own state can: the bottom frame of its main thread is the
`<module>` frame of the script it was started with, its code object holds the whole program as
compiled (bytecode, constants, nested functions), and `Py_IsolatedFlag` says whether it runs with -I.
All are read through /proc/<pid>/mem (root), following the layout of CPython 3.11 on x86-64 (the
sandbox image's Python; tests/test_judge.py checks the reader against live processes). The code's
digest leaves out what does not change behaviour (file names, line numbers) and undoes the
interpreter's in-place specialisation, so the same program has the same digest wherever it was read
from and however hot it ran. A binary without the symbols, another version or a torn read (asked
again, READ_TRIES times) gives None: the process is then not taken for the agent.
"""

from __future__ import annotations

import dis
import hashlib
import opcode
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
# PyCodeObject (Include/cpython/code.h): ob_size (code units), co_consts, co_names, co_exceptiontable,
# co_flags, co_argcount..co_stacksize, co_localsplusnames, co_localspluskinds, co_name, co_qualname,
# co_code_adaptive (the bytecode, specialised in place)
CODE_HEADER = struct.Struct("<16xq3Qi4x3i28x2Q8x2Q48x")
CODE_ADAPTIVE = 184
OB_TYPE, TYPE_NAME = 8, 24  # PyObject.ob_type (then PyVarObject.ob_size), PyTypeObject.tp_name
TUPLE_ITEMS, BYTES_DATA, LONG_DIGITS, FLOAT_VALUE = 24, 32, 24, 16
SET_MASK, SET_TABLE = 32, 40  # PySetObject.mask, .table (entries: key, hash)
ASCII_LENGTH, ASCII_STATE, ASCII_DATA, COMPACT_DATA = 16, 32, 48, 72  # PyASCIIObject / compact unicode
MAX_FRAMES, MAX_THREADS, MAX_PATH, MAX_TEXT, MAX_OBJECTS = 2000, 256, 4096, 1 << 20, 50000
ADDRESS_END = 1 << 63  # pread takes a signed 64-bit offset
MAX_READ = 4 * MAX_TEXT  # no field of an agent's code is larger (a torn size is any 64-bit value)
READ_TRIES = 3  # the process runs while it is read: a walk that tore is read again
_DEOPT = bytes(dis._deoptop(op) for op in range(256))  # a specialised opcode -> the one compiled
_CACHES = opcode._inline_cache_entries  # code units of inline cache after each (compiled) opcode
SYMBOLS = ("_PyRuntime", "Py_IsolatedFlag")


@dataclass(frozen=True)
class MainScript:
    filename: str  # co_filename of the main thread's bottom frame: the script as the interpreter ran it
    isolated: bool  # started with -I
    code: str  # digest of that frame's code object as loaded (code_digest)


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
        if not 0 < address < ADDRESS_END - size or not 0 <= size <= MAX_READ:  # torn: any 64-bit value
            raise ValueError(f"no such memory: {size} bytes at {address:#x}")
        data = os.pread(self.fd, size, address)
        if len(data) != size:
            raise ValueError("short read")
        return data

    def pointer(self, address: int) -> int:
        return struct.unpack("<Q", self.read(address, 8))[0]

    def text(self, address: int, limit: int = MAX_PATH) -> str:
        length, state = struct.unpack("<q8xI", self.read(address + ASCII_LENGTH, 20))
        kind, compact, ascii = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
        if not compact or not 0 <= length <= limit or kind not in (1, 2, 4):
            raise ValueError("not a compact str")
        if not length:
            return ""
        raw = self.read(address + (ASCII_DATA if ascii else COMPACT_DATA), length * kind)
        return raw.decode({1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind])

    def close(self) -> None:
        os.close(self.fd)


class _CodeReader:
    """Serialises a code object and everything it holds, read from another process's memory, in a
    form that two loads of the same program share (see the module's docstring)."""

    def __init__(self, memory: _Memory):
        self.memory, self.types, self.budget = memory, {}, MAX_OBJECTS

    def type_name(self, kind: int) -> str:
        if kind not in self.types:
            name = self.memory.pointer(kind + TYPE_NAME)
            self.types[kind] = self.memory.read(name, 64).split(b"\0", 1)[0].decode("ascii", "replace")
        return self.types[kind]

    def value(self, address: int) -> bytes:
        self.budget -= 1
        if self.budget < 0:
            raise ValueError("more objects than any agent program holds")
        memory = self.memory
        kind, size = struct.unpack("<Qq", memory.read(address + OB_TYPE, 16))
        kind = self.type_name(kind)
        if kind == "code":
            body = self.code(address)
        elif kind == "str":
            body = memory.text(address, MAX_TEXT).encode("utf-8", "surrogatepass")
        elif kind in ("int", "bool"):  # sign and magnitude in ob_size, 30-bit digits
            body = size.to_bytes(8, "little", signed=True) + (memory.read(address + LONG_DIGITS, 4 * abs(size))
                                                             if size else b"")
        elif kind == "bytes":
            body = memory.read(address + BYTES_DATA, size) if size else b""
        elif kind in ("float", "complex"):
            body = memory.read(address + FLOAT_VALUE, 8 if kind == "float" else 16)
        elif kind == "tuple":
            body = self.items(address + TUPLE_ITEMS, size)
        elif kind == "frozenset":
            mask, table = struct.unpack("<qQ", memory.read(address + SET_MASK, 16))
            if not 0 <= mask < MAX_OBJECTS:
                raise ValueError("not a set")
            entries = memory.read(table, 16 * (mask + 1))
            members = [key for key, hashed in struct.iter_unpack("<Qq", entries) if key and hashed != -1]
            body = b"".join(sorted(self.value(key) for key in members))
        else:  # None, Ellipsis: the type says it all
            body = b""
        return kind.encode() + len(body).to_bytes(8, "little") + body

    def items(self, address: int, count: int) -> bytes:
        if not 0 <= count <= MAX_OBJECTS:
            raise ValueError("not a tuple")
        pointers = struct.unpack(f"<{count}Q", self.memory.read(address, 8 * count)) if count else ()
        return b"".join(self.value(item) for item in pointers)

    def code(self, address: int) -> bytes:
        (units, consts, names, exceptions, flags, argcount, posonly, kwonly, locals_names, locals_kinds,
         name, qualname) = CODE_HEADER.unpack(self.memory.read(address, CODE_HEADER.size))
        if not 0 < units <= MAX_OBJECTS * 10:
            raise ValueError("not a code object")
        adaptive, compiled, i = self.memory.read(address + CODE_ADAPTIVE, 2 * units), bytearray(), 0
        while i < len(adaptive):  # undo specialisation; inline caches hold counters, not program
            op = _DEOPT[adaptive[i]]
            compiled += bytes((op, adaptive[i + 1])) + bytes(2 * _CACHES[op])
            i += 2 + 2 * _CACHES[op]
        fields = struct.pack("<4i", flags, argcount, posonly, kwonly) + bytes(compiled)
        return fields + b"".join(self.value(p) for p in (consts, names, exceptions, locals_names, locals_kinds,
                                                          name, qualname))


def code_digest(memory: _Memory, code: int) -> str:
    """sha256 of the program a code object holds (see the module's docstring)."""
    return hashlib.sha256(_CodeReader(memory).value(code)).hexdigest()


def main_script(host_pid: int, cache: dict) -> MainScript | None:
    """The script a CPython 3.11 process runs (its main thread's bottom frame), its code and its -I flag."""
    for _ in range(READ_TRIES):
        try:
            located = locate(host_pid, cache)
            if located is None:
                return None
            memory = _Memory(host_pid)
        except (OSError, ValueError):
            return None
        try:
            return _read_main(memory, *located)
        except (OSError, ValueError, UnicodeDecodeError, struct.error, IndexError):
            continue  # torn: the process changed what we were reading
        finally:
            memory.close()
    return None


def _read_main(memory: _Memory, base: int, symbols: dict[str, int]) -> MainScript:
    runtime = base + symbols["_PyRuntime"]
    isolated = struct.unpack("<i", memory.read(base + symbols["Py_IsolatedFlag"], 4))[0] == 1
    main_thread = memory.pointer(runtime + RUNTIME_MAIN_THREAD)
    tstate = memory.pointer(memory.pointer(runtime + RUNTIME_MAIN_INTERPRETER) + INTERP_THREADS_HEAD)
    for _ in range(MAX_THREADS):
        if memory.pointer(tstate + TSTATE_THREAD_ID) == main_thread:
            break
        tstate = memory.pointer(tstate + TSTATE_NEXT)
    else:
        raise ValueError("no main thread")
    frame = memory.pointer(memory.pointer(tstate + TSTATE_CFRAME) + CFRAME_CURRENT_FRAME)
    for _ in range(MAX_FRAMES):
        below = memory.pointer(frame + FRAME_PREVIOUS)
        if not below:
            code = memory.pointer(frame + FRAME_CODE)
            return MainScript(memory.text(memory.pointer(code + CODE_FILENAME)), isolated, code_digest(memory, code))
        frame = below
    raise ValueError("no bottom frame")
