"""Retraction (contracts.md §1): a score taken back, and the honest cap (§8).

A retraction takes an evaluation's scores out of its plan's history, re-judges the later scores
without them (as for a late score), and closes what the evaluation triggered as `retracted`. A
retraction of an unknown or already retracted event is counted and changes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from conftest import Story, goal
from otrules import defaults
from otrules.cli import main
from otrules.consumers import EventCore, Fault, PatientStates, Record
from otrules.engine import Engine, PatientState
from otrules.engine.loader import parse_ruleset_text
from otrules.schemas import Recommendation, parse_event
from otrules.schemas.jsonschema import documents


class Collect:
    def __init__(self) -> None:
        self.recs: list[Recommendation] = []

    def recommend(self, recs: Any, record: Any) -> None:
        self.recs.extend(recs)

    def dead_letter(self, record: Any, rejection: Any) -> None:
        raise AssertionError(rejection.reason)


ENGINE = Engine(defaults.rulesets(), defaults.catalogue())
HELD = Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=dt.timedelta(days=1))


def replay(events: list[dict[str, Any]], engine: Engine = ENGINE) -> tuple[EventCore, Collect]:
    sink = Collect()
    core = EventCore(engine, PatientStates(), sink, Fault.ISOLATE)
    for i, event in enumerate(events, 1):
        core.handle(Record(json.dumps(event).encode(), "t", line=i))
    core.flush()
    return core, sink


def grip_story() -> Story:
    """Grip strength 15 kg, then a mis-keyed 1.5 kg (for 15): a critical review."""
    story = Story().plan(0, goals=[goal("g1", "grip-kg", 10, 25)])
    return story.evaluation(7, ("grip-kg", 15, "g1"), kind="initial").evaluation(14, ("grip-kg", 1.5, "g1"))


def retraction(story: Story, day: int, target: str, hour: int = 12, event_id: str | None = None) -> dict[str, Any]:
    at = f"{story.start + dt.timedelta(days=day)}T{hour:02d}:00:00Z"
    return {"type": "retraction", "event_id": event_id or f"r-{target}", "patient_id": story.patient,
            "plan_id": story.plan_id, "occurred_at": at, "retracts": target, "reason": "entered-in-error"}


def history(core: EventCore) -> dict[str, Any]:
    state = core.states.get("p-1")
    assert state is not None
    return {k: {**p.to_dict(), "scored": sorted(p.scored)} for k, p in state.plans.items()}


def test_a_retraction_closes_what_the_score_triggered_and_takes_it_out_of_the_history():
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    _, sink = replay(story.events)
    review = next(r for r in sink.recs if r.kind == "clinical_review")
    assert review.triggered_by == [mis_keyed]
    undo = retraction(story, 15, mis_keyed)
    core, sink = replay([*story.events, undo])
    closed = [r for r in sink.recs if r.status == "closed"]
    assert [(r.recommendation_id, r.closed_reason, r.closed_by) for r in closed] == [
        (review.recommendation_id, "retracted", undo["event_id"])]
    assert core.tally.retracted == 1 and core.tally.retractions_ignored == 0
    state = core.states.get("p-1")
    assert state is not None and not state.open
    series = state.plans["poc-1"].series["grip-kg\x1fg1"]
    assert [p.score for p in series.points] == [15] and state.plans["poc-1"].goals["g1"].latest == 15


def test_later_scores_are_judged_again_without_the_retracted_one():
    story = grip_story().evaluation(21, ("grip-kg", 16, "g1"))
    mis_keyed = story.events[2]["event_id"]
    without = [e for e in story.events if e["event_id"] != mis_keyed]
    core, _ = replay([*story.events, retraction(story, 22, mis_keyed)])
    clean, _ = replay(without)
    assert history(core) == history(clean)
    # and the next score is compared with 16, not with 1.5
    nxt = Story().evaluation(28, ("grip-kg", 15.5, "g1")).events[0]
    nxt["event_id"] = "next"
    core_recs = replay([*story.events, retraction(story, 22, mis_keyed), nxt])[1].recs
    clean_recs = replay([*without, nxt])[1].recs
    assert [r.kind for r in core_recs if "next" in r.triggered_by] == [r.kind for r in clean_recs
                                                                        if "next" in r.triggered_by]


@pytest.mark.parametrize("target", ["nothing", "p-1-e001", "p-1-e002-not"])
def test_a_retraction_of_an_unknown_event_or_of_a_plan_is_counted_and_changes_nothing(target):
    story = grip_story()
    before, _ = replay(story.events)
    core, sink = replay([*story.events, retraction(story, 15, target)])
    assert core.tally.retractions_ignored == 1 and core.tally.retracted == 0
    assert not [r for r in sink.recs if r.status == "closed"]
    assert history(core) == history(before)


def test_a_retraction_twice_and_a_retraction_of_a_retraction_change_nothing_more():
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    first = retraction(story, 15, mis_keyed)
    again = retraction(story, 16, mis_keyed, event_id="r-again")
    undo_undo = retraction(story, 17, first["event_id"], event_id="r-of-r")
    core, sink = replay([*story.events, first, again, undo_undo])
    assert (core.tally.retracted, core.tally.retractions_ignored) == (1, 2)
    assert len([r for r in sink.recs if r.status == "closed"]) == 1
    assert core.tally.rejected == 0


def test_a_retraction_before_its_evaluation_arrives_is_counted_and_the_evaluation_stands():
    """Without a reorder window a retraction of an evaluation not yet seen has nothing to take back."""
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    core, sink = replay([*story.events[:-1], retraction(story, 15, mis_keyed), story.events[-1]])
    assert core.tally.retractions_ignored == 1
    assert [r.kind for r in sink.recs if r.status == "open"] == ["clinical_review"]


def test_inside_the_reorder_window_a_retraction_waits_for_its_evaluation():
    """Held events go in event time: the evaluation (day 14) is applied before its retraction (day 14,
    an hour later) whichever arrives first, and neither moves the other's plan clock."""
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    undo = retraction(story, 14, mis_keyed, hour=11)
    for order in ([*story.events, undo], [*story.events[:-1], undo, story.events[-1]]):
        core, sink = replay(order, HELD)
        assert (core.tally.retracted, core.tally.retractions_ignored) == (1, 0), order
        assert [r.closed_reason for r in sink.recs if r.status == "closed"] == ["retracted"]
        state = core.states.get("p-1")
        assert state is not None and not state.open


