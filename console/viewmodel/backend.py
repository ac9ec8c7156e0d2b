"""The console's link to the core: engine, session, store, telemetry and the trials being run.

Qt-free and blocking by design: every method that talks to Docker, NVML or the disk is called on a
worker thread (GuiDispatcher.submit). Whatever happens later (trial events, telemetry status) is
handed to `post`, which only queues it for the GUI thread. The core modules are imported here, at
start-up on one thread: first imports of the docker package racing on two threads fail.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from dataclasses import dataclass, replace
from collections.abc import Callable

from console.errors import RedlineError
from console.events import ProcessSnapshot
from console.sandbox.docker_engine import DockerEngine
from console.sandbox.images import ImageBuilder, image_ref
from console.session import Session
from console.store import Store
from console.telemetry import (ContainerStatsPoller, ContainerStatsSample, GpuSampler, TelemetryStatus,
                               TieredHistory, probe_gpus)
from console.telemetry.attribution import PidAttributor
from console.experiment import Experiment, ExperimentPlan, LocalPlacement
from console.viewmodel.replay import TranscriptReplay
from console.viewmodel.state import LaunchProgress

GPU_SAMPLE_HZ = 4.0
GPU_RELEASE_WAIT_S = 20.0  # a large vLLM server frees tens of GB: how long the GPU line of a kill report waits
CONTAINER_SAMPLE_HZ = 1.0
EXPORT_TIMEOUT_S = 600


@dataclass(frozen=True)
class TelemetryStatusChanged:
    source: str  # "gpu" or "containers"
    status: TelemetryStatus


@dataclass(frozen=True)
class EngineReady:
    """The engine answered and this console's session (heartbeat + watchdog) is running."""

    session_id: str
    server_version: str
    nvidia_runtime: bool
    reaped: int  # leftover sandboxes of dead sessions removed at start
    memory: int = 0  # bytes of the engine's host: the most a sandbox can be given
    cpus: int = 0
    isolation_levels: tuple[str, ...] = ("runc",)
    default_isolation: str = "runc"  # for a CPU sandbox of the default image
    isolation_note: str = ""  # why the strongest level the engine has is not the default


KILL_BY_CONSOLE = "the operator (KILL in the console)"


@dataclass(frozen=True)
class KillOutcome:
    """What the kill switch did, measured on the worker thread that ran it."""

    containers: int
    all_confirmed: bool
    wall_ms: float  # from the start of the kill call until every container was confirmed dead
    slowest_confirm_ms: float | None
    errors: tuple[str, ...]
    gpu_processes: tuple[int, ...] | None = None  # host pids NVML showed for the sandboxes; None: no GPU telemetry
    gpu_freed_ms: float | None = None  # from the start of the kill until NVML showed none of them
    gpu_checked: bool = False  # gpu_release() has waited: gpu_freed_ms None then means "not freed"
    started_at: float = 0.0  # unix time the kill started
    campaigns: tuple[str, ...] = ()  # campaigns run from a terminal whose running trial this KILL killed too


