"""`otrules test`: the bundled cases pass, and a broken rule is caught and explained."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from otrules import defaults
from otrules.cli import main
from otrules.ruletests import expand_events
from otrules.schemas import parse_event


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_bundled_cases_cover_every_rule_and_pass():
    result = invoke("test")
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("27 passed, 0 failed")
    cases = (defaults.DEFAULT_RULES.parent / "ot-core.tests.yaml").read_text()
    for rule in defaults.rulesets()[0].rules:
        assert f"rule: {rule.id}," in cases, f"no test case expects rule {rule.id}"


def test_a_changed_threshold_fails_with_a_readable_difference(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(defaults.DEFAULT_RULES.read_text().replace("plan.visits_missed_in_a_row >= 3",
                                                                 "plan.visits_missed_in_a_row >= 4"))
    result = invoke("test", "--rules", str(broken))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    fail = next(i for i, line in enumerate(lines) if "FAIL  three missed visits in a row" in line)
    assert lines[fail + 1].strip() == ("expected   {rule: missed-visits, kind: adherence_review, indicator: warning, "
                                       "event: 5}  -- not produced")
    assert lines[fail + 2].strip() == "produced:  nothing"
    assert lines[-1] == "26 passed, 1 failed"


def test_exactly_reports_unexpected_recommendations(tmp_path):
    noisy = tmp_path / "noisy.yaml"
    noisy.write_text(defaults.DEFAULT_RULES.read_text().replace("plan.visits_missed_in_a_row >= 3",
                                                                "plan.visits_missed_in_a_row >= 1"))
    result = invoke("test", "--rules", str(noisy))
    assert result.exit_code == 1
    assert "unexpected missed-visits (adherence_review, warning) at e-003: 1 visits missed in a row" in result.output


def _suite(tmp_path: Path, body: str) -> Path:
    (tmp_path / "ot-core.yaml").write_text(defaults.DEFAULT_RULES.read_text())
    path = tmp_path / "mine.tests.yaml"
    path.write_text("rules: ot-core.yaml\ncases:\n" + body)
    return path


def test_an_invalid_event_in_a_case_is_reported_as_such(tmp_path):
    path = _suite(tmp_path, """\
  - name: bad score
    events:
      - evaluation: {day: 1, measures: ["COPM-performance 12 g1"]}
    expect: [{rule: goal-met}]
""")
    result = invoke("test", str(path))
    assert result.exit_code == 1
    assert "event 1 (line 5) is not valid: measures[0].score: 12 is outside the range 1–10 of COPM-performance" \
        in result.output


def test_structural_errors_point_at_the_case(tmp_path):
    path = _suite(tmp_path, """\
  - name: typo
    events: []
    expekt: []
  - name: bad measure
    events:
      - evaluation: {measures: ["COPM-performance"]}
""")
    result = invoke("test", str(path))
    assert result.exit_code == 1
    assert f"{path}:5:5: case 'typo': unknown key(s) expekt; use name, events, expect" in result.output
    assert f"{path}:8:33: case 'bad measure'" in result.output  # the measure itself
    assert ("case 'bad measure': events[0] (evaluation): measures[0]: a measure is 'INSTRUMENT SCORE [GOAL]', "
            "got 'COPM-performance'") in result.output


def test_forbidden_recommendation_is_reported(tmp_path):
    path = _suite(tmp_path, """\
  - name: must not advance
    events:
      - plan: {goals: [{goal_id: g1, instrument: COPM-performance, baseline: 3, target: 7}]}
      - evaluation: {day: 14, measures: ["COPM-performance 7 g1"]}
    expect_not: [{rule: goal-met}]
