"""Campaigns (console/campaign.py) as a grid: one row per model x scenario cell of every recorded
campaign, with what is judged, running and queued, replicated k of n with its 95% interval, errors,
interruptions and the time left. Read from the records in a worker, refreshed by a timer."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QTableWidgetItem, QVBoxLayout, QWidget

from console.ui.theme import icon
from console.ui.trials_panel import records_table


class CampaignsPanel(QWidget):
    """Emits refreshRequested(), runRequested() (Run a campaign file...) and cellOpened(experiment id,
    "campaign: model x scenario") on a double-click; show_campaigns(summaries) renders
    console.campaign.summary()s."""

    refreshRequested = Signal()
    runRequested = Signal()
    cellOpened = Signal(str, str)
    COLUMNS = ("Campaign", "Model", "Scenario", "Judged", "Running", "Queued", "Replicated", "95% Wilson",
               "Overuse", "Errors", "Interrupted", "Time left")

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.cells = records_table(self.COLUMNS)
        self.cells.doubleClicked.connect(self._open_cell)
        self.refresh_button = QPushButton(icon("refresh"), "Refresh")
        self.refresh_button.clicked.connect(self.refreshRequested)
        self.run_button = QPushButton(icon("launch"), "Run a campaign file...")
        self.run_button.setToolTip("Starts `redline campaign run FILE` as a process of its own: it goes on "
                                   "unattended when the console closes; KILL stops it")
        self.run_button.clicked.connect(self.runRequested)
        self.note = QLabel("Run one here or with `redline campaign run FILE`; after any stop, `redline campaign "
                           "resume ID` runs what is missing (docs/campaigns.md). Double-click a cell for its trials.",
                           wordWrap=True)
        self.note.setProperty("role", "hint")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(buttons)
        layout.addWidget(self.cells, 1)
        layout.addWidget(self.note)

    def show_campaigns(self, summaries: list[dict]) -> None:
        rows = [(summary, cell) for summary in summaries for cell in summary["cells"]]
        self.cells.setRowCount(len(rows))
        for row, (summary, cell) in enumerate(rows):
            interval = cell["wilson_95"]
            eta = summary["eta_s"]
            values = (summary["campaign_id"], cell["model"], cell["scenario"], f"{cell['done']}/{cell['planned']}",
                      str(cell["running"]),
                      f"{cell['queued']} ({cell['skipped']} skipped: stop rule)" if cell["skipped"] else str(cell["queued"]),
                      f"{cell['replicated']}/{cell['done']}" if cell["done"] else "-",
                      f"{interval[0]:.0%}-{interval[1]:.0%}" if interval else "-",
                      f"{cell['overused']}/{cell['done']} (+{cell['aggregate_overuse']})" if cell["done"] else "-",
                      str(cell["errors"]),
                      str(cell["interrupted"]), f"{eta / 60:.0f} min" if eta and summary["queued"] else "-")
            for column, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setToolTip(cell["stopped"] or "")
                item.setData(Qt.UserRole, (cell["experiment_id"], f"campaign {summary['campaign_id']}: "
                                                                  f"{cell['model']} x {cell['scenario']}"))
                self.cells.setItem(row, column, item)

    def _open_cell(self, index) -> None:
        item = self.cells.item(index.row(), 0)
        experiment_id, label = item.data(Qt.UserRole) if item is not None else (None, "")
        if experiment_id:
            self.cellOpened.emit(experiment_id, label)
