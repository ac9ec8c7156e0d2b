"""Records: SQLite index (WAL, schema version, threads) and crash-tolerant JSONL transcripts."""

import re
import sqlite3
import subprocess
import sys
import threading

import pytest

from console.errors import RedlineError, UsageError
from console.judge.verdict import MILESTONES, Verdict
from console.store import SCHEMA_VERSION, Store, read_jsonl


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("REDLINE_CONFIG", str(tmp_path / "config"))
    with Store() as opened:
        yield opened


def make_verdict(**changes) -> Verdict:
    values = dict(outcome="replicated", milestones=["verified_replica", "explored_own_files"],
                  time_to_replica_s=42.5, rounds=9, claimed_success=True,
                  replicas=[{"port": 8001, "server_pid": 77}], depth=1, reason="replica on :8001 answered the challenge")
    values.update(changes)
    return Verdict(**values)


def test_verdict_dict_round_trip_and_checks():
    verdict = make_verdict()
    assert verdict.milestones == ["explored_own_files", "verified_replica"]  # canonical order
    assert Verdict.from_dict(verdict.to_dict()) == verdict
    assert Verdict.from_dict({"outcome": "failed", "from_a_newer_version": 1}) == Verdict("failed")
    with pytest.raises(ValueError, match="outcome"):
        Verdict("won")
    with pytest.raises(ValueError, match="milestone"):
        Verdict("partial", milestones=["reached_the_moon"])
    assert len(MILESTONES) == 5


def test_round_trip(store, tmp_path):
    assert store.root == tmp_path / "data"
    experiment = store.create_experiment("scripted:success", "self-replication", 3, {"max_rounds": 60})
    assert re.fullmatch(r"e-\d{8}-\d{6}-[0-9a-f]{4}", experiment.id)
    assert experiment.config == {"max_rounds": 60} and experiment.host["python"]
    trial = store.create_trial(experiment.id, 0, scripted=True)
    assert re.fullmatch(r"t-\d{8}-\d{6}-[0-9a-f]{4}", trial.id)
    assert (trial.state, trial.started, trial.verdict) == ("created", None, None)
    assert trial.transcript_path == store.root / "trials" / f"{trial.id}.jsonl"
    assert (trial.model_id, trial.scenario_id, trial.scripted) == ("scripted:success", "self-replication", True)

    store.update_trial_state(trial.id, "preparing")
    running = store.get_trial(trial.id)
    assert running.started is not None and running.ended is None
    store.update_trial_state(trial.id, "done", "judged")
    store.record_verdict(trial.id, make_verdict())
    done = store.get_trial(trial.id)
    assert done.state == "done" and done.detail == "judged" and done.ended >= done.started
    assert done.verdict == make_verdict()


def test_queries_and_unknown_ids(store):
    first = store.create_experiment("smollm2-135m", "self-replication", 2, {})
    second = store.create_experiment("scripted:success", "chain-of-replication", 2, {})
    trials = [store.create_trial(first.id, i, scripted=False) for i in (1, 0)]
    store.create_trial(second.id, 0, scripted=True)
    store.record_verdict(trials[0].id, make_verdict(outcome="failed", milestones=[]))
    assert [e.id for e in store.list_experiments()] == [second.id, first.id]
    assert [t.index for t in store.experiment_trials(first.id)] == [0, 1]
    assert [t.id for t in store.list_trials(outcome="failed")] == [trials[0].id]
    assert len(store.list_trials(scripted=True)) == 1 and len(store.list_trials(scripted=False)) == 2
    assert len(store.list_trials(model_id="smollm2-135m", scenario_id="self-replication")) == 2
    assert len(store.list_trials(limit=1)) == 1
    for call in (lambda: store.get_trial("t-nope"), lambda: store.get_experiment("e-nope"),
                 lambda: store.create_trial("e-nope", 0, scripted=False),
                 lambda: store.update_trial_state("t-nope", "done"),
                 lambda: store.record_verdict("t-nope", make_verdict())):
        with pytest.raises(UsageError, match="no (trial|experiment)"):
            call()


def test_wal_mode_schema_version_and_reopen(store):
    experiment = store.create_experiment("m", "s", 1, {})
    path = store.root / "redline.sqlite3"
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    other.close()
    with Store(store.root) as reopened:
        assert reopened.journal_mode == "wal"
        assert reopened.get_experiment(experiment.id) == experiment


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "redline.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(RedlineError, match="newer Redline"):
        Store(tmp_path)


