"""Open recommendations and their closures (contracts.md §8): every closure rule, feedback, event
time, and the open set in the patient's state."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import Story
from otrules import defaults
from otrules.consumers import EventCore, Fault, PatientStates, Record
from otrules.engine import Engine, PatientState
from otrules.engine.loader import parse_ruleset_text
from otrules.schemas import Recommendation

KINDS = ["progress_report_due", "re_evaluate", "clinical_review", "recertify_plan", "adherence_review",
         "advance_goal", "modify_plan", "increase_frequency", "decrease_frequency", "discharge"]
# one rule per kind: a COPM-performance score of n (1-10) raises kind n
RULES = 'ruleset: t\nversion: "1"\nrules:\n' + "".join(
    f'  - id: r{n}\n    description: score {n}\n    when: measure.instrument == "COPM-performance" and '
    f'measure.score == {n}\n    recommend: {{kind: {kind}, indicator: warning, summary: "score {n}"}}\n'
    for n, kind in enumerate(KINDS, 1))


class Collect:
    def __init__(self) -> None:
        self.recs: list[Recommendation] = []

    def recommend(self, recs, record) -> None:
        self.recs.extend(recs)

    def dead_letter(self, record, rejection) -> None:
        raise AssertionError(rejection.reason)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine([parse_ruleset_text(RULES, "t.yaml", defaults.catalogue())], defaults.catalogue())


def run(engine: Engine, story: Story) -> tuple[EventCore, Collect]:
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE)
    for i, event in enumerate(story.events, 1):
        core.handle(Record(json.dumps(event).encode(), "t", line=i))
    return core, sink


def scores(story: Story, day: int, *values: int, kind: str = "initial") -> Story:
    return story.evaluation(day, *(("COPM-performance", v) for v in values), kind=kind)


def opened(sink: Collect, kind: str) -> Recommendation:
    return next(r for r in sink.recs if r.kind == kind and r.status == "open")


def closures(sink: Collect) -> dict[str, tuple[Any, ...]]:
    return {r.kind: (r.closed_reason, r.closed_by) for r in sink.recs if r.status == "closed"}


def open_kinds(core: EventCore) -> list[str]:
    state = core.states.get("p-1")
    assert state is not None
    return sorted(r.kind for r in state.open.values())


def test_every_recommendation_starts_open_and_is_kept_in_the_state(engine):
    core, sink = run(engine, scores(Story().plan(0), 1, 1, 2))
    assert [r.status for r in sink.recs] == ["open", "open"]
    assert open_kinds(core) == ["progress_report_due", "re_evaluate"]
    state = core.states.get("p-1")
    assert state is not None
    again = PatientState.from_bytes(state.to_bytes())  # survives the changelog
    assert again.open == state.open


@pytest.mark.parametrize(("raised", "answer", "closes"), [
    (["progress_report_due"], lambda s: s.evaluation(5, ("MoCA", 20), kind="progress"), True),
    (["progress_report_due", "re_evaluate", "clinical_review"],
     lambda s: s.evaluation(5, ("MoCA", 20), kind="re-evaluation"), True),
    (["re_evaluate"], lambda s: s.evaluation(5, ("MoCA", 20), kind="progress"), False),
    (["adherence_review"], lambda s: s.visit(5, "attended"), True),
    (["adherence_review"], lambda s: s.visit(5, "missed"), False),
    (["advance_goal", "modify_plan", "increase_frequency", "decrease_frequency"], lambda s: s.plan(5), True),
    (["recertify_plan"], lambda s: s.plan(2, cert_days=120), True),
    (["recertify_plan"], lambda s: s.plan(2, cert_days=88), False),
])
def test_the_event_that_answers_a_recommendation_resolves_it(engine, raised, answer, closes):
    story = scores(Story().plan(0), 1, *(KINDS.index(k) + 1 for k in raised))
    answering = answer(story)
    core, sink = run(engine, answering)
    trigger = answering.events[-1]["event_id"]
    if closes:
        assert closures(sink) == dict.fromkeys(raised, ("resolved", trigger))
        assert open_kinds(core) == []
        closed = next(r for r in sink.recs if r.status == "closed")
        assert closed.closed_at == answering.events[-1]["occurred_at"]
        assert closed.recommendation_id == opened(sink, closed.kind).recommendation_id
    else:
        assert closures(sink) == {} and open_kinds(core) == sorted(raised)


def test_a_newer_recommendation_from_the_same_rule_supersedes_the_open_one(engine):
    story = scores(scores(Story().plan(0), 1, 3), 8, 3, kind="progress")
    core, sink = run(engine, story)
    first, second = [r for r in sink.recs if r.status == "open"]
    assert closures(sink) == {"clinical_review": ("superseded", story.events[-1]["event_id"])}
    state = core.states.get("p-1")
    assert state is not None and list(state.open) == [second.recommendation_id] != [first.recommendation_id]


def test_a_discharge_closes_everything_on_its_plan_and_nothing_on_another(engine):
    story = scores(Story().plan(0), 1, 3, 7)
    other = Story(plan_id="poc-2").plan(2)
    story.events += [dict(e, event_id=f"x-{i}") for i, e in enumerate(scores(other, 3, 6).events)]
    story.discharge(10)
    core, sink = run(engine, story)
    assert {k: v[0] for k, v in closures(sink).items()} == {"clinical_review": "discharged",
                                                           "modify_plan": "discharged"}
    assert open_kinds(core) == ["advance_goal"]


def test_feedback_closes_an_open_recommendation_and_is_counted_per_rule(engine):
    story = scores(Story().plan(0), 1, 3, 7)
    core, sink = run(engine, story)
    review, modify = opened(sink, "clinical_review"), opened(sink, "modify_plan")
    story.feedback(2, review.recommendation_id, "overridden", "not-clinically-relevant")
    story.feedback(2, modify.recommendation_id, "accepted", hour=18)
    story.feedback(3, review.recommendation_id, "accepted")  # already closed: counted, nothing changes
    story.feedback(3, "no-such-recommendation", "accepted", hour=18)
    core, sink = run(engine, story)
    assert closures(sink) == {"clinical_review": ("overridden", story.events[-4]["event_id"]),
                              "modify_plan": ("accepted", story.events[-3]["event_id"])}
    tally = core.tally
    assert tally.feedback == {("t/r3", "overridden"): 1, ("t/r7", "accepted"): 1}
    assert tally.override_reasons == {("t/r3", "not-clinically-relevant"): 1}
    assert tally.feedback_ignored == 2 and tally.balanced and open_kinds(core) == []


def test_an_event_older_than_a_recommendation_does_not_answer_it(engine):
    story = scores(Story().plan(0), 5, 5)  # adherence_review raised on day 5
    story.visit(3, "attended")  # arrives late: it happened before
    core, sink = run(engine, story)
    assert closures(sink) == {} and open_kinds(core) == ["adherence_review"]


def test_feedback_needs_a_reason_only_when_overridden():
    from otrules.schemas import EventRejected, parse_event

    base = {"type": "feedback", "event_id": "f", "patient_id": "p", "plan_id": "x",
            "occurred_at": "2026-01-05T10:00:00Z", "recommendation_id": "r"}
    with pytest.raises(EventRejected, match="outcome"):
        parse_event({**base, "outcome": "maybe"})
    with pytest.raises(EventRejected, match="override_reason"):
        parse_event({**base, "outcome": "accepted", "override_reason": {"code": "x"}})
    assert parse_event({**base, "outcome": "overridden", "override_reason": {"code": "x"}}).type == "feedback"


def test_the_bundled_sample_closes_deterministically():
    from click.testing import CliRunner

    from otrules.cli import main

    outputs = []
    for _ in range(2):
        result = CliRunner().invoke(main, ["run"])
        assert result.exit_code == 0
        outputs.append([json.loads(line) for line in result.stdout.splitlines()])
    strip = [[{k: v for k, v in r.items() if k != "emitted_at"} for r in out] for out in outputs]
    assert strip[0] == strip[1]
    closed = [r for r in strip[0] if r["status"] == "closed"]
    assert closed and {r["closed_reason"] for r in closed} >= {"discharged", "resolved", "superseded"}
    opened_ids = {r["recommendation_id"] for r in strip[0] if r["status"] == "open"}
    assert {r["recommendation_id"] for r in closed} <= opened_ids  # a closure is of a recommendation made
    assert "closed (" in result.stderr


def test_feedback_dated_before_the_recommendation_answers_nothing(engine):
    story = scores(Story().plan(0), 5, 3)
    core, sink = run(engine, story)
    review = opened(sink, "clinical_review")
    story.feedback(2, review.recommendation_id, "accepted")  # day 2: the review was raised on day 5
    core, sink = run(engine, story)
    assert closures(sink) == {} and core.tally.feedback_ignored == 1 and open_kinds(core) == ["clinical_review"]


def test_feedback_naming_another_plan_answers_nothing(engine):
    """L3: the feedback's plan_id must be the recommendation's plan."""
    story = scores(Story().plan(0), 5, 3)
    core, sink = run(engine, story)
    review = opened(sink, "clinical_review")
    story.feedback(6, review.recommendation_id, "accepted")
    story.events[-1]["plan_id"] = "poc-other"
    core, sink = run(engine, story)
    assert closures(sink) == {} and core.tally.feedback_ignored == 1 and open_kinds(core) == ["clinical_review"]


def test_feedback_does_not_move_the_clock_of_the_plans():
    story = scores(Story().plan(0), 5, 3)
    core, _ = run(Engine(defaults.rulesets(), defaults.catalogue()), story)
    before = core.tally.last_event_at
    story.feedback(300, "whatever")
    core, _ = run(Engine(defaults.rulesets(), defaults.catalogue()), story)
    assert core.tally.last_event_at == before


def test_with_a_reorder_window_feedback_waits_its_turn_so_a_replay_closes_the_same(engine):
    import datetime as dt

    held = Engine(engine.rulesets, defaults.catalogue(), reorder_window=dt.timedelta(days=1))
    story = scores(Story().plan(0), 5, 3)
    core, sink = run(engine, story)
    review = opened(sink, "clinical_review")
    story.feedback(5, review.recommendation_id, "overridden", "other", hour=11)  # an hour after it was raised
    outcomes = []
    for eng in (engine, held):
        sink = Collect()
        core = EventCore(eng, PatientStates(), sink, Fault.ISOLATE)
        for i, event in enumerate(story.events, 1):
            core.handle(Record(json.dumps(event).encode(), "t", line=i))
        core.flush()
        outcomes.append((closures(sink), dict(core.tally.feedback)))
    assert outcomes[0] == outcomes[1] == ({"clinical_review": ("overridden", story.events[-1]["event_id"])},
                                          {("t/r3", "overridden"): 1})


def test_past_the_bound_the_oldest_is_closed_by_what_pushed_it_out(engine):
    from otrules.engine.open_recs import MAX_OPEN
    from otrules.engine.open_recs import opened as add

    state = PatientState("p-1")
    _, sink = run(engine, scores(Story().plan(0), 1, 3))
    base = opened(sink, "clinical_review")
    recs = [base.model_copy(update={"recommendation_id": f"r{i}", "goal_id": f"g{i}",
                                    "occurred_at": f"2026-01-{1 + i % 28:02d}T00:00:00Z"}) for i in range(MAX_OPEN)]
    add(state, recs)
    newest = base.model_copy(update={"recommendation_id": "new", "goal_id": "g-new",
                                     "occurred_at": "2026-06-01T00:00:00Z", "triggered_by": ["e-new"]})
    [pushed] = add(state, [newest])
    assert (pushed.recommendation_id, pushed.closed_by, pushed.closed_at, pushed.closed_reason) == (
        "r0", "e-new", "2026-06-01T00:00:00Z", "capped")
    assert len(state.open) == MAX_OPEN
