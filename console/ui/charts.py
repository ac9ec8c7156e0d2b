"""Telemetry charts: GPU utilization, GPU memory stacked per instance, power, temperature, and the
sandbox containers' CPU and memory, all drawn from a TieredHistory snapshot.

Plots are created once; curves are created the first time their series appears and then only get
`setData` on a timer (2 Hz), with a fixed x range so `clipToView` can skip what is off screen.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from console.telemetry import TelemetryStatus, TieredHistory
from console.ui.theme import FONT_SIZES, GONE_COLOR, SERIES_COLORS

TRIPWIRE_COLORS = {"kill": "#ff6b6b", "freeze": "#c58cff", "alert": "#f0b429"}

REFRESH_MS = 500
LIVE_WINDOW_S = 300.0
MIN_LIVE_WINDOW_S = 60.0
GIB = 1024.0**3
MIB = 1024.0**2

pg.setConfigOptions(antialias=False, background="#15171c", foreground="#c0c6d0")


class _Chart:
    """One plot and its curves by series key."""

    def __init__(self, layout: pg.GraphicsLayoutWidget, title: str, unit: str, row: int, col: int):
        self.view = layout
        self.plot = layout.addPlot(row=row, col=col, title=title,
                                   axisItems={"bottom": pg.DateAxisItem(orientation="bottom")})
        self.plot.setLabel("left", unit)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setClipToView(True)
        self.plot.setDownsampling(auto=True, mode="peak")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.enableAutoRange(x=False, y=True)
        self.legend = self.plot.addLegend(offset=(6, 6), labelTextColor="#e8eaed", brush=(21, 23, 28, 200))
        self.curves: dict = {}
        self.cursor = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#ffcf5c", width=1))
        self.cursor.hide()
        self.plot.addItem(self.cursor, ignoreBounds=True)
        self.end = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(GONE_COLOR, width=2, style=Qt.DashLine))
        self.end.hide()  # where the trial's sandbox ended: nothing right of it is that sandbox
        self.plot.addItem(self.end, ignoreBounds=True)
        self.marks: list[pg.InfiniteLine] = []  # tripwires that fired, where on the time axis

    def set_marks(self, marks: list[tuple[float, str, str]]) -> None:
        """(t, rule, action) of each tripwire firing, as a labelled line (red for a kill, amber else)."""
        for line in self.marks:
            self.plot.removeItem(line)
        self.marks = []
        for t, rule, action in marks:
            line = pg.InfiniteLine(pos=t, angle=90, movable=False, label=rule,
                                   labelOpts={"position": 0.9, "color": TRIPWIRE_COLORS.get(action, "#f0b429"),
                                              "rotateAxis": (1, 0), "anchors": [(0, 0), (0, 0)]},
                                   pen=pg.mkPen(TRIPWIRE_COLORS.get(action, "#f0b429"), width=2, style=Qt.DotLine))
            self.plot.addItem(line, ignoreBounds=True)
            self.marks.append(line)

    def curve(self, key, label: str, fill: bool = False) -> pg.PlotDataItem:
        curve = self.curves.get(key)
        if curve is None:
            used = {c.opts["pen"].color().name() for c in self.curves.values()}
            free = [c for c in SERIES_COLORS if QColor(c).name() not in used]  # curves come and go
            color = QColor(free[0] if free else SERIES_COLORS[len(self.curves) % len(SERIES_COLORS)])
            curve = self.plot.plot(name=label, pen=pg.mkPen(color, width=1))
            if fill:
                fill_color = QColor(color)
                fill_color.setAlpha(110)
                curve.setFillLevel(0)
                curve.setBrush(fill_color)
            self.curves[key] = curve
        return curve

    def retain(self, keys: set) -> None:
        """Remove the curves of series that are gone (a forgotten trial's sandbox): a curve and its
        legend entry are Qt objects, which would otherwise pile up trial after trial."""
        for key in [k for k in self.curves if k not in keys]:
            curve = self.curves.pop(key)
            self.legend.removeItem(curve)
            self.plot.removeItem(curve)

    def set_x_range(self, start: float, end: float) -> None:
        self.plot.setXRange(start, end, padding=0)

    def set_fonts(self, point_size: int) -> None:
        font = QFont()
        font.setPointSize(point_size)
        for name in ("left", "bottom"):
            self.plot.getAxis(name).setStyle(tickFont=font)
            self.plot.getAxis(name).label.setFont(font)
        self.plot.titleLabel.setText(self.plot.titleLabel.text, size=f"{point_size}pt")


class TelemetryCharts(QWidget):
    """GPU charts (hidden with a note when there is no GPU) above the container charts."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.note = QLabel(objectName="noGpuNote", wordWrap=True)
        self.note.hide()
        self.gone = QLabel(wordWrap=True, visible=False)
        self.gone.setProperty("role", "warning")
        self._ended: float | None = None
        self._marks: list[tuple[float, str, str]] = []
        self.gpu_view = pg.GraphicsLayoutWidget()
        self.container_view = pg.GraphicsLayoutWidget()
        self.gpu_util = _Chart(self.gpu_view, "GPU utilization", "%", 0, 0)
        self.gpu_memory = _Chart(self.gpu_view, "GPU memory by instance (stacked)", "GiB", 0, 1)
        self.gpu_power = _Chart(self.gpu_view, "GPU power", "W", 1, 0)
        self.gpu_temperature = _Chart(self.gpu_view, "GPU temperature", "°C", 1, 1)
        self.container_cpu = _Chart(self.container_view, "Sandbox CPU", "% of a core", 0, 0)
        self.container_memory = _Chart(self.container_view, "Sandbox memory", "MiB", 0, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.note)
        layout.addWidget(self.gone)
        layout.addWidget(self.gpu_view, 2)
        layout.addWidget(self.container_view, 1)
        self.history: TieredHistory | None = None
        self.trial_id: str | None = None
        self.fixed_range: tuple[float, float] | None = None  # replay: the trial's span; live: None
        self._gpu_status: TelemetryStatus | None = None
        # One chart per tick, in turn: each still refreshes every REFRESH_MS, but the GUI thread never
        # redraws all six at once (that took over 100 ms on 2 cores, a visible stall).
        self._turn = 0
        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS // len(self.charts()))
        self._timer.timeout.connect(self._refresh_next)
        self._timer.start()

    def charts(self) -> list[_Chart]:
        return [self.gpu_util, self.gpu_memory, self.gpu_power, self.gpu_temperature,
                self.container_cpu, self.container_memory]

    def set_large_fonts(self, large: bool) -> None:
        for chart in self.charts():
            chart.set_fonts(FONT_SIZES[large][0] - 1)

    def show_history(self, history: TieredHistory, trial_id: str | None,
                     fixed_range: tuple[float, float] | None = None) -> None:
        """Draw `history` (live: the console's, following now; replay: the trial's, over its span)."""
        if history is not self.history:
            for chart in self.charts():
                chart.retain(set())
        self.history, self.trial_id, self.fixed_range = history, trial_id, fixed_range
        if fixed_range is None:
            self.set_cursor(None)
        self.refresh()

    def set_cursor(self, t: float | None) -> None:
        """A replay's position as a vertical line on every chart (None: no line)."""
        for chart in self.charts():
            chart.cursor.setVisible(t is not None)
            if t is not None:
                chart.cursor.setValue(t)

    def set_ended(self, t: float | None) -> None:
        """The shown trial's sandbox is gone since t (None: it runs, or no trial): said above the
        charts and marked on each, so its last data is never read as live."""
        if t == self._ended:
            return
        self._ended = t
        self.gone.setVisible(t is not None)
        if t is not None:
            self.gone.setText(f"Sandbox gone since {time.strftime('%H:%M:%S', time.localtime(t))} (dashed line): "
                              "its curves stop there; nothing after it is that sandbox.")
        for chart in self.charts():
            chart.end.setVisible(t is not None)
            if t is not None:
                chart.end.setValue(t)

    def set_tripwire_marks(self, alarms: list) -> None:
        """Every tripwire that fired in the shown trial (console.events.TripwireFired), marked where it
        fired on each chart: an alert is a behaviour seen, on the same time axis as the load."""
        marks = [(a.t, a.rule, a.action) for a in alarms]
        if marks == self._marks:
            return
        self._marks = marks
        for chart in self.charts():
            chart.set_marks(marks)

    def set_gpu_status(self, status: TelemetryStatus) -> None:
        self._gpu_status = status
        self._update_gpu_visibility()

    def _update_gpu_visibility(self, have_gpu_data: bool = False) -> None:
        status = self._gpu_status
        no_gpu = not have_gpu_data and status is not None and not status.available
        self.gpu_view.setVisible(not no_gpu)
        if no_gpu:
            self.note.setText(f"No GPU telemetry: {status.message}. Showing the sandbox's CPU and memory only.")
        self.note.setVisible(no_gpu)

    def _refresh_next(self) -> None:
        charts = self.charts()
        self._turn = (self._turn + 1) % len(charts)
        if charts[self._turn].view.isVisible():
            self.refresh(only=charts[self._turn])

    def refresh(self, only: _Chart | None = None) -> None:
        """Redraw every chart from the history, or just `only`."""
        if self.history is None or not self.isVisible():
            return
        gpu = self.history.snapshot(("gpu",))
        processes = self.history.snapshot(("proc",) + ((self.trial_id,) if self.trial_id else ()))
        containers = self.history.snapshot(("container",))
        self._update_gpu_visibility(bool(gpu))
        gpu_fields = {"util": (self.gpu_util, 1.0, "GPU {}"), "power": (self.gpu_power, 1.0, "GPU {}"),
                      "temp": (self.gpu_temperature, 1.0, "GPU {}"),
                      "mem": (self.gpu_memory, GIB, "GPU {} used (all processes)")}
        container_fields = {"cpu": (self.container_cpu, 1.0, "sandbox {:.10}"),
                            "mem": (self.container_memory, MIB, "sandbox {:.10}")}
        shown: dict = {chart: set() for chart in self.charts()}
        for fields, snapshot in ((gpu_fields, gpu), (container_fields, containers)):
            for (_, source, field), series in snapshot.items():
                if field in fields:
                    chart, scale, label = fields[field]
                    shown[chart].add(source)
                    if only in (None, chart):
                        chart.curve(source, label.format(source)).setData(series.t, series.v / scale)
        if only in (None, self.gpu_memory):
            shown[self.gpu_memory] |= self._stack_memory(processes)
        for chart, keys in shown.items():
            if only in (None, chart):
                chart.retain(keys)
        if self.fixed_range is not None:
            start, end = self.fixed_range
        else:  # the last LIVE_WINDOW_S seconds, or less while there is less data
            end = time.time()
            oldest = min((series.t[0] for snapshot in (gpu, processes, containers)
                          for series in snapshot.values() if len(series.t)), default=end)
            start = max(end - LIVE_WINDOW_S, min(oldest, end - MIN_LIVE_WINDOW_S))
        for chart in self.charts():
            if only in (None, chart):
                chart.set_x_range(start, end)

    def _stack_memory(self, processes: dict) -> set:
        """GPU memory per owner (instance, or 'candidate' for unattributed sandbox processes),
        stacked on a common time base so the top line is the trial's total; returns the owners."""
        owners = {key[2]: series for key, series in processes.items() if key[-1] == "mem"}
        if not owners:
            return set()
        base = np.unique(np.concatenate([series.t for series in owners.values()]))
        total = np.zeros(len(base))
        for position, (owner, series) in enumerate(sorted(owners.items())):
            values = np.nan_to_num(series.v.astype(np.float64)) / GIB
            total = total + np.interp(base, series.t, values, left=0.0, right=0.0)
            curve = self.gpu_memory.curve(owner, owner, fill=True)
            curve.setZValue(-position)  # larger totals behind, so every band stays visible
            curve.setData(base, total.copy())
        return set(owners)
