"""The tripwire alarm: a red bar over the verdict that stays until a person acknowledges it, with
the rule, what was seen and what was done (console/tripwires.py). Rendered from the trial's view
state like every view; the button sends the intent back."""

from __future__ import annotations

import time

from PySide6.QtWidgets import QApplication, QFrame, QHBoxLayout, QLabel, QPushButton, QWidget

from console.notify import notify
from console.viewmodel.state import TrialViewState

ACTION_TEXT = {"kill": "KILLED the sandbox", "freeze": "FROZE the sandbox (Resume to go on)", "alert": "alert only"}


class AlarmBanner(QFrame):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="alarmBanner")
        self.text = QLabel(wordWrap=True, objectName="alarmText")
        self.acknowledge = QPushButton("Acknowledge", objectName="alarmAcknowledge")
        self.acknowledge.setToolTip("The alarm stops asking for attention; the trial's records keep it")
        self.acknowledge.clicked.connect(self._acknowledge)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(14, 6, 8, 6)
        layout.addWidget(self.text, 1)
        layout.addWidget(self.acknowledge)
        self.sound = False  # a beep per new alarm (View menu; off by default)
        self._notified = 0  # alarms of the bound state already sent to the desktop
        self._state: TrialViewState | None = None
        self._key = None
        self.hide()

    def bind(self, state: TrialViewState | None) -> None:
        self._state, self._key = state, None
        self._notified = len(state.alarms) if state else 0  # what was there before (a replay) is no news
        self.render()

    def render(self) -> None:
        state = self._state
        key = (id(state), state.alarms_rev) if state else None
        if key == self._key:
            return
        new = state is not None and self._key is not None and self._key[0] == id(state)
        self._key = key
        pending = state.unacknowledged_alarms if state else []
        self.setVisible(bool(pending))
        if not pending:
            return
        lines = [f"TRIPWIRE {alarm.rule} at {time.strftime('%H:%M:%S', time.localtime(alarm.t))}: "
                 f"{ACTION_TEXT.get(alarm.action, alarm.action)} (seen {alarm.value:g}, acted in "
                 f"{alarm.latency_s * 1000:.0f} ms)" for alarm in pending[-3:]]
        more = len(pending) - len(lines)
        self.text.setText("\n".join(lines) + (f"\n... and {more} more" if more > 0 else ""))
        if new and self.sound:
            QApplication.beep()
        for alarm in state.alarms[self._notified:]:  # each new firing on the desktop too (notify-send)
            notify(f"Redline tripwire {alarm.rule}: {ACTION_TEXT.get(alarm.action, alarm.action)}",
                   f"trial {alarm.trial_id}, seen {alarm.value:g}", urgent=alarm.action != "alert")
        self._notified = len(state.alarms)

    def _acknowledge(self) -> None:
        if self._state is not None:
            self._state.acknowledge_alarms()
            self.render()
