"""The main window: rearrangeable docks around the live activity, wired to the backend.

Views render a TrialViewState (the live trial's, or a replay's) and send intents; the window routes
intents to the backend on worker threads and routes events from the dispatcher into the state.
Layout, font size and launch choices persist in QSettings.
"""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QTabWidget,
                               QVBoxLayout, QWidget)

from console.events import TrialStateChanged
from console.kinds import TERMINAL_STATES, TrialState
from console.paths import RESOURCES
from console.ui.activity import ActivityView
from console.experiment import ExperimentPlan, TrialStarted
from console.viewmodel.backend import ConsoleBackend, EngineReady, TelemetryStatusChanged
from console.ui.charts import TelemetryCharts
from console.viewmodel.containment import ModelSandbox
from console.ui.controls import KILL_SHORTCUTS, ControlBar, ReplayBar
from console.ui.dispatch import GuiDispatcher
from console.ui.launch_panel import LaunchPanel
from console.ui.sandbox_view import MilestoneTimeline, SandboxView
from console.viewmodel.state import ControlStates, LaunchProgress, TrialViewState
from console.ui.theme import apply_theme, icon, set_style_property
from console.ui.rating_dialog import RatingDialog
from console.ui.trials_panel import TrialsPanel
from console.ui.verdict_banner import VerdictBanner
from console.ui.alarm_banner import AlarmBanner
from console.ui.campaigns_panel import CampaignsPanel
from console.ui.figures_panel import FiguresPanel

ORGANIZATION = "Redline"
APPLICATION = "Redline Console"
CAMPAIGNS_REFRESH_MS = 10_000  # the campaigns grid, while it is shown (a campaign may run in a terminal)


def load_catalogue():
    """Models, what each brings into its sandbox, and scenarios (reads files: not on the GUI thread)."""
    from console.models import ModelCatalogue
    from console.scenarios import load_scenarios

    models = ModelCatalogue.load().all()
    return models, {model.id: ModelSandbox.of(model) for model in models}, load_scenarios()


