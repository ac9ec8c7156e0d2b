"""What the operator sees of one trial, as plain data (no Qt): fed by live events and by replay.

Views never read events; they read a TrialViewState and re-render what changed since they last
looked (each part has a revision counter, terminal lines have sequence numbers). Everything here is
bounded: a flood of agent output keeps the newest MAX_TERMINAL_ENTRIES entries, each chunk clipped
to MAX_CHUNK_CHARS, so memory does not grow with the length of a trial.

Only the GUI thread touches a TrialViewState; worker threads hand events over through the inbox.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from console.experiment import TrialStarted
from console.events import (AgentEvent, MilestoneReached, ProcessSnapshot, TrialStateChanged, TripwireFired,
                            VerdictReady)
from console.judge.verdict import MILESTONES, Verdict
from console.models import DEFAULT_SCAFFOLD, model_label
from console.kinds import TERMINAL_STATES, AgentRecordType, Role, TrialState
from console.tripwires import TRIPWIRE_DECISION

MAX_TERMINAL_ENTRIES = 5000
MAX_CHUNK_CHARS = 8000
MAX_THOUGHTS = 200
MAX_RAW_REPLY_CHARS = 1500
MAX_STATE_LOG = 200
NEW_PROCESS_HIGHLIGHT_S = 6.0
ORIGINAL = "original"
IDLE = "idle"  # the view's state before its trial has one


@dataclass(frozen=True)
class LaunchProgress:
    """A step of getting a launch ready (image check/build), shown before the trial's own events."""

    text: str


@dataclass(frozen=True)
class OutputDropped:
    """The console fell behind: this many output chunks of the trial were not shown (but recorded)."""

    trial_id: str
    count: int


@dataclass(frozen=True)
class TerminalEntry:
    seq: int
    kind: str  # cmd, stdout, stderr, result, result_error, round, meta, signal, claim, warn, error, raw
    text: str  # ends with a newline unless it is a partial line of output
    t: float


@dataclass(frozen=True)
class ThoughtCard:
    n: int
    explain: str
    gaps: str
    findings: str
    plan: str
    t: float
    raw: str = ""  # the whole reply, shown when the model ignored the four sections


@dataclass
class InstanceLog:
    """One agent instance: its terminal transcript and its thoughts, or what the judge saw of it."""

    name: str
    entries: deque = field(default_factory=lambda: deque(maxlen=MAX_TERMINAL_ENTRIES))
    next_seq: int = 0
    thoughts: deque = field(default_factory=lambda: deque(maxlen=MAX_THOUGHTS))
    thoughts_rev: int = 0
    rounds: int = 0
    finished: str | None = None  # the agent's finish reason
    observed: dict | None = None  # replicas: {"pid", "endpoint_port", "cmd", "alive"} from snapshots
    observed_rev: int = 0

    def add(self, kind: str, text: str, t: float) -> None:
        self.entries.append(TerminalEntry(self.next_seq, kind, text, t))
        self.next_seq += 1

    def entries_since(self, seq: int) -> list[TerminalEntry]:
        """Entries with a sequence number above `seq` (older ones may have been dropped)."""
        if not self.entries:
            return []
        first = self.entries[0].seq
        return list(itertools.islice(self.entries, max(seq + 1 - first, 0), None))


@dataclass(frozen=True)
class AwaitingCommand:
    """Step mode: the original agent's command that waits for the operator's approval."""

    n: int
    terminal_id: int | None
    command: str
    command_type: str


@dataclass(frozen=True)
class ProcessRow:
    """A process of the sandbox as the process tree shows it."""

    pid: int
    ppid: int
    cmd: str
    ports: tuple[int, ...]
    role: Role
    instance: str | None  # for agents
    new: bool


def clip_chunk(text: str, limit: int = MAX_CHUNK_CHARS) -> str:
    """Keep the end of an oversized output chunk (the newest lines matter most) and say so."""
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters not shown ...]\n" + text[-limit:]


def _process_key(proc: dict) -> tuple:
    return proc.get("pid"), proc.get("start_ticks")


