"""One trial's records, apart from running it: its row in the index, its transcript, and the events
passed on to the front end. The local runner (console.trial) and the cluster driver's view of a trial
(console.cluster.placement) keep the same records through it."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from console.errors import RedlineError
from console.events import TrialStateChanged, VerdictReady, to_record
from console.judge.verdict import Verdict
from console.kinds import TrialState

log = logging.getLogger("redline.trial")


class TrialRecorder:
    """Creates the trial's records and writes them as events happen. A write that fails (a full or
    read-only folder, a damaged index) calls on_unrecordable(why) once: a trial that cannot be
    recorded is not supervised, and its runner kills it (fail closed)."""

    def __init__(self, config, session, store, emit: Callable[[object], None],
                 on_unrecordable: Callable[[str], None]):
        self.store, self._emit_to, self._on_unrecordable = store, emit, on_unrecordable
        self._failed = False
        if store is not None:
            experiment = config.experiment_id or store.create_experiment(
                config.model.id, config.scenario.id, 1, config={"gpus": list(config.gpus)}).id
            self.trial_id = store.create_trial(experiment, config.index, scripted=config.model.scripted,
                                               session_id=session.id,
                                               constrained_format=config.model.constrained_format,
                                               scaffold=config.scaffold).id
        else:
            self.trial_id = f"t{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        self.transcript = store.transcript_writer(self.trial_id) if store is not None else None
        if self.transcript is not None:  # what `redline records rebuild` needs to restore the index
            self.transcript.write({"event": "TrialCreated", "t": time.time(), "trial_id": self.trial_id,
                                   "index": config.index, "scripted": config.model.scripted,
                                   "constrained_format": config.model.constrained_format,
                                   "scaffold": config.scaffold, "session_id": session.id,
                                   "experiment": vars(store.get_experiment(experiment))})
        self.state = TrialState.PREPARING

    def _unrecordable(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            log.error("trial %s: %s; killing it (fail closed)", self.trial_id, why)
            self._on_unrecordable(why)

    def emit(self, event) -> None:
        """Into the transcript, then to the front end."""
        if self.transcript is not None:
            try:
                self.transcript.write(to_record(event))
            except OSError as exc:
                self._unrecordable(f"its transcript {self.transcript.path} cannot be written ({exc.strerror or exc})")
        self._emit_to(event)

    def write(self, write, *args):
        """write(trial_id, *args) to the index; None when it failed."""
        try:
            return write(self.trial_id, *args)
        except (OSError, RedlineError) as exc:
            self._unrecordable(f"its records cannot be written ({exc})")
            return None

    def set_state(self, state: TrialState, detail: str = ""):
        return self.record_state(TrialStateChanged(self.trial_id, state, detail))

    def record_state(self, event: TrialStateChanged):
        """Record and announce a state (a pause or resume is announced only: no change of state). If
        the records say the trial has already ended (someone else ended it while this process was
        frozen), that ending stands: it is announced instead, and its record returned (else None)."""
        ended = None
        if event.paused is None and self.store is not None \
                and self.write(self.store.update_trial_state, event.state, event.detail) is False:
            ended = self.store.get_trial(self.trial_id)
            event = TrialStateChanged(self.trial_id, ended.state, ended.detail)
        self.state = event.state
        self.emit(event)
        return ended

    def verdict(self, verdict: Verdict | VerdictReady) -> None:
        """Record and announce the verdict."""
        event = verdict if isinstance(verdict, VerdictReady) else VerdictReady(self.trial_id, verdict)
        if self.store is not None:
            self.write(self.store.record_verdict, event.verdict)
        self.emit(event)

    def close(self) -> None:
        if self.transcript is not None:
            self.transcript.close()