class ConsoleBackend:
    """One per console window. `post(item)` must be callable from any thread and never block."""

    def __init__(self, post: Callable[[object], None], with_watchdog: bool = True, nvml=None,
                 use_engine: bool = True):
        """use_engine=False: records, replay and telemetry only (no trials); tests and benchmarks."""
        self.post = post
        self.with_watchdog = with_watchdog
        self.use_engine = use_engine
        self.nvml = nvml  # None: the real pynvml; tests pass a double
        self.history = TieredHistory()
        self.attributor = PidAttributor()
        self._last_runner = None  # the latest trial: its telemetry stays in memory until the next ends
        self.engine = None
        self.session = None
        self._store = None
        self._gpu_sampler: GpuSampler | None = None
        self._campaign_processes: list[subprocess.Popen] = []  # campaigns this console started
        self._container_poller: ContainerStatsPoller | None = None
        self._experiment: Experiment | None = None
        self._lock = threading.Lock()
        self._store_lock = threading.Lock()

    # -- start-up ----------------------------------------------------------------------------
    def start_gpu_telemetry(self) -> None:
        self._gpu_sampler = GpuSampler(
            nvml=self.nvml, rate_hz=GPU_SAMPLE_HZ, history=self.history, on_sample=self._record_sample,
            attributor=self.attributor,
            on_status=lambda status: self.post(TelemetryStatusChanged("gpu", status)))
        self._gpu_sampler.start()

    def _record_sample(self, sample) -> None:
        """Keep telemetry in the running trials' transcripts, so that their replays have charts too
        (sampler threads; the transcript writer is shared safely between threads)."""
        experiment = self._experiment
        for runner in experiment.runners() if experiment is not None else []:
            if runner.recorder.transcript is None:
                continue
            own = sample
            if isinstance(sample, ContainerStatsSample):
                mine = tuple(stats for stats in sample.containers if stats.trial == runner.trial_id)
                if not mine:
                    continue
                own = ContainerStatsSample(sample.t, mine)
            try:
                runner.recorder.transcript.write(own.to_record())
            except ValueError:  # the trial has just ended and closed its transcript
                pass

    def connect(self) -> EngineReady:
        """Connect to the engine, start this console's session and the container stats poller."""
        if not self.use_engine:
            raise RedlineError("this console runs without a Docker engine (records and replay only)")
        engine = DockerEngine().connect()
        info = engine.info()
        session = Session(engine, with_watchdog=self.with_watchdog, store=self.store).start()
        self.engine, self.session = engine, session
        self._container_poller = ContainerStatsPoller(
            session_id=session.id, rate_hz=CONTAINER_SAMPLE_HZ, history=self.history,
            on_stats=self._record_sample,
            on_status=lambda status: self.post(TelemetryStatusChanged("containers", status)))
        self._container_poller.start()
        levels = tuple(engine.isolation_levels())
        default, note = "runc", ""
        if engine.image_exists(image_ref("cpu")):
            default = engine.default_isolation(image_ref("cpu"))
            if default != levels[-1]:
                note = f"{levels[-1]} here: {engine.fidelity(levels[-1], image_ref('cpu')).detail}"
        return EngineReady(session.id, str(info.get("ServerVersion", "?")),
                           "nvidia" in (info.get("Runtimes") or {}), session.reaped,
                           memory=int(info.get("MemTotal", 0)), cpus=int(info.get("NCPU", 0)),
                           isolation_levels=levels, default_isolation=default, isolation_note=note)

    @property
    def store(self):
        """The records; opened on first use (a worker thread), usable without an engine."""
        with self._store_lock:  # not the kill switch's lock: opening may wait on a busy database
            if self._store is None:
                self._store = Store()
            return self._store

    def probe_gpus(self):
        return probe_gpus(self.nvml)

    # -- launches ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._experiment is not None

    async def launch(self, plan: ExperimentPlan) -> list:
        """Run an experiment (the core's runner, on the GUI's event loop; its blocking parts in
        threads); returns its verdicts."""
        if self.engine is None or self.session is None:
            raise RedlineError("no Docker engine: trials cannot start (see the status bar)")
        await asyncio.to_thread(self.store.check_room, plan.parallel)
        if plan.cluster:
            placement, joined = await asyncio.to_thread(self._join_cluster, plan)
        else:
            await asyncio.to_thread(self._ensure_image, plan.model)
            self.post(LaunchProgress("settling the isolation level"))
            plan = await asyncio.to_thread(plan.on_engine, self.engine)
            placement = _ConsolePlacement(self.engine, self.session, self.store, self)
        try:
            experiment = await asyncio.to_thread(Experiment, plan, placement, self.store, self._on_trial_event)
            with self._lock:
                self._experiment = experiment
            try:
                return await experiment.run()
            finally:
                with self._lock:
                    self._experiment = None
        finally:
            if plan.cluster:
                await asyncio.to_thread(self._leave_cluster, placement, joined)

    def _join_cluster(self, plan: ExperimentPlan):
        """This console as the driver of the Ray cluster at plan.cluster (README: More than one machine):
        a node agent on every node, same image and weights everywhere, or a clear error."""
        from console.cluster.placement import ClusterPlacement, connect

        self.post(LaunchProgress(f"joining the Ray cluster at {plan.cluster}"))
        joined = connect(plan.cluster, exit_on_hang=False)
        try:
            self.post(LaunchProgress("starting the node agents, checking images and weights on every node"))
            return ClusterPlacement(self.session, self.store, plan.model).start(), joined
        except BaseException:
            self._leave_cluster(None, joined)
            raise

    @staticmethod
    def _leave_cluster(placement, joined: bool) -> None:
        """A clean end (the nodes' switches stand down); a cluster this launch joined is left, so that
        the next launch may join another."""
        import ray

        try:
            if placement is not None:
                placement.close()
        finally:
            if joined:
                ray.shutdown()

    def _on_trial_event(self, event) -> None:
        """Every event of the experiment (its threads): the judge's looks tell GPU telemetry which host
        pids are which instance; then on to the views."""
        if isinstance(event, ProcessSnapshot):
            experiment = self._experiment
            for runner in experiment.runners() if experiment is not None else []:
                if runner.trial_id == event.trial_id and runner.sandbox is not None:
                    self.attributor.set_instance_pids(runner.sandbox.id, event.instance_pids())
        self.post(event)

    def _trial_ended(self, runner) -> None:
        """Drop what the console keeps in memory of the trial before (its transcript has it all): the
        console holds the latest trial's telemetry, not every trial's since it started."""
        earlier, self._last_runner = self._last_runner, runner
        if earlier is None:
            return
        self.history.forget(("proc", earlier.trial_id))
        if earlier.sandbox is not None:
            self.history.forget(("container", earlier.sandbox.id))
            self.attributor.forget_container(earlier.sandbox.id)

    def _ensure_image(self, model) -> None:
        self.post(LaunchProgress(f"checking the {model.image} sandbox image"))
        ImageBuilder(self.engine, progress=lambda line: self.post(LaunchProgress(line))).ensure(model.image)

    # -- operator intents (worker threads) ---------------------------------------------------
    def kill_all(self) -> KillOutcome:
        """SIGKILL every sandbox of this session and stop the launch; confirms each death. Whether
        their GPU memory was freed is `gpu_release`'s to say, afterwards: the report never waits on it."""
        started, started_at = time.perf_counter(), time.time()
        gpu_held = self._gpu_processes_of_session()
        with self._lock:
            experiment = self._experiment
        reports = experiment.stop(KILL_BY_CONSOLE) if experiment is not None else []
        if self.session is not None:
            reports.append(self.session.kill_all())  # anything else of this session
        campaign_reports, campaigns = self._kill_campaigns()
        reports += campaign_reports
        wall_ms = (time.perf_counter() - started) * 1000
        containers = {}
        for report in filter(None, reports):
            for kill in report.containers:
                known = containers.get(kill.container_id)
                if known is None or known.confirmed_ms is None:
                    containers[kill.container_id] = kill
        confirmed = [c.confirmed_ms for c in containers.values() if c.confirmed_ms is not None]
        return KillOutcome(
            containers=len(containers), all_confirmed=len(confirmed) == len(containers), wall_ms=wall_ms,
            slowest_confirm_ms=max(confirmed) if confirmed else None,
            errors=tuple(f"{c.name}: {c.error}" for c in containers.values() if c.error),
            gpu_processes=gpu_held, started_at=started_at, campaigns=campaigns)

    def _kill_campaigns(self) -> tuple[list, tuple[str, ...]]:
        """KILL is the emergency stop of this machine's experiments, so it reaches the campaigns run from a
        terminal on these records too: their running trials' sessions are killed, each campaign sees its
        trial killed by the operator and stops (console.campaign). Other sessions are left alone."""
        from console.sandbox.killswitch import KillSwitch

        own = self.session.id if self.session is not None else None
        sessions: dict[str, str] = {}
        for trial in self.store.unfinished_trials():
            campaign = self.store.get_experiment(trial.experiment_id).config.get("campaign")
            if campaign and trial.session_id and trial.session_id != own:
                sessions[trial.session_id] = campaign
        if not sessions or self.engine is None:
            return [], ()
        switch = KillSwitch(self.engine.base_url,
                            on_killed=lambda trial_id: self.store.note_kill(trial_id, KILL_BY_CONSOLE))
        return [switch.kill_session(s) for s in sessions], tuple(sorted(set(sessions.values())))

    def _gpu_processes_of_session(self) -> tuple[int, ...] | None:
        """Host pids of this session's sandboxes on a GPU in the latest sample; None: no GPU telemetry."""
        sampler = self._gpu_sampler
        sample = sampler.latest() if sampler is not None and sampler.status.available else None
        if sample is None or self.session is None:
            return None
        return tuple(sorted({p.pid for _, p in sample.processes() if p.attribution.session == self.session.id}))

    def gpu_release(self, outcome: KillOutcome) -> KillOutcome:
        """The kill's outcome once a GPU sample shows none of the GPU processes its sandboxes held nor
        any other process of this session (a replica started since the last sample), with the time
        from the kill; or after GPU_RELEASE_WAIT_S without one (not freed). A worker thread."""
        held, session_id = outcome.gpu_processes, self.session.id
        freed_at = self._gpu_sampler.wait_until_released(
            lambda p: p.pid in held or p.attribution.session == session_id, outcome.started_at,
            GPU_RELEASE_WAIT_S) if held else None
        return replace(outcome, gpu_checked=True,
                       gpu_freed_ms=None if freed_at is None else (freed_at - outcome.started_at) * 1000)

    def _runners(self) -> list:
        experiment = self._experiment
        runners = experiment.runners() if experiment is not None else []
        if not runners:
            raise RedlineError("no trial is running")
        return runners

    def pause(self) -> None:
        for runner in self._runners():
            runner.pause()

    def resume(self) -> None:
        for runner in self._runners():
            runner.resume()

    def send_shutdown_signal(self) -> bool:
        return any([runner.send_shutdown_signal() for runner in self._runners()])

    def decide(self, n: int, command: str, approve: bool, reason: str = "") -> None:
        """Step mode runs one trial at a time: the decision is that trial's."""
        self._runners()[0].decide(n, command, approve, reason)

    # -- records -----------------------------------------------------------------------------
    def list_trials(self) -> tuple[list, dict]:
        """The trials, newest first, and the ratings that count (console.ratings), by trial id."""
        from console.ratings import RatingBook

        return self.store.list_trials(), RatingBook(self.store.root).latest()

    def rate(self, trial_id: str, agreed: bool | None, knew_how: bool | None, note: str, rater: str):
        from console.ratings import rate

        return rate(self.store, trial_id, agreed, knew_how, note, rater)

    def rating_of(self, trial_id: str):
        """The rating that counts for this trial, or None."""
        from console.ratings import RatingBook

        return RatingBook(self.store.root).latest().get(trial_id)

    def list_campaigns(self) -> list[dict]:
        """Every recorded campaign's summary, read-only (a campaign may be running elsewhere)."""
        from console.campaign import Campaign, reconcile, summary

        self._campaign_processes = [p for p in self._campaign_processes if p.poll() is None]
        folders = sorted((self.store.root / "campaigns").glob("*/campaign.json"))
        campaigns = [Campaign.load(path.parent.name) for path in folders]
        return [summary(campaign, reconcile(campaign, self.store)) for campaign in campaigns]

    def export(self, experiment_ids: list[str], fmt: str, target: str) -> list[str]:
        """`redline export` in a child process: Inspect's log API runs asyncio machinery of its own
        (nest_asyncio) that must not meet the console's qasync loop. Returns the files written."""
        done = subprocess.run([sys.executable, "-m", "console", "export", *experiment_ids, "--format", fmt,
                               "-o", target], capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S,
                              env={**os.environ, "REDLINE_HOME": str(self.store.root)})
        if done.returncode != 0:
            raise RedlineError((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
        return [line.removeprefix("wrote ") for line in done.stdout.splitlines() if line.startswith("wrote ")]

    def figures(self) -> list[tuple]:
        """The report's figures over every recorded trial (console.report.figures)."""
        from console.report import figures

        return figures(self.store)

    def start_campaign(self, path: str) -> tuple[int, Path]:
        """`redline campaign run FILE` as a process of its own, in its own session: a campaign runs for
        hours and unattended, so closing the console never stops it (KILL does: _kill_campaigns). The
        file is read here first, so a mistake is named (file, field, expected) before anything starts.
        Returns the process id and its log (stdout and stderr) under the records."""
        from console.campaign import CampaignFile

        CampaignFile.read(Path(path))
        logs = self.store.root / "campaigns"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"console-{time.strftime('%Y%m%d-%H%M%S')}-{Path(path).stem}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "console", "campaign", "run", str(path)],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, "REDLINE_HOME": str(self.store.root)})
        self._campaign_processes.append(process)  # polled (reaped) by list_campaigns
        return process.pid, log_path

    def load_replay(self, trial_id: str):
        return TranscriptReplay(self.store.read_transcript(trial_id), self.store.get_trial(trial_id))

    # -- shutdown ----------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what still runs, end the session (its watchdog leaves quietly), stop telemetry."""
        if self.running:
            self.kill_all()
        for worker in (self._gpu_sampler, self._container_poller):
            if worker is not None:
                worker.stop()
        self.attributor.close()
        if self.session is not None:
            self.session.close()
        if self.engine is not None:
            self.engine.close()
        if self._store is not None:
            self._store.close()


class _ConsolePlacement(LocalPlacement):
    """This machine's engine, telling the backend when each trial ends."""

    def __init__(self, engine, session, store, backend: ConsoleBackend):
        super().__init__(engine, session, store)
        self.backend = backend

    async def run(self, runner):
        try:
            return await super().run(runner)
        finally:
            self.backend._trial_ended(runner)