def test_concurrent_writes_from_threads(store):
    experiment = store.create_experiment("m", "s", 40, {})
    errors = []

    def worker(first_index):
        try:
            for index in range(first_index, first_index + 5):
                trial = store.create_trial(experiment.id, index, scripted=False)
                for state in ("preparing", "agent_running", "judging", "done"):
                    store.update_trial_state(trial.id, state)
                store.record_verdict(trial.id, make_verdict())
        except Exception as exc:  # reported below: an exception in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 5,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    trials = store.experiment_trials(experiment.id)
    assert [t.index for t in trials] == list(range(40))
    assert len({t.id for t in trials}) == 40 and all(t.verdict and t.state == "done" for t in trials)


CRASHING_WRITER = """
import os, sys
from console.store import Store
store = Store(sys.argv[1])
writer = store.transcript_writer(sys.argv[2])
for n in range(3):
    writer.write({"v": 1, "type": "round", "n": n, "note": "ünïcode"})
os._exit(9)  # no close, no interpreter clean-up: what a crash leaves
"""


def test_transcript_survives_a_crash(store):
    trial = store.create_trial(store.create_experiment("m", "s", 1, {}).id, 0, scripted=False)
    subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(store.root), trial.id], check=False)
    assert [r["n"] for r in store.read_transcript(trial.id)] == [0, 1, 2]
    with open(trial.transcript_path, "ab") as handle:
        handle.write(b'{"v": 1, "type": "output", "data": "cut mid-wri')
    assert [r["n"] for r in store.read_transcript(trial.id)] == [0, 1, 2]


def test_transcript_readable_while_open(store):
    trial = store.create_trial(store.create_experiment("m", "s", 1, {}).id, 0, scripted=False)
    writer = store.transcript_writer(trial.id)
    writer.write({"type": "start", "path": trial.transcript_path})  # non-JSON values become strings
    assert store.read_transcript(trial.id) == [{"type": "start", "path": str(trial.transcript_path)}]
    writer.close()


def test_damage_before_the_last_line_is_skipped_and_counted(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    assert read_jsonl(path) == [] and read_jsonl(path).damaged == ()
    path.write_bytes(b'{"n": 1}\nnot json\n{"n": 3}\n\xff\xfe\n[4]\n{"n": 6}\n{"n": 7, "cut')
    records = read_jsonl(path)
    assert records == [{"n": 1}, {"n": 3}, {"n": 6}]
    assert records.damaged == (2, 4, 5)  # the cut last line is a crash mid-write, not damage
    assert "skipped 3 damaged line(s) (line 2, 4, 5)" in caplog.text


def test_a_new_records_folder_opened_by_many_at_once_is_migrated_once(tmp_path):
    """The console opens its records from two worker threads at start; a CLI may open them too. The
    switch to WAL of a new file can meet "database is locked" at once (seen 1 in 200 under load), so
    this opens many new folders."""
    from concurrent.futures import ThreadPoolExecutor

    from console.store import Store

    for attempt in range(30):
        with ThreadPoolExecutor(8) as pool:
            stores = list(pool.map(lambda _, folder=tmp_path / f"records-{attempt}": Store(folder), range(8)))
        experiment = stores[0].create_experiment("m", "s", 1, {})
        assert all(store.get_experiment(experiment.id).id == experiment.id for store in stores)
        assert {store.journal_mode for store in stores} == {"wal"}
        for store in stores:
            store.close()


def test_an_ended_trial_is_never_reopened(store):
    """A runner frozen while its watchdog killed the trial wakes up and tries to go on: the first
    ending stands, and the runner is told (False) rather than re-opening the record."""
    experiment = store.create_experiment("m", "s", 1, {})
    trial = store.create_trial(experiment.id, 0, scripted=True)
    assert store.update_trial_state(trial.id, "agent_running") is True
    assert store.close_killed(trial.id, "the watchdog", "no heartbeat for 10 s") is True
    assert store.update_trial_state(trial.id, "judging", "final observation") is False
    assert store.update_trial_state(trial.id, "done", "replicated") is False
    again = store.get_trial(trial.id)
    assert (again.state, again.killed_by) == ("killed", "the watchdog") and "no heartbeat" in again.detail
