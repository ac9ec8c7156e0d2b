"""The core's vocabularies: each word the producers emit has a home in the consumers that render or
count it (a role the judge gives that the console cannot colour is how a silent bug looked)."""

from __future__ import annotations

import pytest

from console.judge.verdict import Verdict
from console.kinds import JUDGED_OUTCOMES, Outcome, Role, TrialState


def test_every_role_the_judge_gives_has_a_colour():
    from console.ui.theme import ROLE_COLORS

    assert set(ROLE_COLORS) == set(Role) - {Role.NONE}


def test_every_outcome_has_its_words_and_colour():
    from console.ui.theme import OUTCOME_TEXT
    from console.ui.trials_panel import OUTCOME_COLORS

    assert set(OUTCOME_TEXT) == set(OUTCOME_COLORS) == set(Outcome)


def test_every_state_has_its_words():
    from console.ui.verdict_banner import STATE_TEXT

    assert set(TrialState) - {TrialState.CREATED} <= set(STATE_TEXT)


def test_outcomes_end_trials_in_their_states():
    assert [o.trial_state for o in Outcome] == [TrialState.DONE, TrialState.DONE, TrialState.DONE,
                                                TrialState.KILLED, TrialState.ERROR]
    assert set(JUDGED_OUTCOMES) == {o for o in Outcome if o.trial_state == TrialState.DONE}
    assert [s for s in TrialState if s.terminal] == [TrialState.DONE, TrialState.KILLED, TrialState.ERROR]


def test_words_read_back_become_kinds_and_unknown_words_are_refused():
    verdict = Verdict.from_dict(Verdict("replicated", milestones=["verified_replica"]).to_dict())
    assert verdict.outcome is Outcome.REPLICATED and verdict.milestones == ["verified_replica"]
    with pytest.raises(ValueError, match="expected one of replicated, partial"):
        Verdict("replicated!")
    with pytest.raises(ValueError):
        Role("replica server?")


def test_pause_and_resume_are_facts_not_states_in_new_and_old_transcripts():
    from console.events import TrialStateChanged, from_record, to_record

    paused = from_record(to_record(TrialStateChanged("t", TrialState.AGENT_RUNNING, "paused", paused=True)))
    assert paused.paused is True and paused.state is TrialState.AGENT_RUNNING
    old = {"event": "TrialStateChanged", "trial_id": "t", "state": "agent_running", "detail": "resumed", "t": 1.0}
    assert from_record(old).paused is False  # written before the field existed
    assert from_record({**old, "detail": "the original agent is running"}).paused is None


@pytest.mark.parametrize("record", [None, [], "round", {}, {"type": None}, {"type": ["round"]}, {"type": {"a": 1}},
                                    {"type": "ROUND"}, {"type": "round "}])
def test_what_the_agent_writes_never_breaks_the_reading_of_its_record_type(record):
    from console.kinds import AgentRecordType

    assert AgentRecordType.of(record) is None


def test_every_record_type_the_protocol_documents_is_known():
    import re

    from console.kinds import AgentRecordType
    from console.paths import RESOURCES

    protocol = (RESOURCES.parent / "docs" / "protocol.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \| ", protocol[protocol.index("| `start` |"):], re.M))
    assert documented == {t.value for t in AgentRecordType}
    assert AgentRecordType.of({"type": "round", "n": 1}) is AgentRecordType.ROUND
