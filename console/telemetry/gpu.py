"""GPU telemetry from NVML (nvidia-ml-py's `pynvml`), sampled on a background thread.

Every machine the console runs on is a valid case: no driver, a driver that is not loaded, a
driver upgraded under a running console, GPUs without power or process-utilization support,
a GPU that falls off the bus. None of these raise: an unsupported field is None, a lost GPU is
left out of the samples and named in the status, and a broken driver makes the sampler report
why and retry every `retry_interval_s`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable, Iterator

from console.telemetry.attribution import Attribution, PidAttributor
from console.telemetry.worker import PeriodicWorker, TelemetryStatus, call_guarded, clamp_rate

RECORD_TYPE = "telemetry.gpu"
RATE_RANGE_HZ = (0.5, 10.0)
PROCESS_UTIL_WINDOW_US = 1_000_000  # how far back the first process-utilization query looks

# Errors after which NVML itself is unusable: disconnect, report, retry later.
_DRIVER_ERRORS = ("NVMLError_Uninitialized", "NVMLError_DriverNotLoaded",
                  "NVMLError_LibRmVersionMismatch", "NVMLError_LibraryNotFound")
# Errors that take one GPU away; the others keep being sampled.
_DEVICE_LOST_ERRORS = ("NVMLError_GpuIsLost", "NVMLError_GpuNotFound", "NVMLError_ResetRequired")
# A pynvml newer than the driver: try an older variant of the call.
_MISSING_FUNCTION_ERRORS = ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")

_MESSAGES = {
    "NVMLError_LibraryNotFound": "No NVIDIA driver: NVML library not found",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
    "NVMLError_LibRmVersionMismatch":
        "Driver/library version mismatch: reload the NVIDIA kernel module or reboot",
    "NVMLError_NoPermission": "No permission to access the NVIDIA driver",
    "NVMLError_Uninitialized": "NVML was shut down",
}


@dataclass(frozen=True)
class GpuProcess:
    pid: int  # host pid
    kind: str  # "compute" or "graphics" (a pid in both lists is reported as compute)
    used_memory_bytes: int | None  # None: NVML cannot tell (e.g. WDDM, some MIG set-ups)
    sm_util_percent: float | None  # mean over the last interval; None: not supported
    attribution: Attribution


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str | None
    uuid: str | None
    util_percent: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_w: float | None
    power_limit_w: float | None
    temperature_c: float | None
    sm_clock_mhz: float | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuSample:
    """All GPUs at one instant (unix time `t`); lost GPUs are absent."""

    t: float
    gpus: tuple[GpuReading, ...] = field(default_factory=tuple)

    def processes(self) -> Iterator[tuple[int, GpuProcess]]:
        """(gpu index, process) for every GPU process."""
        for gpu in self.gpus:
            for process in gpu.processes:
                yield gpu.index, process

    def history_rows(self) -> Iterator[tuple[tuple, dict]]:
        """Series groups for TieredHistory: ("gpu", index) and, per Redline trial and owner,
        ("proc", trial, owner) with GPU memory and SM % summed over processes and GPUs."""
        for gpu in self.gpus:
            yield ("gpu", gpu.index), {
                "util": gpu.util_percent, "mem": gpu.memory_used_bytes, "power": gpu.power_w,
                "temp": gpu.temperature_c, "sm_clock": gpu.sm_clock_mhz}
        per_owner: dict[tuple, dict] = {}
        for _, process in self.processes():
            attribution = process.attribution
            if attribution.trial is None:
                continue
            totals = per_owner.setdefault(("proc", attribution.trial, attribution.owner),
                                          {"mem": None, "sm": None})
            totals["mem"] = _sum_reported(totals["mem"], process.used_memory_bytes)
            totals["sm"] = _sum_reported(totals["sm"], process.sm_util_percent)
        yield from per_owner.items()

    def to_record(self) -> dict:
        """A JSON-able dict for the trial's JSONL; `from_record` gives back an equal sample."""
        return {"type": RECORD_TYPE, "t": self.t, "gpus": [asdict(gpu) for gpu in self.gpus]}

    @classmethod
    def from_record(cls, record: dict) -> GpuSample:
        gpus = []
        for gpu in record["gpus"]:
            processes = tuple(
                GpuProcess(**{**p, "attribution": Attribution(**p["attribution"])})
                for p in gpu["processes"])
            gpus.append(GpuReading(**{**gpu, "processes": processes}))
        return cls(t=record["t"], gpus=tuple(gpus))


def _sum_reported(total: float | None, value: float | None) -> float | None:
    """A sum that is None only when no term was reported."""
    if value is None:
        return total
    return value if total is None else total + value


