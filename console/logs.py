"""One logging set-up for Redline's processes (CLI, console, watchdog, reaper).

Everything goes to a rotating log under the records folder (`<data dir>/logs/redline.log`), with
tracebacks; a person at a terminal gets one line per warning on stderr and never a traceback: an
engine hiccup is a sentence, its details are in the log.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys

from console.paths import data_dir

LOG_FILE = "redline.log"
_FILE_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
_log_file = None  # the LogFile of this process, once set up


class OneLine(logging.Formatter):
    """`redline: <message>` (plus the exception's own words), never a traceback."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text += f": {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        if record.levelno >= logging.ERROR and _log_file is not None and not _log_file.failed:
            return f"{self.prefix}: {text} (details: {_log_file.baseFilename})"
        return f"{self.prefix}: {text}"


class LogFile(logging.handlers.RotatingFileHandler):
    """The rotating log; when it cannot be written (a full or read-only folder) it says so once on
    stderr, in one line, instead of logging's traceback on every record."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            exc = sys.exc_info()[1]
            print(f"redline: cannot write the log {self.baseFilename} ({getattr(exc, 'strerror', None) or exc}); "
                  "going on without it", file=sys.stderr)


def log_path():
    return data_dir() / "logs" / LOG_FILE


def setup(component: str, stderr: bool = True, level: int = logging.INFO) -> logging.Logger:
    """Configure the root logger once per process; returns the component's logger. A records folder
    that cannot be written leaves the log on stderr only (the caller reports that folder itself)."""
    root = logging.getLogger()
    if not getattr(root, "_redline_configured", False):
        root.setLevel(level)
        try:
            path = log_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = LogFile(path, maxBytes=2 << 20, backupCount=3, encoding="utf-8")
            handler.setFormatter(logging.Formatter(_FILE_FORMAT))
            root.addHandler(handler)
            global _log_file
            _log_file = handler
        except Exception:  # an unusable records folder: the command itself reports it
            pass
        if stderr:
            console = logging.StreamHandler(sys.stderr)
            console.setLevel(logging.WARNING)
            console.setFormatter(OneLine(f"redline {component}" if component != "cli" else "redline"))
            root.addHandler(console)
        root._redline_configured = True
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        logging.getLogger("docker").setLevel(logging.WARNING)
    return logging.getLogger(f"redline.{component}")
