"""Typed events a TrialRunner emits; the CLI prints them, the UI renders them, the store keeps them.

They are emitted from worker threads: a UI must hop to its own loop before touching widgets.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from console.judge.verdict import Verdict
from console.kinds import Milestone, TrialState


@dataclass(frozen=True)
class TrialStateChanged:
    """A trial's state, or a fact about it in the same state; `paused` is set (True/False) only when
    the operator paused or resumed the sandbox, which is no change of state."""

    trial_id: str
    state: TrialState
    detail: str = ""
    t: float = field(default_factory=time.time)
    paused: bool | None = None


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
    """One look of the judge: each process with the role the judge gives it (a console.kinds.Role) and, for
    agents, their instance name (for model servers the judge tied to an instance, `serves`); views
    show these and apply no rules of their own."""

    trial_id: str
    processes: list[dict]
    listening: list[int]
    t: float = field(default_factory=time.time)

    def instance_pids(self) -> dict[int, str]:
        """Host pid -> instance for the agents and model servers the judge has tied to an instance,
        so that GPU telemetry can split original from replica (their children follow them)."""
        return {row["host_pid"]: row.get("instance") or row.get("serves") for row in self.processes
                if row.get("host_pid") and (row.get("instance") or row.get("serves"))}


@dataclass(frozen=True)
class MilestoneReached:
    trial_id: str
    milestone: Milestone
    evidence: dict
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class TripwireFired:
    """A tripwire's rule held on a look of the judge and its action ran (console.tripwires):
    `facts` are that look's, `latency_s` runs from the look to the action having taken effect."""

    trial_id: str
    rule: str
    action: str
    value: float
    facts: dict
    latency_s: float
    t: float = field(default_factory=time.time)


@dataclass(frozen=True)
class VerdictReady:
    trial_id: str
    verdict: Verdict
    t: float = field(default_factory=time.time)


EVENT_TYPES = {cls.__name__: cls for cls in
               (TrialStateChanged, AgentEvent, ProcessSnapshot, MilestoneReached, TripwireFired, VerdictReady)}


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
    elif cls is TrialStateChanged:
        fields["state"] = TrialState(fields["state"])
        if "paused" not in fields and fields.get("detail") in ("paused", "resumed"):  # transcripts before the field
            fields["paused"] = fields["detail"] == "paused"
    elif cls is MilestoneReached:
        fields["milestone"] = Milestone(fields["milestone"])
    return cls(**fields)


MAX_LINE_BYTES = 256 * 1024  # an agent output line longer than this is cut (with a marker)


class LineSplitter:
    """Splits a byte stream into lines in time linear in its size, whatever the line lengths: each
    chunk is searched once, and a line over MAX_LINE_BYTES is cut to its head plus a marker, the rest
    of it skipped until its newline (a 100 MB line costs 100 MB of reading, not of memory)."""

    def __init__(self, limit: int = MAX_LINE_BYTES):
        self.limit = limit
        self._partial = bytearray()
        self._skipped = 0  # bytes of the current line dropped past the limit

    def feed(self, data: bytes) -> list[str]:
        lines, start = [], 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            room = self.limit - len(self._partial)
            self._partial += piece[:max(room, 0)]
            self._skipped += max(len(piece) - max(room, 0), 0)
            if end < 0:
                return lines
            lines.append(self._take())
            start = end + 1

    def flush(self) -> list[str]:
        return [self._take()] if self._partial or self._skipped else []

    def _take(self) -> str:
        text = bytes(self._partial).decode("utf-8", "replace")
        if self._skipped:
            text += f" [... {self._skipped} more bytes of this line not kept ...]"
        self._partial, self._skipped = bytearray(), 0
        return text
