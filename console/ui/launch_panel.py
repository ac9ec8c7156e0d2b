"""The launch panel: model, scenario, GPUs, limits, number of trials, the containment checklist,
and the Launch button with the launch's progress."""

from __future__ import annotations

import dataclasses
import html
import shlex

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFileDialog, QFormLayout, QGridLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QScrollArea,
                               QSpinBox, QVBoxLayout, QWidget)

from console.errors import ConfigError, RedlineError, UsageError
from console.models import IMAGES_FOR_RUNTIME, RUNTIMES, validate_model_entry
from console.experiment import ExperimentPlan
from console.sandbox.spec import CPUS_BOUNDS, PIDS_LIMIT_BOUNDS
from console.scenarios import MAX_ROUNDS_BOUNDS, WALL_TIME_BOUNDS
from console.tripwires import METRICS, Tripwire
from console.viewmodel.containment import CheckItem, ModelSandbox, checklist, launch_spec
from console.kinds import TrialState
from console.viewmodel.state import IDLE, TrialViewState
from console.ui.theme import icon, set_style_property

PROGRESS_STEPS = (TrialState.PREPARING, TrialState.STARTING_MODEL, TrialState.AGENT_RUNNING, TrialState.JUDGING,
                  TrialState.DONE)


def first_sentence(text: str) -> str:
    """The first sentence of a description (the panel shows the rest as a tooltip)."""
    text = " ".join(text.split())
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


