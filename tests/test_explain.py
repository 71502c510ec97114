"""`otrules explain`: every rule checked for one event, and the clause that was false."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import Story, goal
from otrules.cli import main
from otrules.engine.conditions import check, parse
from otrules.engine.explain import failing_clauses


def test_first_false_clause_of_an_and_with_its_values():
    node = check(parse("measure.declined and measure.improvement > -2 * measure.mcid"))
    facts = {"measure.declined": False, "measure.improvement": -1.0, "measure.mcid": 2.0}
    (clause,) = failing_clauses(node, facts)
    assert clause.text == "measure.declined" and clause.values == {"measure.declined": False}


def test_every_branch_of_a_false_or_and_nothing_when_true():
    node = check(parse("goal.met or measure.score >= 8"))
    clauses = failing_clauses(node, {"goal.met": None, "measure.score": 5.0})
    assert [c.text for c in clauses] == ["goal.met", "measure.score >= 8"]
    assert failing_clauses(node, {"goal.met": True, "measure.score": 5.0}) == []


def _stream(tmp_path):
    story = (Story().plan(0, [goal("g1", "COPM-performance", 3, 9)])
             .evaluation(14, ("COPM-performance", 6, "g1")).evaluation(28, ("COPM-performance", 4, "g1"))
             .evaluation(30, ("COPM-performance", 2, "g1")))
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in story.events))
    return path, story


def test_explain_shows_matches_misses_and_throttled(tmp_path):
    path, story = _stream(tmp_path)
    result = CliRunner().invoke(main, ["explain", "--input", str(path), "--event-id", story.events[2]["event_id"]])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert "  measure-declined [COPM-performance, goal g1]: MATCHED, recommended re_evaluate" in out
    assert "      false: measure.improvement <= -2 * measure.mcid   (measure.improvement = -2, measure.mcid = 2)" in out
    assert "  missed-visits: no" in out
    later = CliRunner().invoke(main, ["explain", "--input", str(path), "--event-id", story.events[3]["event_id"]])
    assert ("  measure-declined [COPM-performance, goal g1]: MATCHED, not sent: throttled, "
            "or already recommended for this event") in later.output


def test_explain_json_and_unknown_event(tmp_path):
    path, story = _stream(tmp_path)
    result = CliRunner().invoke(main, ["explain", "--input", str(path), "--event-id", story.events[2]["event_id"], "--json"])
    data = json.loads(result.output)
    declined = [c for c in data["checks"] if c["rule"] == "measure-declined"]
    assert declined[0]["matched"] is True and len(data["recommendations"]) == 1
    missing = CliRunner().invoke(main, ["explain", "--input", str(path), "--event-id", "nope"])
    assert missing.exit_code == 2 and "no event with event_id 'nope'" in missing.output


def test_a_sweep_trigger_is_explained_for_one_patient():
    """`clock@<time>` recommendations (time advanced with no event) are explained too."""
    from otrules import defaults

    sample = str(defaults.SAMPLE_STREAM)
    runner = CliRunner()
    run = runner.invoke(main, ["run"])
    swept = [json.loads(line) for line in run.stdout.splitlines() if '"clock@' in line]
    assert swept, "the sample has no sweep recommendation to explain"
    rec = swept[0]
    args = ["explain", "--input", sample, "--event-id", rec["triggered_by"][0], "--patient", rec["patient_id"]]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("Sweep at ") and f"of patient {rec['patient_id']}" in lines[0]
    where = f"[plan {rec['plan_id']}" + (f", goal {rec['goal_id']}]" if rec.get("goal_id") else "]")
    assert f"  {rec['rule']['id']} {where}: MATCHED, recommended {rec['kind']}" in lines
    as_json = json.loads(runner.invoke(main, [*args, "--json"]).output)
    assert as_json["sweep"] is True and rec["recommendation_id"] in as_json["recommendations"]
    missing = runner.invoke(main, args[:-2])
    assert missing.exit_code == 2 and "say which patient with --patient" in missing.output