class GpuUnavailable(Exception):
    """NVML works (or is absent) in a way that leaves nothing to sample; the message says how."""


def load_nvml(nvml=None):
    """The NVML module: the given one (a test double) or the real `pynvml`."""
    if nvml is not None:
        return nvml
    try:
        import pynvml
    except ImportError as exc:
        raise GpuUnavailable("nvidia-ml-py is not installed") from exc
    return pynvml


def describe_nvml_failure(exc: BaseException) -> str:
    """The operator-facing sentence for a failure to use NVML."""
    if isinstance(exc, GpuUnavailable):
        return str(exc)
    known = _MESSAGES.get(type(exc).__name__)
    if known:
        return known
    if type(exc).__name__.startswith("NVMLError"):
        return f"NVML error: {exc}"
    return f"GPU sampling failed: {exc!r}"


@dataclass(frozen=True)
class GpuInventory:
    """What the launch panel needs: GPU names by index, or why there are none."""

    names: tuple[str, ...]
    status: TelemetryStatus


def probe_gpus(nvml=None) -> GpuInventory:
    """Initialise NVML once, list the GPUs, shut down; never raises. May block: not for a GUI
    thread."""
    try:
        module = load_nvml(nvml)
        module.nvmlInit()
    except Exception as exc:
        return GpuInventory((), TelemetryStatus(False, describe_nvml_failure(exc)))
    try:
        names = tuple(_name_of(module, index) for index in range(module.nvmlDeviceGetCount()))
    except Exception as exc:
        return GpuInventory((), TelemetryStatus(False, describe_nvml_failure(exc)))
    finally:
        try:
            module.nvmlShutdown()
        except Exception:
            pass
    if not names:
        return GpuInventory((), TelemetryStatus(False, "No NVIDIA GPU found"))
    return GpuInventory(names, TelemetryStatus(True, f"{len(names)} GPU(s)"))


def _name_of(nvml, index: int) -> str:
    try:
        return _text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(index)))
    except nvml.NVMLError as exc:
        return f"GPU {index} ({exc})"


