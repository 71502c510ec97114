"""Bad input is rejected with a reason that names the field and the value."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import TypeVar

import pytest

from otrules.schemas import DischargeEvent, EvaluationEvent, EventRejected, PlanEvent, parse_event

E = TypeVar("E", PlanEvent, EvaluationEvent, DischargeEvent)

RFC3339 = 'Input should be an RFC 3339 date-time with an offset (Z or ±hh:mm), such as "2026-01-05T09:00:00Z"'
YMD = 'Input should be a date written YYYY-MM-DD, such as "2026-04-04"'
BASE = {"event_id": "e-1", "patient_id": "p-1", "plan_id": "poc-1", "occurred_at": "2026-01-05T09:00:00Z"}


def evaluation(**over):
    ev = {"type": "evaluation", **BASE, "kind": "progress", "clinician_id": "ot-4",
          "measures": [{"instrument": "COPM-performance", "score": 5, "goal_id": "g1"}]}
    ev.update(over)
    return ev


def plan(**over):
    ev = {"type": "plan", **BASE, "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-01-05",
          "certified_until": "2026-04-04",
          "goals": [{"goal_id": "g1", "description": "Independent upper-body dressing", "instrument": "COPM-performance",
                     "baseline": 3, "target": 7, "target_date": "2026-03-01", "gas_weight": 1}]}
    ev.update(over)
    return ev


def without(event, field):
    return {k: v for k, v in event.items() if k != field}


def parsed_as(kind: type[E], raw, catalogue) -> E:
    """parse_event, checking that the event is of that type."""
    event = parse_event(raw, catalogue)
    assert isinstance(event, kind)
    return event


def test_valid_events_parse(catalogue):
    assert isinstance(parse_event(evaluation(), catalogue), EvaluationEvent)
    minimal_goal = {"goal_id": "g1", "description": "Dress", "instrument": "COPM-performance", "target": 7}
    parsed = parse_event(plan(goals=[minimal_goal]), catalogue)
    assert isinstance(parsed, PlanEvent) and parsed.goals[0].gas_weight == 1 and parsed.schema_version == "1"
    assert parsed.goals[0].baseline is None and parsed.goals[0].target_date is None
    assert parsed_as(PlanEvent, plan(goals=[]), catalogue).goals == []  # the contract sets no minimum number of goals
    measures = parsed_as(EvaluationEvent, evaluation(measures=[{"instrument": "FIM-motor", "score": 61}]), catalogue).measures
    assert measures[0].goal_id is None
    discharge = parsed_as(DischargeEvent, {"type": "discharge", **BASE, "reason": "goals-met"}, catalogue)
    assert discharge.reason == "goals-met"


def test_the_contract_examples_parse(catalogue):
    """The events of contracts.md §1, verbatim."""
    examples = [
        '{"type":"plan","event_id":"e-001","patient_id":"p-17","plan_id":"poc-17-1",'
        '"occurred_at":"2026-01-05T09:00:00Z","setting":"outpatient",'
        '"frequency_per_week":2,"certified_from":"2026-01-05","certified_until":"2026-04-04",'
        '"goals":[{"goal_id":"g1","description":"Independent upper-body dressing",'
        '"instrument":"COPM-performance","baseline":3,"target":7,"target_date":"2026-03-01","gas_weight":1}]}',
        '{"type":"evaluation","event_id":"e-002","patient_id":"p-17","plan_id":"poc-17-1",'
        '"occurred_at":"2026-01-19T10:30:00Z","kind":"progress","clinician_id":"ot-4",'
        '"measures":[{"instrument":"COPM-performance","score":5,"goal_id":"g1"},'
        '{"instrument":"GAS","score":0,"goal_id":"g1"},{"instrument":"FIM-motor","score":61}]}',
        '{"type":"visit","event_id":"e-003","patient_id":"p-17","plan_id":"poc-17-1",'
        '"occurred_at":"2026-01-07T15:00:00Z","status":"attended"}',
        '{"type":"discharge","event_id":"e-004","patient_id":"p-17","plan_id":"poc-17-1",'
        '"occurred_at":"2026-03-02T16:00:00Z","reason":"goals-met"}',
    ]
    assert [parse_event(e.encode(), catalogue).type for e in examples] == ["plan", "evaluation", "visit", "discharge"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "(event): Input should be an object (got [1, 2])"),
        (json.dumps({**evaluation(), "type": "referral"}), 'type: unknown event type "referral"'),
        (json.dumps({k: v for k, v in evaluation().items() if k != "type"}), "type: required field is missing"),
        (json.dumps({k: v for k, v in evaluation().items() if k != "patient_id"}), "patient_id: required field is missing"),
        (json.dumps(evaluation(patient_id="")), 'patient_id: String should have at least 1 character (got "")'),
        (json.dumps(evaluation(occurred_at="2026-01-05T09:00:00")), 'occurred_at: Input should have timezone info (got "2026-01-05T09:00:00")'),
        (json.dumps(evaluation(occurred_at="yesterday")), f'occurred_at: {RFC3339} (got "yesterday")'),
        (json.dumps(evaluation(kind="weekly")), "kind: Input should be 'initial', 're-evaluation', 'progress' or 'discharge' (got \"weekly\")"),
        (json.dumps(evaluation(measures=[{"instrument": "COPM-performance", "score": "5"}])), 'measures[0].score: Input should be a valid number (got "5")'),
        (json.dumps(evaluation(measures=[{"instrument": "COPM-performance", "score": 11}])), "measures[0].score: 11 is outside the range 1–10 of COPM-performance"),
        (json.dumps(evaluation(measures=[{"instrument": "GAS", "score": 1.5}])), "measures[0].score: 1.5 must be a whole number of GAS"),
        (json.dumps(evaluation(measures=[{"instrument": "Barthel-100", "score": 52}])), "measures[0].score: 52 must be a multiple of 5 of Barthel-100"),
        (json.dumps(evaluation(measures=[{"instrument": "NHPT", "score": 0}])), "measures[0].score: 0 is outside the range >0–600 of NHPT"),
        (json.dumps(evaluation(measures=[])), "measures: List should have at least 1 item"),
        (json.dumps(evaluation(schema_version="2")), "schema_version: Input should be '1'"),
        (json.dumps({"type": "visit", **BASE, "status": "late"}), "status: Input should be 'attended', 'missed' or 'cancelled' (got \"late\")"),
        (json.dumps(plan(goals=[{"goal_id": "g1", "description": "d", "instrument": "BBT", "target": 9},
                                {"goal_id": "g1", "description": "d", "instrument": "BBT", "target": 9}])),
         "goals: Value error, goal_id 'g1' appears twice"),
        (json.dumps(evaluation(patient_id="p-1\n| a | b |")),
         'patient_id: Input should be an id of printable characters with no space at either end: U+000A, a control '
         'character, at character 4 (got "p-1\\n| a | b |")'),
        (json.dumps(plan(goals=[{"goal_id": "g1\u202e", "description": "d", "instrument": "BBT", "target": 9}])),
         "goals[0].goal_id: Input should be an id of printable characters with no space at either end: U+202E "
         'RIGHT-TO-LEFT OVERRIDE, a format character, at character 3 (got "g1\\u202e")'),
        (json.dumps(evaluation(clinician_id="ot-4 ")),
         'clinician_id: Input should be an id of printable characters with no space at either end: a space at the '
         'end (got "ot-4 ")'),
        (json.dumps(evaluation(measures=[{"instrument": "x" * 129, "score": 1}])),
         'measures[0].instrument: String should have at most 128 characters (got "xxxxxxxx'),
        (json.dumps(plan(goals=[{"goal_id": "g1", "description": "Dress\tand undress", "instrument": "BBT", "target": 9}])),
         "goals[0].description: Input should be printable text, not only spaces: U+0009, a control character, at "
         'character 6 (got "Dress\\tand undress")'),
        (json.dumps({"type": "discharge", **BASE, "reason": "d" * 1001}),
         "reason: String should have at most 1000 characters"),
    ],
)
def test_rejections_name_field_and_value(catalogue, raw, reason):
    with pytest.raises(EventRejected) as info:
        parse_event(raw.encode() if isinstance(raw, str) else raw, catalogue)
    assert info.value.reason.startswith(reason), info.value.reason


@pytest.mark.parametrize(
    "value",
    ["20260310093000",  # was read as Unix milliseconds: year 2612
     "20260105",  # was read as Unix seconds: 1970-08-23
     "1767225600",  # was read as Unix seconds: 2026-01-01
     1767225600, True, None, [], {},
     "2026-01-05",  # a date is not a date-time
     "2026-01-05 09:00:00Z", "2026-01-05_09:00:00Z",  # RFC 3339 separates with T
     "2026-01-05T09:00Z",  # RFC 3339 has seconds
     "2026-01-05T09:00:00+0100", "2026-01-05T09:00:00+01",  # offsets are ±hh:mm
     "2026-1-5T09:00:00Z", " 2026-01-05T09:00:00Z", "2026-01-05T09:00:00Z\n",
     "２０２６-01-05T09:00:00Z"],  # noqa: RUF001 - full-width digits, on purpose
)
def test_occurred_at_accepts_only_rfc3339_with_offset(catalogue, value):
    raw = json.dumps(evaluation(occurred_at=value), ensure_ascii=False).encode()
    with pytest.raises(EventRejected) as info:
        parse_event(raw, catalogue)
    assert info.value.reason == f"occurred_at: {RFC3339} (got {json.dumps(value, ensure_ascii=False)})"


@pytest.mark.parametrize(
    ("value", "reason"),
    [("2026-01-05T09:00:00", 'occurred_at: Input should have timezone info (got "2026-01-05T09:00:00")'),
     ("2026-02-30T09:00:00Z", 'occurred_at: Input should be a valid datetime or date, day value is outside expected range '
                              '(got "2026-02-30T09:00:00Z")'),
     ("2026-01-05T25:00:00Z", 'occurred_at: Input should be a valid datetime or date, unexpected extra characters '
                              'at the end of the input (got "2026-01-05T25:00:00Z")')],
)
def test_occurred_at_that_looks_right_but_is_not_a_time(catalogue, value, reason):
    """The shape is RFC 3339, so pydantic's own message about the value is given."""
    with pytest.raises(EventRejected) as info:
        parse_event(evaluation(occurred_at=value), catalogue)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2026-01-05T09:00:00Z", dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)),
     ("2026-01-05t09:00:00z", dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)),
     ("2026-01-05T09:00:00+00:00", dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)),
     ("2026-01-05T10:30:00.25+01:30", dt.datetime(2026, 1, 5, 9, 0, 0, 250000, tzinfo=dt.UTC)),
     ("2026-01-04T23:00:00-05:00", dt.datetime(2026, 1, 5, 4, tzinfo=dt.UTC))],
)
def test_rfc3339_date_times_are_read_with_their_offset(catalogue, value, expected):
    event = parse_event(json.dumps(evaluation(occurred_at=value)).encode(), catalogue)
    assert event.occurred_at == expected and event.occurred_at.utcoffset() is not None


