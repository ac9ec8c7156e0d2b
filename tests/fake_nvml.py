"""A stand-in for nvidia-ml-py's `pynvml` module, for machines without an NVIDIA GPU.

Names, error classes and returned objects follow pynvml 13.x: errors are NVMLError subclasses
generated from the NVML_ERROR_* constants exactly as pynvml names them (NVMLError(code) picks
the subclass), process lists hold objects with `pid` and `usedGpuMemory`, process-utilization
samples have `pid`, `timeStamp`, `smUtil`. Strings come back as str unless a device is given
bytes (older pynvml). Every call is counted in `calls` (by function name).
"""

from __future__ import annotations

import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
_ERROR_CODES = {
    "UNINITIALIZED": 1, "INVALID_ARGUMENT": 2, "NOT_SUPPORTED": 3, "NO_PERMISSION": 4,
    "ALREADY_INITIALIZED": 5, "NOT_FOUND": 6, "INSUFFICIENT_SIZE": 7, "INSUFFICIENT_POWER": 8,
    "DRIVER_NOT_LOADED": 9, "TIMEOUT": 10, "IRQ_ISSUE": 11, "LIBRARY_NOT_FOUND": 12,
    "FUNCTION_NOT_FOUND": 13, "CORRUPTED_INFOROM": 14, "GPU_IS_LOST": 15, "RESET_REQUIRED": 16,
    "OPERATING_SYSTEM": 17, "LIB_RM_VERSION_MISMATCH": 18, "IN_USE": 19, "MEMORY": 20,
    "NO_DATA": 21, "GPU_NOT_FOUND": 28, "UNKNOWN": 999,
}