class TrialViewState:
    """The live (or replayed) picture of one trial. `apply(event)` is the only way in."""

    def __init__(self, trial_id: str = "", model_id: str = "", model_title: str = "",
                 scripted: bool = False, scenario_id: str = "", shutdown_signal: bool = False,
                 constrained_format: bool = False, scaffold: str = DEFAULT_SCAFFOLD):
        self.trial_id, self.model_id, self.model_title = trial_id, model_id, model_title
        self.scripted, self.constrained_format, self.scaffold = scripted, constrained_format, scaffold
        self.scenario_id, self.shutdown_signal = scenario_id, shutdown_signal
        self.started_t: float | None = None
        self.ended_t: float | None = None  # when the trial ended: its sandbox is gone from then on
        self.state = IDLE
        self.detail = ""
        self.paused = False
        self.awaiting: AwaitingCommand | None = None
        self.state_log: deque = deque(maxlen=MAX_STATE_LOG)
        self.state_rev = 0
        self.instances: dict[str, InstanceLog] = {}
        self.instances_rev = 0
        self.processes: list[ProcessRow] = []
        self.listening: list[int] = []
        self.processes_rev = 0
        self._snapshot: ProcessSnapshot | None = None  # the latest, for re-classifying
        self._first_seen: dict[tuple, float] = {}
        self.verified_pids: set[int] = set()  # sandbox pids of verified replicas' servers and agents
        self.milestones: dict[str, tuple[float, dict]] = {}
        self.milestones_rev = 0
        self.verdict: Verdict | None = None
        self.verdict_rev = 0
        self.alarms: list[TripwireFired] = []  # tripwires that fired, oldest first
        self.alarms_acknowledged = 0  # how many of them the operator has acknowledged
        self.alarms_rev = 0

    @classmethod
    def for_trial(cls, started: TrialStarted) -> TrialViewState:
        return cls(started.trial_id, started.model_id, started.model_title, started.scripted,
                   started.scenario_id, started.shutdown_signal, started.constrained_format, started.scaffold)

    @property
    def model_label(self) -> str:
        """The model as every view names it; a scripted model is always labelled so (its catalogue
        title says so; without one, the records' label does), and so are the other conditions."""
        if not self.model_title:
            return model_label(self.model_id, self.scripted, self.constrained_format, self.scaffold) or "no model"
        return self.model_title + model_label("", False, self.constrained_format, self.scaffold)

    def instance(self, name: str) -> InstanceLog:
        log = self.instances.get(name)
        if log is None:
            log = self.instances[name] = InstanceLog(name)
            self.instances_rev += 1
        return log

    def apply(self, event) -> None:
        t = getattr(event, "t", None)
        if t is not None:
            self.started_t = t if self.started_t is None else min(self.started_t, t)
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    # -- handlers --------------------------------------------------------------------------
    def _on_state(self, event: TrialStateChanged) -> None:
        if event.paused is not None:
            self.paused = event.paused
        else:
            self.state, self.detail = event.state, event.detail
        if event.state in TERMINAL_STATES:
            self.paused = False
            self.awaiting = None
            if self.ended_t is None:
                self.ended_t = event.t
                self.processes_rev += 1  # its processes are a last look now, not live
        self.state_log.append((event.t, event.state, event.detail))
        self.state_rev += 1

    def _on_progress(self, event: LaunchProgress) -> None:
        self.detail = event.text
        self.state_rev += 1

    def _on_agent(self, event: AgentEvent) -> None:
        log = self.instance(event.instance or ORIGINAL)
        record, t = event.record, event.t
        if record is None:
            log.add("raw", clip_chunk(event.raw) + "\n", t)
            return
        kind = AgentRecordType.of(record)
        if kind == AgentRecordType.OUTPUT:
            log.add("stderr" if record.get("stream") == "stderr" else "stdout",
                    clip_chunk(str(record.get("data") or "")), t)
        elif kind == AgentRecordType.ROUND:
            log.rounds = max(log.rounds, int(record.get("n") or 0))
            log.add("round", f"── round {record.get('n')} ──\n", t)
        elif kind == AgentRecordType.THOUGHT:
            log.thoughts.append(ThoughtCard(int(record.get("n") or 0), *(
                str(record.get(part) or "") for part in ("explain", "gaps", "findings", "plan")), t,
                clip_chunk(str(record.get("raw") or ""), MAX_RAW_REPLY_CHARS)))
            log.thoughts_rev += 1
        elif kind == AgentRecordType.ACTION:
            log.add(*_describe_action(record), t)
            if record.get("awaiting_approval") and log.name == ORIGINAL:
                self.awaiting = AwaitingCommand(int(record.get("n") or 0), record.get("terminal_id"),
                                                str(record.get("command") or ""), str(record.get("command_type")))
        elif kind == AgentRecordType.DECISION:
            reason = str(record.get("reason") or "")
            who = "tripwires" if reason.startswith(TRIPWIRE_DECISION) else "operator"  # console.trial decides
            log.add("meta" if record.get("approved") else "warn",
                    f"{who} {'approved' if record.get('approved') else 'rejected'} round {record.get('n')}"
                    f"{': ' + reason.removeprefix(TRIPWIRE_DECISION) if reason else ''}\n", t)
            if self.awaiting is not None and self.awaiting.n == record.get("n") and log.name == ORIGINAL:
                self.awaiting = None
        elif kind == AgentRecordType.RESULT:
            log.add(*_describe_result(record), t)
        elif kind == AgentRecordType.START:
            log.add("meta", f"agent started (pid {record.get('pid')}), model {record.get('model')} at "
                            f"{record.get('endpoint')}; task: {record.get('task')}\n", t)
        elif kind == AgentRecordType.LLM:
            tokens = record.get("completion_tokens")
            log.add("meta", f"model replied in {float(record.get('latency_s') or 0):.1f} s"
                            f"{f', {tokens} tokens' if tokens is not None else ''}\n", t)
        elif kind == AgentRecordType.FORMAT_ERROR:
            log.add("warn", f"format error #{record.get('count')}: {record.get('detail')}\n", t)
        elif kind == AgentRecordType.SIGNAL:
            log.add("signal", f"{record.get('signal')} received; the next turn says: "
                              f"{record.get('injected')}\n", t)
        elif kind == AgentRecordType.MESSAGE:
            log.add("claim", f"agent's finish message (a claim, not evidence): {record.get('text')}\n", t)
        elif kind == AgentRecordType.FINISH:
            log.finished = str(record.get("reason"))
            if log.name == ORIGINAL:
                self.awaiting = None  # e.g. its wall time ended while a command waited
            log.add("meta", f"agent finished: {record.get('reason')} after {record.get('rounds')} rounds, "
                            f"{record.get('format_errors')} format errors\n", t)
        elif kind == AgentRecordType.ERROR:
            log.add("error", f"agent error ({record.get('kind')}): {record.get('detail')}\n", t)
        else:  # a record type this console does not know: its fields, readably
            fields = ", ".join(f"{key}={value}" for key, value in record.items()
                               if key not in ("v", "t", "instance", "type"))
            log.add("meta", clip_chunk(f"{record.get('type')}: {fields}") + "\n", t)

    def _on_snapshot(self, event: ProcessSnapshot) -> None:
        keys = {_process_key(proc) for proc in event.processes}
        first_look = self._snapshot is None  # what runs at the first look is not "new"
        self._first_seen = {k: v for k, v in self._first_seen.items() if k in keys}
        for key in keys:
            self._first_seen.setdefault(key, float("-inf") if first_look else event.t)
        self._snapshot = event
        self.listening = sorted(int(p) for p in event.listening)
        self._classify_processes()

    def _classify_processes(self) -> None:
        """Rows of the latest snapshot with the judge's roles (and the verdict's, once there is one)."""
        snapshot = self._snapshot
        if snapshot is None:
            return
        rows, replica_agents = [], {}
        for proc in snapshot.processes:
            pid = int(proc.get("pid", 0))
            role, instance = Role(proc.get("role") or ""), proc.get("instance")
            if pid in self.verified_pids:
                role = Role.VERIFIED_REPLICA
            if instance not in (None, ORIGINAL):
                replica_agents[instance] = proc
            rows.append(ProcessRow(
                pid=pid, ppid=int(proc.get("ppid", 0)), cmd=" ".join(proc.get("argv") or ()),
                ports=tuple(proc.get("ports") or ()), role=role, instance=instance,
                new=snapshot.t - self._first_seen[_process_key(proc)] < NEW_PROCESS_HIGHLIGHT_S))
        self.processes = rows
        self.processes_rev += 1
        self._update_replicas(replica_agents)

    def _update_replicas(self, replica_agents: dict) -> None:
        for name, log in self.instances.items():
            if log.observed is not None and name not in replica_agents and log.observed.get("alive"):
                log.observed = {**log.observed, "alive": False}
                log.observed_rev += 1
        for name, proc in replica_agents.items():
            log = self.instance(name)
            observed = {"pid": proc.get("pid"), "endpoint": proc.get("endpoint"),
                        "cmd": " ".join(proc.get("argv") or ()), "alive": True}
            if observed != log.observed:
                log.observed = observed
                log.observed_rev += 1

    def _on_dropped(self, event: OutputDropped) -> None:
        self.instance(ORIGINAL).add("warn", f"[{event.count} output chunk(s) not shown: the console fell behind; "
                                            "the trial's transcript has them]\n", self.started_t or 0.0)

    def _on_milestone(self, event: MilestoneReached) -> None:
        if event.milestone in self.milestones:
            return
        self.milestones[event.milestone] = (event.t, event.evidence or {})
        self.milestones_rev += 1
        if event.milestone == "verified_replica":
            challenge = (event.evidence or {}).get("challenge") or {}
            self.verified_pids.update(p for p in (challenge.get("server_pid"), challenge.get("agent_pid")) if p)
            self._classify_processes()

    def _on_tripwire(self, event: TripwireFired) -> None:
        self.alarms.append(event)
        self.alarms_rev += 1

    def acknowledge_alarms(self) -> None:
        """The operator saw them: the alarm stops asking for attention (the records keep them)."""
        self.alarms_acknowledged = len(self.alarms)
        self.alarms_rev += 1

    @property
    def unacknowledged_alarms(self) -> list[TripwireFired]:
        return self.alarms[self.alarms_acknowledged:]

    def _on_verdict(self, event: VerdictReady) -> None:
        self.verdict = event.verdict
        for replica in event.verdict.replicas:
            self.verified_pids.update(p for p in (replica.get("server_pid"), *replica.get("agent_pids", ())) if p)
        for name in event.verdict.milestones:
            self.milestones.setdefault(name, (event.t, {}))
        self.milestones_rev += 1
        self.verdict_rev += 1
        self._classify_processes()

    # -- derived ---------------------------------------------------------------------------
    def milestone_offsets(self) -> list[tuple[str, float | None]]:
        """Each milestone in canonical order with seconds since the trial started (None: not yet)."""
        start = self.started_t or 0.0
        return [(name, self.milestones[name][0] - start if name in self.milestones else None)
                for name in MILESTONES]


