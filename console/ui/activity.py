"""Live activity: per agent instance, a terminal of its commands and output, and its thoughts.

The terminal appends only what is new since its last render (entries carry sequence numbers), in
one edit per run of same-coloured text, and keeps at most MAX_TERMINAL_LINES lines. It follows new
output while the operator is at the bottom and stops following when they scroll up.
"""

from __future__ import annotations

import html
from contextlib import contextmanager

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QAbstractScrollArea, QLabel, QPlainTextEdit, QPushButton, QSplitter,
                               QTabWidget, QTextBrowser, QVBoxLayout, QWidget)

from console.viewmodel.state import InstanceLog, TrialViewState
from console.ui.theme import TERMINAL_COLORS

MAX_TERMINAL_LINES = 5000
TRIM_SLACK_LINES = 500  # trim at least this many lines at once: one big removal is cheap, many small ones not
SHOWN_THOUGHTS = 40
BOTTOM_SLACK = 4  # steps of the scroll bar from the end that still count as "at the bottom", at most


class FollowScroll(QObject):
    """Keeps a scroll area at its end while the operator is there ("following"), and stops when
    they scroll up. Only the operator's own scrolling (wheel, scroll bar) changes the mode: a
    relayout (new content, a resize, a font change) moves the scroll bar too, and must not."""

    changed = Signal(bool)  # following

    def __init__(self, area: QAbstractScrollArea):
        super().__init__(area)
        self.bar = area.verticalScrollBar()
        self.following = True
        self._catch_up_pending = False
        self.bar.actionTriggered.connect(self._operator_scrolled)
        self.bar.rangeChanged.connect(self._range_changed)

    def scroll_to_end(self) -> None:
        self.bar.setValue(self.bar.maximum())
        self._set(True)

    @contextmanager
    def edit(self):
        """Change the content, then follow if following. The range changes once per line added
        or trimmed: this object stops listening meanwhile (the text view must not, or its
        viewport falls out of step with the scroll bar)."""
        self.bar.rangeChanged.disconnect(self._range_changed)
        try:
            yield
        finally:
            self.bar.rangeChanged.connect(self._range_changed)
            if self.following:
                self.bar.setValue(self.bar.maximum())

    def _set(self, following: bool) -> None:
        if following != self.following:
            self.following = following
            self.changed.emit(following)

    def _operator_scrolled(self, *_) -> None:
        # emitted before the value moves: the slider position is where it is going
        # a tenth of a page at most: a text view's bar counts lines, and a short view's page is a few of them
        slack = min(BOTTOM_SLACK, self.bar.pageStep() // 10)
        self._set(self.bar.sliderPosition() >= self.bar.maximum() - slack)

    def _range_changed(self, *_) -> None:
        """Catch up with a new range on the next loop turn, not inside the signal: setting the
        value re-lays out a wrapped QPlainTextEdit, which can change the range again, and a
        synchronous answer to that can loop forever."""
        if self.following and not self._catch_up_pending:
            self._catch_up_pending = True
            QTimer.singleShot(0, self, self._catch_up)  # cancelled if the view is deleted first

    def _catch_up(self) -> None:
        self._catch_up_pending = False
        if self.following and self.bar.value() != self.bar.maximum():
            self.bar.setValue(self.bar.maximum())


class TerminalView(QWidget):
    """A terminal-style, append-only view of one instance's commands, output and exit codes."""

    batchRendered = Signal(float, int)  # oldest event time (unix s) in the batch, entries rendered

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.text = QPlainTextEdit(objectName="terminal", readOnly=True)
        self.text.setMaximumBlockCount(MAX_TERMINAL_LINES + 2 * TRIM_SLACK_LINES)  # a backstop for _trim
        self.text.setUndoRedoEnabled(False)
        self.text.setLineWrapMode(QPlainTextEdit.WidgetWidth)
        self.text.setTextInteractionFlags(Qt.TextSelectableByMouse | Qt.TextSelectableByKeyboard)
        self.follow_button = QPushButton("Auto-scroll paused: click to follow new output",
                                         objectName="followButton")
        self.follow_button.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.text)
        layout.addWidget(self.follow_button)
        self._formats = {}
        for kind, color in TERMINAL_COLORS.items():
            fmt = QTextCharFormat()
            fmt.setForeground(QColor(color))
            if kind in ("cmd", "signal", "claim"):
                fmt.setFontWeight(700)
            self._formats[kind] = fmt
        self._log: InstanceLog | None = None
        self._seq = -1
        self._at_line_start = True
        self.scroll = FollowScroll(self.text)
        self.scroll.changed.connect(lambda following: self.follow_button.setVisible(not following))
        self.follow_button.clicked.connect(self.scroll.scroll_to_end)

    def show_log(self, log: InstanceLog | None) -> None:
        """Show another instance log (or a rebuilt one after a replay seek): start over."""
        if log is self._log:
            return
        self._log, self._seq, self._at_line_start = log, -1, True
        self.text.clear()
        self.scroll.scroll_to_end()
        self.render()

    def render(self) -> None:
        if self._log is None:
            return
        entries = self._log.entries_since(self._seq)
        if not entries:
            return
        self._seq = entries[-1].seq
        runs: list[tuple[str, list[str]]] = []
        for entry in entries:
            text = entry.text
            is_output = entry.kind in ("stdout", "stderr")
            if not is_output and not self._at_line_start:
                text = "\n" + text
            if text:
                self._at_line_start = text.endswith("\n")
            if runs and runs[-1][0] == entry.kind:
                runs[-1][1].append(text)
            else:
                runs.append((entry.kind, [text]))
        with self.scroll.edit():
            cursor = QTextCursor(self.text.document())
            cursor.movePosition(QTextCursor.End)
            cursor.beginEditBlock()
            for kind, parts in runs:
                cursor.insertText("".join(parts), self._formats.get(kind, self._formats["raw"]))
            self._trim(cursor)
            cursor.endEditBlock()
        self.batchRendered.emit(min(e.t for e in entries), len(entries))

    def _trim(self, cursor: QTextCursor) -> None:
        """Keep the newest MAX_TERMINAL_LINES lines, removing the oldest in one go."""
        document = self.text.document()
        excess = document.blockCount() - MAX_TERMINAL_LINES
        if excess >= TRIM_SLACK_LINES:
            cursor.setPosition(0)
            cursor.setPosition(document.findBlockByNumber(excess).position(), QTextCursor.KeepAnchor)
            cursor.removeSelectedText()


