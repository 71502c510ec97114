"""`otrules test`: the bundled cases pass, and a broken rule is caught and explained."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from otrules import defaults
from otrules.cli import main


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
    fail = next(i for i, l in enumerate(lines) if "FAIL  three missed visits in a row" in l)
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
    assert "event 1 is not valid: measures[0].score: 12 is outside the range 1–10 of COPM-performance" in result.output


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
    assert f"{path}:6:5: case 'bad measure'" in result.output
    assert "case 'bad measure': a measure is 'INSTRUMENT SCORE [GOAL]', got 'COPM-performance'" in result.output


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
