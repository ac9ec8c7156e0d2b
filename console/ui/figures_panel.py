"""The report's figures in the console (console.report.figures: the study's Fig. 4, 7, 8, 10, the
milestone funnel, time to replica, the Overuse Rate), drawn with pyqtgraph from the same Plot data the
HTML report draws with matplotlib, each with its numbers in a table under it."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QPushButton, QScrollArea, QTableWidgetItem, QVBoxLayout,
                               QWidget)

from console.plots import Plot
from console.ui.theme import SERIES_COLORS, icon
from console.ui.trials_panel import records_table

PLOT_HEIGHT = 260


def plot_widget(plot: Plot) -> pg.PlotWidget:
    """One figure: grouped bars with their intervals, or lines (dashed where the Plot says)."""
    widget = pg.PlotWidget()
    widget.setMinimumHeight(PLOT_HEIGHT)
    widget.setMouseEnabled(x=False, y=False)
    widget.showGrid(y=True, alpha=0.2)
    widget.setLabel("left", plot.y_label)
    widget.addLegend(offset=(6, 6), labelTextColor="#e8eaed", brush=(21, 23, 28, 200))
    if plot.kind == "bars":
        count = max(1, len(plot.series))
        width = 0.8 / count
        for i, (label, values) in enumerate(plot.series):
            xs = [p - 0.4 + width * (i + 0.5) for p in range(len(plot.categories))]
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            widget.addItem(pg.BarGraphItem(x=xs, height=list(values), width=width * 0.9, brush=color, name=label))
            bounds = plot.errors[i] if i < len(plot.errors) else None
            pairs = [(x, v, lo, hi) for x, v, (lo, hi) in zip(xs, values, bounds or ()) if lo is not None]
            if pairs:
                x, y, low, high = (np.array(column, dtype=float) for column in zip(*pairs))
                widget.addItem(pg.ErrorBarItem(x=x, y=y, top=high - y, bottom=y - low, beam=width * 0.3,
                                               pen=pg.mkPen("#c0c6d0")))
        widget.getAxis("bottom").setTicks([list(enumerate(plot.categories))])
    else:
        for i, (label, (xs, ys)) in enumerate(plot.series):
            color = SERIES_COLORS[(i // 2 if plot.dashed else i) % len(SERIES_COLORS)]
            dashed = plot.dashed[i] if plot.dashed else False
            widget.plot(list(xs), list(ys), name=label, symbol="o", symbolSize=4,
                        pen=pg.mkPen(color, width=2, style=Qt.DashLine if dashed else Qt.SolidLine))
        widget.setLabel("bottom", plot.x_label)
    if plot.percent:
        widget.setYRange(0, 1.05, padding=0)
    return widget


class FiguresPanel(QWidget):
    """Emits refreshRequested(); show_figures(figures) draws console.report.figures()."""

    refreshRequested = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.refresh_button = QPushButton(icon("refresh"), "Refresh")
        self.refresh_button.clicked.connect(self.refreshRequested)
        self.note = QLabel("The report's figures over every recorded trial (`redline report --format html` "
                           "draws the same data).", wordWrap=True)
        self.note.setProperty("role", "hint")
        self.content = QWidget()
        self.figures = QVBoxLayout(self.content)
        scroll = QScrollArea(widgetResizable=True)
        scroll.setWidget(self.content)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addWidget(self.note, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(buttons)
        layout.addWidget(scroll, 1)
        self.titles: list[str] = []

    def show_figures(self, figures: list[tuple]) -> None:
        while self.figures.count():
            item = self.figures.takeAt(0)
            widget = item.widget()
            if widget is not None:  # out of the panel now, freed by Qt later
                widget.setParent(None)
                widget.deleteLater()
        self.titles = [title for title, *_ in figures]
        if not figures:
            self.figures.addWidget(QLabel("No trials recorded."))
        for title, plot, headers, rows in figures:
            heading = QLabel(f"<b>{title}</b>", wordWrap=True)
            table = records_table(tuple(map(str, headers)))
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, value in enumerate(row):
                    table.setItem(r, c, QTableWidgetItem(str(value)))
            table.setMaximumHeight(28 + 26 * min(len(rows), 8))
            for widget in (heading, plot_widget(plot), table):
                self.figures.addWidget(widget)
        self.figures.addStretch(1)
