"""Bad input is rejected with a reason that names the field and the value."""

from __future__ import annotations

import json

import pytest

from otrules.schemas import EventRejected, EvaluationEvent, PlanEvent, parse_event

BASE = {"event_id": "e-1", "patient_id": "p-1", "plan_id": "poc-1", "occurred_at": "2026-01-05T09:00:00Z"}


def evaluation(**over):
    ev = {"type": "evaluation", **BASE, "kind": "progress",
          "measures": [{"instrument": "COPM-performance", "score": 5, "goal_id": "g1"}]}
    ev.update(over)
    return ev


def test_valid_events_parse(catalogue):
    assert isinstance(parse_event(evaluation(), catalogue), EvaluationEvent)
    plan = {"type": "plan", **BASE, "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-01-05",
            "certified_until": "2026-04-04", "goals": [{"goal_id": "g1", "instrument": "COPM-performance", "target": 7}]}
    parsed = parse_event(plan, catalogue)
    assert isinstance(parsed, PlanEvent) and parsed.goals[0].gas_weight == 1 and parsed.schema_version == "1"


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
        (json.dumps(evaluation(occurred_at="yesterday")), 'occurred_at: Input should be a valid datetime'),
        (json.dumps(evaluation(kind="weekly")), "kind: Input should be 'initial', 're-evaluation', 'progress' or 'discharge' (got \"weekly\")"),
        (json.dumps(evaluation(measures=[{"instrument": "COPM-performance", "score": "5"}])), 'measures[0].score: Input should be a valid number (got "5")'),
        (json.dumps(evaluation(measures=[{"instrument": "COPM-performance", "score": 11}])), "measures[0].score: 11 is outside the range 1–10 of COPM-performance"),
        (json.dumps(evaluation(measures=[{"instrument": "GAS", "score": 1.5}])), "measures[0].score: 1.5 must be a whole number of GAS"),
        (json.dumps(evaluation(measures=[{"instrument": "Barthel-100", "score": 52}])), "measures[0].score: 52 must be a multiple of 5 of Barthel-100"),
        (json.dumps(evaluation(measures=[{"instrument": "NHPT", "score": 0}])), "measures[0].score: 0 is outside the range >0–600 of NHPT"),
        (json.dumps(evaluation(measures=[])), "measures: List should have at least 1 item"),
        (json.dumps(evaluation(schema_version="2")), "schema_version: Input should be '1'"),
        (json.dumps({"type": "visit", **BASE, "status": "late"}), "status: Input should be 'attended', 'missed' or 'cancelled' (got \"late\")"),
        (json.dumps({"type": "plan", **BASE, "setting": "outpatient",
                     "goals": [{"goal_id": "g1", "instrument": "BBT", "target": 9},
                               {"goal_id": "g1", "instrument": "BBT", "target": 9}]}), "goals: Value error, goal_id 'g1' appears twice"),
    ],
)
def test_rejections_name_field_and_value(catalogue, raw, reason):
    with pytest.raises(EventRejected) as info:
        parse_event(raw.encode() if isinstance(raw, str) else raw, catalogue)
    assert info.value.reason.startswith(reason), info.value.reason


def test_unknown_instrument_is_accepted(catalogue):
    ev = parse_event(evaluation(measures=[{"instrument": "Custom-scale", "score": 999}]), catalogue)
    assert ev.measures[0].score == 999


def test_extra_fields_are_ignored(catalogue):
    assert parse_event(evaluation(source_system="epic"), catalogue).event_id == "e-1"