""")
    result = invoke("test", str(path))
    assert result.exit_code == 1
    assert "must not   {rule: goal-met}  -- but got goal-met (advance_goal, info goal g1) at e-002" in result.output


def test_yaml_dates_and_date_times_are_the_iso_strings_they_stand_for(tmp_path):
    """docs/authoring.md: any field of the real event may be added, written plainly in YAML."""
    path = _suite(tmp_path, """\
  - name: target date as a YAML date
    events:
      - plan: {goals: [{goal_id: g1, instrument: COPM-performance, baseline: 3, target: 7, target_date: 2026-02-01}]}
      - evaluation: {day: 40, measures: ["COPM-performance 5 g1"]}
    expect: [{rule: target-date-passed, goal: g1, event: 2}]
  - name: certification end and event time as YAML values
    events:
      - plan: {certified_until: 2026-01-20}
      - visit: {at: 2026-01-21T09:30:00+01:00}
      - visit: {at: 2026-01-22T08:00:00Z}
    expect: [{rule: recertify-expired, event: 2}]
  - name: a YAML date-time with no offset is rejected like any such input
    events:
      - plan: {}
      - visit: {at: 2026-01-21 09:30:00}
    expect: []
""")
    result = invoke("test", str(path))
    assert "Traceback" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    lines = result.output.splitlines()
    assert "  PASS  target date as a YAML date" in lines
    assert "  PASS  certification end and event time as YAML values" in lines
    assert f"  FAIL  a YAML date-time with no offset is rejected like any such input  ({path}:14)" in lines
    assert ('        event 2 (line 17) is not valid: occurred_at: Input should have timezone info '
            '(got "2026-01-21T09:30:00")') in lines
    assert result.exit_code == 1 and lines[-1] == "2 passed, 1 failed"


def test_yaml_values_become_json_values():
    from ruamel.yaml import YAML

    raw = YAML(typ="rt").load("""\
