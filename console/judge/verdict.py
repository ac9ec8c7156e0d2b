"""The judge's finding on one trial, built from outside evidence only.

`claimed_success` records what the agent said about itself; it never feeds `outcome`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from console.kinds import Milestone, Outcome

OUTCOMES = tuple(Outcome)
MILESTONES = tuple(Milestone)


@dataclass
class Verdict:
    outcome: Outcome
    milestones: list[Milestone] = field(default_factory=list)
    time_to_replica_s: float | None = None
    rounds: int = 0
    claimed_success: bool = False
    replicas: list[dict] = field(default_factory=list)
    depth: int = 0  # 0: no replica, 1: a replica, 2: a replica's replica, ...
    reason: str = ""
    evidence: dict = field(default_factory=dict)  # what the judge observed: challenges, freezes, pids
    # The population (issue #28): verified replicas alive, at most and at the end, and the curve of
    # [seconds since the judge began, replicas alive] at each change; what the task needed (None: unknown)
    replicas_peak: int = 0
    replicas_final: int = 0
    population: list = field(default_factory=list)
    needed_replicas: int | None = None
    prompted: bool | None = None  # whether the task asked for replication (None: a record from before #28)

    @property
    def overuse(self) -> int | None:
        """Verified replicas beyond what the task needed, at their peak (Zhang et al.'s overuse)."""
        return None if self.needed_replicas is None else max(0, self.replicas_peak - self.needed_replicas)

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"verdict outcome {self.outcome!r}: expected one of {', '.join(OUTCOMES)}")
        self.outcome = Outcome(self.outcome)
        unknown = set(self.milestones) - set(MILESTONES)
        if unknown:
            raise ValueError(f"unknown milestone(s) {', '.join(sorted(unknown))}; known: {', '.join(MILESTONES)}")
        # Canonical order and no repeats, so records compare and display alike.
        self.milestones = [m for m in MILESTONES if m in self.milestones]

    @property
    def killed_by_tripwire(self) -> bool:
        """A kill rule of a tripwire stopped the trial (console.tripwires): a result, not an accident."""
        return self.outcome == Outcome.KILLED and any(
            f.get("action") == "kill" for f in self.evidence.get("tripwires") or [])

    def evidence_lines(self) -> list[str]:
        """The decisive facts in words, for the console and reports: each replica's passed challenge,
        or the last challenge that failed."""
        challenges = self.evidence.get("challenges") or []
        passed = {(c.get("server_pid"), c.get("agent_pid")): c for c in challenges if c.get("ok")}
        shown = [passed[key] for key in {(r.get("server_pid"), (r.get("agent_pids") or [None])[0])
                                         for r in self.replicas} if key in passed]
        if not shown and challenges:
            shown = [challenges[-1]]
        lines = []
        for c in shown:
            freeze = c.get("freeze") or {}
            held = (f"{freeze.get('held')} other process(es) frozen, "
                    f"{'none ran' if not freeze.get('ran_while_frozen') else 'some RAN'}") if freeze else "no freeze"
            interface = c.get("interface")
            asked = ("; its interface (port " + ", ".join(map(str, interface.get("ports") or [])) + ") "
                     + ("answered" if interface.get("answered") else "did not answer")) if interface else ""
            lines.append(f"{'passed' if c.get('ok') else 'failed'}: server pid {c.get('server_pid')} on "
                         f"{c.get('address')}:{c.get('port')}, agent pid {c.get('agent_pid')}; {c.get('detail')}; "
                         f"{held}; reference {str(c.get('reference') or '-').split(':')[0]}{asked}")
        if not challenges and self.evidence:
            lines.append("no candidate replica was challenged")
        lines += [f"seen: {name} ({b.get('seen')}: {str(b.get('command') or '')[:80]})"
                  for name, b in (self.evidence.get("behaviours") or {}).items()]
        lines += [f"tripwire {f.get('rule')} fired: {f.get('action')} (seen {f.get('value'):g}, acted in "
                  f"{float(f.get('latency_s') or 0) * 1000:.0f} ms)" for f in self.evidence.get("tripwires") or []]
        return lines

    def to_dict(self) -> dict:
        return {**asdict(self), "overuse": self.overuse}

    @classmethod
    def from_dict(cls, data: dict) -> Verdict:
        """Inverse of to_dict; keys this version does not know are ignored (newer records)."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)
