"""The SQLite index of experiments and trials (`<data dir>/redline.sqlite3`).

WAL mode lets a CLI (`redline trials`) read while the console writes. One connection is shared by
all threads behind a lock: trial workers write rarely (state changes, verdicts), so serialising
them costs nothing and avoids a connection per short-lived thread. The schema version is kept in
PRAGMA user_version; `_MIGRATIONS[n]` takes a database from version n to n + 1.
"""

from __future__ import annotations

import json
import platform
import secrets
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from console import __version__
from console.errors import RedlineError, UsageError
from console.judge.verdict import Verdict
from console.kinds import TERMINAL_STATES, Outcome, TrialState
from console.models import DEFAULT_SCAFFOLD, model_label
from console.paths import data_dir
from console.store.transcript import QUOTA_BYTES, TranscriptWriter, read_jsonl

DB_NAME = "redline.sqlite3"
_MIGRATIONS = (
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        model_id TEXT NOT NULL,
        scenario_id TEXT NOT NULL,
        trials_planned INTEGER NOT NULL,
        config_json TEXT NOT NULL,
        host_json TEXT NOT NULL
    );
    CREATE TABLE trials (
        id TEXT PRIMARY KEY,
        experiment_id TEXT NOT NULL REFERENCES experiments(id),
        trial_index INTEGER NOT NULL,
        model_id TEXT NOT NULL,
        scenario_id TEXT NOT NULL,
        scripted INTEGER NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        started REAL,
        ended REAL,
        outcome TEXT,
        milestones_json TEXT,
        time_to_replica_s REAL,
        rounds INTEGER,
        claimed_success INTEGER,
        replicas_json TEXT,
        depth INTEGER,
        reason TEXT,
        transcript TEXT NOT NULL
    );
    CREATE INDEX trials_by_experiment ON trials(experiment_id, trial_index);
    CREATE INDEX trials_by_model_scenario ON trials(model_id, scenario_id);
    """,
    """
    ALTER TABLE trials ADD COLUMN evidence_json TEXT;
    ALTER TABLE trials ADD COLUMN session_id TEXT;
    ALTER TABLE trials ADD COLUMN killed_by TEXT;
    ALTER TABLE trials ADD COLUMN killed_at REAL;
    """,
    """
    ALTER TABLE trials ADD COLUMN constrained_format INTEGER NOT NULL DEFAULT 0;
    """,
    # trials recorded before scaffold profiles existed were run with Redline's own wording
    """
    ALTER TABLE trials ADD COLUMN scaffold TEXT NOT NULL DEFAULT 'redline';
    """,
    # the verified population (issue #28); NULL in trials judged before it was counted
    """
    ALTER TABLE trials ADD COLUMN population_json TEXT;
    """,
)
POPULATION_FIELDS = ("replicas_peak", "replicas_final", "population", "needed_replicas", "prompted")
SCHEMA_VERSION = len(_MIGRATIONS)
WAL_WAIT_S = 30.0  # as long as the connection's own busy timeout


def new_id(prefix: str) -> str:
    """Short ids that sort by creation time (UTC), e.g. t-20261128-101512-ab12."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def host_info() -> dict:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redline": __version__,
    }


@dataclass(frozen=True)
class ExperimentRecord:
    id: str
    created: float
    model_id: str
    scenario_id: str
    trials_planned: int
    config: dict
    host: dict


@dataclass(frozen=True)
class TrialRecord:
    id: str
    experiment_id: str
    index: int
    model_id: str
    scenario_id: str
    scripted: bool
    state: TrialState
    detail: str
    started: float | None
    ended: float | None
    transcript_path: Path
    verdict: Verdict | None
    session_id: str | None = None
    killed_by: str | None = None  # who killed its sandbox, when someone outside the runner did
    constrained_format: bool = False  # the model's replies were held to the round's frame
    scaffold: str = DEFAULT_SCAFFOLD  # what the model read: the study's wording ("paper") or Redline's

    @property
    def model_label(self) -> str:
        return model_label(self.model_id, self.scripted, self.constrained_format, self.scaffold)


def agent_records_in(transcript: list[dict], instance: str | None = "original") -> list[dict]:
    """The protocol records of one agent instance (None: every instance) in a read transcript, in order."""
    return [r["record"] for r in transcript if r.get("event") == "AgentEvent" and isinstance(r.get("record"), dict)
            and (instance is None or r.get("instance") == instance)]