@pytest.mark.parametrize("value", ["20260105", "1767225600", 20260105, 1767225600, "2026-1-5", "2026-01-05T00:00:00Z",
                                   "05/01/2026", "", None])
@pytest.mark.parametrize("field", ["certified_from", "certified_until", "target_date"])
def test_dates_accept_only_yyyy_mm_dd(catalogue, field, value):
    if field == "target_date":
        event, where = plan(goals=[{**plan()["goals"][0], "target_date": value}]), "goals[0].target_date"
        if value is None:  # an optional date may be null
            assert parsed_as(PlanEvent, event, catalogue).goals[0].target_date is None
            return
    else:
        event, where = plan(**{field: value}), field
    with pytest.raises(EventRejected) as info:
        parse_event(event, catalogue)
    assert info.value.reason == f"{where}: {YMD} (got {json.dumps(value)})"


def test_an_impossible_date_is_rejected(catalogue):
    with pytest.raises(EventRejected) as info:
        parse_event(plan(certified_until="2026-02-30"), catalogue)
    assert info.value.reason == ('certified_until: Input should be a valid date or datetime, day value is outside '
                                 'expected range (got "2026-02-30")')


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00", "1899-12-31T23:59:59Z",
                                   "2200-01-01T00:00:00Z"])
def test_date_times_outside_1900_to_2199_are_rejected(catalogue, value):
    """A typo in a year; near 9999 the engine's day arithmetic and a stored state's
    timestamps would overflow (a state with a throttle in year 10000 could not be read back)."""
    with pytest.raises(EventRejected) as info:
        parse_event({**evaluation(), "occurred_at": value}, catalogue)
    assert info.value.reason == f'occurred_at: Input should be in the years 1900–2199 (got "{value}")'
    with pytest.raises(EventRejected) as info:
        parse_event(plan(certified_until="9999-12-31"), catalogue)
    assert info.value.reason == 'certified_until: Input should be in the years 1900–2199 (got "9999-12-31")'
    assert parse_event({**evaluation(), "occurred_at": "1900-01-01T00:00:00Z"}, catalogue)
    assert parse_event({**evaluation(), "occurred_at": "2199-12-31T23:59:59Z"}, catalogue)


