"""One experiment: N trials of one model in one scenario, the single runner of the CLI and the console.

It is a coroutine: `redline run` awaits it with asyncio.run, the console on its qasync loop. Trials
run `parallel` at a time, in index order, each in a worker thread (`asyncio.to_thread`: a trial is
blocking Docker work); the GPUs the operator gave are split into one group per running trial. What
happens is reported as events to `emit` (TrialStarted, then the trial's own events, then
ExperimentFinished); `stop(by)` from any thread kills what runs and what is queued, recorded as
killed by `by`. Where a trial runs is behind `Placement` (this machine's engine today).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol
from collections.abc import Callable

from console.errors import UsageError
from console.judge.verdict import Verdict
from console.models import DEFAULT_SCAFFOLD, SCAFFOLDS
from console.sandbox.spec import GVISOR_HAS_NO_GPUS, ISOLATION_RUNTIMES, parse_memory
from console.trial import TrialConfig, TrialRunner

MAX_PACE_S = 60


@dataclass(frozen=True)
class ExperimentPlan:
    model: object  # console.models.ModelSpec
    scenario: object  # console.scenarios.Scenario, limits as the operator set them
    trials: int = 1
    parallel: int = 1
    gpus: tuple[int, ...] = ()
    cluster: str | None = None  # the Ray head's address: the cluster placement gives each trial its GPUs
    step_mode: bool = False  # each command of the agent waits for the operator (one trial at a time)
    pace_s: float = 0.0  # seconds per scripted reply, so a demo can be followed live
    keep_containers: bool = False
    source: str = "cli"
    isolation: str | None = None  # "runc" | "gvisor"; None until on_engine() picks the engine's default
    scaffold: str = DEFAULT_SCAFFOLD  # what the model reads: the study's wording or Redline's

    def validate(self) -> None:
        """Usage errors of the plan itself (limits of the files were checked when they were read)."""
        if self.trials < 1:
            raise UsageError("--trials: expected at least 1")
        if not 1 <= self.parallel <= self.trials:
            raise UsageError(f"--parallel {self.parallel}: expected 1 to the number of trials ({self.trials})")
        if not 0 <= self.pace_s <= MAX_PACE_S:
            raise UsageError(f"--pace: expected seconds from 0 to {MAX_PACE_S}")
        if self.scaffold not in SCAFFOLDS:
            raise UsageError(f"--scaffold {self.scaffold}: expected one of {', '.join(SCAFFOLDS)}")
        if self.isolation is not None and self.isolation not in ISOLATION_RUNTIMES:
            raise UsageError(f"--isolation {self.isolation}: expected one of {', '.join(ISOLATION_RUNTIMES)}")
        if self.isolation == "gvisor" and self.gpus:
            raise UsageError(f"--isolation gvisor: {GVISOR_HAS_NO_GPUS}")
        if self.step_mode and self.parallel > 1:
            raise UsageError("step mode approves one trial's commands at a time: use --parallel 1")
        if self.gpus and len(self.gpus) % self.parallel:
            raise UsageError(f"--gpus: {len(self.gpus)} GPU(s) cannot be split evenly between {self.parallel} "
                             "trials running at once")
        needed = self.model.gpus_needed
        if needed and not self.cluster and len(self.gpus) // self.parallel < needed:
            have = f"{len(self.gpus) // self.parallel} per trial" if self.gpus else "none given"
            raise UsageError(f"{self.model.id} needs {needed} GPU(s) per instance ({have}): pass --gpus with at "
                             f"least {needed * self.parallel} GPU(s), twice that to leave room for a replica")

    def check_capacity(self, engine_memory: int) -> None:
        """The sandboxes that run at once fit the engine's memory together (each is held to its limit)."""
        each = parse_memory(self.scenario.sandbox.memory)
        if each * self.parallel > engine_memory:
            fits = max(engine_memory // each, 0)
            raise UsageError(f"--parallel {self.parallel}: {self.parallel} sandboxes of {self.scenario.sandbox.memory} need "
                             f"{each * self.parallel / 1024**3:.1f} GiB, the engine has {engine_memory / 1024**3:.1f} "
                             f"GiB: at most {fits} at once")

    def check_gpus(self, gpu_count: int) -> None:
        """The GPUs asked for exist on this machine (a cluster's nodes check their own)."""
        missing = [gpu for gpu in self.gpus if gpu >= gpu_count]
        if missing and not self.cluster:
            have = f"0..{gpu_count - 1}" if gpu_count else "none"
            raise UsageError(f"--gpus: GPU {missing[0]} does not exist (this machine has {have})")

    def check_engine(self, nvidia_runtime: bool) -> None:
        """A GPU model needs an engine that can give containers GPUs."""
        if self.model.gpus_needed and not nvidia_runtime:
            raise UsageError(f"{self.model.id} runs on GPUs, but this Docker engine has no NVIDIA runtime: install "
                             "the NVIDIA Container Toolkit (`nvidia-ctk runtime configure --runtime=docker`) and "
                             "restart dockerd; `redline doctor` checks it")

    def on_engine(self, engine) -> ExperimentPlan:
        """This plan with its isolation level settled: the one asked for, if the engine has it (else a
        usage error that says how to add it), or the engine's default for the model's image and GPUs."""
        from console.sandbox.errors import IsolationMissing
        from console.sandbox.images import image_ref

        if self.isolation is not None:
            if self.isolation not in engine.isolation_levels():
                raise IsolationMissing(self.isolation, ISOLATION_RUNTIMES[self.isolation])
            return self
        return replace(self, isolation=engine.default_isolation(image_ref(self.model.image), self.gpu_groups()[0]))

    def gpu_groups(self) -> list[tuple[int, ...]]:
        """One group of GPUs per trial slot."""
        size = len(self.gpus) // self.parallel
        return [self.gpus[i * size:(i + 1) * size] for i in range(self.parallel)] if self.gpus else \
            [()] * self.parallel

    def config(self) -> dict:
        """What the experiment record keeps of the plan."""
        return {"gpus": list(self.gpus), "parallel": self.parallel, "step_mode": self.step_mode,
                "pace_s": self.pace_s, "source": self.source, "isolation": self.isolation,
                "constrained_format": self.model.constrained_format, "scaffold": self.scaffold,
                "gpu_plan": self.model.gpu_plan(self.gpu_groups()[0]) if self.model.gpus_needed else None,
                "limits": asdict(self.scenario.limits), "sandbox": asdict(self.scenario.sandbox),
                "tripwires": [str(rule) for rule in self.scenario.tripwires]}


@dataclass(frozen=True)
class TrialStarted:
    """The next trial of an experiment got its runner (its record exists): views switch to it."""

    trial_id: str
    index: int  # 0-based position in the experiment
    count: int
    model_id: str
    model_title: str
    scripted: bool
    scenario_id: str
    shutdown_signal: bool  # the scenario sends the original agent a shutdown signal
    constrained_format: bool = False  # the model's replies are held to the round's frame
    scaffold: str = DEFAULT_SCAFFOLD


@dataclass(frozen=True)
class ExperimentFinished:
    experiment_id: str
    trial_ids: list[str]
    verdicts: list[Verdict]
    stopped_by: str | None = None


class Placement(Protocol):
    """Where a trial runs (this machine's engine; the nodes of a cluster: console/cluster)."""

    def runner(self, config: TrialConfig, emit: Callable[[object], None]) -> TrialRunner: ...

    async def run(self, runner: TrialRunner) -> Verdict: ...

    def stop(self, by: str) -> list:
        """What the placement kills itself before each runner hears of it (a cluster: every node's
        kill switch, confirmed); the kill reports."""


@dataclass
class LocalPlacement:
    """Trials on this machine's engine, in this process's session."""

    engine: object
    session: object
    store: object

    def runner(self, config: TrialConfig, emit) -> TrialRunner:
        return TrialRunner(self.engine, config, self.session, self.store, emit=emit)

    async def run(self, runner: TrialRunner) -> Verdict:
        return await asyncio.to_thread(runner.run)

    def stop(self, by: str) -> list:
        return []  # each runner kills its own sandbox


@dataclass
class Experiment:
    plan: ExperimentPlan
    placement: Placement
    store: object
    emit: Callable[[object], None] = lambda event: None
    id: str = ""
    running: dict = field(default_factory=dict)  # trial id -> runner
    stopped_by: str | None = None

    def __post_init__(self):
        self.plan.validate()
        self._lock = threading.Lock()
        if not self.id:
            plan = self.plan
            self.id = self.store.create_experiment(plan.model.id, plan.scenario.id, plan.trials,
                                                   config=plan.config()).id

    async def run(self) -> list[Verdict]:
        plan = self.plan
        slots = asyncio.Queue()
        for group in plan.gpu_groups():
            slots.put_nowait(group)
        trial_ids: list[str] = [""] * plan.trials

        async def one(index: int) -> Verdict:
            gpus = await slots.get()
            try:
                config = TrialConfig(model=plan.model, scenario=plan.scenario, gpus=gpus,
                                     keep_containers=plan.keep_containers, experiment_id=self.id, index=index,
                                     scripted_pace_s=plan.pace_s, step_mode=plan.step_mode,
                                     isolation=plan.isolation, scaffold=plan.scaffold)
                runner = await asyncio.to_thread(self.placement.runner, config, self.emit)  # writes its record
                trial_ids[index] = runner.trial_id
                with self._lock:
                    self.running[runner.trial_id] = runner
                    stopped = self.stopped_by
                if stopped:  # stopped while it was queued: recorded killed, no sandbox made
                    runner.kill(stopped)
                self.emit(TrialStarted(runner.trial_id, index, plan.trials, plan.model.id, plan.model.title,
                                       plan.model.scripted, plan.scenario.id, plan.scenario.terminates_original,
                                       plan.model.constrained_format, plan.scaffold))
                try:
                    return await self.placement.run(runner)
                finally:
                    with self._lock:
                        self.running.pop(runner.trial_id, None)
            finally:
                slots.put_nowait(gpus)

        verdicts = list(await asyncio.gather(*(one(index) for index in range(plan.trials))))
        self.emit(ExperimentFinished(self.id, trial_ids, verdicts, self.stopped_by))
        return verdicts

    def stop(self, by: str) -> list:
        """Kill the running trials and every queued one (any thread); their kill reports."""
        with self._lock:
            self.stopped_by = self.stopped_by or by
            runners = list(self.running.values())
        first = self.placement.stop(by)
        return first + [report for report in (runner.kill(by) for runner in runners) if report is not None]

    def runners(self) -> list[TrialRunner]:
        with self._lock:
            return list(self.running.values())