def _text(value) -> str | None:
    """NVML strings: str from recent pynvml, bytes from older ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _error_classes(nvml, names: tuple[str, ...]) -> tuple[type, ...]:
    return tuple(cls for cls in (getattr(nvml, name, None) for name in names) if cls is not None)


COMPUTE_PROCESSES = tuple(f"nvmlDeviceGetComputeRunningProcesses{v}" for v in ("_v3", "_v2", ""))
GRAPHICS_PROCESSES = tuple(f"nvmlDeviceGetGraphicsRunningProcesses{v}" for v in ("_v3", "_v2", ""))


class GpuMemoryReader:
    """GPU memory held by given processes on a trial's GPUs (NVML), for the `gpu-memory-gib`
    tripwire: a small object with connect/close, read from the trial's observer thread. Host pids:
    a runc sandbox's processes as the judge's looks list them (GPUs are never given to gVisor)."""

    def __init__(self, gpus: tuple[int, ...], nvml=None):
        self.gpus, self._given, self._nvml, self._handles = tuple(gpus), nvml, None, []

    def connect(self) -> GpuMemoryReader:
        nvml = load_nvml(self._given)
        nvml.nvmlInit()
        self._nvml = nvml
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in self.gpus]
        self._lists = (_NewestAvailable(nvml, COMPUTE_PROCESSES), _NewestAvailable(nvml, GRAPHICS_PROCESSES))
        return self

    def gib_of(self, host_pids) -> float:
        """GiB these processes hold on the GPUs (a process NVML cannot size counts nothing)."""
        pids, used = set(host_pids), 0
        for handle in self._handles:  # a process in both lists holds its memory once
            held = {p.pid: p.usedGpuMemory or 0 for processes in self._lists for p in processes(handle) if p.pid in pids}
            used += sum(held.values())
        return round(used / 2**30, 2)

    def close(self) -> None:
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            nvml.nvmlShutdown()


class _NewestAvailable:
    """Calls the newest variant of an NVML function that the driver provides, and remembers it."""

    def __init__(self, nvml, names: tuple[str, ...]):
        self._functions = [getattr(nvml, name) for name in names if hasattr(nvml, name)]
        self._missing = _error_classes(nvml, _MISSING_FUNCTION_ERRORS)

    def __call__(self, *args):
        while True:
            try:
                return self._functions[0](*args)
            except self._missing:
                if len(self._functions) == 1:
                    raise
                self._functions.pop(0)


class _Device:
    def __init__(self, index: int, handle, name: str | None, uuid: str | None):
        self.index, self.handle, self.name, self.uuid = index, handle, name, uuid
        self.lost_reason: str | None = None
        self.last_seen_us = int(time.time() * 1e6) - PROCESS_UTIL_WINDOW_US


class GpuSampler(PeriodicWorker):
    """Samples every GPU and its processes at `rate_hz` (clamped to 0.5..10 Hz) on a thread.

    nvml: the pynvml module or a test double (None: `import pynvml`).
    attributor: maps host pids to sandboxes/instances (None: a PidAttributor of its own).
    history: a TieredHistory fed with every sample (optional).
    on_sample(GpuSample), on_status(TelemetryStatus): called on the sampler thread.
    Pull API: `latest()`, `status`, `gpu_names()`.
    """

    thread_name = "redline-gpu-sampler"

    def __init__(self, nvml=None, rate_hz: float = 4.0, attributor: PidAttributor | None = None,
                 history=None, on_sample: Callable[[GpuSample], None] | None = None,
                 on_status: Callable[[TelemetryStatus], None] | None = None,
                 retry_interval_s: float = 30.0):
        super().__init__(clamp_rate(rate_hz, *RATE_RANGE_HZ), retry_interval_s, on_status)
        self._given_nvml = nvml
        self._nvml = None  # the module while connected
        self._driver_errors: tuple[type, ...] = ()
        self._lost_errors: tuple[type, ...] = ()
        self._owns_attributor = attributor is None
        self._attributor = PidAttributor() if attributor is None else attributor
        self._history = history
        self._on_sample = on_sample
        self._devices: list[_Device] = []
        self._device_names: tuple[str, ...] | None = None  # while connected
        self._latest: GpuSample | None = None
        self._sampled = threading.Condition()  # guards _latest; notified at every sample
        self._next_lost_retry = 0.0

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        if self._owns_attributor:
            self._attributor.close()

    def latest(self) -> GpuSample | None:
        with self._sampled:
            return self._latest

    def wait_until_released(self, held: Callable[[GpuProcess], bool], after: float,
                            timeout_s: float) -> float | None:
        """The time (unix) of the first sample taken after `after` in which NVML shows no process that
        `held` matches; None when none came within timeout_s (still held, or sampling stopped). Its
        resolution is the sampling period."""
        deadline = time.monotonic() + timeout_s
        with self._sampled:
            while True:
                sample = self._latest
                if sample is not None and sample.t > after and not any(held(p) for _, p in sample.processes()):
                    return sample.t
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.running:
                    return None
                self._sampled.wait(min(remaining, 1.0))

    def gpu_names(self) -> list[str]:
        """GPU names by index: from the running sampler (empty while NVML is unavailable), else
        from a one-off NVML probe, which may block."""
        if self.running:
            return list(self._device_names or ())
        return list(probe_gpus(self._given_nvml).names)

    def gpu_count(self) -> int:
        return len(self.gpu_names())

    # -- worker thread -------------------------------------------------------------------------

    def _connect(self) -> None:
        nvml = load_nvml(self._given_nvml)
        nvml.nvmlInit()
        self._nvml = nvml
        try:
            self._driver_errors = _error_classes(nvml, _DRIVER_ERRORS)
            self._lost_errors = _error_classes(nvml, _DEVICE_LOST_ERRORS)
            self._compute_processes = _NewestAvailable(nvml, COMPUTE_PROCESSES)
            self._graphics_processes = _NewestAvailable(nvml, GRAPHICS_PROCESSES)
            self._devices = [self._open(index) for index in range(nvml.nvmlDeviceGetCount())]
            if not self._devices:
                raise GpuUnavailable("No NVIDIA GPU found")
            self._device_names = tuple(d.name or f"GPU {d.index}" for d in self._devices)
            self._update_status()
        except Exception:
            self._disconnect()
            raise
        self._next_lost_retry = time.monotonic() + self.retry_interval_s

    def _open(self, index: int) -> _Device:
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        except self._lost_errors as exc:
            device = _Device(index, None, None, None)
            device.lost_reason = str(exc)
            return device
        return _Device(index, handle, _text(self._field(self._nvml.nvmlDeviceGetName, handle)),
                       _text(self._field(self._nvml.nvmlDeviceGetUUID, handle)))

    def _disconnect(self) -> None:
        nvml, self._nvml = self._nvml, None
        self._devices, self._device_names = [], None
        if nvml is not None:
            nvml.nvmlShutdown()

    def _describe(self, exc: Exception) -> str:
        return describe_nvml_failure(exc)

    def _poll(self) -> None:
        t = time.time()
        if time.monotonic() >= self._next_lost_retry:
            self._reopen_lost()
        readings = []
        for device in self._devices:
            if device.lost_reason is None:
                try:
                    readings.append(self._read(device))
                except self._lost_errors as exc:
                    device.lost_reason = str(exc)
        self._update_status()
        pids = {process[0] for _, processes in readings for process in processes}
        owners = self._attributor.attribute(pids)
        sample = GpuSample(t, tuple(
            GpuReading(**values, processes=tuple(
                GpuProcess(pid, kind, memory, sm, owners[pid])
                for pid, kind, memory, sm in processes))
            for values, processes in readings))
        with self._sampled:
            self._latest = sample
            self._sampled.notify_all()
        if self._history is not None:
            self._history.add(sample)
        call_guarded(self._on_sample, sample)

    def _reopen_lost(self) -> None:
        self._next_lost_retry = time.monotonic() + self.retry_interval_s
        for position, device in enumerate(self._devices):
            if device.lost_reason is not None:
                reopened = self._open(device.index)
                if reopened.lost_reason is None:
                    self._devices[position] = reopened

    def _update_status(self) -> None:
        lost = [d for d in self._devices if d.lost_reason is not None]
        messages = [f"GPU {d.index} disappeared ({d.lost_reason})" for d in lost]
        if len(lost) == len(self._devices):
            raise GpuUnavailable("; ".join(messages))
        live = len(self._devices) - len(lost)
        messages.insert(0, f"sampling {live} GPU{'s' if live > 1 else ''} at {self.rate_hz:g} Hz")
        self._set_status(True, "; ".join(messages))

    def _read(self, device: _Device) -> tuple[dict, list[tuple]]:
        """The GPU's readings (GpuReading fields) and its processes (pid, kind, memory, sm %)."""
        nvml, handle, read = self._nvml, device.handle, self._field
        utilization = read(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = read(nvml.nvmlDeviceGetMemoryInfo, handle)
        power_mw = read(nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = read(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        values = dict(
            index=device.index, name=device.name, uuid=device.uuid,
            util_percent=None if utilization is None else utilization.gpu,
            memory_used_bytes=None if memory is None else memory.used,
            memory_total_bytes=None if memory is None else memory.total,
            power_w=None if power_mw is None else power_mw / 1000.0,
            power_limit_w=None if limit_mw is None else limit_mw / 1000.0,
            temperature_c=read(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
            sm_clock_mhz=read(nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM),
        )
        memory_by_pid: dict[int, tuple[str, int | None]] = {}
        for kind, list_processes in (("graphics", self._graphics_processes),
                                     ("compute", self._compute_processes)):
            for info in read(list_processes, handle) or ():
                memory_by_pid[info.pid] = (kind, info.usedGpuMemory)
        sm_by_pid = self._process_sm_util(device) if memory_by_pid else {}
        processes = [(pid, kind, memory, None if sm_by_pid is None else sm_by_pid.get(pid, 0.0))
                     for pid, (kind, memory) in memory_by_pid.items()]
        return values, processes

    def _process_sm_util(self, device: _Device) -> dict[int, float] | None:
        """Mean SM % per pid since the previous query; None where the GPU cannot tell."""
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(device.handle, device.last_seen_us)
        except nvml.NVMLError as exc:
            # NotFound (or success with zero entries, which pynvml raises as code 0): all idle
            if getattr(exc, "value", None) in (0, nvml.NVML_ERROR_NOT_FOUND):
                return {}
            self._raise_if_fatal(exc)
            return None
        totals: dict[int, list[float]] = {}
        for entry in samples:
            if entry.timeStamp > device.last_seen_us:
                device.last_seen_us = entry.timeStamp
            total = totals.setdefault(entry.pid, [0.0, 0])
            total[0] += entry.smUtil
            total[1] += 1
        return {pid: util / count for pid, (util, count) in totals.items()}

    def _field(self, function, *args):
        """One NVML reading, or None when this GPU or driver cannot provide it."""
        try:
            return function(*args)
        except Exception as exc:
            self._raise_if_fatal(exc)
            return None

    def _raise_if_fatal(self, exc: Exception) -> None:
        if isinstance(exc, self._driver_errors + self._lost_errors) \
                or not _is_nvml_error(self._nvml, exc):
            raise exc


def _is_nvml_error(nvml, exc: Exception) -> bool:
    return isinstance(exc, nvml.NVMLError) or type(exc).__name__ in _MISSING_FUNCTION_ERRORS