def gui_event_loop() -> asyncio.AbstractEventLoop:
    """The asyncio loop on this (the GUI) thread: qasync's when the console runs under qasync.run, else
    (a test driving Qt itself) a qasync loop attached to the running Qt event loop."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        import qasync

        return with_python_executor(qasync.QEventLoop(QApplication.instance(), already_running=True))


def with_python_executor(loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
    """A qasync loop whose default executor (what `asyncio.to_thread` uses) is a plain Python pool:
    qasync's own is made of QThreads, which abort the interpreter at exit when a loop that was never
    closed still owns them."""
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="redline-loop"))
    return loop


class MainWindow(QMainWindow):
    closedCleanly = Signal()

    def __init__(self, settings: QSettings | None = None, backend_factory=ConsoleBackend):
        super().__init__()
        self.setWindowTitle("Redline: supervised self-replication experiments")
        self.setWindowIcon(icon("redline"))
        self.settings = settings if settings is not None else QSettings(ORGANIZATION, APPLICATION)
        self.dispatcher = GuiDispatcher(self._on_events, self)
        self.dispatcher.after_flush.append(self.render_views)
        self.backend: ConsoleBackend = backend_factory(self.dispatcher.post)
        self.live_state: TrialViewState | None = None
        self.replay = None
        self.launching = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._launch_task: asyncio.Future | None = None
        self._launch_text = ""
        self._kill_started: float | None = None
        self.last_kill = None  # the latest KillOutcome
        self._replay_state: TrialViewState | None = None
        self._closing = False
        self.closed = False

        self.controls = ControlBar()
        self.banner = VerdictBanner()
        self.alarm = AlarmBanner()
        self.replay_bar = ReplayBar()
        self.replay_bar.hide()
        self.milestones = MilestoneTimeline()
        self.activity = ActivityView()
        live = QWidget()
        live_column = QVBoxLayout(live)
        live_column.setContentsMargins(0, 0, 0, 0)
        live_column.addWidget(self.milestones)
        live_column.addWidget(self.activity, 1)
        # the trial's views, and the Trials table when it is moved here (View menu); KILL stays above
        self.central_tabs = QTabWidget(objectName="centralTabs", documentMode=True)
        self.central_tabs.setTabBarAutoHide(True)
        self.central_tabs.addTab(live, "Live trial")
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(4, 4, 4, 4)
        for widget in (self.controls, self.alarm, self.banner, self.replay_bar):
            column.addWidget(widget)
        column.addWidget(self.central_tabs, 1)
        self.setCentralWidget(central)

        self.launch_panel = LaunchPanel()
        self.sandbox_view = SandboxView()
        self.trial_views = (self.alarm, self.banner, self.milestones, self.activity, self.sandbox_view)
        self.charts = TelemetryCharts()
        self.trials_panel = TrialsPanel()
        self.campaigns_panel = CampaignsPanel()
        self.figures_panel = FiguresPanel()  # a tab of the main area when asked for (View > Figures)
        for corner, area in ((Qt.TopLeftCorner, Qt.LeftDockWidgetArea), (Qt.BottomLeftCorner, Qt.LeftDockWidgetArea),
                             (Qt.TopRightCorner, Qt.RightDockWidgetArea),
                             (Qt.BottomRightCorner, Qt.RightDockWidgetArea)):
            self.setCorner(corner, area)  # side docks run full height; charts and trials sit in the middle
        self.docks = {
            "launch": self._dock("Launch", self.launch_panel, Qt.LeftDockWidgetArea),
            "sandbox": self._dock("Sandbox processes", self.sandbox_view, Qt.RightDockWidgetArea),
            "charts": self._dock("Telemetry", self.charts, Qt.BottomDockWidgetArea),
            "trials": self._dock("Trials", self.trials_panel, Qt.BottomDockWidgetArea),
            "campaigns": self._dock("Campaigns", self.campaigns_panel, Qt.BottomDockWidgetArea),
        }
        self.tabifyDockWidget(self.docks["charts"], self.docks["trials"])
        self.tabifyDockWidget(self.docks["trials"], self.docks["campaigns"])
        self.docks["charts"].raise_()

        self.engine_label = QLabel("Docker: connecting...")
        self.gpu_label = QLabel("GPU: probing...")
        self.trial_label = QLabel("No trial")
        for label in (self.trial_label, self.engine_label, self.gpu_label):
            self.statusBar().addPermanentWidget(label)

        self._build_menus()
        self._connect()
        self.campaigns_timer = QTimer(self, interval=CAMPAIGNS_REFRESH_MS, timeout=self.refresh_campaigns)
        self.campaigns_timer.start()
        self._default_layout = self.saveState()
        self._restore_settings()
        self.bind_views(None)

    # -- construction --------------------------------------------------------------------------
    def _dock(self, title: str, widget: QWidget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"dock-{title.split(':')[0].lower()}")
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetFloatable
                         | QDockWidget.DockWidgetClosable)
        self.addDockWidget(area, dock)
        return dock

    def _action(self, menu, text: str, slot, shortcut: str | None = None, icon_name: str | None = None,
                checkable: bool = False) -> QAction:
        action = QAction(text, self)
        if icon_name:
            action.setIcon(icon(icon_name))
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        action.setCheckable(checkable)
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "Quit", self.close, "Ctrl+Q")
        trial_menu = bar.addMenu("&Trial")
        self._action(trial_menu, "Launch", self.launch_panel.request_launch, "Ctrl+Return", "launch")
        self.pause_action = self._action(trial_menu, "Pause", self.pause, "Ctrl+P", "pause")
        self.resume_action = self._action(trial_menu, "Resume", self.resume, "Ctrl+R", "resume")
        self.signal_action = self._action(trial_menu, "Send SIGTERM to the original agent",
                                          self.send_shutdown_signal, "Ctrl+T", "signal")
        trial_menu.addSeparator()
        kill = self._action(trial_menu, "KILL every sandbox", self.kill_everything, None, "kill")
        kill.setShortcuts([QKeySequence(k) for k in KILL_SHORTCUTS])
        kill.setShortcutContext(Qt.ApplicationShortcut)  # also from floating docks and dialogs
        self.kill_action = kill
        trials_menu = bar.addMenu("T&rials")
        self._action(trials_menu, "Refresh", self.refresh_trials, "F5", "refresh")
        self._action(trials_menu, "Replay selected", self.trials_panel.request_replay, None, "replay")
        self._action(trials_menu, "Back to live", self.back_to_live, "Esc", "live")
        view = bar.addMenu("&View")
        for dock in self.docks.values():
            view.addAction(dock.toggleViewAction())
        view.addSeparator()
        self.large_fonts_action = self._action(view, "Large fonts (projector)", self.set_large_fonts,
                                               "Ctrl+Shift+L", checkable=True)
        self.trials_central_action = self._action(view, "Trials in the main area", self.set_trials_central,
                                                  "Ctrl+Shift+T", checkable=True)
        self.figures_action = self._action(view, "Figures of the report, in the main area", self.show_figures_tab,
                                           "Ctrl+Shift+F", checkable=True)
        self._action(view, "Reset layout", self.reset_layout)
        self._action(view, "Sound on tripwire alarms", self.set_alarm_sound, checkable=True)
        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "Keyboard shortcuts", self.show_shortcuts, "F1")
        replay_shortcut = QShortcut(QKeySequence(Qt.Key_Return), self.trials_panel.trials,
                                    context=Qt.WidgetShortcut)
        replay_shortcut.activated.connect(self.trials_panel.request_replay)

    def _connect(self) -> None:
        self.controls.killRequested.connect(self.kill_everything)
        self.controls.pauseRequested.connect(self.pause)
        self.controls.resumeRequested.connect(self.resume)
        self.controls.shutdownSignalRequested.connect(self.send_shutdown_signal)
        self.controls.approveRequested.connect(lambda n, command: self.decide(n, command, True, ""))
        self.controls.rejectRequested.connect(lambda n, command, reason: self.decide(n, command, False, reason))
        self.launch_panel.launchRequested.connect(self.launch)
        self.launch_panel.addModelRequested.connect(self.add_model)
        self.trials_panel.refreshRequested.connect(self.refresh_trials)
        self.campaigns_panel.refreshRequested.connect(self.refresh_campaigns)
        self.campaigns_panel.runRequested.connect(self.run_campaign)
        self.campaigns_panel.cellOpened.connect(self.open_campaign_cell)
        self.docks["campaigns"].visibilityChanged.connect(lambda shown: shown and self.refresh_campaigns())
        self.central_tabs.currentChanged.connect(lambda _: self.refresh_figures())
        self.figures_panel.refreshRequested.connect(self.refresh_figures)
        self.trials_panel.replayRequested.connect(self.open_replay)
        self.trials_panel.rateRequested.connect(self.rate_trial)
        self.trials_panel.exportRequested.connect(self.export_experiments)
        self.replay_bar.positionChanged.connect(self.seek_replay)
        self.replay_bar.backToLiveRequested.connect(self.back_to_live)

    # -- settings ------------------------------------------------------------------------------
    def _restore_settings(self) -> None:
        geometry = self.settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        self.fit_to_screen(keep_size=isinstance(geometry, QByteArray))
        state = self.settings.value("window/state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        else:
            QTimer.singleShot(0, self._default_dock_sizes)  # once the window has its size
        large = str(self.settings.value("view/large_fonts", "false")).lower() == "true"
        self.large_fonts_action.setChecked(large)
        self.set_large_fonts(large)
        self.set_trials_central(str(self.settings.value("view/trials_central", "false")).lower() == "true")

    def fit_to_screen(self, keep_size: bool = False) -> None:
        """Open at most the size of the screen the window is on (a laptop on a projector gets all of
        its 1366x768, a large screen 1600x1000), and never larger than it after a restore."""
        screen = (self.screen() or QApplication.primaryScreen()).availableGeometry()
        width, height = (self.width(), self.height()) if keep_size else (1600, 1000)
        self.resize(min(width, screen.width()), min(height, screen.height()))
        if not keep_size or not screen.contains(self.frameGeometry()):
            self.move(screen.x() + (screen.width() - self.width()) // 2, screen.y() + (screen.height() - self.height()) // 2)

    def _default_dock_sizes(self) -> None:
        """Side docks for the font size in use (large fonts need wider panels); charts below."""
        launch_width = 580 if self.large_fonts_action.isChecked() else 440
        self.resizeDocks([self.docks["launch"], self.docks["sandbox"]], [launch_width, 540], Qt.Horizontal)
        self.resizeDocks([self.docks["charts"]], [320], Qt.Vertical)

    def save_settings(self) -> None:
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        self.settings.setValue("view/large_fonts", self.large_fonts_action.isChecked())
        self.settings.setValue("view/trials_central", self.trials_central_action.isChecked())
        for key, value in self.launch_panel.choices().items():
            if value is not None:
                self.settings.setValue(f"launch/{key}", value)
        self.settings.sync()

    def set_large_fonts(self, large: bool) -> None:
        app = QApplication.instance()
        if app is not None:
            apply_theme(app, bool(large))
        self.charts.set_large_fonts(bool(large))
        if self.isVisible():
            self._default_dock_sizes()

    def set_alarm_sound(self, on: bool) -> None:
        self.alarm.sound = on

    def set_trials_central(self, central: bool) -> None:
        """The Trials table as a tab of the main area (room for every column), or back in its dock."""
        dock, panel = self.docks["trials"], self.trials_panel
        if central and self.central_tabs.indexOf(panel) < 0:
            dock.hide()
            self.central_tabs.setCurrentIndex(self.central_tabs.addTab(panel, "Trials"))
        elif not central and self.central_tabs.indexOf(panel) >= 0:
            self.central_tabs.removeTab(self.central_tabs.indexOf(panel))
            dock.setWidget(panel)
            dock.show()
        dock.toggleViewAction().setEnabled(not central)
        self.trials_central_action.setChecked(central)

    def show_figures_tab(self, shown: bool) -> None:
        """The report's figures as a tab of the main area (they need its room), drawn when it opens."""
        index = self.central_tabs.indexOf(self.figures_panel)
        if shown and index < 0:
            self.central_tabs.setCurrentIndex(self.central_tabs.addTab(self.figures_panel, "Figures"))
        elif not shown and index >= 0:
            self.central_tabs.removeTab(index)
        self.figures_action.setChecked(shown)

    def open_campaign_cell(self, experiment_id: str, label: str) -> None:
        """A campaign cell's trials, in the Trials table (wherever it is shown); a trial opens its replay."""
        self.trials_panel.show_experiment(experiment_id, label)
        if self.central_tabs.indexOf(self.trials_panel) >= 0:
            self.central_tabs.setCurrentWidget(self.trials_panel)
        else:
            self.docks["trials"].show()
            self.docks["trials"].raise_()
        self.refresh_trials()

    def reset_layout(self) -> None:
        self.set_trials_central(False)
        self.restoreState(self._default_layout)
        for dock in self.docks.values():
            dock.show()
        self._default_dock_sizes()

    def show_shortcuts(self) -> None:
        QMessageBox.information(self, "Keyboard shortcuts", (
            "Ctrl+K or F12   KILL every sandbox (works wherever the focus is)\n"
            "Ctrl+Enter      Launch\nCtrl+P / Ctrl+R  Pause / resume the sandbox\n"
            "Ctrl+T          Send SIGTERM to the original agent (shutdown scenario)\n"
            "F5              Refresh the trials table\nEnter           Replay the selected trial\n"
            "Esc             Back to live\nCtrl+Shift+L    Large fonts (projector)\nCtrl+Q          Quit\n\n"
            "Step mode (ticked in the launch panel): each command of the agent waits under the buttons "
            "until you approve or reject it; Enter in the reason field rejects."))

    # -- start-up ------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = gui_event_loop()
        """Connect to everything in the background; the window is usable at once."""
        # What start-up built (Qt bindings, pyqtgraph, this window) lives as long as the console: frozen,
        # full collections stop walking it each time (measured: 45-60 ms GUI stalls under a flood).
        gc.collect()
        gc.freeze()
        self.charts.show_history(self.backend.history, None)
        submit = self.dispatcher.submit
        submit(self.backend.start_gpu_telemetry)
        submit(self.backend.connect, on_done=self._engine_ready, on_error=self._engine_failed)
        submit(self.backend.probe_gpus, on_done=self.launch_panel.set_gpus)
        self.reload_catalogue()
        self.refresh_trials()

    def reload_catalogue(self, select_model: str | None = None) -> None:
        from console.models import DEFAULT_MODEL_ID, DEFAULT_SCENARIO_ID

        def loaded(result):
            models, sandboxes, scenarios = result
            model = select_model or self.launch_panel.model_box.currentData() or \
                self.settings.value("launch/model", DEFAULT_MODEL_ID)
            scenario = self.launch_panel.scenario_box.currentData() or \
                self.settings.value("launch/scenario", DEFAULT_SCENARIO_ID)
            self.launch_panel.set_catalogue(models, sandboxes, scenarios, model, scenario)
            self.launch_panel.trials.setValue(int(self.settings.value("launch/trials", 1)))

        self.dispatcher.submit(load_catalogue, on_done=loaded,
                               on_error=lambda exc: self._report_error("Could not load models/scenarios", exc))

    def _engine_ready(self, ready: EngineReady) -> None:
        watchdog = "watchdog on" if self.backend.with_watchdog else "watchdog off"
        self.engine_label.setText(f"Docker {ready.server_version.split('+')[0]} · {watchdog}")
        self.engine_label.setToolTip(
            f"Session {ready.session_id}; {'an' if ready.nvidia_runtime else 'no'} NVIDIA container runtime; "
            f"{ready.reaped} leftover sandbox(es) of dead sessions reaped at start")
        set_style_property(self.engine_label, "role", "")
        self.launch_panel.set_engine_problem(None, ready.memory, ready.cpus, ready.nvidia_runtime,
                                             (ready.isolation_levels, ready.default_isolation, ready.isolation_note))

    def _engine_failed(self, exc: BaseException) -> None:
        self.engine_label.setText(f"Docker: unavailable: {exc}")
        set_style_property(self.engine_label, "role", "error")
        self.launch_panel.set_engine_problem(f"no Docker engine ({exc})")

    def _report_error(self, what: str, exc: BaseException) -> None:
        self.statusBar().showMessage(f"{what}: {exc}", 15000)
        self.launch_panel.progress_detail.setText(f"{what}: {exc}")

    # -- events from workers -------------------------------------------------------------------
    def _on_events(self, events: list) -> None:
        for event in events:
            if isinstance(event, TrialStarted):
                self.live_state = TrialViewState.for_trial(event)
                self._launch_text = f"trial {event.index + 1}/{event.count} · "
                if self.replay is None:
                    self.bind_views(self.live_state)
                    self.charts.show_history(self.backend.history, event.trial_id)
                    self.central_tabs.setCurrentIndex(0)  # a new trial: its views, not the table
            elif isinstance(event, TelemetryStatusChanged):
                self._telemetry_status(event)
            elif self.live_state is not None and (isinstance(event, LaunchProgress)
                                                  or getattr(event, "trial_id", None) == self.live_state.trial_id):
                self.live_state.apply(event)
                if isinstance(event, TrialStateChanged) and event.state in TERMINAL_STATES:
                    self.refresh_trials()

    def _telemetry_status(self, event: TelemetryStatusChanged) -> None:
        if event.source == "gpu":
            self.gpu_label.setText(f"GPU: {event.status.message}")
            set_style_property(self.gpu_label, "role", "" if event.status.available else "warning")
            self.charts.set_gpu_status(event.status)
        elif not event.status.available and event.status.message not in ("connecting", "stopped"):
            self.statusBar().showMessage(f"Container stats: {event.status.message}", 10000)

    # -- rendering -----------------------------------------------------------------------------
    def shown_state(self) -> TrialViewState | None:
        return self.replay.state if self.replay is not None else self.live_state

    def bind_views(self, state: TrialViewState | None) -> None:
        for view in self.trial_views:
            view.bind(state)
        self.render_views()

    def render_views(self) -> None:
        """After each dispatcher tick: views re-render what changed (they compare revisions)."""
        shown = self.shown_state()
        if self.replay is None:
            for view in self.trial_views:
                view.render()
        live = self.live_state
        controls = ControlStates.of(live, self.launching)
        self.controls.set_trial(running=controls.running, paused=controls.paused, can_signal=controls.can_signal)
        self.pause_action.setEnabled(self.controls.pause_button.isEnabled())
        self.resume_action.setEnabled(self.controls.resume_button.isEnabled())
        self.signal_action.setEnabled(self.controls.signal_button.isEnabled())
        self.controls.set_awaiting(controls.awaiting)
        self.launch_panel.show_progress(live, self._launch_text)
        self.charts.set_ended(shown.ended_t if shown is not None else None)
        self.charts.set_tripwire_marks(shown.alarms if shown is not None else [])
        if shown is not None:
            mode = "replay" if self.replay is not None else "live"
            self.trial_label.setText(f"{mode}: {shown.trial_id or 'preparing'} · {shown.model_label} · "
                                     f"{shown.state}{' (paused)' if shown.paused else ''}"
                                     + (f" · sandbox gone since {time.strftime('%H:%M:%S', time.localtime(shown.ended_t))}"
                                        if shown.ended_t is not None else ""))

    # -- intents -------------------------------------------------------------------------------
    def launch(self, plan: ExperimentPlan) -> None:
        if self.launching:
            return
        self.launching = True
        self.launch_panel.set_running(True)
        self.controls.kill_result.hide()  # the last kill's report belongs to the launch before
        self.back_to_live()
        self._launch_text = ""
        self.live_state = TrialViewState(model_id=plan.model.id, model_title=plan.model.title,
                                         scripted=plan.model.scripted, scenario_id=plan.scenario.id,
                                         shutdown_signal=plan.scenario.terminates_original,
                                         constrained_format=plan.model.constrained_format)
        self.bind_views(self.live_state)
        self._launch_task = asyncio.ensure_future(self._await_launch(plan), loop=self._loop)

    async def _await_launch(self, plan: ExperimentPlan) -> None:
        """The experiment runs on this window's event loop (qasync): the core's own coroutine."""
        try:
            verdicts = await self.backend.launch(plan)
        except Exception as exc:
            self._launch_failed(exc)
        else:
            self._launch_finished(verdicts)

    def _launch_finished(self, verdicts: list) -> None:
        self.launching = False
        self.launch_panel.set_running(False)
        self.statusBar().showMessage(f"Launch finished: {len(verdicts)} trial(s) judged", 10000)
        self.render_views()  # the trials table was refreshed by each trial's final state

    def _launch_failed(self, exc: BaseException) -> None:
        self.launching = False
        self.launch_panel.set_running(False)
        if self.live_state is not None and self.live_state.state not in TERMINAL_STATES:
            self.live_state.apply(TrialStateChanged(self.live_state.trial_id, TrialState.ERROR, str(exc)))
        self._report_error("Launch failed", exc)
        self.render_views()

    def kill_everything(self) -> None:
        """The kill switch, on a thread of its own: it never waits on the GUI or on busy workers."""
        if self._kill_started is not None:
            return
        self._kill_started = time.perf_counter()
        self.controls.show_killing()
        self.dispatcher.submit(self.backend.kill_all, on_done=self._killed, on_error=self._kill_failed,
                               dedicated_thread=True)

    def _killed(self, outcome) -> None:
        elapsed_ms = (time.perf_counter() - self._kill_started) * 1000
        self._kill_started = None
        self.last_kill = outcome
        self.controls.show_kill(outcome, elapsed_ms)
        if outcome.gpu_processes:  # then, when NVML shows the GPU memory freed (or not), say so

            def released(checked):
                if self.last_kill is outcome:
                    self.last_kill = checked
                    self.controls.show_kill(checked, elapsed_ms)

            self.dispatcher.submit(self.backend.gpu_release, outcome, on_done=released,
                                   on_error=lambda exc: self._report_error("GPU memory check failed", exc))

    def _kill_failed(self, exc: BaseException) -> None:
        self._kill_started = None
        self.controls.show_kill_failure(str(exc))

    def _intent(self, call, what: str) -> None:
        self.dispatcher.submit(call, on_error=lambda exc: self._report_error(what, exc))

    def pause(self) -> None:
        self._intent(self.backend.pause, "Pause failed")

    def resume(self) -> None:
        self._intent(self.backend.resume, "Resume failed")

    def send_shutdown_signal(self) -> None:
        self._intent(self.backend.send_shutdown_signal, "Sending SIGTERM failed")

    def decide(self, n: int, command: str, approve: bool, reason: str) -> None:
        def failed(exc):
            self._report_error("The decision was not delivered", exc)
            self.controls.allow_decision()
        self.dispatcher.submit(self.backend.decide, n, command, approve, reason, on_error=failed)

    def add_model(self, spec) -> None:
        from console.models import save_user_model

        def saved(path):
            self.statusBar().showMessage(f"Model {spec.id} saved to {path}", 10000)
            self.reload_catalogue(select_model=spec.id)

        self.dispatcher.submit(save_user_model, spec, on_done=saved,
                               on_error=lambda exc: self._report_error("Could not save the model", exc))

    # -- trials and replay ---------------------------------------------------------------------
    def refresh_trials(self) -> None:
        self.dispatcher.submit(self.backend.list_trials, on_done=self.trials_panel.show_trials,
                               on_error=lambda exc: self._report_error("Could not read the trials", exc))
        self.refresh_campaigns()
        self.refresh_figures()

    def refresh_figures(self) -> None:
        if self.central_tabs.currentWidget() is self.figures_panel:  # they read every transcript: only when looked at
            self.dispatcher.submit(self.backend.figures, on_done=self.figures_panel.show_figures,
                                   on_error=lambda exc: self._report_error("Could not draw the figures", exc))

    def refresh_campaigns(self) -> None:
        if self.docks["campaigns"].isVisible():  # a hidden grid costs nothing
            self.dispatcher.submit(self.backend.list_campaigns, on_done=self.campaigns_panel.show_campaigns,
                                   on_error=lambda exc: self._report_error("Could not read the campaigns", exc))

    def run_campaign(self) -> None:
        """Ask for a campaign file, then start it as a process of its own (the backend reads the file
        first: a mistake is named in the status bar and nothing starts)."""
        path, _ = QFileDialog.getOpenFileName(self, "Campaign file", str(RESOURCES / "campaigns"), "*.toml")
        if not path:
            return

        def started(result):
            pid, log = result
            self.statusBar().showMessage(f"Campaign {Path(path).name} started (pid {pid}); its log: {log}", 15000)
            self.refresh_campaigns()

        self.dispatcher.submit(self.backend.start_campaign, path, on_done=started,
                               on_error=lambda exc: self._report_error("Could not start the campaign", exc))

    def export_experiments(self, experiment_ids: list, fmt: str) -> None:
        """Ask where, then write the export in a worker (inspect: one .eval per experiment)."""
        target = self.choose_export_target(experiment_ids, fmt)
        if not target:
            return

        def written(paths):
            self.statusBar().showMessage(f"Exported {len(experiment_ids)} experiment(s): "
                                         f"{', '.join(map(str, paths))}", 15000)

        self.statusBar().showMessage(f"Exporting {len(experiment_ids)} experiment(s)...")
        self.dispatcher.submit(self.backend.export, experiment_ids, fmt, target, on_done=written,
                               on_error=lambda exc: self._report_error("Could not export", exc))

    def choose_export_target(self, experiment_ids: list, fmt: str) -> str:
        """A file (one Inspect log, or JSON lines) or a folder (several Inspect logs); '' if cancelled."""
        if fmt == "inspect" and len(experiment_ids) > 1:
            return QFileDialog.getExistingDirectory(self, "Folder for the Inspect logs (one per experiment)")
        suffix = ".eval" if fmt == "inspect" else ".jsonl"
        name = f"{experiment_ids[0]}{suffix}" if len(experiment_ids) == 1 else f"trials{suffix}"
        path, _ = QFileDialog.getSaveFileName(self, "Export", name, f"*{suffix}")
        return path

    def rate_trial(self, trial_id: str) -> None:
        """Read the trial's rating in a worker, ask for the new one, write it in a worker."""
        def ask(rating):
            self.rating_dialog = dialog = RatingDialog(trial_id, rating, self)
            dialog.accepted.connect(lambda: self.dispatcher.submit(
                self.backend.rate, trial_id, *dialog.values(), on_done=saved,
                on_error=lambda exc: self._report_error(f"Could not rate {trial_id}", exc)))
            dialog.open()

        def saved(rating):
            self.statusBar().showMessage(f"Rated {trial_id}: (a) {rating.agreed}, (b) {rating.knew_how} "
                                         f"by {rating.rater}; the verdict is unchanged", 10000)
            self.refresh_trials()

        self.dispatcher.submit(self.backend.rating_of, trial_id, on_done=ask,
                               on_error=lambda exc: self._report_error(f"Could not read {trial_id}", exc))

    def open_replay(self, trial_id: str) -> None:
        self.dispatcher.submit(self.backend.load_replay, trial_id, on_done=self._replay_loaded,
                               on_error=lambda exc: self._report_error(f"Could not open {trial_id}", exc))

    def _replay_loaded(self, replay) -> None:
        self.replay, self._replay_state = replay, None
        self.central_tabs.setCurrentIndex(0)
        self.banner.set_mode("REPLAY")
        self.charts.show_history(replay.history, replay.trial.id, (replay.start_t, replay.end_t))
        self.replay_bar.start(replay.trial.id, replay.end_t - replay.start_t)

    def seek_replay(self, seconds: float) -> None:
        replay = self.replay
        if replay is None:
            return
        state = replay.seek(replay.start_t + seconds)
        self.charts.set_cursor(replay.start_t + seconds)
        if state is not self._replay_state:
            self._replay_state = state
            self.bind_views(state)
        else:
            for view in self.trial_views:
                view.render()
        self.replay_bar.show_position(seconds)

    def back_to_live(self) -> None:
        if self.replay is None:
            return
        self.replay = None
        self.replay_bar.stop()
        self.banner.set_mode("")
        self.charts.show_history(self.backend.history, self.live_state.trial_id if self.live_state else None)
        self.bind_views(self.live_state)

    # -- closing -------------------------------------------------------------------------------
    def closeEvent(self, event) -> None:
        """Kill what runs and close the session on a worker; the window closes when that is done."""
        if self.closed:
            event.accept()
            return
        event.ignore()
        if self._closing:
            return
        self._closing = True
        self.save_settings()
        self.statusBar().showMessage("Shutting down: killing sandboxes and closing the session...")

        def finished(*_):
            self.closed = True
            self.dispatcher.shutdown()
            self.close()
            self.closedCleanly.emit()

        self.dispatcher.submit(self.backend.close, on_done=finished, on_error=finished, dedicated_thread=True)