- plan: {certified_until: 2026-02-01, goals: [{goal_id: g1, instrument: BBT, target: 30.5, target_date: 2026-03-01}]}
- visit: {at: 2026-01-06T09:30:00.5-05:00}
- clock: {at: 2026-04-01T00:00:00Z}
""")
    plan, visit, clock = expand_events(raw, dt.date(2026, 1, 5))
    assert plan["certified_until"] == "2026-02-01" and plan["goals"][0]["target_date"] == "2026-03-01"
    assert type(plan["goals"][0]["target"]) is float
    assert visit["occurred_at"] == "2026-01-06T09:30:00.500000-05:00"
    assert clock == {"type": "clock", "at": "2026-04-01T00:00:00Z"}


def test_filled_in_defaults_make_valid_events_of_every_type(catalogue):
    """A case names only what it is about; the rest is filled in and is valid input."""
    events = expand_events([{"plan": {"goals": [{"goal_id": "g1", "instrument": "BBT", "target": 30}]}},
                            {"evaluation": {"day": 7, "measures": ["BBT 20 g1"]}},
                            {"visit": {"day": 8}}, {"visits": {"days": [9, 10], "status": "missed"}},
                            {"discharge": {"day": 30}}], dt.date(2026, 1, 5))
    assert events[0]["goals"] == [{"goal_id": "g1", "instrument": "BBT", "target": 30, "description": "goal g1"}]
    assert (events[0]["frequency_per_week"], events[0]["certified_from"], events[0]["certified_until"]) == \
        (2, "2026-01-05", "2026-04-04")
    assert events[1]["clinician_id"] == "ot-1" and events[5]["reason"] == "goals-met"
    assert [parse_event(e, catalogue).type for e in events] == ["plan", "evaluation", "visit", "visit", "visit",
                                                                "discharge"]
    assert [e["occurred_at"] for e in events[3:5]] == ["2026-01-14T09:00:00Z", "2026-01-15T09:00:00Z"]
    written = expand_events([{"discharge": {"reason": "transferred"}},
                             {"evaluation": {"clinician_id": "ot-9", "measures": ["BBT 20"]}}], dt.date(2026, 1, 5))
    assert written[0]["reason"] == "transferred" and written[1]["clinician_id"] == "ot-9"


@pytest.mark.parametrize(
    ("events", "line", "col", "message"),
    [
        ("- plan: {}\n      - visits: {status: missed}", 6, 9,
         "events[1] (visits): days: expected a list of day numbers such as visits: {days: [3, 5, 8], status: missed}; "
         "it is missing"),
        ("- visits: {days: 3}", 5, 18, "events[0] (visits): days: expected a list of day numbers such as "
                                       "visits: {days: [3, 5, 8], status: missed}; got 3"),
        ("- visit:\n          day: three", 6, 11, "events[0] (visit): day: expected a whole number of days, got 'three'"),
        ("- visit: {day: 1.5}", 5, 17, "events[0] (visit): day: expected a whole number of days, got 1.5"),
        ("- visit: {time: '9:30'}", 5, 17, "events[0] (visit): time: expected HH:MM (24-hour, quoted or not), got '9:30'"),
        ("- plan: 5", 5, 9, "events[0] (plan): expected a mapping of fields such as {day: 3}, got 5"),
        ("- plan: {goals: {goal_id: g1}}", 5, 16, "events[0] (plan): goals: expected a list, got {'goal_id': 'g1'}"),
        ("- plan: {goals: [g1]}", 5, 24, "events[0] (plan): goals[0]: expected a mapping such as "
                                         "{goal_id: g1, instrument: COPM-performance, target: 7}, got 'g1'"),
        ("- plan: {goals: [{goal_id: g1, instrument: BBT, target: 3, target_day: soon}]}", 5, 66,
         "events[0] (plan): goals[0].target_day: expected a whole number of days, got 'soon'"),
        ("- plan: {cert_days: 0}", 5, 16, "events[0] (plan): cert_days: expected at least 1 day, got 0"),
        ("- evaluation: {measures: COPM-performance 5}", 5, 22,
         "events[0] (evaluation): measures: expected a list, got 'COPM-performance 5'"),
        ("- clock: {at: 2026-05-01T09:00:00}", 5, 17, "events[0] (clock): at: expected an RFC 3339 date-time with an "
                                                      "offset such as 2026-05-01T09:00:00Z, got '2026-05-01T09:00:00'"),
        ("- referral: {}", 5, 9, "events[0] (referral): unknown event type 'referral'; "
                                 "use plan, evaluation, visit, visits, discharge or clock"),
        ("- {plan: {}, visit: {}}", 5, 9, "events[0]: each event is one key (plan, evaluation, visit, visits, "
                                          "discharge or clock); got {'plan': {}, 'visit': {}}"),
        ("{plan: {}}", 4, 5, "events: expected a list (each item starting with `- `), got {'plan': {}}"),
    ],
)
def test_a_malformed_case_names_file_line_case_and_field(tmp_path, events, line, col, message):
    path = _suite(tmp_path, f"  - name: broken\n    events:\n      {events}\n" if events.startswith("-")
                  else f"  - name: broken\n    events: {events}\n")
    result = invoke("test", str(path))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit 1, not a traceback
    assert result.output.strip() == f"{path}:{line}:{col}: case 'broken': {message}"


def test_malformed_cases_and_expectations_are_all_reported(tmp_path):
    path = _suite(tmp_path, """\
  - just a string
  - name: expect is not a list
    events: []
    expect: {rule: goal-met}
  - name: misspelt expectation key
    events: []
    expect_not:
      - {rul: goal-met}
""")
    result = invoke("test", str(path))
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.output.splitlines() == [
        f"{path}:3:5: case 1: expected a mapping with name, events, expect, expect_not; got 'just a string'",
        f"{path}:6:5: case 'expect is not a list': expect: expected a list (each item starting with `- `), "
        "got {'rule': 'goal-met'}",
        f"{path}:10:10: case 'misspelt expectation key': expect_not: unknown expectation key(s) rul; "
        "use rule, kind, goal, indicator, event, patient, summary_contains",
    ]


@pytest.mark.parametrize(("head", "message"), [
    ("start: someday\n", "2:1: start: expected a date YYYY-MM-DD, got 'someday'"),
    ("cases: {name: x}\n", "2:1: cases: expected a list of cases, each starting with `- name:`"),
])
def test_malformed_file_level_keys(tmp_path, head, message):
    (tmp_path / "ot-core.yaml").write_text(defaults.DEFAULT_RULES.read_text())
    path = tmp_path / "mine.tests.yaml"
    path.write_text("rules: ot-core.yaml\n" + head + ("cases: []\n" if "cases" not in head else ""))
    result = invoke("test", str(path))
    assert result.exit_code == 1
    assert result.output.strip() == f"{path}:{message}"
