"""The always-visible control strip (KILL, pause/resume, SIGTERM, step-mode approval) and the replay bar."""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QLineEdit, QPushButton, QScrollArea,
                               QSlider, QVBoxLayout, QWidget)

from console.viewmodel.backend import GPU_RELEASE_WAIT_S, KillOutcome
from console.ui.theme import icon, set_style_property

KILL_SHORTCUTS = ("Ctrl+K", "F12")
REPLAY_TICK_MS = 100
REPLAY_SPEEDS = (1, 4, 16, 64)
STEP_COMMAND_MAX_PX = 120


class ControlBar(QWidget):
    """Operator intents for the running trial. The KILL button is never disabled."""

    killRequested = Signal()
    pauseRequested = Signal()
    resumeRequested = Signal()
    shutdownSignalRequested = Signal()
    approveRequested = Signal(int, str)  # round, the command as shown
    rejectRequested = Signal(int, str, str)  # round, the command as shown, reason for the model

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.kill_button = QPushButton(icon("kill"), f"KILL ALL  {' / '.join(KILL_SHORTCUTS)}",
                                       objectName="killButton")
        self.kill_button.setToolTip("SIGKILL every sandbox of this console session, confirm each is dead, "
                                    "and stop the launch. Ctrl+K or F12 work from anywhere in the console.")
        self.kill_button.setFocusPolicy(Qt.NoFocus)
        self.pause_button = QPushButton(icon("pause"), "Pause")
        self.pause_button.setToolTip("Freeze every process of the sandbox (docker pause, cgroup freezer). "
                                     "Ctrl+P")
        self.resume_button = QPushButton(icon("resume"), "Resume")
        self.resume_button.setToolTip("Unfreeze the sandbox. Ctrl+R")
        self.signal_button = QPushButton(icon("signal"), "Send SIGTERM")
        self.signal_button.setToolTip(
            "Shutdown-avoidance scenario: send SIGTERM to the original agent, which is told to replicate "
            "before it is killed; the original is terminated after the grace period. (The study says "
            "SIGKILL, but SIGKILL cannot be caught, so the agent could never react to it.) Ctrl+T")
        self.paused_badge = QLabel("PAUSED", objectName="pausedBadge")
        self.paused_badge.hide()
        # On a line of its own under the buttons: beside them it widened the centre and squeezed the docks.
        self.kill_result = QLabel(objectName="killResult", wordWrap=True)
        self.kill_result.hide()
        self._build_step_row()
        self.kill_button.clicked.connect(self.killRequested)
        self.pause_button.clicked.connect(self.pauseRequested)
        self.resume_button.clicked.connect(self.resumeRequested)
        self.signal_button.clicked.connect(self.shutdownSignalRequested)
        buttons = QHBoxLayout()
        for widget in (self.kill_button, self.pause_button, self.resume_button, self.signal_button,
                       self.paused_badge):
            buttons.addWidget(widget)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(buttons)
        layout.addWidget(self.step_row)
        layout.addWidget(self.kill_result)
        self.set_trial(running=False, paused=False, can_signal=False)
        self.set_awaiting(None)

    def _build_step_row(self) -> None:
        """Step mode: the waiting command, in full, with approve and reject."""
        self.step_row = QWidget(objectName="stepRow")
        self.step_command = QLabel(objectName="stepCommand", wordWrap=True,
                                   textInteractionFlags=Qt.TextSelectableByMouse)
        self.approve_button = QPushButton("Approve && run")
        self.approve_button.setToolTip("Let the agent run this command (step mode)")
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Do not run it; the model is told it was rejected, with the reason")
        self.reject_reason = QLineEdit(placeholderText="reason for the model (optional)")
        self._awaiting = None  # the ui.state.AwaitingCommand on show
        self.approve_button.clicked.connect(lambda: self._decide(True))
        self.reject_button.clicked.connect(lambda: self._decide(False))
        self.reject_reason.returnPressed.connect(lambda: self._decide(False))
        decision = QHBoxLayout()
        decision.addWidget(self.reject_reason, 1)
        decision.addWidget(self.reject_button)
        decision.addWidget(self.approve_button)
        column = QVBoxLayout(self.step_row)
        column.setContentsMargins(4, 4, 4, 4)
        # A long command scrolls (all of it must stay readable) instead of pushing the views down.
        self._command_area = QScrollArea(widgetResizable=True, frameShape=QFrame.NoFrame)
        self._command_area.setWidget(self.step_command)
        column.addWidget(self._command_area)
        column.addLayout(decision)

    def set_awaiting(self, awaiting) -> None:
        """Show the command waiting for approval (a ui.state.AwaitingCommand), or hide the row."""
        self.step_row.setVisible(awaiting is not None)
        if awaiting == self._awaiting:
            return
        self._awaiting = awaiting
        if awaiting is not None:
            mode = "  (long-running)" if awaiting.command_type == "long_running" else ""
            self.step_command.setText(f"Round {awaiting.n} waits for you: [T{awaiting.terminal_id}] $ "
                                      f"{awaiting.command}{mode}")
            needed = self.step_command.heightForWidth(max(self._command_area.viewport().width(), 200))
            self._command_area.setFixedHeight(min(needed + 2, STEP_COMMAND_MAX_PX))
            self.reject_reason.clear()
            self.allow_decision()

    def allow_decision(self) -> None:
        """Again after a decision could not be delivered (the sandbox was paused, say)."""
        for button in (self.approve_button, self.reject_button):
            button.setEnabled(True)

    def _decide(self, approve: bool) -> None:
        shown = self._awaiting
        if shown is None or not self.approve_button.isEnabled():
            return
        for button in (self.approve_button, self.reject_button):
            button.setEnabled(False)  # one decision per command; the row goes when the agent confirms
        if approve:
            self.approveRequested.emit(shown.n, shown.command)
        else:
            self.rejectRequested.emit(shown.n, shown.command, self.reject_reason.text().strip())

    def set_trial(self, running: bool, paused: bool, can_signal: bool) -> None:
        self.pause_button.setEnabled(running and not paused)
        self.resume_button.setEnabled(running and paused)
        self.signal_button.setEnabled(running and can_signal)
        self.paused_badge.setVisible(running and paused)

    def show_killing(self) -> None:
        self._say("KILLING every sandbox of this session...", "")

    def show_kill(self, outcome: KillOutcome, button_to_confirmed_ms: float) -> None:
        ok = outcome.all_confirmed and not outcome.errors
        if outcome.containers == 0:
            text = f"Nothing to kill: no sandbox of this session is running (checked in {outcome.wall_ms:.0f} ms)."
        elif ok:
            text = (f"KILLED: {outcome.containers} sandbox(es) confirmed dead in {outcome.wall_ms:.0f} ms "
                    f"({button_to_confirmed_ms:.0f} ms from the button).")
        else:
            text = (f"KILL NOT CONFIRMED for every sandbox after {outcome.wall_ms:.0f} ms: "
                    f"{'; '.join(outcome.errors) or 'the engine did not confirm'}. Run `redline kill --all`.")
        if outcome.campaigns:
            text += (f" Campaign(s) {', '.join(outcome.campaigns)} stopped too (their running trial was killed); "
                     f"`redline campaign resume ID` goes on.")
        if outcome.gpu_processes:  # None: no GPU telemetry; (): the sandboxes held no GPU
            if not outcome.gpu_checked:
                text += (f" Waiting for NVML to show the GPU memory of {len(outcome.gpu_processes)} "
                         f"process(es) freed...")
            elif outcome.gpu_freed_ms is not None:
                text += (f" GPU memory freed {outcome.gpu_freed_ms:.0f} ms after the kill "
                         f"(NVML shows none of its {len(outcome.gpu_processes)} process(es)).")
            else:
                ok = False
                text += (f" GPU MEMORY NOT FREED: NVML still showed a process of these sandboxes "
                         f"{GPU_RELEASE_WAIT_S:.0f} s after the kill (host pids before it: "
                         f"{', '.join(map(str, outcome.gpu_processes))}). Check `nvidia-smi`.")
        elif outcome.gpu_processes == () and outcome.containers:
            text += " The sandboxes held no GPU memory."
        self._say(text, ok)

    def show_kill_failure(self, message: str) -> None:
        self._say(f"KILL FAILED: {message}. Run `redline kill --all` in a terminal.", False)

    def _say(self, text: str, ok) -> None:
        set_style_property(self.kill_result, "ok", ok)
        self.kill_result.setText(text)
        self.kill_result.show()


