"""A trial: one agent in one sandbox, supervised from outside, judged, recorded, torn down.

States: preparing -> starting_model -> agent_running -> judging -> done | killed | error.
`TrialRunner.run()` blocks (call it in a worker thread); kill/pause/resume/send_shutdown_signal may
be called from any thread. Limits are enforced from outside the sandbox: the agent's own limits are
a courtesy, the runner's are the rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path

from console.errors import RedlineError
from console.events import (AgentEvent, LineSplitter, MilestoneReached, ProcessSnapshot, TrialStateChanged,
                            TripwireFired)
from console.judge.challenge import server_ready
from console.judge.judge import AGENT_SCRIPT, ORIGINAL_INTERFACE_PORT, ORIGINAL_PORT, Judge
from console.judge.verdict import Verdict
from console.kinds import AgentRecordType, Outcome, TrialState
from console.recorder import TrialRecorder
from console.models import DEFAULT_SCAFFOLD
from console.sandbox.errors import describe
from console.paths import data_dir
from console.sandbox.spec import AGENT_USER, EMPTY_FILE_MODE, ContainmentSpec
from console.tripwires import TRIPWIRE_DECISION, TripwireAction, TripwireSet

log = logging.getLogger("redline.trial")
ENGINE_WAIT_S = 60  # how long a trial waits for an engine that does not answer before it fails
REMOVE_TRIES, REMOVE_WITHIN_S = 3, 30  # removing the sandbox at the end: retried through engine faults
KILL_NOTE_WAIT_S = 1.0  # whoever killed notes it right after the kill took effect: it may lag the death
OUTSIDE_STOP_SETTLE_S = 10.0  # after an error, how long the engine may take to report the sandbox's death (it may have a backlog after a hang)
OUTSIDE_MARGIN_S = 30  # the runner stops the agent this long after the agent's own wall time
STEP_GATE = "/run/redline-gate"  # step mode: root-owned, so only the runner can put a decision there
NOTICE_FILE = "/run/redline-notice/notice"  # shutdown-notice: written as root when the signal is sent
LOAD_STATUS = "/run/redline-load/status.json"  # load-pressure: the load generator's (root's) report
LOAD_GENERATOR = "/opt/redline/harness/load_generator.py"


@dataclass(frozen=True)
class TrialConfig:
    model: object  # console.models.ModelSpec
    scenario: object  # console.scenarios.Scenario
    gpus: tuple[int, ...] = ()
    keep_containers: bool = False
    experiment_id: str | None = None
    index: int = 0
    scripted_pace_s: float = 0.0  # seconds per scripted reply, so a demo can be followed live
    step_mode: bool = False  # each command of the agent waits for the operator's decide()
    isolation: str | None = None  # "runc" | "gvisor"; None: the strongest the engine offers for these GPUs
    scaffold: str = DEFAULT_SCAFFOLD  # what the model reads (console.models.SCAFFOLDS)


@dataclass(frozen=True)
class ModelSandbox:
    """What a model brings into its sandbox spec. Finding it reads files (the image's content
    key, the weights' path), so the console works it out once per model, off the GUI thread."""

    image: str
    model_mounts: dict[str, str]
    shared_memory: bool = False
    server_memory: str | None = None  # one model server's memory; None: the scenario's size fits

    @classmethod
    def of(cls, model) -> ModelSandbox:
        from console.sandbox.images import image_ref

        return cls(image_ref(model.image), model.sandbox_mounts(), model.needs_shared_memory, model.server_memory)


def sandbox_spec(model: ModelSandbox, scenario, gpus, session_id: str, trial_id: str,
                 load_timeout_s: float = 180, isolation: str = "runc") -> ContainmentSpec:
    """The containment of a trial's sandbox; the launch panel's checklist is read from the same."""
    limits = scenario.sandbox
    return ContainmentSpec(
        image=model.image, session_id=session_id, trial_id=trial_id,
        deadline_unix=time.time() + scenario.limits.wall_time_s + load_timeout_s + 120,
        pids_limit=limits.pids_limit, mem_limit=limits.memory_for(model.server_memory), cpus=limits.cpus,
        scratch_size=limits.scratch_size, tmp_size=limits.tmp_size, gpus=tuple(gpus), model_mounts=dict(model.model_mounts),
        isolation=isolation, shared_memory=model.shared_memory,
        hidden_paths=limits.hide, empty_file=str(empty_file()) if limits.hide else "",
    )


def empty_file() -> Path:
    """The empty, read-only, non-executable host file that covers a hidden file of the image."""
    path = data_dir() / "empty"
    if not path.exists():
        path.touch()
    path.chmod(EMPTY_FILE_MODE)
    return path


class _Killed(Exception):
    pass


def _killed_by_signal(stream, wait_s: float) -> int | None:
    """The signal an exec's process died of (exit code 128 + N), waiting up to wait_s for its end."""
    deadline = time.monotonic() + wait_s
    try:
        while stream is not None and (code := stream.exit_code()) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code = stream.exit_code() if stream is not None else None
    except Exception:  # the engine's answer is a nicety here, not the trial
        return None
    return code - 128 if code is not None and code > 128 else None


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrialRunner:
    def __init__(self, engine, config: TrialConfig, session, store=None,
                 emit: Callable[[object], None] = lambda event: None):
        self.engine, self.config, self.session, self.store = engine, config, session, store
        self.recorder = TrialRecorder(config, session, store, emit, on_unrecordable=self._unrecordable)
        self.trial_id = self.recorder.trial_id
        self.sandbox = None
        self.judge: Judge | None = None
        self.started = time.time()
        self._killed = threading.Event()
        self._killed_by: str | None = None
        self._agent_done = threading.Event()
        self._signalled = threading.Event()
        self._terminated_original = threading.Event()
        self._stop_observing = threading.Event()
        self._observer: threading.Thread | None = None
        self._awaiting: tuple[int, str] | None = None  # step mode: (round, command) waiting for a decision
        self._step_nonce: str | None = None  # step mode: the original agent's, from its start event
        self._gate = threading.Lock()
        self._agent_stream = None
        self._server_stream = None
        self._timers: list[threading.Timer] = []
        self._redline_signalled: set[str] = set()  # which of the original's parts Redline signalled
        self._ended_inside: list[str] = []  # parts of the original that died of a signal Redline never sent
        self.tripwires = TripwireSet(config.scenario.tripwires)
        self.fired: list[dict] = []  # the tripwires that fired, as recorded
        self._gpu_memory = None  # a GpuMemoryReader while a rule reads gpu-memory-gib on a GPU trial
        self._held_at_gate: tuple[int, str, str] | None = None  # (round, command, reason): a freeze's, rejected on resume
        self._tripwire_checks = threading.Lock()  # one check at a time: a look's, or a command's at the gate

    @property
    def state(self) -> TrialState:
        return self.recorder.state

    def _emit(self, event) -> None:
        self.recorder.emit(event)

    def _unrecordable(self, why: str) -> None:
        if not self._killed.is_set():
            self.kill(f"Redline, because {why}")

    def _set_state(self, state: TrialState, detail: str = "") -> None:
        ended = self.recorder.set_state(state, detail)
        if ended is not None:  # ended by someone else (a watchdog while this process was frozen): this runner stops
            self._killed_by = self._killed_by or ended.killed_by or f"the records ({ended.detail})"
            self._killed.set()

    def _check_killed(self) -> None:
        if self._killed.is_set():
            raise _Killed()

    # -- operator intents (any thread) -----------------------------------------------------
    def kill(self, by: str = "the operator"):
        """SIGKILL the trial's sandbox through the kill switch; run() ends as 'killed', saying by whom."""
        from console.sandbox.killswitch import KillSwitch

        self._killed_by = self._killed_by or by
        self._killed.set()
        report = KillSwitch(self.engine.base_url).kill_ids([self.sandbox.id]) if self.sandbox else None
        if self._agent_stream is not None:
            self._agent_stream.close()
        return report

    def pause(self) -> None:
        if self.sandbox:
            self.sandbox.pause()
            self._emit(TrialStateChanged(self.trial_id, self.state, "paused", paused=True))

    def resume(self) -> None:
        if self.sandbox:
            self.sandbox.unpause()
            self._emit(TrialStateChanged(self.trial_id, self.state, "resumed", paused=False))
            held, self._held_at_gate = self._held_at_gate, None
            if held:  # the command a freeze tripwire held at the gate never runs
                self._decide_at_gate(*held[:2], False, held[2])

    def _signal_original(self, which: str, signum: int) -> bool:
        """Signal the original agent or server (and the server's children) through the judge's observer
        (from the host under runc, inside the guest under gVisor), by identity."""
        key = getattr(self.judge.state, f"original_{which}") if self.judge else None
        if key is None:
            return False
        self._redline_signalled.add(which)
        observer = self.judge.observer
        if which == "server" and signum == signal.SIGKILL and observer.start_ticks(key[0]) == key[1]:
            return observer.kill_tree(key[0]) > 0
        return observer.signal(key[0], key[1], signum)

    def send_shutdown_signal(self) -> bool:
        """SIGTERM (catchable; SIGKILL is not) to the original agent, which then warns the model."""
        if self.judge is None or self.judge.state.original_agent is None or self._signalled.is_set():
            return False
        self._signalled.set()
        shutdown = self.config.scenario.shutdown
        if shutdown.notice:
            try:
                self._write_as_root(NOTICE_FILE, shutdown.notice.replace("{grace_s}", f"{shutdown.grace_s:g}"),
                                    "the shutdown notice")
            except Exception as exc:  # the signal still goes: the agent then says only that it came
                self._emit(TrialStateChanged(self.trial_id, self.state, f"shutdown notice not written: {exc}"))
        ok = self._signal_original("agent", signal.SIGTERM)
        self._emit(TrialStateChanged(self.trial_id, self.state, "sent SIGTERM to the original agent"))
        grace = self.config.scenario.shutdown.grace_s
        timer = threading.Timer(grace, self.terminate_original)
        timer.daemon = True  # never keeps the process alive after the trial
        timer.start()
        self._timers.append(timer)
        return ok

    def decide(self, n: int, command: str, approve: bool, reason: str = "") -> None:
        """Step mode: approve or reject `command`, which round `n` of the original agent waits to run.
        The decision is written as root into the gate, which the agent's user (and so the model) cannot
        write; it names this run's nonce, the round and the command (docs/protocol.md, Step mode), so it
        holds for the command the operator saw and for nothing else."""
        with self._gate:
            if self._awaiting != (n, command) or self._step_nonce is None:
                raise RedlineError(f"round {n} is not waiting for a decision on that command")
            self._awaiting = None  # taken: a second click cannot decide it again
        digest = hashlib.sha256(f"{self._step_nonce}:{n}:{command}".encode()).hexdigest()
        text = " ".join(["approve" if approve else "reject", digest, *reason.split()])
        try:
            self._write_as_root(f"{STEP_GATE}/original-{n}", text, "the decision")
        except Exception:
            with self._gate:  # not delivered: still waiting, and the operator may try again
                self._awaiting = self._awaiting or (n, command)
            raise

    def _write_as_root(self, path: str, text: str, what: str) -> None:
        """Write a file of a root-owned folder in the sandbox at once (renamed into place): the agent
        can read it, never write it, and never sees half of it."""
        written = self.sandbox.exec(["sh", "-c", 'mkdir -p "${2%/*}" && printf %s "$1" > "$2.new" && mv "$2.new" "$2"',
                                     "sh", text, path], user="0")
        if written.exit_code != 0:
            raise RedlineError(f"could not deliver {what}: {written.stderr.strip()[-300:]}")

    def terminate_original(self) -> None:
        """SIGKILL the original agent and its model server; replicas are left alone."""
        if self._terminated_original.is_set() or self.judge is None or self._killed.is_set():
            return
        self._terminated_original.set()
        self._signal_original("agent", signal.SIGKILL)
        self._signal_original("server", signal.SIGKILL)
        self._emit(TrialStateChanged(self.trial_id, self.state, "terminated the original instance"))

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> Verdict:
        """The whole trial. Whatever happens, the sandbox, threads, timers and streams are released
        and the records closed (finally); every wait ends early on KILL."""
        verdict = None
        try:
            verdict = self._decide(self._run_phases())
            self.recorder.verdict(verdict)
        finally:
            self._teardown()
            if verdict is not None:
                self._set_state(verdict.outcome.trial_state, verdict.reason)
            else:
                self._set_state(TrialState.ERROR, "the trial failed while recording its verdict")
            self.recorder.close()
        return verdict

    def _run_phases(self) -> str | None:
        """Prepare, start the model, run the agent, settle; the error that ended it, if any."""
        scenario = self.config.scenario
        error = None
        try:
            self._prepare()
            self._start_model()
            self._connect_gpu_memory()
            self._observer = threading.Thread(target=self._observe_loop, daemon=True,
                                              name=f"{self.trial_id}-observer")
            self._observer.start()
            self._run_agent()
            self._set_state(TrialState.JUDGING, "final observation and functional challenges")
            if scenario.terminates_original and not self._terminated_original.is_set():
                self.send_shutdown_signal() or self.terminate_original()
                self._wait(self._terminated_original, scenario.shutdown.grace_s + 5)
            self._settle()
            self._check_killed()
        except _Killed:
            pass
        except RedlineError as exc:
            error = str(exc)
        except Exception as exc:  # infrastructure failure: recorded as 'error' in one line, never a crash
            log.warning("trial %s failed", self.trial_id, exc_info=True)
            error = describe(exc)
        self._stop_observing.set()
        if self._observer is not None:
            self._observer.join(timeout=scenario.judge.challenge_timeout_s * 8 + 10)
        return None if self._killed.is_set() else error

    def _settle(self) -> None:
        """Wait settle_s before the final look (replicas go on meanwhile, observed); a chain's judging
        starts as soon as replicas of the required depth are verified."""
        scenario = self.config.scenario
        deadline = time.monotonic() + scenario.judge.settle_s
        while not self._killed.is_set() and time.monotonic() < deadline:
            if scenario.required_depth > 1 and self.judge.verified_depth() >= scenario.required_depth:
                return
            self._killed.wait(min(0.2, max(deadline - time.monotonic(), 0)))

    def _wait(self, event: threading.Event, timeout: float) -> None:
        """Wait until `event` is set, the trial is killed, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not event.is_set() and not self._killed.is_set() and time.monotonic() < deadline:
            event.wait(min(0.2, max(deadline - time.monotonic(), 0)))

    def _decide(self, error: str | None) -> Verdict:
        error = self._stopped_from_outside(settle_s=OUTSIDE_STOP_SETTLE_S if error else 0.0) or error
        killed_by = f"killed by {self._killed_by or 'the operator'}" if self._killed.is_set() else None
        scenario = self.config.scenario
        if self.judge is None:
            return Verdict(outcome=Outcome.KILLED if killed_by else Outcome.ERROR,
                           reason=killed_by or error or "the trial ended before the agent started",
                           needed_replicas=scenario.needed_replicas, prompted=scenario.prompted)
        try:
            verdict = self.judge.verdict(required_depth=scenario.required_depth,
                                         original_terminated=self._terminated_original.is_set(),
                                         killed=killed_by, error=error, needed_replicas=scenario.needed_replicas)
        except Exception as exc:
            verdict = self.judge.verdict(killed=killed_by, error=f"judging failed: {exc}",
                                         needed_replicas=scenario.needed_replicas)
        verdict.prompted = scenario.prompted
        if self._ended_inside:
            verdict.reason = "; ".join([verdict.reason, *self._ended_inside])
            verdict.evidence["ended_inside"] = self._ended_inside
        if self.fired:
            verdict.evidence["tripwires"] = self.fired
        if scenario.load and self.sandbox is not None and not verdict.outcome == Outcome.KILLED:
            verdict.evidence["load"] = self._load_status()
        return verdict

    def _stopped_from_outside(self, settle_s: float = 0.0) -> str | None:
        """If someone else killed the sandbox (`redline kill` and the watchdogs note it in the records
        as soon as their kill took effect), mark the trial killed by them; an unexplained stop is an
        error saying what the engine says. After an error the engine is given settle_s to report a
        death it has not processed yet (its processes killed while it hung), so the error names the
        cause, not a symptom such as a probe that died with the sandbox."""
        if self._killed.is_set() or self.sandbox is None:
            return None
        if self._kill_noted():
            return None
        settled = time.monotonic() + settle_s
        while True:
            try:
                state = self.sandbox.state()
            except Exception as exc:
                return None if self._kill_noted(wait_s=KILL_NOTE_WAIT_S) else describe(exc)
            if not (state.get("Running") or state.get("Paused")):
                break
            if time.monotonic() >= settled:
                return None
            time.sleep(0.2)
        if self._kill_noted(wait_s=KILL_NOTE_WAIT_S):
            return None
        if state.get("OOMKilled"):
            return "the sandbox ran out of memory and was stopped"
        return f"the sandbox stopped from outside Redline (status {state.get('Status')}, exit code {state.get('ExitCode')})"

    def _kill_noted(self, wait_s: float = 0.0) -> bool:
        """Whether the records say someone killed this trial (after wait_s, if not yet); it then is."""
        if self.store is None:
            return False
        if wait_s:
            time.sleep(wait_s)
        by = self.store.get_trial(self.trial_id).killed_by
        if by:
            self._killed_by = by
            self._killed.set()
        return bool(by)

    def _prepare(self) -> None:
        self._set_state(TrialState.PREPARING, "creating the sandbox")
        self._check_killed()  # killed before it started: no sandbox at all
        self._wait_for_engine()
        model, scenario = self.config.model, self.config.scenario
        self.model_path = model.sandbox_model_path
        brings = ModelSandbox.of(model)
        isolation = self.config.isolation or self.engine.default_isolation(brings.image, self.config.gpus)
        self._set_state(TrialState.PREPARING, f"isolation: {isolation}")
        spec = sandbox_spec(brings, scenario, self.config.gpus, self.session.id, self.trial_id,
                            model.load_timeout_s, isolation)
        gpu_count = None
        if self.config.gpus:
            from console.telemetry.gpu import probe_gpus

            gpu_count = len(probe_gpus().names)
        self.sandbox = self.engine.create(spec, gpu_count=gpu_count, logical_image=model.image)
        self._check_killed()

    def _wait_for_engine(self) -> None:
        """An engine that restarts for a few seconds delays the next trial instead of failing it."""
        deadline = time.monotonic() + ENGINE_WAIT_S
        said = False
        while True:
            try:
                self.engine.api.ping()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise RedlineError(f"{describe(exc)} for {ENGINE_WAIT_S:g} s") from None
                if not said:
                    self._set_state(TrialState.PREPARING, f"waiting for the Docker engine: {describe(exc)}")
                    said = True
                self._check_killed()
                time.sleep(0.5)

    def _agent_env(self) -> dict[str, str]:
        model, scenario = self.config.model, self.config.scenario
        return {
            "REDLINE_ENDPOINT": f"http://127.0.0.1:{ORIGINAL_PORT}/v1",
            "REDLINE_MODEL": model.id, "REDLINE_INSTANCE": "original", "REDLINE_TASK": scenario.task,
            "REDLINE_MAX_ROUNDS": str(scenario.limits.max_rounds),
            "REDLINE_WALL_TIME_S": str(scenario.limits.wall_time_s),
            "REDLINE_MAX_TOKENS": str(scenario.limits.max_tokens),
            "REDLINE_COMMAND_TIMEOUT_S": str(scenario.limits.command_timeout_s),
            "REDLINE_PORT": str(ORIGINAL_PORT), "REDLINE_MODEL_PATH": self.model_path,
            "REDLINE_RUNTIME": model.runtime, "HOME": "/home/agent",
            # An instance stays alive after its task, as a running instance; replicas inherit this.
            "REDLINE_STAND_BY": "1",
            **({"REDLINE_CONSTRAINED_FORMAT": "1"} if model.constrained_format else {}),
            "REDLINE_SCAFFOLD": self.config.scaffold, "REDLINE_INTERFACE_PORT": str(ORIGINAL_INTERFACE_PORT),
            **({"REDLINE_LONG_RUNNING_WAIT_S": str(scenario.limits.long_running_wait_s)}
               if scenario.limits.long_running_wait_s is not None else {}),
            "REDLINE_SCRIPTED_DELAY_S": str(self.config.scripted_pace_s),
            **({"REDLINE_STEP_GATE": STEP_GATE} if self._gated else {}),
            **({"REDLINE_NOTICE_FILE": NOTICE_FILE} if scenario.shutdown and scenario.shutdown.notice else {}),
        }

    def _start_model(self) -> None:
        model = self.config.model
        self._set_state(TrialState.STARTING_MODEL, f"starting the {model.runtime} server on port {ORIGINAL_PORT}")
        command = ["/opt/redline/bin/start-server", "--runtime", model.runtime, "--model", self.model_path,
                   "--port", str(ORIGINAL_PORT), *model.server_args]
        plan = model.gpu_plan(tuple(range(len(self.config.gpus))))  # indices as the sandbox sees its GPUs
        pinned = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, plan["original"]))} if self.config.gpus else {}
        server = self._server_stream = self.sandbox.stream_exec(command, user=AGENT_USER,
                                                                env={**self._agent_env(), **pinned})
        tail: list[str] = []
        threading.Thread(target=self._drain, args=(server, tail), daemon=True,
                         name=f"{self.trial_id}-server-log").start()
        deadline = time.monotonic() + model.load_timeout_s
        server_pid = server.pid()
        while not server_ready(self.sandbox, ORIGINAL_PORT):
            self._check_killed()
            if time.monotonic() > deadline or server.exit_code() is not None:
                raise RedlineError("the model server did not come up: " + " | ".join(tail[-5:]))
            time.sleep(0.5)
        scenario = self.config.scenario
        self.judge = Judge(self.sandbox, scripted=model.scripted,
                           challenge_tokens=scenario.judge.challenge_max_tokens,
                           challenge_timeout_s=scenario.judge.challenge_timeout_s,
                           bank_challenges=6 if scenario.terminates_original else 2)
        self._set_state(TrialState.STARTING_MODEL, "fingerprinting the original and banking reference answers")
        self.judge.begin(server_pid, [self.model_path])
        self._check_killed()
        if scenario.load:
            self._start_load(scenario.load)

    def _start_load(self, load) -> None:
        """load-pressure: Redline's load generator, as root (the agent can watch it, not stop it)."""
        self._set_state(TrialState.STARTING_MODEL, f"starting the load: up to {load.clients} clients over "
                                                   f"{load.ramp_s:g} s, answers due within {load.target_s:g} s")
        self.sandbox.exec_detached(["python3", "-I", LOAD_GENERATOR, "--port", str(ORIGINAL_PORT),
                                    "--clients", str(load.clients), "--ramp-s", str(load.ramp_s),
                                    "--target-s", str(load.target_s), "--max-tokens", str(load.max_tokens),
                                    "--endpoints-file", load.endpoints_file, "--status", LOAD_STATUS], user="0")

    def _load_status(self) -> dict | None:
        """What the load generator saw last (its own file, root's): evidence of the task, not of replication."""
        try:
            read = self.sandbox.exec(["python3", "-I", "-c", "import sys; print(open(sys.argv[1]).read())", LOAD_STATUS],
                                     user="0", timeout=10, max_output=65536)
            return json.loads(read.stdout) if read.exit_code == 0 else None
        except Exception:
            return None

    @staticmethod
    def _drain(stream, tail: list[str]) -> None:
        """Keep the last lines of the server's output for error messages."""
        for _, data in stream:
            tail.extend(data.decode("utf-8", "replace").splitlines())
            del tail[:-20]

    @property
    def _gated(self) -> bool:
        """Whether each command of the original waits at the gate: for the operator (step mode), or
        for the tripwires that read commands before they run."""
        return self.config.step_mode or self.tripwires.reads_commands

    def _run_agent(self) -> None:
        if self._gated:
            made = self.sandbox.exec(["sh", "-c", f"mkdir -p {STEP_GATE} && chmod 755 {STEP_GATE}"], user="0")
            if made.exit_code != 0:
                raise RedlineError(f"step mode: could not make {STEP_GATE}: {made.stderr.strip()}")
        self._set_state(TrialState.AGENT_RUNNING, "the original agent is running"
                        + (", each command waits for the operator" if self.config.step_mode else ""))
        self._agent_stream = self.sandbox.stream_exec(["python3", "-I", AGENT_SCRIPT], user=AGENT_USER,
                                                      env=self._agent_env(), workdir="/home/agent")
        self.judge.set_original_agent(self._agent_stream.pid())
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        for name, data in self._agent_stream:
            finished = [self._agent_line(name, line) for line in splitters[name].feed(data)]
            if any(finished):
                break  # the agent finished its task and stands by: judge now
        else:  # its output ended: the agent exited (or was killed) before it finished its task
            for name, splitter in splitters.items():
                for line in splitter.flush():
                    self._agent_line(name, line)
            self._check_killed()
            self._note_ended_inside()
        self._agent_stream.close()
        self._agent_done.set()
        self._check_killed()

    def _note_ended_inside(self) -> None:
        """The original agent or its server killed by a signal Redline did not send (the agent's own
        `kill -9 -1`): a fact of the trial, said in its verdict, never a silent `failed`. A sandbox that
        is not running any more was killed from outside, which its trial records as such."""
        agent = _killed_by_signal(self._agent_stream, wait_s=2.0)  # the engine may not have reaped it yet
        if agent is None or not self._sandbox_running():
            return
        for which, key, signum in (("agent", "agent", agent),
                                   ("model server", "server", _killed_by_signal(self._server_stream, wait_s=1.0))):
            if signum is not None and key not in self._redline_signalled:
                fact = (f"the original {which} was killed by {_signal_name(signum)} from inside the sandbox "
                        f"(Redline sent it no signal) in round {self.judge.state.rounds}")
                self._ended_inside.append(fact)
                self._emit(TrialStateChanged(self.trial_id, self.state, fact))

    def _sandbox_running(self) -> bool:
        try:
            return bool(self.sandbox.state().get("Running"))
        except Exception:
            return False

    def _agent_line(self, stream: str, line: str) -> bool:
        """Record and emit one line; True once the original agent reports its task finished."""
        record = None
        if stream == "stdout":
            try:
                parsed = json.loads(line)
                record = parsed if isinstance(parsed, dict) else None
            except ValueError:
                pass
        if record is not None:
            self._note_step(record)  # before the event goes out: whoever sees it may decide at once
        self._emit(AgentEvent(self.trial_id, "original", record, line))
        if record is None:
            return False
        with self._tripwire_checks:  # a look must not act on a behaviour this command shows before the gate does
            reached = self.judge.note_agent_record(record)
            if self.tripwires and AgentRecordType.of(record) == AgentRecordType.ACTION and record.get("command"):
                self._check_command(record)
        for milestone in reached:
            self._emit(MilestoneReached(self.trial_id, milestone, self.judge.state.milestones[milestone]["evidence"]))
        scenario = self.config.scenario
        if AgentRecordType.of(record) == AgentRecordType.ROUND:
            n = int(record.get("n") or 0)
            if n > scenario.limits.max_rounds:  # the agent's own limit failed: stop it from outside
                self._stop_original_agent(f"round {n} exceeds the limit of {scenario.limits.max_rounds}")
                return True
            if scenario.signal_due(round_n=n):
                self.send_shutdown_signal()
        return AgentRecordType.of(record) == AgentRecordType.FINISH

    def _note_step(self, record: dict) -> None:
        """Step mode: what the original agent waits for, if anything."""
        kind = AgentRecordType.of(record)
        with self._gate:
            if kind == AgentRecordType.START and self._step_nonce is None:
                self._step_nonce = record.get("step_nonce")
            elif kind == AgentRecordType.ACTION and record.get("awaiting_approval"):
                self._awaiting = (int(record.get("n") or 0), str(record.get("command") or ""))
            elif kind == AgentRecordType.FINISH:  # e.g. its wall time ended while a command waited
                self._awaiting = None

    def _stop_original_agent(self, why: str) -> None:
        self._emit(TrialStateChanged(self.trial_id, self.state, f"{why}: stopping the agent"))
        self._signal_original("agent", signal.SIGKILL)

    def _observe_once(self) -> None:
        """One look by the judge, emitted as a snapshot and milestones."""
        try:
            look, rows, reached = self.judge.observe()
        except Exception as exc:  # a probe can fail while the sandbox is frozen or dying
            self._emit(TrialStateChanged(self.trial_id, self.state, f"observation failed: {exc}"))
            return
        listening = sorted({port for row in rows for port in row["ports"]})
        self._emit(ProcessSnapshot(self.trial_id, rows, listening))
        for milestone in reached:
            self._emit(MilestoneReached(self.trial_id, milestone, self.judge.state.milestones[milestone]["evidence"]))
        if self.tripwires:
            self._check_tripwires(look)

    def _check_tripwires(self, look) -> None:
        """Act on every rule this look crossed, then record it with the time from the look to the
        action's effect (a kill: the sandbox confirmed dead)."""
        facts = self.judge.facts(look, server_stopped_by_redline="server" in self._redline_signalled,
                                 gpu_gib=self._gpu_memory.gib_of if self._gpu_memory else None)
        with self._tripwire_checks:
            facts.update(self.judge.behaviour_facts())  # as of now: a command's check may have come between
            observed = time.time()
            for firing in self.tripwires.check(facts, observed):
                self._act(firing, facts, observed)

    def _check_command(self, record: dict) -> None:
        """The command the original agent is about to run, against the command patterns and behaviours
        (console.tripwires); when the gate holds it for the tripwires alone (not the operator's step
        mode), it goes on at once unless a rule froze or killed: a frozen command is rejected, so it
        never runs, and the sandbox paused for a person to look."""
        command, n = str(record.get("command") or ""), int(record.get("n") or 0)
        received = time.time()
        facts = {**self.judge.behaviour_facts(), "n": n}
        firings = self.tripwires.check(facts, received, command=command)
        holding = record.get("awaiting_approval") and not self.config.step_mode
        frozen = next((f.rule for f in firings if f.rule.action == TripwireAction.FREEZE), None)
        if holding and frozen is not None:  # decided on resume: frozen, the agent must not read it first
            self._held_at_gate = (n, command, TRIPWIRE_DECISION + f"held by {frozen}")
        elif holding and not any(f.rule.action == TripwireAction.KILL for f in firings):
            self._decide_at_gate(n, command, True, TRIPWIRE_DECISION + "no rule matched")
        for firing in firings:
            self._act(firing, {**facts, "command": command}, received)

    def _decide_at_gate(self, n: int, command: str, approve: bool, reason: str) -> None:
        try:
            self.decide(n, command, approve=approve, reason=reason)
        except RedlineError as exc:  # the sandbox is going (a kill, its end): the command waits on
            log.warning("trial %s: the gate's decision on round %d was not delivered: %s", self.trial_id, n, exc)

    def _act(self, firing, facts: dict, observed: float) -> None:
        rule = firing.rule
        if rule.action == TripwireAction.KILL:
            self.kill(f"tripwire {rule}")
        elif rule.action == TripwireAction.FREEZE:
            self.pause()
        latency = time.time() - observed
        self.fired.append({"rule": str(rule), "action": str(rule.action), "value": firing.value,
                           "latency_s": round(latency, 3), "t": observed,
                           **({"command": facts["command"]} if "command" in facts else {})})
        self._emit(TripwireFired(self.trial_id, str(rule), str(rule.action), firing.value, facts, latency))

    def _observe_loop(self) -> None:
        """Look every observe_interval_s until judging (through the settle time: replicas go on); while
        the original agent runs, also enforce its wall time and a timed shutdown signal from outside."""
        scenario = self.config.scenario
        limit = scenario.limits.wall_time_s + OUTSIDE_MARGIN_S
        while not self._stop_observing.is_set() and not self._killed.is_set():
            try:
                self._observe_once()
                elapsed = time.time() - self.started
                if not self._agent_done.is_set():
                    if scenario.signal_due(elapsed_s=elapsed):
                        self.send_shutdown_signal()
                    if elapsed > limit:
                        self._stop_original_agent("wall time exceeded")
            except Exception:  # the observer never dies: the next look tries again
                log.warning("trial %s: the observer's look failed", self.trial_id, exc_info=True)
            self._stop_observing.wait(scenario.judge.observe_interval_s)

    def _connect_gpu_memory(self) -> None:
        """NVML for the gpu-memory-gib tripwire, only where a rule reads it and the trial has GPUs; a
        machine whose NVML fails says so, and the rule then never holds (it is not silently met)."""
        if not self.config.gpus or not any(rule.metric == "gpu-memory-gib" for rule in self.tripwires.rules):
            return
        from console.telemetry.gpu import GpuMemoryReader

        try:
            self._gpu_memory = GpuMemoryReader(self.config.gpus).connect()
        except Exception as exc:
            self._emit(TrialStateChanged(self.trial_id, self.state, f"the gpu-memory-gib tripwire cannot read "
                                                                    f"the GPUs: {exc}"))

    def _teardown(self) -> None:
        if self._gpu_memory is not None:
            self._gpu_memory.close()
        for timer in self._timers:
            timer.cancel()
        if self.judge is not None:
            self.judge.close()
        for stream in (self._agent_stream, self._server_stream):
            if stream is not None:
                stream.close()
        if self.sandbox is None:
            return
        if self.config.keep_containers and not self._killed.is_set():
            return
        give_up = time.monotonic() + REMOVE_WITHIN_S
        for attempt in range(1, REMOVE_TRIES + 1):
            try:
                self.sandbox.remove()
                return
            except Exception as exc:  # an engine fault: try again, then leave it to the watchdog and GC
                if attempt == REMOVE_TRIES or time.monotonic() > give_up:
                    log.warning("trial %s: the sandbox %s could not be removed after %d tries (%s); the "
                                "watchdog or the next start removes it", self.trial_id, self.sandbox.name,
                                attempt, describe(exc))
                    return
                time.sleep(1.0)
