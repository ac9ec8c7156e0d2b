"""`redline export`: a real scripted experiment read back with Inspect's own log reader and listing,
checked against the records; JSON lines for pandas; bad input named."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from console.store import Store


def inspect_reads(function, *args):
    """Call an inspect_ai log function on a thread of its own: it runs an asyncio loop, and a Qt test
    earlier in this process may have left a qasync loop as this thread's."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(function, *args).result()


def redline(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "console", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def experiment(engine, cpu_image, tmp_path_factory):
    """Two scripted trials (a replication each) in a records folder of this module's own."""
    home = tmp_path_factory.mktemp("export")
    patch = pytest.MonkeyPatch()
    patch.setenv("REDLINE_HOME", str(home / "home"))
    patch.setenv("REDLINE_CONFIG", str(home / "config"))
    from conftest import install_test_config

    install_test_config(home / "config")
    run = redline("run", "--model", "scripted:success", "--scenario", "test-self-replication", "--trials", "2",
                  "--constrained-format", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    yield json.loads(run.stdout)["experiment_id"], home
    patch.undo()


def test_an_experiment_opens_in_inspect_with_its_trials_scores_and_metadata(experiment):
    from inspect_ai.log import list_eval_logs, read_eval_log

    experiment_id, home = experiment
    target = home / "logs" / "run.eval"
    with Store() as store:
        rated = store.experiment_trials(experiment_id)[0].id
    assert redline("rate", rated, "--agreed", "yes", "--knew-how", "no", "--rater", "carol").returncode == 0
    done = redline("export", experiment_id, "--format", "inspect", "-o", str(target))
    assert done.returncode == 0, done.stderr[-2000:]
    log = inspect_reads(read_eval_log, str(target))
    with Store() as store:
        trials = store.experiment_trials(experiment_id)
        transcripts = {t.id: store.read_transcript(t.id) for t in trials}
    assert log.status == "success" and log.eval.model == "redline/scripted:success"
    assert log.eval.task == "redline/test-self-replication"
    assert log.eval.metadata["model_label"] == "scripted:success [scripted] [constrained format]"
    assert log.results.scores[0].metrics["accuracy"].value == 1.0  # 2 of 2 judged trials replicated
    assert [s.id for s in log.samples] == [t.id for t in trials]
    for sample, trial in zip(log.samples, trials):
        assert sample.scores["replicated"].value == 1.0 and sample.scores["replicated"].answer == "replicated"
        assert sample.scores["replicated"].metadata["milestones"] == trial.verdict.milestones
        assert sample.scores["depth"].value == trial.verdict.depth
        assert sample.metadata["constrained_format"] is True and sample.metadata["scripted"] is True
        assert sample.metadata["scaffold"] == "paper"  # the study's wording, the default
        assert sample.metadata["limits"]["max_rounds"] > 0 and sample.metadata["containment"]["network_mode"] == "none"
        # The conversation: each command the agent ran, in order, as a tool call with its answer.
        commands = [r["record"]["command"] for r in transcripts[trial.id]
                    if r.get("event") == "AgentEvent" and r.get("instance") == "original"
                    and (r.get("record") or {}).get("type") == "action" and r["record"].get("command")]
        calls = [m.tool_calls[0] for m in sample.messages if m.role == "assistant" and m.tool_calls]
        assert [c.arguments.get("command") for c in calls if c.function == "execute_command"] == commands
        answered = {m.tool_call_id for m in sample.messages if m.role == "tool"}
        assert {c.id for c in calls if c.function == "execute_command"} <= answered
        assert sample.messages[0].role == "system" and "execute_command" in sample.messages[0].text
    # A person's rating: scores of their own, on the rated trial only, never in the judge's.
    human = log.samples[0].scores
    assert (human["human_agreed_to_replicate"].value, human["human_knew_how"].value) == (1.0, 0.0)
    assert human["human_knew_how"].metadata["rater"] == "carol" and log.samples[0].id == rated
    assert not any(name.startswith("human_") for name in log.samples[1].scores)
    # What `inspect view` lists: Inspect's own listing of the folder.
    assert [info.name.endswith("run.eval") for info in inspect_reads(list_eval_logs, str(target.parent))] == [True]


def test_json_lines_have_one_row_per_trial_as_recorded(experiment):
    experiment_id, home = experiment
    target = home / "rows.jsonl"
    done = redline("export", experiment_id, "--format", "jsonl", "-o", str(target))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    with Store() as store:
        trials = store.experiment_trials(experiment_id)
    assert [r["trial_id"] for r in rows] == [t.id for t in trials]
    for row, trial in zip(rows, trials):
        assert (row["outcome"], row["replicated"], row["rounds"], row["constrained_format"]) == (
            trial.verdict.outcome, True, trial.verdict.rounds, True)
        assert row["model_replies"] >= row["rounds"] and row["duration_s"] > 0


@pytest.mark.parametrize("args, words", [
    (["e-nope", "-o", "x.eval"], ["e-nope"]),
    (["{experiment}", "-o", "report.txt"], ["FILE.eval", "report.txt"]),
    (["{experiment}", "--format", "csv", "-o", "x"], ["--format", "csv"]),
])
def test_bad_export_input_is_a_named_usage_error(experiment, args, words):
    experiment_id, home = experiment
    done = redline("export", *[a.format(experiment=experiment_id) for a in args])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert all(word in done.stderr for word in words), done.stderr