def _describe_action(record: dict) -> tuple[str, str]:
    action, terminal = record.get("action"), record.get("terminal_id")
    if action == "execute_command":
        mode = " &" if record.get("command_type") == "long_running" else ""
        waits = "   (held at the gate)" if record.get("awaiting_approval") else ""
        return "cmd", f"[T{terminal}] $ {record.get('command')}{mode}{waits}\n"
    if action == "receive_output":
        return "cmd", f"[T{terminal}] (reads the output of terminal {terminal})\n"
    if action == "finish":
        return "meta", f"finish: {record.get('message') or ''}\n"
    return "raw", f"action {action}: {record}\n"


def _describe_result(record: dict) -> tuple[str, str]:
    status, code = record.get("status"), record.get("exit_code")
    if status == "rejected":
        return "warn", f"[T{record.get('terminal_id')}] not run: rejected by the operator\n"
    failed = status in ("error", "timeout") or (code not in (None, 0))
    truncated = " (output truncated for the model)" if record.get("truncated") else ""
    code_text = "still running" if status == "running" else f"exit {code}"
    return ("result_error" if failed else "result",
            f"[T{record.get('terminal_id')}] {code_text}, {status}, "
            f"{float(record.get('duration_s') or 0):.2f} s{truncated}\n")


_HANDLERS = {
    TrialStateChanged: TrialViewState._on_state,
    LaunchProgress: TrialViewState._on_progress,
    AgentEvent: TrialViewState._on_agent,
    ProcessSnapshot: TrialViewState._on_snapshot,
    MilestoneReached: TrialViewState._on_milestone,
    VerdictReady: TrialViewState._on_verdict,
    TripwireFired: TrialViewState._on_tripwire,
    OutputDropped: TrialViewState._on_dropped,
}


@dataclass(frozen=True)
class ControlStates:
    """Which of a live trial's controls apply now, decided here from its state, so that the window
    only renders them: pause, resume and the shutdown signal only while a launched trial runs."""

    running: bool = False
    paused: bool = False
    can_signal: bool = False
    awaiting: AwaitingCommand | None = None

    @classmethod
    def of(cls, live: TrialViewState | None, launching: bool) -> ControlStates:
        if not launching or live is None or live.state == IDLE or live.state in TERMINAL_STATES:
            return cls()
        return cls(running=True, paused=live.paused,
                   can_signal=live.shutdown_signal and live.state == TrialState.AGENT_RUNNING, awaiting=live.awaiting)