@pytest.mark.parametrize(("day", "hour"), [(14, 9), (10, 12)], ids=["an hour before", "four days before"])
def test_inside_the_reorder_window_a_retraction_dated_before_its_evaluation_still_follows_it(day, hour):
    """L1: a retraction whose evaluation the window still holds is applied after it, whatever their
    times (a retraction dated before what it takes back is a sending system's clock)."""
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    undo = retraction(story, day, mis_keyed, hour=hour)
    for order in ([*story.events, undo], [*story.events[:-1], undo, story.events[-1]]):
        core, sink = replay(order, HELD)
        assert (core.tally.retracted, core.tally.retractions_ignored) == (1, 0), order
        assert [r.closed_reason for r in sink.recs if r.status == "closed"] == ["retracted"]
        state = core.states.get("p-1")
        assert state is not None and not state.open


def test_a_retraction_moves_no_clock():
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    core, _ = replay([*story.events, retraction(story, 200, mis_keyed)])
    state = core.states.get("p-1")
    assert state is not None
    plan = state.plans["poc-1"]
    assert plan.latest_day == dt.date(2026, 1, 19) and plan.last_evaluation == dt.date(2026, 1, 19)
    assert core.tally.last_event_at == dt.datetime(2026, 1, 19, 10, tzinfo=dt.UTC)


def test_the_state_remembers_where_scores_went_across_a_round_trip_and_reads_format_3():
    story = grip_story()
    core, _ = replay(story.events)
    state = core.states.get("p-1")
    assert state is not None
    again = PatientState.from_bytes(state.to_bytes())
    assert again.to_bytes() == state.to_bytes() and orjson.loads(state.to_bytes())["v"] == 4
    # format 3: one patient watermark ("mark"), no retractable scores: read, and nothing to take back
    old = orjson.loads(state.to_bytes())
    old["v"], old["mark"] = 3, 1.0e9
    for plan in old["plans"].values():
        plan.pop("scored", None)
    three = PatientState.from_bytes(orjson.dumps(old))
    event = parse_event(retraction(story, 15, story.events[-1]["event_id"]), ENGINE.catalogue)
    outcome = ENGINE.process(three, event)
    assert outcome.retraction == "ignored" and three.open


def _wide_evaluation(i: int, measures: int) -> dict[str, Any]:
    return {"type": "evaluation", "event_id": f"{'E' * 100}-{i:06d}", "patient_id": "p-1", "plan_id": "P" * 128,
            "occurred_at": f"2026-01-05T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i:06d}Z", "kind": "progress",
            "clinician_id": "c", "measures": [{"instrument": "COPM-performance", "score": 5,
                                               "goal_id": (f"{j:03d}" + "G" * 128)[:128]} for j in range(measures)]}