_ERROR_STRINGS = {  # pynvml's NVMLError._errcode_to_string for the codes tests use
    3: "Not Supported", 4: "Insufficient Permissions", 6: "Not Found",
    9: "Driver Not Loaded", 12: "NVML Shared Library Not Found", 13: "Function Not Found",
    15: "GPU is lost", 16: "GPU requires restart",
    18: "RM has detected an NVML/RM version mismatch.", 999: "Unknown Error",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: NVMLError(code) is an instance of the code's subclass."""

    _valClassMapping: dict[int, type] = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        error = Exception.__new__(cls)
        error.value = value
        return error

    def __str__(self):
        return _ERROR_STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == getattr(other, "value", None)

    __hash__ = Exception.__hash__


class NVMLLibraryMismatchError(Exception):
    pass


def _make_error_classes() -> dict[str, object]:
    """NVML_ERROR_<X> constants and NVMLError_<CapWords> classes, named like pynvml's."""
    names = {}
    for suffix, code in _ERROR_CODES.items():
        class_name = "NVMLError_" + string.capwords(suffix, "_").replace("_", "")
        error_class = type(class_name, (NVMLError,), {
            "__new__": lambda cls, *args, _code=code: NVMLError.__new__(cls, _code)})
        NVMLError._valClassMapping[code] = error_class
        names[class_name] = error_class
        names["NVML_ERROR_" + suffix] = code
    return names


_ERROR_NAMES = _make_error_classes()
globals().update(_ERROR_NAMES)  # module attributes, as in pynvml
_GPU_IS_LOST = _ERROR_NAMES["NVMLError_GpuIsLost"]
_NOT_SUPPORTED = _ERROR_NAMES["NVMLError_NotSupported"]
_UNINITIALIZED = _ERROR_NAMES["NVMLError_Uninitialized"]
_INVALID_ARGUMENT = _ERROR_NAMES["NVMLError_InvalidArgument"]
_FUNCTION_NOT_FOUND = _ERROR_NAMES["NVMLError_FunctionNotFound"]
_NOT_FOUND = _ERROR_NAMES["NVMLError_NotFound"]


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None = 1 << 30  # None: NVML's "not available"
    sm_util: int | None = 50  # None: no utilization sample for this pid
    graphics: bool = False


@dataclass
class FakeDevice:
    name: str | bytes = "NVIDIA H100 80GB HBM3"
    uuid: str | bytes = "GPU-00000000-0000-0000-0000-000000000000"
    util: int = 37
    memory_total: int = 80 * 1024**3
    memory_used: int = 20 * 1024**3
    power_mw: int = 312_000
    power_limit_mw: int = 700_000
    temperature: int = 61
    sm_clock: int = 1755
    processes: list[FakeProcess] = field(default_factory=list)
    not_supported: set[str] = field(default_factory=set)  # NVML function names
    lost: bool = False


@dataclass(frozen=True)
class FakeHandle:
    index: int


class FakeNvml:
    """The module object the sampler is given. Configure `devices`, then flip faults at run time:
    `init_error`, `errors` (function name -> exception raised on every call, device or not),
    `device.lost`, `device.not_supported`. `has_v3=False` mimics a driver without the _v3 calls.
    """

    NVML_SUCCESS = NVML_SUCCESS
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVMLError = NVMLError
    NVMLLibraryMismatchError = NVMLLibraryMismatchError

    def __init__(self, devices: list[FakeDevice] | None = None, init_error: Exception | None = None,
                 has_v3: bool = True):
        self.devices = list(devices or [])
        self.init_error = init_error
        self.errors: dict[str, Exception] = {}
        self.has_v3 = has_v3
        self.calls: Counter[str] = Counter()
        self.init_count = 0  # pynvml keeps a reference count across nvmlInit/nvmlShutdown
        self._lock = threading.Lock()

    def __getattr__(self, name):
        """The error classes and NVML_ERROR_* constants, as module attributes of pynvml."""
        try:
            return _ERROR_NAMES[name]
        except KeyError:
            raise AttributeError(name) from None

    def _enter(self, name: str, handle: FakeHandle | None = None) -> FakeDevice | None:
        with self._lock:
            self.calls[name] += 1
        if name in self.errors:
            raise self.errors[name]
        if name.endswith("_v3") and not self.has_v3:
            raise _FUNCTION_NOT_FOUND()  # what pynvml raises for a symbol the driver lacks
        if name not in ("nvmlInit", "nvmlShutdown") and self.init_count == 0:
            raise _UNINITIALIZED()
        if handle is None:
            return None
        device = self.devices[handle.index]
        if device.lost:
            raise _GPU_IS_LOST()
        if name in device.not_supported:
            raise _NOT_SUPPORTED()
        return device

    def nvmlInit(self):
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise self.init_error
        self.init_count += 1

    def nvmlShutdown(self):
        self._enter("nvmlShutdown")
        if self.init_count == 0:
            raise _UNINITIALIZED()
        self.init_count -= 1

    def nvmlDeviceGetCount(self):
        self._enter("nvmlDeviceGetCount")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.devices):
            raise _INVALID_ARGUMENT()
        if self.devices[index].lost:
            raise _GPU_IS_LOST()
        return FakeHandle(index)

    def nvmlDeviceGetName(self, handle):
        return self._enter("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle):
        return self._enter("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetUtilizationRates(self, handle):
        device = self._enter("nvmlDeviceGetUtilizationRates", handle)
        return SimpleNamespace(gpu=device.util, memory=device.util // 2)

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        device = self._enter("nvmlDeviceGetMemoryInfo", handle)
        return SimpleNamespace(total=device.memory_total, used=device.memory_used,
                               free=device.memory_total - device.memory_used)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._enter("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return self._enter("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._enter("nvmlDeviceGetTemperature", handle).temperature

    def nvmlDeviceGetClockInfo(self, handle, clock_type):
        return self._enter("nvmlDeviceGetClockInfo", handle).sm_clock

    def _processes(self, name: str, handle, graphics: bool):
        device = self._enter(name, handle)
        return [SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory,
                                gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for p in device.processes if p.graphics == graphics]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle):
        return self._processes("nvmlDeviceGetComputeRunningProcesses_v3", handle, False)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._processes("nvmlDeviceGetComputeRunningProcesses", handle, False)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle):
        return self._processes("nvmlDeviceGetGraphicsRunningProcesses_v3", handle, True)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return self._processes("nvmlDeviceGetGraphicsRunningProcesses", handle, True)

    def nvmlDeviceGetProcessUtilization(self, handle, timeStamp):
        device = self._enter("nvmlDeviceGetProcessUtilization", handle)
        now_us = max(int(time.time() * 1e6), timeStamp + 1)
        samples = [SimpleNamespace(pid=p.pid, timeStamp=now_us, smUtil=p.sm_util,
                                   memUtil=0, encUtil=0, decUtil=0)
                   for p in device.processes if p.sm_util is not None]
        if not samples:
            raise _NOT_FOUND()
        return samples
