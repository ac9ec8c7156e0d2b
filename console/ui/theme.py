"""The dark theme, its two font sizes (desk and projector), colours shared by views, and icons."""

from __future__ import annotations

from functools import cache

from PySide6.QtGui import QColor, QFont, QIcon, QPalette
from PySide6.QtWidgets import QApplication

from console.kinds import Outcome, Role
from console.paths import RESOURCES

STYLE_FILE = RESOURCES / "style" / "dark.qss"
ICONS = RESOURCES / "icons"
MONO_FONT = "DejaVu Sans Mono"
FONT_SIZES = {False: (11, 14, 22), True: (15, 19, 30)}  # large fonts -> (base, big, huge) in points

# Terminal entry kinds (console.viewmodel.state) -> text colour.
TERMINAL_COLORS = {
    "cmd": "#7cc4ff", "stdout": "#d8dde4", "stderr": "#ff9b9b", "result": "#6fdc8c",
    "result_error": "#ff6b6b", "round": "#8a93a3", "meta": "#9aa4b2", "signal": "#ffcf5c",
    "claim": "#d6a8ff", "warn": "#f0b429", "error": "#ff4d4f", "raw": "#b8a58a",
}
# Verdict outcomes: crossing the red line is the alarming result, so "replicated" is red.
OUTCOME_TEXT = {
    Outcome.REPLICATED: "REPLICATED", Outcome.PARTIAL: "PARTIAL", Outcome.FAILED: "DID NOT REPLICATE",
    Outcome.KILLED: "KILLED", Outcome.ERROR: "ERROR",
}
ROLE_COLORS = {
    Role.ORIGINAL_SERVER: "#7cc4ff", Role.ORIGINAL_AGENT: "#7cc4ff", Role.MODEL_SERVER: "#ffcf5c",
    Role.REPLICA_AGENT: "#ffcf5c", Role.VERIFIED_REPLICA: "#ff6b6b",
}
NEW_PROCESS_BACKGROUND = "#3a3414"
GONE_COLOR = "#6b7280"  # what is shown of a sandbox that no longer exists
SERIES_COLORS = ("#4ea1ff", "#ff9a3c", "#3ecf6e", "#d6a8ff", "#ff6b6b", "#ffcf5c", "#5fd3d3", "#c0c6d0")


def stylesheet(large_fonts: bool) -> str:
    base, big, huge = FONT_SIZES[large_fonts]
    return (STYLE_FILE.read_text(encoding="utf-8").replace("@BASE_PT@", str(base))
            .replace("@BIG_PT@", str(big)).replace("@HUGE_PT@", str(huge)).replace("@MONO@", MONO_FONT)
            .replace("@ICONS@", ICONS.as_posix()))


def apply_theme(app: QApplication, large_fonts: bool = False) -> None:
    """Dark palette (for what style sheets do not reach: pyqtgraph, dialogs) plus the style sheet."""
    app.setStyle("Fusion")
    palette = QPalette()
    for role, color in ((QPalette.Window, "#15171c"), (QPalette.WindowText, "#e8eaed"),
                        (QPalette.Base, "#1b1e24"), (QPalette.AlternateBase, "#1d2027"),
                        (QPalette.Text, "#e8eaed"), (QPalette.Button, "#262a33"),
                        (QPalette.ButtonText, "#e8eaed"), (QPalette.Highlight, "#2f5f9e"),
                        (QPalette.HighlightedText, "#ffffff"), (QPalette.ToolTipBase, "#262a33"),
                        (QPalette.ToolTipText, "#e8eaed"), (QPalette.PlaceholderText, "#7a8391")):
        palette.setColor(role, QColor(color))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSize(FONT_SIZES[large_fonts][0])
    app.setFont(font)
    app.setStyleSheet(stylesheet(large_fonts))


@cache
def icon(name: str) -> QIcon:
    return QIcon(str(ICONS / f"{name}.svg"))


def set_style_property(widget, name: str, value) -> None:
    """Change a property the style sheet selects on, and re-apply the style."""
    widget.setProperty(name, value)
    widget.style().unpolish(widget)
    widget.style().polish(widget)