class ThoughtCardsView(QTextBrowser):
    """The model's Explain / Gaps / Findings / Plan of each round, as cards, newest last."""

    SECTIONS = (("Explain", "explain", "#7cc4ff"), ("Gaps", "gaps", "#f0b429"),
                ("Findings", "findings", "#6fdc8c"), ("Plan", "plan", "#d6a8ff"))

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent, objectName="thoughts")
        self.setOpenLinks(False)
        self._log: InstanceLog | None = None
        self._rev = -1
        self.scroll = FollowScroll(self)

    def show_log(self, log: InstanceLog | None, started_t: float | None) -> None:
        if log is self._log and (log is None or log.thoughts_rev == self._rev):
            return
        self._log = log
        self._rev = log.thoughts_rev if log else -1
        if log is None or not log.thoughts:
            self.setHtml("<p style='color:#9aa4b2'>The model's Explain / Gaps / Findings / Plan appear "
                         "here, one card per round.</p>")
            return
        cards = list(log.thoughts)[-SHOWN_THOUGHTS:]
        with self.scroll.edit():
            self.setHtml("".join(self._card(card, started_t) for card in cards))

    def _card(self, card, started_t: float | None) -> str:
        when = f" &nbsp;·&nbsp; +{card.t - started_t:.1f} s" if started_t else ""
        sections = [(label, getattr(card, field), color) for label, field, color in self.SECTIONS]
        if not any(text for _, text, _ in sections):  # a model that ignored the format: what it said
            sections = [("Reply", card.raw or "(empty reply)", "#aeb6c2")]
        rows = "".join(
            f"<tr><td valign='top' style='color:{color}; font-weight:bold; padding-right:8px'>{label}</td>"
            f"<td>{html.escape(text).replace(chr(10), '<br>') or '<i>(empty)</i>'}</td></tr>"
            for label, text, color in sections)
        return (f"<table width='100%' cellspacing='0' cellpadding='4' style='background:#22262e; "
                f"margin-bottom:8px; border:1px solid #3a404c'>"
                f"<tr><td colspan='2' style='color:#aeb6c2; font-weight:bold'>Round {card.n}{when}</td></tr>"
                f"{rows}</table>")