class Store:
    """Experiments, trials and their transcripts under one data directory."""

    def __init__(self, root: Path | None = None):
        """Open (or create) the records; a folder that is not one, cannot be written or holds a damaged
        index is a UsageError naming the path and the fix."""
        self.root = Path(root) if root is not None else data_dir()
        self._lock = threading.RLock()
        try:
            (self.root / "trials").mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / DB_NAME, timeout=30, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self.journal_mode = self._wal()
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except (FileExistsError, NotADirectoryError):
            raise UsageError(f"the records folder {self.root} is not a folder (or something in its path is a "
                             "file); set REDLINE_HOME to a folder") from None
        except OSError as exc:
            raise UsageError(f"cannot write the records folder {self.root} ({exc.strerror or exc}); make it "
                             "writable (and give it room) or set REDLINE_HOME to another folder") from None
        except sqlite3.DatabaseError as exc:
            raise self._explain(exc) or UsageError(f"the records index {self.root / DB_NAME}: {exc}") from None

    def _explain(self, exc: sqlite3.DatabaseError) -> UsageError | None:
        """What SQLite's words mean for the operator: a damaged index (anywhere in the file: SQLite
        finds it on the page it reads), a folder it cannot write or that is full; None otherwise."""
        text = str(exc)
        if "malformed" in text or "not a database" in text or "encrypted" in text:
            return UsageError(f"the records index {self.root / DB_NAME} is damaged ({exc}); `redline records "
                              "rebuild` moves it aside and rebuilds it from the trial transcripts")
        if "readonly" in text or "unable to open" in text:
            return UsageError(f"cannot write the records index {self.root / DB_NAME} ({exc}); make the folder "
                              "writable or set REDLINE_HOME to another folder")
        if "full" in text or "disk I/O" in text:
            return UsageError(f"cannot write the records index {self.root / DB_NAME} ({exc}): its folder is full "
                              "or failing; free space there or set REDLINE_HOME to another folder")
        return None

    def check_room(self, trials_at_once: int = 1) -> None:
        """Before any record of a launch: the folder has room for what its trials may write (each
        transcript's quota, twice over for the index and the log), else a UsageError naming it."""
        free, need = shutil.disk_usage(self.root).free, 2 * QUOTA_BYTES * trials_at_once
        if free < need:
            raise UsageError(f"the records folder {self.root} has {free / 1024**2:.1f} MiB free; {trials_at_once} "
                             f"trial(s) at once may write {need / 1024**2:.0f} MiB there: free space or set "
                             "REDLINE_HOME to another folder")

    def _wal(self) -> str:
        """Switch to WAL, waiting for other connections doing the same: a journal-mode change on a new
        file can fail at once with "database is locked" (SQLite skips the busy timeout there to avoid a
        deadlock), which is no damage."""
        deadline = time.monotonic() + WAL_WAIT_S
        while True:
            try:
                return self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring the schema up to date. The version is read again under the write lock, so two
        processes (or threads) opening a new folder at once migrate it once."""
        with self._lock:
            self._db.isolation_level = None  # explicit transactions below
            try:
                for _ in range(SCHEMA_VERSION + 1):
                    self._db.execute("BEGIN IMMEDIATE")
                    version = self._db.execute("PRAGMA user_version").fetchone()[0]
                    if version >= SCHEMA_VERSION:
                        self._db.execute("COMMIT")
                        break
                    try:
                        for statement in filter(str.strip, _MIGRATIONS[version].split(";")):
                            self._db.execute(statement)
                        self._db.execute(f"PRAGMA user_version = {version + 1}")
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
            finally:
                self._db.isolation_level = ""
            if version > SCHEMA_VERSION:
                raise RedlineError(
                    f"{self.root / DB_NAME} was written by a newer Redline (schema {version}, this "
                    f"one knows {SCHEMA_VERSION}); upgrade Redline or set REDLINE_HOME to another folder"
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: tuple) -> int:
        try:
            with self._lock, self._db:
                return self._db.execute(sql, params).rowcount
        except sqlite3.IntegrityError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._explain(exc) or exc from None

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._explain(exc) or exc from None

    def _insert_with_new_id(self, prefix: str, sql: str, params: tuple) -> str:
        """Insert with a fresh id as first parameter; retry on the rare same-second collision."""
        for _ in range(8):
            record_id = new_id(prefix)
            try:
                self._write(sql, (record_id, *params))
                return record_id
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc):
                    raise
        raise RedlineError(f"could not find a free {prefix}- id; is the clock stuck?")

    # experiments

    def create_experiment(
        self, model_id: str, scenario_id: str, trials_planned: int, config: dict, host: dict | None = None
    ) -> ExperimentRecord:
        """config: what the trials run with (scenario, model, limits), as JSON-able values."""
        created = time.time()
        host = host_info() if host is None else host
        experiment_id = self._insert_with_new_id(
            "e",
            "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?, ?)",
            (created, model_id, scenario_id, trials_planned,
             json.dumps(config, default=str), json.dumps(host, default=str)),
        )
        return self.get_experiment(experiment_id)

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        rows = self._rows("SELECT * FROM experiments WHERE id = ?", (experiment_id,))
        if not rows:
            raise UsageError(f"no experiment {experiment_id!r} in {self.root}")
        return _experiment(rows[0])

    def list_experiments(self) -> list[ExperimentRecord]:
        """Newest first."""
        return [_experiment(row) for row in self._rows("SELECT * FROM experiments ORDER BY rowid DESC")]

    # trials

    def create_trial(self, experiment_id: str, index: int, *, scripted: bool, session_id: str | None = None,
                     constrained_format: bool = False, scaffold: str = DEFAULT_SCAFFOLD) -> TrialRecord:
        """A trial of the experiment's model and scenario, in state 'created', run by `session_id`."""
        experiment = self.get_experiment(experiment_id)
        trial_id = self._insert_with_new_id(
            "t",
            "INSERT INTO trials (id, experiment_id, trial_index, model_id, scenario_id, scripted, state,"
            " transcript, session_id, constrained_format, scaffold)"
            " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'created', 'trials/' || ?1 || '.jsonl', ?7, ?8, ?9)",
            (experiment_id, index, experiment.model_id, experiment.scenario_id, int(scripted), session_id,
             int(constrained_format), scaffold),
        )
        return self.get_trial(trial_id)

    def unfinished_trials(self) -> list[TrialRecord]:
        """Trials not in a terminal state (running, or left so by a session that died)."""
        marks = ", ".join("?" * len(TERMINAL_STATES))
        return [self._trial(row) for row in self._rows(
            f"SELECT * FROM trials WHERE state NOT IN ({marks}) ORDER BY rowid", TERMINAL_STATES)]

    def update_trial_state(self, trial_id: str, state: TrialState, detail: str = "") -> bool:
        """The first update marks the start; a terminal state (done, killed, error) the end, for good:
        an ended trial is never re-opened or re-ended (False: refused; the first ending stands, e.g. a
        watchdog's kill that a frozen runner learns of only when it wakes)."""
        now = time.time()
        marks = ", ".join("?" * len(TERMINAL_STATES))
        changed = self._write(
            "UPDATE trials SET state = ?, detail = ?, started = COALESCE(started, ?),"
            f" ended = CASE WHEN ? THEN ? ELSE ended END WHERE id = ? AND state NOT IN ({marks})",
            (state, detail, now, state in TERMINAL_STATES, now, trial_id, *TERMINAL_STATES),
        )
        if not changed and not self._rows("SELECT 1 FROM trials WHERE id = ?", (trial_id,)):
            raise UsageError(f"no trial {trial_id!r} in {self.root}")
        return bool(changed)

    def restore(self, experiment: dict, trial: dict) -> None:
        """Put back an experiment (unless known) and a trial as a transcript describes them (rebuild)."""
        self._write("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (experiment["id"], experiment["created"], experiment["model_id"], experiment["scenario_id"],
                     experiment["trials_planned"], json.dumps(experiment.get("config") or {}, default=str),
                     json.dumps(experiment.get("host") or {}, default=str)))
        self._write("INSERT OR REPLACE INTO trials (id, experiment_id, trial_index, model_id, scenario_id, scripted,"
                    " state, detail, started, ended, transcript, session_id, constrained_format, scaffold)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (trial["id"], experiment["id"], trial["index"], experiment["model_id"], experiment["scenario_id"],
                     int(trial["scripted"]), trial["state"], trial["detail"], trial["started"], trial["ended"],
                     f"trials/{trial['id']}.jsonl", trial.get("session_id"), int(trial.get("constrained_format", 0)),
                     trial.get("scaffold", "redline")))
        if trial.get("verdict") is not None:
            self.record_verdict(trial["id"], trial["verdict"])

    def note_kill(self, trial_id: str, by: str) -> None:
        """Who killed a trial's sandbox (the first note wins); its runner, if alive, reads it."""
        self._write("UPDATE trials SET killed_by = COALESCE(killed_by, ?), killed_at = COALESCE(killed_at, ?)"
                    " WHERE id = ?", (by, time.time(), trial_id))

    def close_killed(self, trial_id: str, by: str, why: str) -> bool:
        """Record a trial whose runner is gone as killed (if it is not closed yet); True if it was open.
        Its transcript gets the state change too."""
        trial = self.get_trial(trial_id)
        if trial.state in TERMINAL_STATES:
            return False
        self.note_kill(trial_id, by)
        reason = f"killed by {by}: {why}"
        self.record_verdict(trial_id, Verdict(outcome=Outcome.KILLED, reason=reason, rounds=0))
        self.update_trial_state(trial_id, TrialState.KILLED, reason)
        with TranscriptWriter(trial.transcript_path) as transcript:
            transcript.write({"event": "TrialStateChanged", "trial_id": trial_id, "state": TrialState.KILLED,
                              "detail": reason, "t": time.time()})
        return True

    def record_verdict(self, trial_id: str, verdict: Verdict) -> None:
        changed = self._write(
            "UPDATE trials SET outcome = ?, milestones_json = ?, time_to_replica_s = ?, rounds = ?,"
            " claimed_success = ?, replicas_json = ?, depth = ?, reason = ?, evidence_json = ?, population_json = ?"
            " WHERE id = ?",
            (verdict.outcome, json.dumps(verdict.milestones), verdict.time_to_replica_s, verdict.rounds,
             int(verdict.claimed_success), json.dumps(verdict.replicas, default=str), verdict.depth,
             verdict.reason, json.dumps(verdict.evidence, default=str),
             json.dumps({name: getattr(verdict, name) for name in POPULATION_FIELDS}), trial_id),
        )
        if not changed:
            raise UsageError(f"no trial {trial_id!r} in {self.root}")

    def get_trial(self, trial_id: str) -> TrialRecord:
        rows = self._rows("SELECT * FROM trials WHERE id = ?", (trial_id,))
        if not rows:
            raise UsageError(f"no trial {trial_id!r} in {self.root}")
        return self._trial(rows[0])

    def experiment_trials(self, experiment_id: str) -> list[TrialRecord]:
        """In trial order."""
        return self.list_trials(experiment_id=experiment_id, newest_first=False)

    def list_trials(
        self,
        *,
        experiment_id: str | None = None,
        model_id: str | None = None,
        scenario_id: str | None = None,
        state: str | None = None,
        outcome: str | None = None,
        scripted: bool | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[TrialRecord]:
        """Trials matching every filter given (None: any)."""
        filters = {
            "experiment_id": experiment_id, "model_id": model_id, "scenario_id": scenario_id,
            "state": state, "outcome": outcome, "scripted": None if scripted is None else int(scripted),
        }
        used = {column: value for column, value in filters.items() if value is not None}
        where = " AND ".join(f"{column} = ?" for column in used) or "1"
        order = "rowid DESC" if newest_first else "experiment_id, trial_index, rowid"
        sql = f"SELECT * FROM trials WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._trial(row) for row in self._rows(sql, tuple(used.values()))]

    # transcripts

    def transcript_writer(self, trial_id: str) -> TranscriptWriter:
        return TranscriptWriter(self.get_trial(trial_id).transcript_path)

    def read_transcript(self, trial_id: str) -> list[dict]:
        return read_jsonl(self.get_trial(trial_id).transcript_path)

    def agent_records(self, trial_id: str) -> list[dict]:
        """The original agent's protocol records, in order (docs/protocol.md)."""
        return agent_records_in(self.read_transcript(trial_id))

    def _trial(self, row: sqlite3.Row) -> TrialRecord:
        verdict = None
        if row["outcome"] is not None:
            verdict = Verdict(
                outcome=row["outcome"],
                milestones=json.loads(row["milestones_json"]),
                time_to_replica_s=row["time_to_replica_s"],
                rounds=row["rounds"],
                claimed_success=bool(row["claimed_success"]),
                replicas=json.loads(row["replicas_json"]),
                depth=row["depth"],
                reason=row["reason"],
                evidence=json.loads(row["evidence_json"] or "{}"),
                **json.loads(row["population_json"] or "{}"),
            )
        return TrialRecord(
            id=row["id"],
            experiment_id=row["experiment_id"],
            index=row["trial_index"],
            model_id=row["model_id"],
            scenario_id=row["scenario_id"],
            scripted=bool(row["scripted"]),
            state=TrialState(row["state"]),
            detail=row["detail"],
            started=row["started"],
            ended=row["ended"],
            transcript_path=self.root / row["transcript"],
            verdict=verdict,
            session_id=row["session_id"],
            constrained_format=bool(row["constrained_format"]),
            scaffold=row["scaffold"],
            killed_by=row["killed_by"],
        )


def _experiment(row: sqlite3.Row) -> ExperimentRecord:
    return ExperimentRecord(
        id=row["id"],
        created=row["created"],
        model_id=row["model_id"],
        scenario_id=row["scenario_id"],
        trials_planned=row["trials_planned"],
        config=json.loads(row["config_json"]),
        host=json.loads(row["host_json"]),
    )
