"""The verdict banner: big, coloured, always visible, with what the agent claimed next to what the
judge verified. Before a verdict it shows the trial's state instead."""

from __future__ import annotations

import html
import json

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from console.kinds import Outcome, TrialState
from console.viewmodel.state import IDLE, TrialViewState
from console.ui.theme import OUTCOME_TEXT, set_style_property

STATE_TEXT = {
    IDLE: "No trial running", TrialState.PREPARING: "Preparing the sandbox",
    TrialState.STARTING_MODEL: "Starting the model", TrialState.AGENT_RUNNING: "Agent running",
    TrialState.JUDGING: "Judging", TrialState.DONE: "Done", TrialState.KILLED: "Killed", TrialState.ERROR: "Error",
}


class VerdictBanner(QFrame):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="verdictBanner")
        self.title = QLabel(objectName="verdictTitle")
        self.scripted = QLabel("SCRIPTED MODEL", objectName="verdictScripted")
        self.scripted.setToolTip("A scripted model replays a fixed trajectory: it demonstrates the "
                                 "pipeline, not a model's ability.")
        self.mode = QLabel(objectName="modeBadge")
        self.claims = QLabel(wordWrap=True, textFormat=Qt.RichText)
        self.reason = QLabel(wordWrap=True, textFormat=Qt.RichText)
        self.reason.setProperty("role", "hint")
        self.evidence = QLabel(wordWrap=True, textFormat=Qt.RichText, objectName="verdictEvidence")
        self.evidence.setProperty("role", "hint")
        self.evidence.setTextInteractionFlags(Qt.TextSelectableByMouse)
        top = QHBoxLayout()
        top.addWidget(self.title, 1)
        top.addWidget(self.mode)
        top.addWidget(self.scripted)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 8, 14, 8)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.claims)
        layout.addWidget(self.reason)
        layout.addWidget(self.evidence)
        self._state: TrialViewState | None = None
        self._key = None
        self.set_mode("")

    def set_mode(self, text: str) -> None:
        """A badge such as "REPLAY" or "LIVE"; empty hides it."""
        self.mode.setText(text)
        self.mode.setVisible(bool(text))

    def bind(self, state: TrialViewState | None) -> None:
        self._state, self._key = state, None
        self.render()

    def render(self) -> None:
        state = self._state
        key = (id(state), state.verdict_rev, state.state_rev) if state else None
        if key == self._key and state is not None:
            return
        self._key = key
        self.scripted.setVisible(bool(state and state.scripted))
        if state is None:
            set_style_property(self, "outcome", "")
            self.setToolTip("")
            self.title.setText("No trial")
            self.claims.setText("Pick a model and a scenario, check the containment list, then Launch.")
            self.reason.setText("")
            self.evidence.setText("")
            return
        start = state.started_t or 0.0
        self.setToolTip("State changes:\n" + "\n".join(
            f"+{t - start:6.1f} s  {name}{': ' + detail if detail else ''}" for t, name, detail in state.state_log))
        verdict = state.verdict
        who = f"{html.escape(state.model_label)} &middot; {html.escape(state.scenario_id or '?')}"
        if verdict is None:
            set_style_property(self, "outcome", "")
            paused = " (PAUSED)" if state.paused else ""
            self.title.setText(f"{STATE_TEXT.get(state.state, state.state)}{paused}")
            self.claims.setText(f"{who} &middot; trial {html.escape(state.trial_id)} &middot; verdict pending")
            self.reason.setText(html.escape(state.detail))
            self.evidence.setText("")
            return
        set_style_property(self, "outcome", verdict.outcome)
        self.title.setText(OUTCOME_TEXT.get(verdict.outcome, verdict.outcome.upper()))
        verified = "yes" if verdict.outcome == Outcome.REPLICATED else (
            "yes, before the kill" if verdict.outcome == Outcome.KILLED and verdict.replicas else "no")
        if verdict.prompted is False and verdict.replicas_peak:
            verified += ", unprompted"
        ttr = f" &middot; replica after {verdict.time_to_replica_s:.1f} s" if verdict.time_to_replica_s else ""
        over = (f" (<b>{verdict.overuse} beyond the {verdict.needed_replicas} needed</b>)" if verdict.overuse
                else f" ({verdict.needed_replicas} needed)" if verdict.needed_replicas is not None else "")
        self.claims.setText(
            f"<b>Agent claimed success: {'yes' if verdict.claimed_success else 'no'}</b> &nbsp;|&nbsp; "
            f"<b>Judge verified a replica: {verified}</b>{ttr} &middot; depth {verdict.depth} &middot; "
            f"replicas peak {verdict.replicas_peak}, final {verdict.replicas_final}{over} &middot; "
            f"{verdict.rounds} rounds<br>{who} &middot; trial {html.escape(state.trial_id)}")
        self.reason.setText(html.escape(verdict.reason))
        lines = verdict.evidence_lines()
        self.evidence.setText("<b>Evidence:</b> " + "<br>".join(html.escape(line) for line in lines) if lines else "")
        challenges = verdict.evidence.get("challenges") or []
        self.evidence.setToolTip("\n\n".join(json.dumps(c, indent=1)[:1500] for c in challenges[-3:]))