def test_what_a_retraction_can_take_back_is_bounded_in_bytes():
    """H3: 64 measures with 128-character goal ids, 200 evaluations: the retractable-scores index
    stays within MAX_SCORED_BYTES (the oldest go first) and the state far under a Kafka record."""
    from otrules.engine.state import MAX_SCORED_BYTES

    plan = {"type": "plan", "event_id": "a-1", "patient_id": "p-1", "plan_id": "P" * 128,
            "occurred_at": "2026-01-05T09:00:00Z", "setting": "outpatient", "frequency_per_week": 2,
            "certified_from": "2026-01-05", "certified_until": "2026-04-04",
            "goals": [{"goal_id": "g1", "description": "d", "instrument": "COPM-performance", "baseline": 3,
                       "target": 7}]}
    events = [plan, *(_wide_evaluation(i, 64) for i in range(200))]
    core, _ = replay(events)
    state = core.states.get("p-1")
    assert state is not None
    scored = state.plans["P" * 128].scored
    assert 0 < len(orjson.dumps(scored)) <= MAX_SCORED_BYTES
    assert len(state.to_bytes()) < 400_000
    # the newest evaluation can still be taken back; the oldest, let go, is counted as unknown
    newest, oldest = events[-1]["event_id"], events[1]["event_id"]
    undo = {"type": "retraction", "patient_id": "p-1", "plan_id": "P" * 128, "occurred_at": "2026-01-06T00:00:00Z"}
    core, _ = replay([*events, {**undo, "event_id": "r-1", "retracts": newest},
                      {**undo, "event_id": "r-2", "retracts": oldest}])
    assert (core.tally.retracted, core.tally.retractions_ignored) == (1, 1)
    state = core.states.get("p-1")
    assert state is not None
    assert all(len(s.points) == 63 for k, s in state.plans["P" * 128].series.items() if not k.endswith("\x1fg1"))


def test_a_format_4_state_with_whole_series_keys_still_retracts():
    """States written before series digests keep each score's series key whole: still read."""
    from otrules.engine.state import series_digest

    story = grip_story()
    core, _ = replay(story.events)
    state = core.states.get("p-1")
    assert state is not None
    doc = orjson.loads(state.to_bytes())
    for plan in doc["plans"].values():
        names = {series_digest(key): key for key in plan["series"]}
        for entry in plan["scored"].values():
            entry[1] = [[names[digest], score] for digest, score in entry[1]]
    old = PatientState.from_bytes(orjson.dumps(doc))
    outcome = ENGINE.process(old, parse_event(retraction(story, 15, story.events[-1]["event_id"]), ENGINE.catalogue))
    assert outcome.retraction == "applied" and not old.open


def test_what_a_plan_remembers_does_not_depend_on_its_state_being_decoded_in_between():
    """The stored state sorts its keys: the evaluations let go (by count or by bytes) are the
    earliest in event time, whether or not the state made a round trip between events."""
    plan = {"type": "plan", "event_id": "a-1", "patient_id": "p-1", "plan_id": "P" * 128,
            "occurred_at": "2026-01-05T09:00:00Z", "setting": "outpatient", "frequency_per_week": 2,
            "certified_from": "2026-01-05", "certified_until": "2026-04-04",
            "goals": [{"goal_id": "g1", "description": "d", "instrument": "COPM-performance", "baseline": 3,
                       "target": 7}]}
    kept, round_trip = PatientState("p-1"), PatientState("p-1")
    for i, body in enumerate([plan, *(_wide_evaluation(i, (1, 2, 40)[i % 3]) for i in range(200))]):
        event = parse_event(json.dumps(body), ENGINE.catalogue)
        ENGINE.process(kept, event)
        round_trip = PatientState.from_bytes(round_trip.to_bytes())
        ENGINE.process(round_trip, event)
        assert kept.to_bytes() == round_trip.to_bytes(), i


def test_an_evaluation_has_at_most_64_measures():
    with pytest.raises(ValueError, match="64"):
        parse_event(json.dumps(_wide_evaluation(0, 65)), ENGINE.catalogue)
    parse_event(json.dumps(_wide_evaluation(0, 64)), ENGINE.catalogue)


