"""Per-trial transcripts: one JSON object per line, appended and flushed as events happen.

Each write is flushed to the OS at once (about 5 µs a line with its encoding, measured here), so a
console crash loses at most the line being written; a truncated last line is skipped on reading.
Console events are written in `console.events.to_record` form (`{"event": <class>, ...}`; an agent
line inside its AgentEvent); telemetry samples in their own `to_record` form.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

log = logging.getLogger("redline.records")

QUOTA_BYTES = 32 << 20  # per trial; past it only the records that say how the trial went are kept
ESSENTIAL = frozenset({"TrialCreated", "TrialStateChanged", "MilestoneReached", "VerdictReady"})


class TranscriptWriter:
    """Appends records to one transcript; safe to share between the threads of one trial. Past
    `quota` bytes it writes one `TranscriptTruncated` record and from then on only ESSENTIAL records
    (state changes, milestones, the verdict), so a flooding agent cannot fill the disk."""

    def __init__(self, path: Path, quota: int = QUOTA_BYTES):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.quota, self.size, self.truncated = quota, self.path.stat().st_size, False

    def write(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            if self.size + len(line) > self.quota and record.get("event") not in ESSENTIAL:
                if not self.truncated:
                    self.truncated = True
                    line = json.dumps({"event": "TranscriptTruncated", "quota_bytes": self.quota}) + "\n"
                else:
                    return
            self._file.write(line)
            self._file.flush()
            self.size += len(line.encode("utf-8")) if not line.isascii() else len(line)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TranscriptWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Transcript(list):
    """A transcript's records, and the numbers of the lines that were damaged and skipped."""

    damaged: tuple[int, ...] = ()


def read_jsonl(path: Path) -> Transcript:
    """Every record of a transcript; a missing file is an empty transcript.

    A damaged line (a crash mid-write cuts the last one; a disk fault anywhere) is skipped, counted in
    `damaged` and logged: the rest of the trial stays readable for report, export, replay and rebuild.
    """
    path = Path(path)
    records = Transcript()
    if not path.exists():
        return records
    lines = path.read_bytes().split(b"\n")
    complete, last = lines[:-1], lines[-1]  # `last` is b"" when the file ends with a newline
    damaged = []
    for number, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            damaged.append(number)
    if last.strip():
        try:
            record = json.loads(last.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None  # cut short by a crash mid-write: expected, not damage
        if isinstance(record, dict):
            records.append(record)
    if damaged:
        records.damaged = tuple(damaged)
        log.warning("%s: skipped %d damaged line(s) (line %s)", path, len(damaged),
                    ", ".join(map(str, damaged[:5])) + (", ..." if len(damaged) > 5 else ""))
    return records