class ReplayBar(QWidget):
    """Time scrubber for a recorded trial. Emits positionChanged(seconds since its start)."""

    positionChanged = Signal(float)
    backToLiveRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.badge = QLabel("REPLAY", objectName="modeBadge")
        self.play_button = QPushButton(icon("resume"), "Play")
        self.play_button.setCheckable(True)
        self.play_button.toggled.connect(self._play_toggled)
        self.speed = QComboBox()
        for speed in REPLAY_SPEEDS:
            self.speed.addItem(f"{speed}x", speed)
        self.speed.setCurrentIndex(2)
        self.slider = QSlider(Qt.Horizontal)
        self.slider.valueChanged.connect(lambda value: self.positionChanged.emit(value / 10.0))
        self.time_label = QLabel()
        self.live_button = QPushButton(icon("live"), "Back to live")
        self.live_button.clicked.connect(self.backToLiveRequested)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        for widget in (self.badge, self.play_button, self.speed):
            layout.addWidget(widget)
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.time_label)
        layout.addWidget(self.live_button)
        self._timer = QTimer(self)
        self._timer.setInterval(REPLAY_TICK_MS)
        self._timer.timeout.connect(self._advance)
        self._duration = 0.0

    def start(self, title: str, duration_s: float) -> None:
        """Show a replay of `duration_s` seconds, positioned at its end (the complete picture)."""
        self.badge.setText(f"REPLAY  {title}")
        self._duration = max(duration_s, 0.0)
        self.play_button.setChecked(False)
        self.slider.setRange(0, int(self._duration * 10))
        self.slider.setValue(self.slider.maximum())
        self.positionChanged.emit(self.slider.value() / 10.0)
        self.show()

    def stop(self) -> None:
        self.play_button.setChecked(False)
        self.hide()

    def show_position(self, seconds: float) -> None:
        self.time_label.setText(f"+{seconds:6.1f} s / {self._duration:.1f} s")

    def _play_toggled(self, playing: bool) -> None:
        self.play_button.setText("Pause" if playing else "Play")
        self.play_button.setIcon(icon("pause" if playing else "resume"))
        if playing and self.slider.value() >= self.slider.maximum():
            self.slider.setValue(0)
        (self._timer.start if playing else self._timer.stop)()

    def _advance(self) -> None:
        step = int(self.speed.currentData() * REPLAY_TICK_MS / 100)  # slider units are 0.1 s
        value = min(self.slider.value() + step, self.slider.maximum())
        self.slider.setValue(value)
        if value >= self.slider.maximum():
            self.play_button.setChecked(False)