def test_the_event_schema_and_the_explanation_show_retractions(tmp_path):
    schema = json.dumps(documents()["event.schema.json"])
    assert '"retraction"' in schema and '"retracts"' in schema
    story = grip_story()
    mis_keyed = story.events[-1]["event_id"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in [*story.events, retraction(story, 15, mis_keyed),
                                                           retraction(story, 16, "nothing")]))
    out = CliRunner().invoke(main, ["explain", "--input", str(src), "--event-id", f"r-{mis_keyed}"]).output
    assert f"retracts {mis_keyed}: its scores left" in out and "closed as retracted" in out
    out = CliRunner().invoke(main, ["explain", "--input", str(src), "--event-id", "r-nothing"]).output
    assert "counted and changes nothing" in out
    out = CliRunner().invoke(main, ["explain", "--input", str(src), "--event-id", mis_keyed]).output
    assert f"retracted later by r-{mis_keyed}" in out
    result = CliRunner().invoke(main, ["run", "--input", str(src), "--as-of", "2026-02-01T00:00:00Z"])
    assert "retractions: 1 applied, 1 of an unknown or already retracted evaluation" in result.stderr
    assert "1 closed (retracted 1)" in result.stderr or "retracted 1" in result.stderr


# ------------------------------------------------------------------ the honest cap

CAP_RULES = """ruleset: cap
version: "1"
rules:
  - id: crit
    description: sharp decline
    when: measure.instrument == "Barthel-100" and measure.score == 0
    recommend: {kind: clinical_review, indicator: critical, summary: "review today"}
  - id: info
    description: halfway
    when: measure.instrument == "COPM-performance" and measure.score == 5
    recommend: {kind: decrease_frequency, indicator: info, summary: "halfway"}
  - id: warn
    description: low
    when: measure.instrument == "COPM-performance" and measure.score == 2
    recommend: {kind: modify_plan, indicator: warning, summary: "low"}
"""


def cap_story() -> Story:
    goals = [goal(f"g{i}", "COPM-performance", 3, 9) for i in range(1, 71)]
    story = Story().plan(0, goals=goals).evaluation(1, ("Barthel-100", 0), kind="initial")
    story.evaluation(2, *(("COPM-performance", 5, f"g{i}") for i in range(1, 11)))  # 10 info
    story.evaluation(3, *(("COPM-performance", 2, f"g{i}") for i in range(1, 61)))  # 60 warnings: 71 open
    return story.evaluation(4, *(("COPM-performance", 2, f"g{i}") for i in range(61, 71)))  # 10 more: 81


def test_the_cap_closes_the_oldest_of_the_lowest_urgency_and_never_the_critical_one(tmp_path):
    """Issue 23, case 3, through `otrules run`: 64 open at most; info goes first, then the oldest
    warnings; the critical review nothing answered stays open; closed as capped, counted."""
    rules = tmp_path / "cap.yaml"
    rules.write_text(CAP_RULES)
    parse_ruleset_text(CAP_RULES, "cap.yaml", defaults.catalogue())
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(e) + "\n" for e in cap_story().events))
    result = CliRunner().invoke(main, ["run", "--rules", str(rules), "--input", str(src),
                                       "--as-of", "2026-01-10T00:00:00Z"])
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in result.stdout.splitlines()]
    closed = [r for r in recs if r["status"] == "closed"]
    assert {r["closed_reason"] for r in closed} == {"capped"} and len(closed) == 81 - 64
    assert [r["indicator"] for r in closed] == ["info"] * 10 + ["warning"] * 7
    assert [r["goal_id"] for r in closed[10:]] == [f"g{i}" for i in range(1, 8)]  # the oldest warnings
    assert "17 closed (capped 17)" in result.stderr
    opened = {r["recommendation_id"] for r in recs if r["status"] == "open"}
    still = opened - {r["recommendation_id"] for r in closed}
    assert len(still) == 64
    assert any(r["indicator"] == "critical" and r["recommendation_id"] in still for r in recs)


def test_past_info_the_cap_closes_the_oldest_warning_and_keeps_criticals():
    from otrules.engine.open_recs import MAX_OPEN
    from otrules.engine.open_recs import opened as add

    state = PatientState("p-1")
    engine = Engine([parse_ruleset_text(CAP_RULES, "cap.yaml", defaults.catalogue())], defaults.catalogue())
    _, sink = replay(Story().plan(0, goals=[goal("g1", "COPM-performance", 3, 9)]).evaluation(
        1, ("Barthel-100", 0), kind="initial").events, engine)
    base = next(r for r in sink.recs if r.status == "open")
    made = [base.model_copy(update={"recommendation_id": f"c{i}", "goal_id": f"c{i}"}) for i in range(3)]
    made += [base.model_copy(update={"recommendation_id": f"w{i}", "goal_id": f"w{i}", "indicator": "warning"})
             for i in range(MAX_OPEN - 3)]
    add(state, made)
    pushed = add(state, [base.model_copy(update={"recommendation_id": "new", "goal_id": "new",
                                                  "triggered_by": ["e-new"]})])
    assert [(r.recommendation_id, r.closed_reason, r.closed_by) for r in pushed] == [("w0", "capped", "e-new")]
    assert {"c0", "c1", "c2", "new"} <= set(state.open)