def test_a_certification_that_ends_before_it_starts_is_rejected(catalogue):
    with pytest.raises(EventRejected) as info:
        parse_event(plan(certified_from="2026-01-05", certified_until="2026-01-04"), catalogue)
    assert info.value.reason == 'certified_until: Input should not be before certified_from "2026-01-05" (got "2026-01-04")'
    assert parsed_as(PlanEvent, plan(certified_from="2026-01-05", certified_until="2026-01-05"), catalogue) \
        .certified_until == dt.date(2026, 1, 5)


def test_a_plan_may_leave_its_visit_frequency_unknown(catalogue):
    """contracts.md §1: omitted or null, the frequency is unknown (its facts are null)."""
    assert parsed_as(PlanEvent, without(plan(), "frequency_per_week"), catalogue).frequency_per_week is None
    assert parsed_as(PlanEvent, plan(frequency_per_week=None), catalogue).frequency_per_week is None


@pytest.mark.parametrize(
    ("event", "reason"),
    [(without(plan(), "certified_from"), "certified_from: required field is missing"),
     (without(plan(), "certified_until"), "certified_until: required field is missing"),
     (without(plan(), "goals"), "goals: required field is missing"),
     (without(plan(), "setting"), "setting: required field is missing"),
     (plan(goals=[without(plan()["goals"][0], "description")]), "goals[0].description: required field is missing"),
     (plan(goals=[without(plan()["goals"][0], "target")]), "goals[0].target: required field is missing"),
     (plan(certified_until=None), f"certified_until: {YMD} (got null)"),
     (plan(goals=None), "goals: Input should be a valid array (got null)"),
     (without(evaluation(), "clinician_id"), "clinician_id: required field is missing"),
     (evaluation(clinician_id=""), 'clinician_id: String should have at least 1 character (got "")'),
     (evaluation(clinician_id=4), "clinician_id: Input should be a valid string (got 4)"),
     (without(evaluation(), "kind"), "kind: required field is missing"),
     ({"type": "discharge", **BASE}, "reason: required field is missing"),
     ({"type": "discharge", **BASE, "reason": None}, "reason: Input should be a valid string (got null)"),
     ({"type": "discharge", **BASE, "reason": " "}, 'reason: Input should be printable text, not only spaces: only spaces (got " ")'),
     ({"type": "visit", **BASE}, "status: required field is missing")],
)
def test_fields_the_contract_does_not_make_optional_are_required(catalogue, event, reason):
    with pytest.raises(EventRejected) as info:
        parse_event(event, catalogue)
    assert info.value.reason.startswith(reason), info.value.reason
    assert "; " not in info.value.reason, info.value.reason  # only the one field is wrong


