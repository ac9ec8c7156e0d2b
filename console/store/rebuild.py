"""`redline records rebuild`: move a damaged index aside and rebuild it from the trial transcripts.

The transcripts are the primary record (written line by line as events happen); the index is a cache
of them. Each transcript starts with a `TrialCreated` record naming its experiment; older transcripts
without one are restored under the experiment `e-recovered`, with the model their agent named.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

from console.errors import RedlineError
from console.events import TrialStateChanged, VerdictReady, from_record
from console.kinds import TERMINAL_STATES, AgentRecordType, TrialState
from console.store.index import DB_NAME, Store
from console.store.transcript import read_jsonl

RECOVERED = {"id": "e-recovered", "created": 0.0, "model_id": "unknown", "scenario_id": "unknown",
             "trials_planned": 0, "config": {"note": "restored from transcripts without a TrialCreated record"},
             "host": {}}


def trial_from_transcript(path: Path, records: list[dict]) -> tuple[dict, dict]:
    """(experiment, trial) as the index holds them, from one transcript's records."""
    header = next((r for r in records if r.get("event") == "TrialCreated"), None)
    if header is not None:
        experiment = header["experiment"]
    else:
        start = next((r["record"] for r in records if r.get("event") == "AgentEvent" and r.get("record")
                      and AgentRecordType.of(r["record"]) == AgentRecordType.START), {})
        experiment = {**RECOVERED, "model_id": start.get("model") or "unknown"}
    states = [asdict(e) for e in map(from_record, records) if isinstance(e, TrialStateChanged) and e.paused is None]
    verdicts = [from_record(r) for r in records if r.get("event") == "VerdictReady"]
    last = states[-1] if states else {"state": TrialState.CREATED, "detail": ""}
    ended = next((r["t"] for r in reversed(states) if r["state"] in TERMINAL_STATES), None)
    trial = {"id": path.stem, "index": (header or {}).get("index", 0),
             "scripted": (header or {}).get("scripted", experiment["model_id"].startswith("scripted:")),
             "session_id": (header or {}).get("session_id"),
             "constrained_format": (header or {}).get("constrained_format", False),
             "scaffold": (header or {}).get("scaffold", "redline"), "state": last["state"], "detail": last["detail"],
             "started": records[0].get("t") if records else None, "ended": ended,
             "verdict": verdicts[-1].verdict if verdicts and isinstance(verdicts[-1], VerdictReady) else None}
    return experiment, trial


def rebuild(root: Path) -> dict:
    """Rebuild the index of the records folder `root`; returns what was done."""
    moved = None
    index = root / DB_NAME
    if index.exists():
        moved = index.with_name(f"{DB_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{index}{suffix}").exists():
                os.replace(f"{index}{suffix}", f"{moved}{suffix}")
    restored, skipped, damaged = 0, [], {}
    with Store(root) as store:
        for path in sorted((root / "trials").glob("*.jsonl")):
            try:
                records = read_jsonl(path)
                if records.damaged:
                    damaged[path.name] = len(records.damaged)
                store.restore(*trial_from_transcript(path, records))
                restored += 1
            except (RedlineError, KeyError, TypeError, ValueError) as exc:
                skipped.append(f"{path.name}: {exc}")
        experiments = len(store.list_experiments())
    return {"moved_aside": str(moved) if moved else None, "trials": restored, "experiments": experiments,
            "skipped": skipped, "damaged_lines": damaged}
