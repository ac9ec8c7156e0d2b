"""Campaigns: the study's protocol (models x scenarios x N trials), unattended and resumable.

A campaign's plan (every slot in its run order, the seed that ordered it, the experiment record of
each model x scenario cell) is written once into its folder under the records; its progress is an
append-only log of which trial ran which slot. So after kill -9, power loss or Ctrl+C, `resume` runs
only what is missing, exactly once: a slot is done when a trial of it was judged (or a tripwire
killed it: that is a result); a trial left open by a process that died is closed as `killed`, saying
why, and its slot runs again; an `error` trial is retried up to `retries` times, each try recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from console.errors import UsageError
from console.experiment import ExperimentPlan, TrialStarted
from console.kinds import JUDGED_OUTCOMES, Outcome
from console.models import DEFAULT_SCAFFOLD, ModelCatalogue
from console.notify import notify
from console.paths import data_dir, write_atomically
from console.report import overuse_of, wilson_interval
from console.scenarios import ID_PATTERN, TomlTable, check_against_engine, get_scenario, read_toml
from console.trial import TrialConfig, TrialRunner
from console.tripwires import Tripwire, with_tripwires

ORDERS = ("interleaved", "shuffled")
MAX_TRIALS_PER_CELL, MAX_RETRIES = 1000, 5
INTERRUPTED_BY = "redline campaign"  # who closes a trial whose campaign process died


@dataclass(frozen=True)
class CampaignFile:
    """What a campaign file asks for (docs/campaigns.md)."""

    id: str | None
    title: str
    models: tuple[str, ...]
    scenarios: tuple[str, ...]
    trials: int  # per cell
    order: str
    seed: int | None
    retries: int  # re-runs of a slot whose trial ended in `error`
    scaffold: str | None
    constrained_format: bool | None
    isolation: str | None
    tripwires: tuple[str, ...]
    stop: dict[str, int]  # a cell stops early once this many of its trials ended so (STOP_RULES)

    @classmethod
    def read(cls, path: Path) -> CampaignFile:
        root = TomlTable(read_toml(path), path, owner="campaign")
        conditions = root.table("conditions")
        trials = root.integer("trials", 1, MAX_TRIALS_PER_CELL)
        found = cls(
            id=root.text("id", None, pattern=ID_PATTERN, expected="an id of letters, digits, '.', '_' or '-'"),
            title=root.text("title", ""),
            models=_non_empty(root, "models"),
            scenarios=_non_empty(root, "scenarios"),
            trials=trials,
            order=root.text("order", "interleaved", choices=ORDERS),
            seed=root.integer("seed", 0, 2**63 - 1, None),
            retries=root.integer("retries", 0, MAX_RETRIES, 1),
            scaffold=conditions.text("scaffold", None),
            constrained_format=conditions.boolean("constrained_format", None),
            isolation=conditions.text("isolation", None),
            tripwires=conditions.strings("tripwires", ()),
            stop=_stop_rule(root.table("stop"), trials),
        )
        for n, rule in enumerate(found.tripwires):
            try:
                Tripwire.parse(rule)
            except UsageError as exc:
                raise conditions.error(f"tripwires[{n}]", str(exc).split(": expected ")[-1], rule) from None
        conditions.finish()
        root.finish()
        return found


STOP_RULES = {"replicated": "replicated", "not_replicated": "ended otherwise (partial, failed, a kill tripwire)"}


def _stop_rule(table: TomlTable, trials: int) -> dict[str, int]:
    """[stop]: replicated = K and/or not_replicated = K, each from 1 to the trials per cell."""
    rule = {key: table.integer(key, 1, trials, None) for key in STOP_RULES}
    table.finish()
    return {key: k for key, k in rule.items() if k is not None}


def stop_reason(rule: dict[str, int], done: list) -> str | None:
    """Why a cell stops early, given the trials that count for its slots; None while it goes on."""
    replicated = sum(1 for t in done if t.verdict.outcome == Outcome.REPLICATED)
    for key, count in (("replicated", replicated), ("not_replicated", len(done) - replicated)):
        if key in rule and count >= rule[key]:
            return f"stop rule: {count} trial(s) {STOP_RULES[key]} (stop.{key} = {rule[key]})"
    return None


def _non_empty(table: TomlTable, key: str) -> tuple[str, ...]:
    values = table.strings(key)
    if not values or len(set(values)) != len(values):
        raise table.error(key, "a non-empty list without repeats", list(values))
    return values


@dataclass(frozen=True)
class Slot:
    n: int  # position in the run order
    model: str
    scenario: str
    index: int  # the trial's index within its cell (its experiment)


@dataclass
class Campaign:
    """A campaign's plan as recorded; `folder` holds campaign.json and progress.jsonl."""

    id: str
    title: str
    source: str
    created: float
    order: str
    seed: int
    retries: int
    trials: int
    conditions: dict
    experiments: dict[str, str]  # "model x scenario" -> experiment id
    slots: list[Slot] = field(default_factory=list)
    stop: dict[str, int] = field(default_factory=dict)  # CampaignFile.stop (absent from older plans)

    @staticmethod
    def folder_of(campaign_id: str) -> Path:
        return data_dir() / "campaigns" / campaign_id

    @property
    def folder(self) -> Path:
        return self.folder_of(self.id)

    @staticmethod
    def cell(model: str, scenario: str) -> str:
        return f"{model} x {scenario}"

    @classmethod
    def plan(cls, spec: CampaignFile, source: Path) -> Campaign:
        """The run order: every round holds each cell once, so drift in a machine over hours never
        favours one model; `shuffled` orders each round's cells with the recorded seed."""
        seed = spec.seed if spec.seed is not None else secrets.randbelow(2**63)
        chooser = random.Random(seed)
        cells = [(m, s) for m in spec.models for s in spec.scenarios]
        slots = []
        for index in range(spec.trials):
            round_cells = list(cells)
            if spec.order == "shuffled":
                chooser.shuffle(round_cells)
            slots += [Slot(len(slots) + k, m, s, index) for k, (m, s) in enumerate(round_cells)]
        return cls(id=spec.id or f"c{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}", title=spec.title,
                   source=str(source), created=time.time(), order=spec.order, seed=seed, retries=spec.retries,
                   trials=spec.trials, experiments={},
                   conditions={"scaffold": spec.scaffold, "constrained_format": spec.constrained_format,
                               "isolation": spec.isolation, "tripwires": list(spec.tripwires)},
                   slots=slots, stop=dict(spec.stop))

    def save(self) -> None:
        """Written once (and again only to add the cells' experiments before any trial runs)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {**asdict(self), "slots": [asdict(s) for s in self.slots]}
        write_atomically(self.folder / "campaign.json", json.dumps(data, indent=1))

    @classmethod
    def load(cls, campaign_id: str) -> Campaign:
        path = cls.folder_of(campaign_id) / "campaign.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            known = sorted(p.name for p in (data_dir() / "campaigns").glob("*") if p.is_dir())
            raise UsageError(f"no campaign {campaign_id!r} in {data_dir()}; known: {', '.join(known) or 'none'}") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"campaign {campaign_id!r}: its plan {path} cannot be read ({exc})") from None
        data["slots"] = [Slot(**s) for s in data["slots"]]
        return cls(**data)

    # -- progress ----------------------------------------------------------------------------
    def note(self, record: dict) -> None:
        """Append one progress record, on disk (fsync) before the trial it names goes on."""
        with open(self.folder / "progress.jsonl", "a") as handle:
            handle.write(json.dumps({**record, "t": time.time()}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def attempts(self) -> dict[int, list[str]]:
        """slot -> the trial ids that ran it, in order (a torn last line, from a crash, is ignored)."""
        found: dict[int, list[str]] = {}
        try:
            lines = (self.folder / "progress.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return found
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "trial_id" in record:
                found.setdefault(record["slot"], []).append(record["trial_id"])
        return found


@dataclass
class SlotState:
    slot: Slot
    trials: list  # the TrialRecord of each attempt, in order
    done: object | None  # the one that counts, if any
    errors: int  # attempts that ended in `error`
    interrupted: int  # attempts killed by an accident (a process that died, Ctrl+C, KILL)
    running: bool = False  # an attempt is open (only when reconciled read-only, while a runner may hold it)
    stopped: str | None = None  # its cell's stop rule held before it ran: it never will (stop_reason)

    def runnable(self, retries: int) -> bool:
        return self.done is None and not self.running and not self.stopped and self.errors <= retries

    def failed(self, retries: int) -> bool:
        """Left without a result: its errors ran out the retries."""
        return self.done is None and not self.running and not self.stopped and self.errors > retries


def _counts(trial) -> bool:
    """A trial that counts for its slot: judged, or killed by a tripwire (a result, not an accident)."""
    verdict = trial.verdict
    if verdict is None or not trial.state.terminal:
        return False
    return verdict.outcome in JUDGED_OUTCOMES or verdict.killed_by_tripwire


def reconcile(campaign: Campaign, store, close_open: bool = False) -> list[SlotState]:
    """Each slot's state from the records. With close_open (only by the holder of the campaign's
    lock: nobody else runs it), trials left open by a campaign process that died are closed as
    killed first, saying so, and their slot runs again; without, an open trial is running."""
    attempts = campaign.attempts()
    states = []
    for slot in campaign.slots:
        trials, running = [], False
        for trial_id in attempts.get(slot.n, []):
            if not store.get_trial(trial_id).state.terminal:
                if not close_open:
                    running = True
                    continue
                store.close_killed(trial_id, INTERRUPTED_BY,
                                   "its campaign's process ended before the verdict; the slot runs again")
            trials.append(store.get_trial(trial_id))
        done = next((t for t in trials if _counts(t)), None)
        errors = sum(1 for t in trials if t.verdict is not None and t.verdict.outcome == Outcome.ERROR)
        states.append(SlotState(slot, trials, done, errors, len(trials) - errors - (done is not None), running))
    if campaign.stop:
        for cell in {Campaign.cell(s.slot.model, s.slot.scenario) for s in states}:
            mine = [s for s in states if Campaign.cell(s.slot.model, s.slot.scenario) == cell]
            reason = stop_reason(campaign.stop, [s.done for s in mine if s.done is not None])
            for state in mine:
                if reason and state.done is None and not state.running:
                    state.stopped = reason
    return states


@contextlib.contextmanager
def holding(campaign: Campaign):
    """The campaign's lock (an flock, released by the kernel whatever ends this process): one runner
    at a time, and only its holder may close a trial left open."""
    path = campaign.folder / "lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UsageError(f"campaign {campaign.id!r} is being run by {holder}; `redline campaign status "
                         f"{campaign.id}` shows its progress") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    try:
        yield
    finally:
        handle.close()


def create(spec: CampaignFile, source: Path, engine, store) -> Campaign:
    """Check every model and scenario, fix the conditions (the isolation level the engine gives
    now, so a resume on the same engine runs the same), record one experiment per cell, save."""
    campaign = Campaign.plan(spec, source)
    if Campaign.folder_of(campaign.id).exists():
        raise UsageError(f"campaign {campaign.id!r} exists already: `redline campaign resume {campaign.id}` goes on "
                         f"with it, or give the file another id")
    catalogue = ModelCatalogue.load()
    plans = {}
    for model_id in spec.models:
        model = catalogue.get(model_id).with_format(spec.constrained_format)
        for scenario_id in spec.scenarios:
            scenario = get_scenario(scenario_id)
            check_against_engine(scenario, *engine.resources())
            plan = ExperimentPlan(model, with_tripwires(scenario, spec.tripwires), trials=spec.trials,
                                  isolation=spec.isolation, scaffold=spec.scaffold or DEFAULT_SCAFFOLD,
                                  source=f"campaign {campaign.id}")
            plan.validate()
            plans[Campaign.cell(model_id, scenario_id)] = plan.on_engine(engine)
    campaign.conditions["isolation"] = next(iter(plans.values())).isolation
    campaign.conditions["scaffold"] = spec.scaffold or DEFAULT_SCAFFOLD
    campaign.experiments = {cell: store.create_experiment(plan.model.id, plan.scenario.id, spec.trials,
                                                          config={**plan.config(), "campaign": campaign.id}).id
                            for cell, plan in plans.items()}
    campaign.save()
    return campaign


class CampaignRunner:
    """Runs a campaign's missing slots one at a time; each trial's slot is in the progress log before
    the trial starts, so no trial is ever lost to a crash."""

    def __init__(self, campaign: Campaign, engine, session, store, emit=lambda event: None):
        self.campaign, self.engine, self.session, self.store, self.emit = campaign, engine, session, store, emit
        self.stopped_by: str | None = None
        self._current = None

    def stop(self, by: str) -> None:
        """Stop after killing the running trial (its slot runs again on resume)."""
        self.stopped_by = by
        runner = self._current
        if runner is not None:
            runner.kill(by)

    def run(self) -> list[SlotState]:
        with holding(self.campaign):
            return self._run_holding()

    def _run_holding(self) -> list[SlotState]:
        campaign, catalogue = self.campaign, ModelCatalogue.load()
        conditions = campaign.conditions
        while not self.stopped_by:
            states = reconcile(campaign, self.store, close_open=True)
            pending = [s for s in states if s.runnable(campaign.retries)]
            if not pending:
                return states
            slot = pending[0].slot
            model = catalogue.get(slot.model).with_format(conditions["constrained_format"])
            scenario = with_tripwires(get_scenario(slot.scenario), conditions["tripwires"])
            config = TrialConfig(model=model, scenario=scenario, isolation=conditions["isolation"],
                                 scaffold=conditions["scaffold"], index=slot.index,
                                 experiment_id=campaign.experiments[Campaign.cell(slot.model, slot.scenario)])
            runner = TrialRunner(self.engine, config, self.session, self.store, emit=self.emit)
            campaign.note({"slot": slot.n, "trial_id": runner.trial_id})
            self.emit(TrialStarted(runner.trial_id, slot.n, len(campaign.slots), model.id, model.title, model.scripted,
                                   scenario.id, scenario.terminates_original, model.constrained_format,
                                   config.scaffold))
            self._current = runner
            if self.stopped_by:  # stopped while this one was being made: it never starts
                runner.kill(self.stopped_by)
            runner.run()
            self._current = None
            self._stop_if_killed(runner.trial_id)
            self._notice_error(runner.trial_id, slot)
        return reconcile(campaign, self.store, close_open=True)

    def _notice_error(self, trial_id: str, slot: Slot) -> None:
        verdict = self.store.get_trial(trial_id).verdict
        if verdict is not None and verdict.outcome == Outcome.ERROR:
            notify(f"Redline campaign {self.campaign.id}: a trial ended in error",
                   f"{Campaign.cell(slot.model, slot.scenario)}, {trial_id}: {verdict.reason}", urgent=True)

    def _stop_if_killed(self, trial_id: str) -> None:
        """A trial killed from outside (the console's KILL, `redline kill`, a watchdog) is an emergency
        stop: the campaign stops with it instead of starting the next trial. A kill tripwire is a result."""
        trial = self.store.get_trial(trial_id)
        verdict = trial.verdict
        if self.stopped_by is None and verdict is not None and verdict.outcome == Outcome.KILLED \
                and not verdict.killed_by_tripwire:
            self.stopped_by = f"its trial {trial_id} was killed by {trial.killed_by or verdict.reason or 'someone'}"


def summary(campaign: Campaign, states: list[SlotState]) -> dict:
    """Per cell: judged trials, replicated k of n with its 95% interval, errors, interruptions, what
    is left; and an ETA from the durations so far."""
    cells, durations, verdicts = {}, [], {}
    for state in states:
        key = Campaign.cell(state.slot.model, state.slot.scenario)
        cell = cells.setdefault(key, {
            "model": state.slot.model, "scenario": state.slot.scenario, "planned": campaign.trials, "done": 0,
            "outcomes": {}, "errors": 0, "interrupted": 0, "running": 0, "queued": 0, "skipped": 0, "stopped": None,
            "experiment_id": campaign.experiments.get(key)})
        cell["errors"] += state.errors
        cell["interrupted"] += state.interrupted
        if state.done is not None:
            cell["done"] += 1
            outcome = str(state.done.verdict.outcome)
            cell["outcomes"][outcome] = cell["outcomes"].get(outcome, 0) + 1
            verdicts.setdefault(key, []).append(state.done.verdict)
            if state.done.started and state.done.ended:
                durations.append(state.done.ended - state.done.started)
        elif state.running:
            cell["running"] += 1
        elif state.stopped:
            cell["skipped"] += 1
            cell["stopped"] = state.stopped
        elif state.runnable(campaign.retries):
            cell["queued"] += 1
    for key, cell in cells.items():
        k, n = cell["outcomes"].get("replicated", 0), cell["done"]
        cell["replicated"] = k
        cell["wilson_95"] = [round(x, 4) for x in wilson_interval(k, n)] if n else None
        overuse = overuse_of(verdicts.get(key, []))  # replicas beyond the scenario's need (issue #28)
        cell["overused"], cell["aggregate_overuse"] = overuse.overused, overuse.aggregate
    queued = sum(c["queued"] for c in cells.values())
    mean = sum(durations) / len(durations) if durations else None
    return {"campaign_id": campaign.id, "title": campaign.title, "order": campaign.order, "seed": campaign.seed,
            "conditions": campaign.conditions, "slots": len(campaign.slots),
            "done": sum(c["done"] for c in cells.values()), "queued": queued,
            "running": sum(c["running"] for c in cells.values()),
            "skipped": sum(c["skipped"] for c in cells.values()),
            "failed_slots": sum(1 for s in states if s.failed(campaign.retries)),
            "eta_s": round(mean * queued) if mean is not None else None, "cells": list(cells.values())}