def test_the_optional_fields_may_be_left_out(catalogue):
    g = without(without(without(plan()["goals"][0], "baseline"), "target_date"), "gas_weight")
    parsed = parsed_as(PlanEvent, without(plan(goals=[g]), "schema_version"), catalogue)
    assert (parsed.goals[0].baseline, parsed.goals[0].target_date, parsed.goals[0].gas_weight) == (None, None, 1)


def test_a_python_value_that_is_not_json_is_rejected_not_a_crash(catalogue):
    with pytest.raises(EventRejected) as info:
        parse_event(plan(certified_until=dt.date(2026, 4, 4)), catalogue)
    assert info.value.reason == "certified_until: not a JSON value (got date 2026-04-04)"


def test_unknown_instrument_is_accepted(catalogue):
    ev = parsed_as(EvaluationEvent, evaluation(measures=[{"instrument": "Custom-scale", "score": 999}]), catalogue)
    assert ev.measures[0].score == 999


def test_extra_fields_are_ignored(catalogue):
    assert parse_event(evaluation(source_system="epic"), catalogue).event_id == "e-1"


def test_the_committed_json_schema_holds_the_same_date_rules():
    """Pipelines that validate with schemas/json/event.schema.json reject what otrules rejects."""
    from pathlib import Path

    import jsonschema

    schema = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "json" / "event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(plan()) and validator.is_valid(evaluation())
    for bad in (evaluation(occurred_at="20260310093000"), evaluation(occurred_at="2026-01-05T09:00:00"),
                plan(certified_until="20260404"), without(plan(), "certified_until"), without(evaluation(), "clinician_id"),
                {"type": "discharge", **BASE}):
        assert not validator.is_valid(bad), bad


def _goal(**over):
    return {**plan()["goals"][0], **over}


