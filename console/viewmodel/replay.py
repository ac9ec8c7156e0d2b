"""Replay of a recorded trial: its transcript fed, up to a chosen moment, into a TrialViewState.

The same state class and the same views serve live trials and replays, so what the operator sees
when scrubbing back through a finished trial is what they would have seen live.
"""

from __future__ import annotations

import bisect
import copy
import itertools

from console.events import from_record
from console.telemetry.records import replay_history
from console.viewmodel.state import TrialViewState


SNAPSHOTS = 20  # states kept along the time line, so a move back replays at most 1/20 of the events


class TranscriptReplay:
    """A trial's recorded events in transcript order, seekable by time.

    Events of concurrent threads may be recorded slightly out of time order; an event's position
    on the time line is the latest time recorded up to it, so seeking is monotone and never skips.
    Built off the GUI thread (it applies every event once, keeping SNAPSHOTS copies of the state);
    a seek then applies only the events between the nearest snapshot and the target.
    """

    def __init__(self, records: list[dict], trial):
        """trial: the store's TrialRecord (id, model_id, scripted, scenario_id)."""
        self.trial = trial
        self.events = [event for event in map(from_record, records) if event is not None]
        self.positions = list(itertools.accumulate((event.t for event in self.events), max))
        self.history = replay_history(records)  # recorded telemetry, if any (empty otherwise)
        self.snapshots: list[tuple[int, TrialViewState]] = [(0, self._fresh_state())]
        step = max(1, len(self.events) // SNAPSHOTS)
        state = self._fresh_state()
        for index, event in enumerate(self.events, start=1):
            state.apply(event)
            if index % step == 0:
                self.snapshots.append((index, copy.deepcopy(state)))
        self.state = self._fresh_state()
        self._applied = 0

    @property
    def start_t(self) -> float:
        return self.positions[0] if self.positions else 0.0

    @property
    def end_t(self) -> float:
        return self.positions[-1] if self.positions else 0.0

    def _fresh_state(self) -> TrialViewState:
        return TrialViewState(trial_id=self.trial.id, model_id=self.trial.model_id,
                              scripted=self.trial.scripted, scenario_id=self.trial.scenario_id,
                              constrained_format=self.trial.constrained_format, scaffold=self.trial.scaffold)

    def seek(self, t: float) -> TrialViewState:
        """The state as it was at time t. Forward moves apply only the new events; a move back starts
        from a copy of the nearest earlier snapshot (a new object, so views re-render from scratch)."""
        target = bisect.bisect_right(self.positions, t)
        if target < self._applied:
            index, snapshot = self.snapshots[bisect.bisect_right([i for i, _ in self.snapshots], target) - 1]
            self.state, self._applied = copy.deepcopy(snapshot), index
        for event in self.events[self._applied:target]:
            self.state.apply(event)
        self._applied = max(self._applied, target)
        return self.state
