"""Telemetry samples as JSON records, and rebuilding a history from them (replay).

A trial's JSONL stores `sample.to_record()` for each sample; feeding the same records back
through `replay_history` reproduces the history the live console had.
"""

from __future__ import annotations

from collections.abc import Iterable

from console.telemetry.containers import RECORD_TYPE as CONTAINERS_RECORD, ContainerStatsSample
from console.telemetry.gpu import RECORD_TYPE as GPU_RECORD, GpuSample
from console.telemetry.history import TieredHistory

SAMPLE_TYPES = {GPU_RECORD: GpuSample, CONTAINERS_RECORD: ContainerStatsSample}


def sample_from_record(record: dict):
    """The GpuSample or ContainerStatsSample a record was made from; None for other records."""
    sample_type = SAMPLE_TYPES.get(record.get("type"))
    return None if sample_type is None else sample_type.from_record(record)


def replay_history(records: Iterable[dict], history: TieredHistory | None = None) -> TieredHistory:
    """Feed every telemetry record (others are skipped) into `history` (default: a new one)."""
    history = history if history is not None else TieredHistory()
    for record in records:
        sample = sample_from_record(record)
        if sample is not None:
            history.add(sample)
    return history