# Every way parse_event rejects an event, and whether the JSON Schema can say it too. A rejection
# the schema cannot express is listed, with why, in the README ("What the JSON Schema cannot say").
REJECTIONS = [
    ("occurred_at without an offset", evaluation(occurred_at="2026-01-05T09:00:00"), True),
    ("occurred_at as digits", evaluation(occurred_at="20260310093000"), True),
    ("occurred_at in year 9999", evaluation(occurred_at="9999-12-31T23:59:59-01:00"), True),
    ("a date in year 1899", plan(certified_from="1899-01-05"), True),
    ("a date as digits", plan(certified_until="20260404"), True),
    ("a required field missing", without(evaluation(), "clinician_id"), True),
    ("an unknown event type", {**evaluation(), "type": "referral"}, True),
    ("a score sent as text", evaluation(measures=[{"instrument": "COPM-performance", "score": "5"}]), True),
    ("no measures", evaluation(measures=[]), True),
    ("frequency over 21 a week", plan(frequency_per_week=22), True),
    ("gas_weight over 100", plan(goals=[_goal(gas_weight=1e308)]), True),
    ("an empty id", evaluation(event_id=""), True),
    ("an id over 128 characters", evaluation(plan_id="p" * 129), True),
    ("an id with a line break", evaluation(patient_id="p-1\n# URGENT"), True),
    ("an id with a bidi control", plan(goals=[_goal(goal_id="g1\u202e")]), True),
    ("an id with a zero-width space", evaluation(measures=[{"instrument": "BBT\u200b", "score": 30}]), True),
    ("an id with a space at either end", evaluation(clinician_id=" ot-4"), True),
    ("a description over 1000 characters", plan(goals=[_goal(description="d" * 1001)]), True),
    ("a description with a tab", plan(goals=[_goal(description="Dress\tand undress")]), True),
    ("a discharge reason of only spaces", {"type": "discharge", **BASE, "reason": "\u00a0 "}, True),
    ("a format character outside the Basic Multilingual Plane", evaluation(event_id="e-1\U000e0041"), False),
    ("a score outside its instrument's range", evaluation(measures=[{"instrument": "COPM-performance",
                                                                    "score": 11}]), False),
    ("certified_until before certified_from", plan(certified_from="2026-04-05", certified_until="2026-04-04"), False),
    ("a goal_id twice in one plan", plan(goals=[_goal(), _goal()]), False),
    ("a day that does not exist", plan(certified_until="2026-02-30"), False),
]


@pytest.mark.parametrize(("what", "event", "in_schema"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_every_rejection_is_in_the_json_schema_or_listed_as_not_expressible(catalogue, what, event, in_schema):
    from pathlib import Path

    import jsonschema

    with pytest.raises(EventRejected):
        parse_event(event, catalogue)
    schema = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "json" / "event.schema.json").read_text())
    assert jsonschema.Draft202012Validator(schema).is_valid(event) is not in_schema, what
    if not in_schema:
        readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
        assert what in readme, f"README.md does not list {what!r} as something the schema cannot say"


def test_huge_scores_of_an_unknown_instrument_put_no_inf_in_facts_or_text():
    from conftest import Story, engine_for, run_story

    engine = engine_for('ruleset: t\nversion: "1"\nrules:\n  - id: ch\n    when: measure.count >= 1\n'
                        '    recommend: {kind: clinical_review, indicator: info, summary: "ch {measure.change}"}\n')
    story = Story().plan(0).evaluation(1, ("Custom", 1e308)).evaluation(2, ("Custom", -1e308))
    recs = run_story(engine, story)
    assert [r.summary for r in recs] == ["ch n/a", "ch n/a"]
    assert not any(re.search(r"\b(inf|infinity|nan)\b", r.to_json(), re.IGNORECASE) for r in recs)


def test_the_recommendation_schema_keeps_summaries_under_140():
    from pathlib import Path

    schema = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "json" /
                         "recommendation.schema.json").read_text())
    assert schema["properties"]["summary"]["maxLength"] == 139


@pytest.mark.parametrize(("sent", "shown"), [
    ("1e309", "measures[0].score: Input should be a finite number (got 1e309)"),
    ("12345678901234567890123456789012345678",
     "measures[0].score: 12345678901234567890123456789012345678 is outside the range 1–10 of COPM-performance"),
])
def test_a_dead_letter_reason_shows_a_number_as_it_was_sent(catalogue, sent, shown):
    """It showed `got Infinity` for 1e309 and a rounded float for a 38-digit integer."""
    text = json.dumps(evaluation(measures=[{"instrument": "COPM-performance", "score": 0}])).replace(
        '"score": 0', f'"score": {sent}')
    with pytest.raises(EventRejected) as rejected:
        parse_event(text.encode(), catalogue)
    assert rejected.value.reason == shown
