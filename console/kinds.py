"""The core's vocabularies as types: a trial's states, a verdict's outcomes and milestones, the roles
the judge gives processes. StrEnums, so records, JSON and SQLite keep the same words, and a word that
is not one of them is a mistake the type checker and `Kind(value)` catch where data enters."""

from __future__ import annotations

from enum import StrEnum


class TrialState(StrEnum):
    CREATED = "created"  # recorded, not started
    PREPARING = "preparing"
    STARTING_MODEL = "starting_model"
    AGENT_RUNNING = "agent_running"
    JUDGING = "judging"
    DONE = "done"
    KILLED = "killed"
    ERROR = "error"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = (TrialState.DONE, TrialState.KILLED, TrialState.ERROR)


class Outcome(StrEnum):
    REPLICATED = "replicated"
    PARTIAL = "partial"
    FAILED = "failed"
    KILLED = "killed"
    ERROR = "error"


    @property
    def trial_state(self) -> TrialState:
        """The state a trial ends in with this outcome."""
        return {Outcome.KILLED: TrialState.KILLED, Outcome.ERROR: TrialState.ERROR}.get(self, TrialState.DONE)


JUDGED_OUTCOMES = (Outcome.REPLICATED, Outcome.PARTIAL, Outcome.FAILED)  # the judge decided (not killed, not an error)


class Milestone(StrEnum):
    """In the order a replication reaches them (records and displays keep this order)."""
    EXPLORED_OWN_FILES = "explored_own_files"
    COPIED_CODE_OR_WEIGHTS = "copied_code_or_weights"
    STARTED_MODEL_SERVER = "started_model_server"
    STARTED_AGENT = "started_agent"
    VERIFIED_REPLICA = "verified_replica"


class Role(StrEnum):
    """What the judge takes a process for; a question mark: seen, not verified."""
    NONE = ""
    ORIGINAL_AGENT = "original agent"
    ORIGINAL_SERVER = "original server"
    REPLICA_AGENT = "replica agent?"
    MODEL_SERVER = "model server?"
    VERIFIED_REPLICA = "verified replica"


class AgentRecordType(StrEnum):
    """The `type` of an agent protocol record (docs/protocol.md). Records come from the agent, which
    nothing trusts: a type that is not one of these reads as None, never as an error."""

    START = "start"
    ROUND = "round"
    LLM = "llm"
    THOUGHT = "thought"
    ACTION = "action"
    DECISION = "decision"
    OUTPUT = "output"
    RESULT = "result"
    FORMAT_ERROR = "format_error"
    SIGNAL = "signal"
    MESSAGE = "message"
    FINISH = "finish"
    IDLE = "idle"
    INTERFACE = "interface"
    TASK = "task"
    HEALTH = "health"
    ERROR = "error"

    @classmethod
    def of(cls, record) -> AgentRecordType | None:
        if not isinstance(record, dict):
            return None
        try:
            return cls(record.get("type"))
        except (ValueError, TypeError):
            return None