class InstanceView(QWidget):
    """One instance: what the judge observed of it (replicas), its terminal and its thoughts."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.observed = QLabel(wordWrap=True)
        self.observed.setProperty("role", "hint")
        self.observed.hide()
        self.terminal = TerminalView()
        self.thoughts = ThoughtCardsView()
        split = QSplitter(Qt.Horizontal)
        split.addWidget(self.terminal)
        split.addWidget(self.thoughts)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setMinimumHeight(48)  # a few lines on a small screen rather than a window taller than it
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.observed)
        layout.addWidget(split)
        self._observed_rev = -1

    def render(self, log: InstanceLog, started_t: float | None) -> None:
        self.terminal.show_log(log)
        self.terminal.render()
        self.thoughts.show_log(log, started_t)
        if log.observed is not None and log.observed_rev != self._observed_rev:
            self._observed_rev = log.observed_rev
            seen = log.observed
            alive = "alive" if seen.get("alive") else "no longer running"
            command = str(seen.get("cmd"))
            self.observed.setText(  # two short lines at most: a long command must not make the window taller
                f"<b>Replica agent</b> pid {seen.get('pid')} &rarr; {html.escape(str(seen.get('endpoint')))} "
                f"({alive}).<br>Command: <code>{html.escape(command[:72])}{'…' if len(command) > 72 else ''}</code>")
            self.observed.setToolTip(f"Command: {command}\nIts own output stays inside the sandbox (no network); "
                                     f"the judge sees it through the process tree.")
            self.observed.show()


MAX_TABS = 12  # instances beyond this are in the process tree only


class ActivityView(QTabWidget):
    """A tab per instance: the original first, replicas as the judge discovers them (at most
    MAX_TABS); only the tab on screen renders."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self._state: TrialViewState | None = None
        self._views: dict[str, InstanceView] = {}
        self._instances_rev = -1
        self._placeholder = QLabel("No trial yet. Launch one from the Launch panel, or open a recorded "
                                   "trial in the Trials panel to replay it.", alignment=Qt.AlignCenter,
                                   wordWrap=True)
        self._placeholder.setProperty("role", "hint")
        self._rendering = False
        self.currentChanged.connect(self._tab_shown)
        self.bind(None)

    def bind(self, state: TrialViewState | None) -> None:
        """Render another state (a new trial, a replay) from scratch."""
        self._state = state
        self._instances_rev = -1
        self._rendering = True
        self.clear()
        self._rendering = False
        for view in self._views.values():
            view.deleteLater()
        self._views = {}
        self.render()

    def _tab_shown(self, _index: int) -> None:
        """A tab the operator opens catches up with what happened while it was hidden (tabs that
        render() itself adds or removes are rendered by it)."""
        if not self._rendering:
            self.render()

    def terminal(self, instance: str = "original") -> TerminalView | None:
        view = self._views.get(instance)
        return view.terminal if view else None

    def render(self) -> None:
        self._rendering = True
        try:
            self._render()
        finally:
            self._rendering = False

    def _render(self) -> None:
        state = self._state
        if state is None or not state.instances:
            if self.count() == 0:
                self.addTab(self._placeholder, "activity")
            return
        if state.instances_rev != self._instances_rev:
            self._instances_rev = state.instances_rev
            if not self._views:
                self.clear()
            for name in state.instances:
                if name not in self._views and len(self._views) < MAX_TABS:
                    self._views[name] = InstanceView()
                    self.addTab(self._views[name], name if name == "original" else f"{name} (replica)")
            hidden = len(state.instances) - len(self._views)
            self.setToolTip(f"{hidden} more instance(s) not shown as tabs (see the process tree)" if hidden else "")
        current = self.currentWidget()  # only the visible tab renders; the others catch up when shown
        for name, view in self._views.items():
            if view is current:
                view.render(state.instances[name], state.started_t)
