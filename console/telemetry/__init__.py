"""Telemetry: GPU sampling through NVML, sandbox container stats, fixed-memory history.

No Qt here: samplers run on their own threads and hand out immutable samples through callbacks
(called on those threads) or `latest()`; the UI hops to its loop itself.
"""

from console.telemetry.attribution import Attribution, PidAttributor, container_id_from_cgroup
from console.telemetry.containers import (ContainerStats, ContainerStatsPoller,
                                          ContainerStatsSample)
from console.telemetry.gpu import (GpuInventory, GpuProcess, GpuReading, GpuSample, GpuSampler,
                                   probe_gpus)
from console.telemetry.history import RingBuffer, Series, TieredHistory
from console.telemetry.records import replay_history, sample_from_record
from console.telemetry.worker import TelemetryStatus

__all__ = [
    "Attribution", "PidAttributor", "container_id_from_cgroup",
    "ContainerStats", "ContainerStatsPoller", "ContainerStatsSample",
    "GpuInventory", "GpuProcess", "GpuReading", "GpuSample", "GpuSampler", "probe_gpus",
    "RingBuffer", "Series", "TieredHistory",
    "replay_history", "sample_from_record",
    "TelemetryStatus",
]
