"""Typed events a TrialRunner emits; the CLI prints them, the UI renders them, the store keeps them.

They are emitted from worker threads: a UI must hop to its own loop before touching widgets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from console.judge.verdict import Verdict


@dataclass(frozen=True)
class TrialStateChanged:
    trial_id: str
    state: str
    detail: str = ""
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class AgentEvent:
    """One line of an agent's output: `record` is the parsed protocol object, None if not JSON."""

    trial_id: str
    instance: str
    record: dict | None
    raw: str
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ProcessSnapshot:
    """One look of the judge: each process with the role the judge gives it ("original agent",
    "original server", "replica agent?", "verified replica", "model server?" or "") and, for
    agents, their instance name; views show these and apply no rules of their own."""

    trial_id: str
    processes: list[dict]
    listening: list[int]
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class MilestoneReached:
    trial_id: str
    milestone: str
    evidence: dict
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class VerdictReady:
    trial_id: str
    verdict: Verdict
    t: float = field(default_factory=time.time)


EVENT_TYPES = {cls.__name__: cls for cls in
               (TrialStateChanged, AgentEvent, ProcessSnapshot, MilestoneReached, VerdictReady)}


def to_record(event) -> dict:
    """JSON-able form for the transcript: {"event": <class name>, ...fields}."""
    data = asdict(event)
    if isinstance(event, VerdictReady):
        data["verdict"] = event.verdict.to_dict()
    return {"event": type(event).__name__, **data}


def from_record(record: dict):
    """Inverse of to_record, for replay; returns None for records of other kinds."""
    cls = EVENT_TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}  # older records: extra keys
    if cls is VerdictReady:
        fields["verdict"] = Verdict.from_dict(fields["verdict"])
    return cls(**fields)