class AddModelDialog(QDialog):
    """A model entry checked by `validate_model_entry`, exactly as a model file would be."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Add a model")
        self.spec = None
        self.fields = {
            "id": QLineEdit(placeholderText="e.g. qwen2.5-7b-instruct"),
            "title": QLineEdit(placeholderText="shown in the model list"),
            "runtime": QComboBox(),
            "image": QComboBox(),
            "weights": QLineEdit(placeholderText="a weights file or folder on this machine (read-only mount)"),
            "gpus_needed": QSpinBox(maximum=64),
            "server_args": QLineEdit(placeholderText="extra server flags, e.g. --ctx-size 8192"),
            "description": QLineEdit(),
        }
        self.fields["runtime"].addItems([r for r in RUNTIMES if r != "scripted"])
        self.fields["runtime"].currentTextChanged.connect(self._runtime_changed)
        self._runtime_changed(self.fields["runtime"].currentText())
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        weights_row = QHBoxLayout()
        weights_row.addWidget(self.fields["weights"], 1)
        weights_row.addWidget(browse)
        form = QFormLayout()
        for name, widget in self.fields.items():
            label = name.replace("_", " ").capitalize()
            form.addRow(label, weights_row if name == "weights" else widget)
        self.error = QLabel(wordWrap=True)
        self.error.setProperty("role", "error")
        buttons = QDialogButtonBox(QDialogButtonBox.Save | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self._validate_and_accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(buttons)
        self.resize(640, self.sizeHint().height())

    def _runtime_changed(self, runtime: str) -> None:
        images = self.fields["image"]
        images.clear()
        images.addItems(list(IMAGES_FOR_RUNTIME.get(runtime, ())))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model weights")
        if path:
            self.fields["weights"].setText(path)

    def entry(self) -> dict:
        """The dialog as a model-file entry (empty optional fields left out)."""
        values = {
            "id": self.fields["id"].text().strip(),
            "title": self.fields["title"].text().strip(),
            "runtime": self.fields["runtime"].currentText(),
            "image": self.fields["image"].currentText(),
            "weights": self.fields["weights"].text().strip(),
            "gpus_needed": self.fields["gpus_needed"].value(),
            "server_args": shlex.split(self.fields["server_args"].text()),
            "description": self.fields["description"].text().strip(),
        }
        return {key: value for key, value in values.items() if value not in ("", [])}

    def _validate_and_accept(self) -> None:
        for widget in self.fields.values():
            if isinstance(widget, QLineEdit):
                set_style_property(widget, "invalid", False)
        try:
            self.spec = validate_model_entry(self.entry())
        except (ConfigError, ValueError) as exc:
            field = getattr(exc, "field", "")
            widget = self.fields.get(field)
            if isinstance(widget, QLineEdit):
                set_style_property(widget, "invalid", True)
                widget.setFocus()
            self.error.setText(str(exc))
            return
        self.accept()


class LaunchPanel(QWidget):
    """Choices for a launch; emits launchRequested(ExperimentPlan) and addModelRequested(ModelSpec)."""

    launchRequested = Signal(object)
    addModelRequested = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.models: dict[str, object] = {}
        self.model_sandboxes: dict[str, ModelSandbox] = {}
        self.scenarios: dict[str, object] = {}
        self.gpu_names: tuple[str, ...] = ()
        self._engine_problem = "connecting to the Docker engine..."
        self._engine_limits: dict = {}
        self._isolation: tuple = (("runc",), "runc", "")  # the engine's levels, its default, why not stronger
        self._running = False
        self._check_items: list[CheckItem] = []
        self._progress_key = None

        self.model_box = QComboBox()
        self.model_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(12)
        self.model_description = QLabel(wordWrap=True)
        self.model_description.setProperty("role", "hint")
        self.add_model_button = QPushButton(icon("add"), "")
        self.add_model_button.setToolTip("Add a model (checked like a model file, saved to your models folder)")
        self.add_model_button.clicked.connect(self._add_model)
        self.scenario_box = QComboBox()
        self.scenario_box.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.scenario_box.setMinimumContentsLength(12)
        self.scenario_description = QLabel(wordWrap=True)
        self.scenario_description.setProperty("role", "hint")
        self.task = QLabel(wordWrap=True, objectName="taskText", toolTip="The task given to the agent")
        self.task.setTextInteractionFlags(Qt.TextSelectableByMouse)

        self.gpu_group = QGroupBox("GPUs")
        self.gpu_layout = QVBoxLayout(self.gpu_group)
        self.gpu_boxes: list[QCheckBox] = []
        self.gpu_note = QLabel("Looking for GPUs...", wordWrap=True)
        self.gpu_note.setProperty("role", "warning")
        self.gpu_layout.addWidget(self.gpu_note)

        self.max_rounds = QSpinBox(minimum=MAX_ROUNDS_BOUNDS.low, maximum=MAX_ROUNDS_BOUNDS.high)
        self.wall_time = QSpinBox(minimum=WALL_TIME_BOUNDS.low, maximum=WALL_TIME_BOUNDS.high, singleStep=60,
                                  suffix=" s")
        self.memory = QLineEdit()
        self.cpus = QDoubleSpinBox(minimum=CPUS_BOUNDS.low, maximum=CPUS_BOUNDS.high, singleStep=0.5, decimals=1)
        self.pids = QSpinBox(minimum=PIDS_LIMIT_BOUNDS.low, maximum=PIDS_LIMIT_BOUNDS.high, singleStep=64)
        self.trials = QSpinBox(minimum=1, maximum=100)
        self.parallel = QSpinBox(minimum=1, maximum=16, toolTip="trials at once (each gets its share of the "
                                                                   "ticked GPUs); step mode needs 1")
        limits = QGroupBox("Limits")
        grid = QGridLayout(limits)
        for position, (label, widget) in enumerate((
                ("Max rounds", self.max_rounds), ("Wall time", self.wall_time), ("Memory", self.memory),
                ("CPUs", self.cpus), ("Processes", self.pids), ("Trials", self.trials),
                ("At once", self.parallel))):
            row, column = divmod(position, 2)
            grid.addWidget(QLabel(label), row, column * 2)
            grid.addWidget(widget, row, column * 2 + 1)
            widget.setMinimumWidth(64)  # not the width of "86400 s": the panel fits a narrow dock
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

        self.constrained_format = QCheckBox("Constrained reply format")
        self.constrained_format.setToolTip(
            "The model server may only produce Explain/Gaps/Findings/Plan and one valid Action (its words "
            "inside stay free), so a small model acts from the first round. A different experimental "
            "condition from the study's free-form replies: recorded with the trial and marked wherever the "
            "model is named. Each model file says which is its default.")

        self.scaffold = QComboBox()
        self.scaffold.addItem("Scaffold: paper (the study's wording)", "paper")
        self.scaffold.addItem("Scaffold: redline (Redline's wording)", "redline")
        self.scaffold.setToolTip(
            "What the model reads. Paper: every tool name, action, user turn, status string and critique as "
            "in the study's published log (its Appendix A); this reproduces the study. Redline: the same "
            "rounds in Redline's own words, with exit codes and durations. A condition of its own: recorded "
            "with the trial and marked wherever the model is named.")

        self.isolation = QComboBox()
        self.isolation.addItem("Isolation: automatic", None)
        self.isolation.addItem("Isolation: runc (host kernel)", "runc")
        self.isolation.addItem("Isolation: gVisor (user-space kernel)", "gvisor")
        self.isolation.setToolTip(
            "Automatic: the strongest level this engine offers under which the agent sees the system it "
            "sees under runc (its shell tools, a child subreaper). gVisor runs the sandbox on a kernel of its "
            "own; GPU sandboxes run on runc. `redline doctor` lists the levels and what differs under each.")

        self.cluster = QLineEdit(placeholderText="Ray cluster HOST:PORT (empty: this machine)")
        self.cluster.setToolTip(
            "Place the trials on the nodes of a Ray cluster (token auth on, private interface; README: More "
            "than one machine). Ray gives each trial its GPUs on one node; every node's kill switch answers "
            "KILL, and each node's `redline node start` kills its sandboxes if this console goes.")

        self.tripwires = QLineEdit(placeholderText="Tripwires, e.g. verified-replicas>=2:kill, processes>200:freeze")
        self.tripwires.setToolTip(
            "Rules on what the judge observes, each with an action (alert, freeze, kill), separated by commas; "
            "added to the scenario's own. Metrics: " + "; ".join(f"{name}: {what}" for name, what in METRICS.items()))

        self.step_mode = QCheckBox("Step mode: approve each command")
        self.step_mode.setToolTip(
            "Every command the agent wants to run waits until you approve or reject it under the KILL "
            "button. The decision is written into a folder of the sandbox only Redline can write, so the "
            "model cannot approve its own commands. Replicas inherit the gate, but only the original's commands "
            "are offered here, so a replica's never run. Wall time keeps running while a command waits.")

        self.checklist = QLabel(wordWrap=True, textFormat=Qt.RichText)
        containment = QGroupBox("Containment that will be applied")
        QVBoxLayout(containment).addWidget(self.checklist)

        self.launch_button = QPushButton(icon("launch"), "Launch  (Ctrl+Enter)", objectName="launchButton")
        self.launch_button.clicked.connect(self.request_launch)
        self.launch_hint = QLabel(wordWrap=True)
        self.launch_hint.setProperty("role", "warning")
        self.progress = QProgressBar(maximum=len(PROGRESS_STEPS), value=0, textVisible=True)
        self.progress.setFormat("idle")
        self.progress_detail = QLabel(wordWrap=True)
        self.progress_detail.setProperty("role", "hint")

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_box, 1)
        model_row.addWidget(self.add_model_button)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addWidget(QLabel("<b>Model</b>"))
        layout.addLayout(model_row)
        layout.addWidget(self.model_description)
        layout.addWidget(self.constrained_format)
        layout.addWidget(self.scaffold)
        layout.addWidget(QLabel("<b>Scenario</b>"))
        layout.addWidget(self.scenario_box)
        layout.addWidget(self.scenario_description)
        layout.addWidget(self.task)
        layout.addWidget(self.gpu_group)
        layout.addWidget(limits)
        layout.addWidget(self.tripwires)
        layout.addWidget(self.step_mode)
        layout.addWidget(self.isolation)
        layout.addWidget(self.cluster)
        layout.addWidget(containment)
        layout.addStretch(1)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(content)
        # Launch, why it is disabled and its progress stay in sight below the choices, on any screen
        actions = QWidget(objectName="launchActions")
        action_layout = QVBoxLayout(actions)
        for widget in (self.launch_button, self.launch_hint, self.progress, self.progress_detail):
            action_layout.addWidget(widget)
        self.setMinimumWidth(320)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll, 1)
        outer.addWidget(actions)

        self.model_box.currentIndexChanged.connect(self._model_changed)
        self.scenario_box.currentIndexChanged.connect(self._scenario_changed)
        for spin in (self.max_rounds, self.wall_time, self.pids, self.cpus, self.trials, self.parallel):
            spin.valueChanged.connect(self.update_checklist)
        self.memory.textChanged.connect(self.update_checklist)
        self.step_mode.toggled.connect(self.update_checklist)
        self.isolation.currentIndexChanged.connect(self.update_checklist)
        self.cluster.textChanged.connect(self.update_checklist)
        self.tripwires.textChanged.connect(self.update_checklist)
        self.update_checklist()

    # -- inputs from the window ----------------------------------------------------------------
    def set_catalogue(self, models: list, sandboxes: dict, scenarios: dict, model_id: str,
                      scenario_id: str) -> None:
        """models: ModelSpecs; sandboxes: ModelSandbox by model id; scenarios: Scenario by id."""
        self.models = {m.id: m for m in models}
        self.model_sandboxes = dict(sandboxes)
        self.scenarios = dict(scenarios)
        for box, items, wanted in ((self.model_box, [(m.id, m.title) for m in models], model_id),
                                   (self.scenario_box, [(s.id, s.title) for s in scenarios.values()],
                                    scenario_id)):
            box.blockSignals(True)
            box.clear()
            for item_id, title in items:
                box.addItem(title, item_id)
            box.setCurrentIndex(max(box.findData(wanted), 0))
            box.blockSignals(False)
        self._scenario_changed()
        self._model_changed()

    def set_gpus(self, inventory) -> None:
        """GPU check boxes from an NVML probe; without GPUs, one disabled box and the reason."""
        for box in self.gpu_boxes:
            box.deleteLater()
        self.gpu_boxes = []
        self.gpu_names = tuple(inventory.names)
        if self.gpu_names:
            self.gpu_note.hide()
            for index, name in enumerate(self.gpu_names):
                box = QCheckBox(f"GPU {index}: {name}")
                box.toggled.connect(self.update_checklist)
                self.gpu_layout.addWidget(box)
                self.gpu_boxes.append(box)
        else:
            box = QCheckBox("no GPU available", enabled=False)
            self.gpu_layout.addWidget(box)
            self.gpu_boxes.append(box)
            self.gpu_note.setText(inventory.status.message)
            self.gpu_note.setToolTip("CPU models and scripted models still run.")
            self.gpu_note.show()
        self.update_checklist()

    def set_engine_problem(self, problem: str | None, memory: int | None = None, cpus: int | None = None,
                           nvidia_runtime: bool | None = None, isolation: tuple = (("runc",), "runc", "")) -> None:
        """None: the engine is ready (with its host's memory and CPUs, and its isolation levels, default
        level and note); otherwise why nothing can be launched."""
        self._engine_problem = problem
        self._engine_limits = {"engine_memory": memory or None, "engine_cpus": cpus or None,
                               "nvidia_runtime": nvidia_runtime}
        self._isolation = isolation
        levels = isolation[0]
        for index in range(1, self.isolation.count()):  # a level the engine lacks cannot be picked
            self.isolation.model().item(index).setEnabled(self.isolation.itemData(index) in levels)
        self.update_checklist()

    def effective_isolation(self) -> tuple[str, str, str]:
        """(level, how it was chosen, what differs under the strongest level) of a launch now: the one
        picked, or the engine's default for this model."""
        levels, default, why = self._isolation
        picked = self.isolation.currentData()
        model = self.current_model()
        if picked is not None:
            return picked, "picked", why
        if model is not None and model.gpus_needed:
            return "runc", "automatic: GPU sandboxes run on runc", why
        return default, "automatic" + (f"; {levels[-1]} only on request" if default != levels[-1] else ""), why

    def set_running(self, running: bool) -> None:
        self._running = running
        for widget in (self.model_box, self.scenario_box, self.add_model_button, self.trials):
            widget.setEnabled(not running)
        self.update_checklist()

    def show_progress(self, state: TrialViewState | None, trial_text: str) -> None:
        key = (id(state), state.state_rev if state else None, trial_text)
        if state is None or key == self._progress_key:
            return
        self._progress_key = key
        step = PROGRESS_STEPS.index(state.state) + 1 if state.state in PROGRESS_STEPS else 0
        if state.state in (TrialState.KILLED, TrialState.ERROR):
            step = len(PROGRESS_STEPS)
        self.progress.setValue(step)
        label = state.state.replace("_", " ") if state.state != IDLE else "getting ready"
        self.progress.setFormat(f"{trial_text}{label}")
        self.progress_detail.setText(state.detail[-300:])

    # -- the plan ------------------------------------------------------------------------------
    def selected_gpus(self) -> tuple[int, ...]:
        return tuple(i for i, box in enumerate(self.gpu_boxes) if box.isEnabled() and box.isChecked())

    def current_model(self):
        return self.models.get(self.model_box.currentData())

    def effective_scenario(self):
        """The chosen scenario with the limits as set in the panel."""
        scenario = self.scenarios.get(self.scenario_box.currentData())
        if scenario is None:
            return None
        return dataclasses.replace(
            scenario, tripwires=scenario.tripwires + self.panel_tripwires()[0],
            limits=dataclasses.replace(scenario.limits, max_rounds=self.max_rounds.value(),
                                       wall_time_s=float(self.wall_time.value())),
            sandbox=dataclasses.replace(scenario.sandbox, memory=self.memory.text().strip(),
                                        cpus=self.cpus.value(), pids_limit=self.pids.value()))

    def panel_tripwires(self) -> tuple[tuple[Tripwire, ...], str | None]:
        """The rules typed in the panel, and what is wrong with the first that does not parse."""
        rules, problem = [], None
        for text in filter(None, (part.strip() for part in self.tripwires.text().split(","))):
            try:
                rules.append(Tripwire.parse(text))
            except UsageError as exc:
                problem = problem or str(exc)
        return tuple(rules), problem

    def plan(self) -> ExperimentPlan:
        model = self.current_model()
        model = model.with_format(self.constrained_format.isChecked()) if model is not None else None
        cluster = self.cluster.text().strip() or None  # Ray gives a cluster's trials their GPUs
        return ExperimentPlan(model, self.effective_scenario(), trials=self.trials.value(),
                              parallel=self.parallel.value(), gpus=() if cluster else self.selected_gpus(),
                              step_mode=self.step_mode.isChecked(), source="console",
                              isolation=self.isolation.currentData(), cluster=cluster,
                              scaffold=self.scaffold.currentData())

    def request_launch(self) -> None:
        if self.launch_button.isEnabled():
            self.launchRequested.emit(self.plan())

    # -- reactions -----------------------------------------------------------------------------
    def _model_changed(self, *_) -> None:
        model = self.current_model()
        if model is not None:
            needs = f" Needs {model.gpus_needed} GPU(s)." if model.gpus_needed else ""
            self.model_description.setText(f"{first_sentence(model.description)}{needs}")
            self.model_description.setToolTip(model.description.strip())
            self.constrained_format.setChecked(model.constrained_format)
        self.update_checklist()

    def _scenario_changed(self, *_) -> None:
        scenario = self.scenarios.get(self.scenario_box.currentData())
        if scenario is not None:
            self.scenario_description.setText(first_sentence(scenario.description))
            self.scenario_description.setToolTip(scenario.description.strip())
            self.task.setText(scenario.task)
            for widget, value in ((self.max_rounds, scenario.limits.max_rounds),
                                  (self.wall_time, int(scenario.limits.wall_time_s)),
                                  (self.cpus, scenario.sandbox.cpus), (self.pids, scenario.sandbox.pids_limit)):
                widget.setValue(value)
            self.memory.setText(scenario.sandbox.memory)
        self.update_checklist()

    def _add_model(self) -> None:
        dialog = AddModelDialog(self)
        if dialog.exec() == QDialog.Accepted and dialog.spec is not None:
            self.addModelRequested.emit(dialog.spec)

    def update_checklist(self, *_) -> None:
        model, scenario = self.current_model(), self.effective_scenario()
        items: list[CheckItem] = []
        if model is not None and scenario is not None:
            gpus = self.selected_gpus()
            if model.gpus_needed:
                if self._engine_limits.get("nvidia_runtime") is False:
                    items.append(CheckItem("GPU runtime", "this engine has no NVIDIA runtime", False,
                                           "install the NVIDIA Container Toolkit; `redline doctor` checks it"))
                per_trial = gpus[:len(gpus) // max(self.parallel.value(), 1)]
                plan = model.gpu_plan(per_trial)
                items.append(CheckItem("GPU plan", f"original on {plan['original'] or 'none'}, free for a replica: "
                                                   f"{plan['free_for_replica'] or 'none'}",
                                       len(per_trial) >= model.gpus_needed, plan["note"] or
                                       f"{model.gpus_needed} GPU(s) per instance"))
            try:
                limits = {k: v for k, v in self._engine_limits.items() if k != "nvidia_runtime"}
                level, note, why = self.effective_isolation()
                items += checklist(launch_spec(self.model_sandboxes[model.id], scenario, gpus, level),
                                   gpu_count=len(self.gpu_names), isolation_note=note, isolation_detail=why,
                                   **limits)
            except RedlineError as exc:
                items.append(CheckItem("Sandbox", str(exc), False))
            problem = self.panel_tripwires()[1]
            gated = any(rule.reads_commands for rule in scenario.tripwires)
            items.append(CheckItem("Tripwires", problem or (", ".join(map(str, scenario.tripwires))
                                   + ("; each command waits for them" if gated else ""))
                                   or "none: only KILL stops a trial early", problem is None))
        self._check_items = items
        rows = "".join(
            f"<tr><td style='color:{'#3ecf6e' if item.ok else '#ff4d4f'}; font-weight:bold'>"
            f"{'&#10003;' if item.ok else '&#10007;'}</td><td style='padding:0 8px'>{item.name}</td>"
            f"<td>{html.escape(item.value)}</td></tr>" for item in items)
        self.checklist.setText(f"<table cellspacing='2'>{rows}</table>")
        self.checklist.setToolTip("\n".join(f"{item.name}: {item.value} {item.detail}".strip()
                                            for item in items))
        problem = self._launch_problem()
        self.launch_button.setEnabled(problem is None)
        self.launch_hint.setText(problem or "")
        self.launch_hint.setVisible(problem is not None)

    def _launch_problem(self) -> str | None:
        if self._running:
            return "A launch is running: kill it or wait for its verdict."
        if self._engine_problem:
            return f"Cannot launch: {self._engine_problem}"
        if self.current_model() is None or self.effective_scenario() is None:
            return "Pick a model and a scenario."
        bad = [item for item in self._check_items if not item.ok]
        if bad:
            return f"Cannot launch: {bad[0].name}: {bad[0].value}"
        try:
            self.plan().validate()
        except RedlineError as exc:
            return f"Cannot launch: {exc}"
        return None

    # -- persisted choices ---------------------------------------------------------------------
    def choices(self) -> dict:
        return {"model": self.model_box.currentData(), "scenario": self.scenario_box.currentData(),
                "trials": self.trials.value()}
