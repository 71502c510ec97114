"""The one event core: every command's failure policy, the tally, keys, the state bound."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner

from conftest import Story, goal
from otrules import backtest, defaults, explain, ruletests
from otrules.cli import main
from otrules.consumers import EventCore, EventFailed, Fault, JsonlSource, PatientStates, Record, Rejection
from otrules.engine import Engine, PatientState
from otrules.engine.state import MAX_PLANS, MAX_REMEMBERED_EVENTS
from otrules.schemas import EventRejected, parse_event


class Collect:
    def __init__(self) -> None:
        self.recs: list = []
        self.letters: list[tuple[Record, Rejection]] = []

    def recommend(self, recs, record) -> None:
        self.recs.extend(recs)

    def dead_letter(self, record, rejection) -> None:
        self.letters.append((record, rejection))


class FailsOn(Engine):
    """The real engine, raising on chosen event ids (a stand-in for an engine fault)."""

    def __init__(self, *event_ids: str) -> None:
        super().__init__(defaults.rulesets(), defaults.catalogue())
        self.event_ids = set(event_ids)

    def process(self, state, event):
        if event.event_id in self.event_ids:
            state.plans.clear()  # a half-applied change that a rollback must undo
            raise RuntimeError("injected")
        return super().process(state, event)


def _story() -> Story:
    return (Story().plan(0, [goal("g1", "COPM-performance", 3, 7)])
            .evaluation(14, ("COPM-performance", 5, "g1")).evaluation(28, ("COPM-performance", 7, "g1")))


def _records(events, keyed: bool = False) -> list[Record]:
    return [Record(json.dumps(e).encode(), "t", line=i, key=e["patient_id"].encode() if keyed else None, keyed=keyed)
            for i, e in enumerate(events, 1)]


def test_the_tally_adds_up_and_a_rejection_names_field_and_kind(engine):
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink)
    bad = Record(b'{"type":"visit"}', "t", line=9)
    core.feed([*_records(_story().events), bad, _records(_story().events)[0]])
    t = core.tally
    assert (t.read, t.processed, t.rejected, t.duplicates) == (5, 3, 1, 1) and t.balanced
    assert t.by_kind["advance_goal"] == 1 and t.rejected_by == {"invalid": 1}
    ((record, rejection),) = sink.letters
    assert record.where == "t:9" and rejection.field == "event_id" and rejection.kind == "invalid"


@pytest.mark.parametrize("fault", [Fault.DEAD_LETTER, Fault.ISOLATE])
def test_an_engine_fault_is_dead_lettered_and_isolate_rolls_the_patient_back(fault):
    story = _story()
    sink = Collect()
    states = PatientStates()
    core = EventCore(FailsOn(story.events[1]["event_id"]), states, sink, fault)
    core.feed(_records(story.events))
    assert sink.letters[0][1].reason == "internal error: the rules engine failed on this event (RuntimeError)"
    state = states.get("p-1")
    assert state is not None
    if fault is Fault.ISOLATE:  # rolled back: the plan survived the fault, and the later evaluation reached the goal
        assert [r.kind for _, r in sink.letters] == ["engine"]
        assert state.plans["poc-1"].setting == "outpatient"
        assert [r.kind for r in sink.recs] == ["advance_goal", "discharge"]
    else:  # not rolled back: the fault had cleared the plan, so the next evaluation has no plan to go to
        assert [(r.kind, r.field) for _, r in sink.letters] == [("engine", "(event)"), ("invalid", "plan_id")]
        assert "poc-1" not in state.plans and sink.recs == []


def test_fault_raise_hands_the_failure_to_the_caller_naming_the_record():
    story = _story()
    core = EventCore(FailsOn(story.events[1]["event_id"]), PatientStates(), Collect(), Fault.RAISE)
    with pytest.raises(EventFailed) as failed:
        core.feed(_records(story.events))
    assert failed.value.record.line == 2 and failed.value.rejection.kind == "engine"


def test_a_state_over_the_limit_dead_letters_the_event_that_grew_it(engine):
    # ten goals with ids of the longest length allowed (128): the plan's state is ~2,200 bytes,
    # an evaluation that scores every goal doubles it (a series and throttles per goal)
    ids = [f"{i:03d}" + "g" * 125 for i in range(10)]
    story = Story().plan(0, [goal(g, "COPM-performance", 3, 7) for g in ids]).evaluation(
        14, *[("COPM-performance", 5, g) for g in ids])
    sink = Collect()
    states = PatientStates()
    core = EventCore(engine, states, sink, Fault.ISOLATE, max_state_bytes=3000)
    core.feed(_records(story.events))
    assert [(r.kind, r.field) for _, r in sink.letters] == [("state-too-large", "(event)")]
    state = states.get("p-1")
    assert state is not None and len(state.to_bytes()) <= 3000


def test_an_isolated_fault_on_a_new_patient_leaves_no_state_and_stored_bytes_survive_a_bad_decode():
    story = _story()
    states = PatientStates()
    sink = Collect()
    core = EventCore(FailsOn(story.events[0]["event_id"]), states, sink, Fault.ISOLATE)
    core.feed(_records(story.events[:1]))
    assert "p-1" not in states and [r.kind for _, r in sink.letters] == ["engine"]
    states.put_raw("p-1", b'{"v": 1}')  # a format this otrules cannot read
    core.feed(_records(story.events[1:2]))
    assert [r.kind for _, r in sink.letters] == ["engine", "state"] and core.tally.balanced
    assert "p-1" in states  # the bytes were kept, not reset


def test_a_broken_output_is_not_blamed_on_the_event(engine):
    class Broken(Collect):
        def recommend(self, recs, record) -> None:
            raise BrokenPipeError

    core = EventCore(engine, PatientStates(), Broken())
    with pytest.raises(BrokenPipeError):
        core.feed(_records(_story().events))


def test_keyed_records_must_carry_the_patient_id_as_key(engine):
    event = _story().events[0]
    raw = json.dumps(event).encode()
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink)
    core.feed([Record(raw, "ot.events", partition=0, offset=1, keyed=True),
               Record(raw, "ot.events", partition=0, offset=2, key=b"p-2", keyed=True),
               Record(raw, "ot.events", partition=0, offset=3, key=b"p-1", keyed=True)])
    reasons = [r.reason for _, r in sink.letters]
    assert reasons == ["key: the Kafka message has no key; it must be the patient_id",
                       "key: the Kafka key 'p-2' is not the body's patient_id 'p-1'"]
    assert [r.kind for _, r in sink.letters] == ["key", "key"] and core.tally.processed == 1
    # a pre-parsed event is checked too
    core.handle(Record(raw, "ot.events", partition=0, offset=4, key=b"p-9", keyed=True), event=parse_event(raw))
    assert len(sink.letters) == 3


def test_a_json_object_that_repeats_a_key_is_rejected_naming_it():
    event = json.dumps(_story().events[0])
    repeated = event.replace('"patient_id": "p-1"', '"patient_id": "p-1", "patient_id": "p-2"')
    with pytest.raises(EventRejected) as rejected:
        parse_event(repeated.encode())
    assert rejected.value.field == "(repeated key)"  # the key name is input: in the reason only
    assert rejected.value.reason == '(repeated key): the key "patient_id" appears more than once in one JSON object'
    nested = event.replace('"instrument": "COPM-performance"', '"instrument": "COPM-performance", "instrument": "x"')
    with pytest.raises(EventRejected, match="instrument"):
        parse_event(nested.encode())
    # extra fields, and text that looks like a key, are not repeats
    assert parse_event(event.replace('"type"', '"note": "a \\": b", "type"').encode()).event_id == "p-1-e001"


def test_the_state_bound_keeps_the_newest_ids_and_plans_and_counts_what_goes(engine):
    state = PatientState("p-1")
    dropped = 0
    plans = MAX_PLANS + 3
    for i in range(MAX_REMEMBERED_EVENTS + 10):
        plan_id = f"poc-{min(i, plans - 1)}"
        event = {"type": "visit", "event_id": f"v{i}", "patient_id": "p-1", "plan_id": plan_id,
                 "occurred_at": "2026-01-05T09:00:00Z", "status": "attended"}
        if i < plans:  # each plan opened by a plan event
            event = {**Story(plan_id=plan_id).plan(0).events[0], "event_id": f"v{i}"}
        dropped += engine.process(state, parse_event(json.dumps(event))).dropped
    assert dropped == 10 + 3  # the 10 oldest ids, the 3 oldest plans
    assert len(state.seen_events) == 8 * MAX_REMEMBERED_EVENTS
    assert list(state.plans) == [f"poc-{i}" for i in range(3, plans)]
    assert state.has_seen(f"v{MAX_REMEMBERED_EVENTS + 9}") and state.has_seen("v10") and not state.has_seen("v9")


def test_a_bom_before_the_first_line_is_not_part_of_it():
    line = json.dumps(_story().events[0]).encode()
    (record,) = list(JsonlSource(io.BytesIO(b"\xef\xbb\xbf" + line + b"\n"), "f.jsonl"))
    assert record.raw == line and record.where == "f.jsonl:1"


def test_backtest_explain_and_rule_tests_go_on_past_an_engine_fault():
    story = _story()
    poison = story.events[1]["event_id"]
    records = _records(story.events)
    report = backtest.backtest(FailsOn(poison), Engine(defaults.rulesets(), defaults.catalogue()), records)
    assert report.engine_failures == 1 and report.events == 3
    ex = explain.explain(FailsOn(poison), records, poison)
    assert ex.rejected is not None and ex.rejected.kind == "engine"
    assert explain.render(ex)[0] == ("Event p-1-e002 (evaluation) at t:2: the rules engine failed on it, so it is "
                                     "dead-lettered and no rule is checked")
    case = ruletests.Case("c", 1, [{**e} for e in story.events], [], [])
    result = ruletests.run_case(FailsOn(poison), case)
    assert result.error == "event 2: internal error: the rules engine failed on this event (RuntimeError)"


def test_explain_says_which_line_was_rejected_and_why(tmp_path):
    events = _story().events
    bad = {**events[1], "measures": [{"instrument": "COPM-performance", "score": 11, "goal_id": "g1"}]}
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in [events[0], bad, events[2]]) + "\n")
    result = CliRunner().invoke(main, ["explain", "--input", str(path), "--event-id", "p-1-e002"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"Event at {path}:2: it was rejected, so it is dead-lettered and no rule is checked",
        "  measures[0].score: 11 is outside the range 1–10 of COPM-performance"]


def test_a_failing_patient_is_left_out_of_a_sweep_and_the_others_are_swept():
    class SweepFailsFor(Engine):
        def sweep(self, state, at):
            if state.patient_id == "p-1":
                state.plans.clear()  # a half-applied change the sweep must undo
                raise RuntimeError("injected")
            return super().sweep(state, at)

    import datetime as dt

    one, two = _story(), Story(patient="p-2", plan_id="poc-2").plan(0, [goal("g1", "COPM-performance", 3, 7)])
    sink = Collect()
    states = PatientStates()
    core = EventCore(SweepFailsFor(defaults.rulesets(), defaults.catalogue()), states, sink)
    core.feed(_records(one.events + two.events))
    before = states.get("p-1").to_bytes()  # type: ignore[union-attr]
    at = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)  # certifications expired: the sweep recommends
    changed = core.sweep(at, changes=True)
    assert changed == ["p-2"] and core.tally.sweep_failures == 1
    assert states.get("p-1").to_bytes() == before  # type: ignore[union-attr]
    assert {r.patient_id for r in sink.recs if r.triggered_by[0].startswith("clock@")} == {"p-2"}


def test_an_event_for_a_plan_no_plan_event_opened_is_rejected_and_leaves_no_phantom(engine):
    """An evaluation or visit for an unknown plan_id used to create an open plan, swept for ever."""
    import datetime as dt

    story = Story().plan(0, [goal("g1", "COPM-performance", 3, 7)])
    stray = Story(plan_id="poc-9")
    stray.evaluation(3, ("COPM-performance", 5)).visit(4)
    stray.events = [{**e, "event_id": f"stray-{i}"} for i, e in enumerate(stray.events)]  # ids apart from story's
    sink = Collect()
    states = PatientStates()
    core = EventCore(engine, states, sink)
    core.feed(_records(stray.events + story.events))
    assert [(r.field, r.reason) for _, r in sink.letters] == [
        ("plan_id", 'plan_id: no plan event has opened "poc-9"')] * 2
    assert core.tally.rejected == 2 and core.tally.processed == 1 and core.tally.balanced
    state = states.get("p-1")
    assert state is not None and list(state.plans) == ["poc-1"]
    core.sweep(dt.datetime(2026, 6, 1, tzinfo=dt.UTC))
    assert all(r.plan_id == "poc-1" for r in sink.recs)
    # once the plan event arrives, the same events are welcome (they were not remembered)
    opened = Story(plan_id="poc-9").plan(0)
    core.feed(_records([{**opened.events[0], "event_id": "open-9"}, *stray.events]))
    assert core.tally.processed == 4 and len(sink.letters) == 2


def test_a_discharged_plan_recommends_nothing_until_a_plan_snapshot_reopens_it(engine):
    """An evaluation after discharge gave "Goal g1 reached ... set the next goal"."""
    story = (Story().plan(0, [goal("g1", "COPM-performance", 3, 7)]).evaluation(14, ("COPM-performance", 5, "g1"))
             .discharge(20).evaluation(21, ("COPM-performance", 7, "g1")))
    sink = Collect()
    states = PatientStates()
    core = EventCore(engine, states, sink)
    core.feed(_records(story.events))
    assert sink.recs == [] and core.tally.processed == 4  # the late evaluation is kept in history
    state = states.get("p-1")
    assert state is not None and state.plans["poc-1"].goals["g1"].latest == 7
    reopened = Story().plan(22, [goal("g1", "COPM-performance", 3, 9)])
    reopened.evaluation(30, ("COPM-performance", 9, "g1"))
    core.feed(_records([{**e, "event_id": f"again-{i}"} for i, e in enumerate(reopened.events)]))
    assert not state.plans["poc-1"].discharged
    # recommendations again (g1 was met before, in this plan, so only "all goals met" speaks)
    assert [r.kind for r in sink.recs] == ["discharge"]
