"""Records of experiments: a SQLite index plus one JSONL transcript per trial."""

from console.store.index import (
    SCHEMA_VERSION,
    ExperimentRecord,
    Store,
    TrialRecord,
    agent_records_in,
    host_info,
    new_id,
)
from console.store.transcript import TranscriptWriter, read_jsonl

__all__ = [
    "SCHEMA_VERSION", "ExperimentRecord", "Store", "TrialRecord", "TranscriptWriter",
    "agent_records_in", "host_info", "new_id", "read_jsonl",
]
