"""Event time (contracts.md §1): a late event takes its place in the history by `occurred_at`.

A late event (older than its plan's latest) corrects the history and recommends
nothing; with a reorder window W, events out of order by less than W give
exactly what the time-ordered stream gives.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otrules import defaults
from otrules.cli import main
from otrules.consumers import DeadLetterSink, JsonlSource, Pipeline
from otrules.engine import Engine, PatientState
from otrules.schemas import Event, Recommendation, parse_event

T0 = dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC)
WINDOW = dt.timedelta(days=3)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(defaults.rulesets(), defaults.catalogue())


@pytest.fixture(scope="module")
def held_engine() -> Engine:
    return Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=WINDOW)


def _plan(at: str = "2026-01-05T09:00:00Z", event_id: str = "e-plan", frequency: int = 2) -> dict[str, Any]:
    return {"type": "plan", "event_id": event_id, "patient_id": "p-1", "plan_id": "poc-1", "occurred_at": at,
            "setting": "outpatient", "frequency_per_week": frequency, "certified_from": "2026-01-05",
            "certified_until": "2026-06-30",
            "goals": [{"goal_id": "g1", "description": "Dressing", "instrument": "COPM-performance",
                       "baseline": 3, "target": 8, "target_date": "2026-06-01"}]}


def _evaluation(event_id: str, at: str, score: float, kind: str = "progress") -> dict[str, Any]:
    return {"type": "evaluation", "event_id": event_id, "patient_id": "p-1", "plan_id": "poc-1",
            "occurred_at": at, "kind": kind, "clinician_id": "ot-1",
            "measures": [{"instrument": "COPM-performance", "score": score, "goal_id": "g1"}]}


def _visit(event_id: str, at: str, status: str) -> dict[str, Any]:
    return {"type": "visit", "event_id": event_id, "patient_id": "p-1", "plan_id": "poc-1", "occurred_at": at,
            "status": status}


def _feed(engine: Engine, bodies: list[dict[str, Any]], state: PatientState | None = None,
          round_trip: bool = False) -> tuple[PatientState, list[Recommendation], list[bool]]:
    """Events through the engine as the core feeds them; (state, recommendations, late flags).
    With `round_trip`, the state goes to bytes and back before each event (a store's eviction)."""
    state = state or PatientState("p-1")
    recs: list[Recommendation] = []
    late: list[bool] = []
    for body in bodies:
        if round_trip:
            state = PatientState.from_bytes(state.to_bytes())
        outcome = engine.process(state, parse_event(body, engine.catalogue))
        late.append(outcome.late)
        recs += outcome.recommendations
        for item in outcome.released:
            assert item.failure is None, item.failure
            recs += item.recommendations
    for item in engine.flush(state):
        assert item.failure is None, item.failure
        recs += item.recommendations
    return state, recs, late


# ------------------------------------------------------------------ the reproduction


def test_a_late_score_is_compared_with_its_neighbours_in_time_not_with_the_last_to_arrive(engine):
    events = [_plan(), _evaluation("e-1", "2026-01-19T10:00:00Z", 3, "initial"),
              _evaluation("e-2", "2026-02-19T10:00:00Z", 7), _evaluation("e-3", "2026-01-26T10:00:00Z", 4)]
    state, recs, late = _feed(engine, events)
    assert late == [False, False, False, True]
    assert not [r for r in recs if "e-3" in r.triggered_by], "a late event recommends nothing"
    assert not [r for r in recs if "worsened" in r.summary or r.kind == "re_evaluate"]
    facts = engine.explain_facts(PatientState.from_bytes(_state_before_late(engine, events)),
                                 parse_event(events[3], engine.catalogue))
    (_, measure), = facts.per_measure
    assert facts.late
    assert measure["measure.previous"] == 3 and measure["measure.change"] == 1  # vs Jan 19, not Feb 19
    assert measure["measure.days_since_previous"] == 7
    assert measure["measure.declined"] is False
    plan = state.plans["poc-1"]
    assert plan.goals["g1"].latest == 7  # latest stays the newest score
    assert plan.last_evaluation == dt.date(2026, 2, 19)
    series = plan.series["COPM-performance\x1fg1"]
    assert [p.score for p in series.points] == [3, 4, 7]
    assert series.points[2].stable_count == 0  # Feb 19 is re-judged against Jan 26 (+3): still a change


def _state_before_late(engine: Engine, events: list[dict[str, Any]]) -> bytes:
    state, _, _ = _feed(engine, events[:3])
    return state.to_bytes()


def test_days_since_evaluation_never_moves_backwards(engine):
    events = [_plan(), _evaluation("e-1", "2026-01-19T10:00:00Z", 3, "initial"),
              _evaluation("e-2", "2026-02-19T10:00:00Z", 7), _evaluation("e-3", "2026-01-26T10:00:00Z", 4)]
    state, _, _ = _feed(engine, events)
    recs = engine.sweep(state, dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))
    assert not [r for r in recs if "34 days" in r.summary]
    facts = engine.sweep_checks(state, dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC))
    assert {c.facts["plan.days_since_evaluation"] for c in facts} == {10}


def test_a_late_visit_breaks_a_run_of_misses_in_its_place(engine):
    events = [_plan(), _visit("v-1", "2026-01-06T10:00:00Z", "missed"), _visit("v-3", "2026-01-13T10:00:00Z", "missed"),
              _visit("v-4", "2026-01-15T10:00:00Z", "missed")]
    state, _, _ = _feed(engine, events)
    assert state.plans["poc-1"].visits_missed_in_a_row == 3
    state, _, late = _feed(engine, [_visit("v-2", "2026-01-08T10:00:00Z", "attended")], state)
    assert late == [True]
    assert state.plans["poc-1"].visits_missed_in_a_row == 2  # the misses after the attended visit
    state, _, _ = _feed(engine, [_visit("v-5", "2026-01-16T10:00:00Z", "attended")], state)
    assert state.plans["poc-1"].visits_missed_in_a_row == 0


def test_a_late_visit_before_the_last_progress_report_is_not_a_treatment_day_since_it(engine):
    events = [_plan(), _visit("v-1", "2026-01-06T10:00:00Z", "attended"),
              _evaluation("e-1", "2026-01-20T10:00:00Z", 5),
              _visit("v-3", "2026-01-22T10:00:00Z", "attended"), _visit("v-2", "2026-01-13T10:00:00Z", "attended")]
    state, _, late = _feed(engine, events)
    assert late[-1]
    plan = state.plans["poc-1"]
    assert plan.treatment_dates == {dt.date(2026, 1, 22)}
    assert plan.visits_attended == 3
    # a late progress report moves nothing back; one newer than the visits clears them
    state, _, _ = _feed(engine, [_evaluation("e-0", "2026-01-10T10:00:00Z", 4)], state)
    assert state.plans["poc-1"].treatment_dates == {dt.date(2026, 1, 22)}


def test_a_late_plan_snapshot_does_not_replace_the_newer_one(engine):
    events = [_plan(), _plan("2026-02-01T09:00:00Z", "e-plan-3", frequency=3),
              _plan("2026-01-20T09:00:00Z", "e-plan-2", frequency=1)]
    state, _, late = _feed(engine, events)
    assert late == [False, False, True]
    assert state.plans["poc-1"].frequency_per_week == 3


def test_a_late_discharge_older_than_a_reopening_snapshot_does_not_close_the_plan(engine):
    discharge = {"type": "discharge", "event_id": "d-1", "patient_id": "p-1", "plan_id": "poc-1",
                 "occurred_at": "2026-01-20T09:00:00Z", "reason": "goals-met"}
    state, _, _ = _feed(engine, [_plan(), _plan("2026-02-01T09:00:00Z", "e-plan-2"), discharge])
    assert not state.plans["poc-1"].discharged
    state, recs, _ = _feed(engine, [_evaluation("e-9", "2026-02-10T10:00:00Z", 8)], state)
    assert any(r.kind == "advance_goal" for r in recs)  # the plan is open: it still recommends


def test_the_state_of_the_release_before_event_time_is_read_and_upgraded(engine):
    """A changelog written by the previous release (format 2) is read: one point per series."""
    old = {"v": 2, "patient": "p-1", "seen": "", "throttle": {},
           "plans": {"poc-1": {"setting": "outpatient", "frequency": 2, "certified": ["2026-01-05", "2026-06-30"],
                               "goals": {"g1": ["COPM-performance", 8, 3, None, 1.0, 5, False, None]},
                               "series": {"COPM-performance\x1fg1": [3, 5, "2026-01-19", 2, 1, 3, 1]},
                               "visits": [4, 1], "treated": ["2026-01-15"], "evaluated": "2026-01-19",
                               "discharged": False, "closed": None}}}
    state = PatientState.from_bytes(json.dumps(old).encode())
    plan = state.plans["poc-1"]
    assert plan.visits_missed_in_a_row == 1 and plan.treatment_dates == {dt.date(2026, 1, 15)}
    series = plan.series["COPM-performance\x1fg1"]
    assert (series.first, series.last, series.count) == (3, 5, 2)
    state, _, late = _feed(engine, [_evaluation("e-2", "2026-02-02T10:00:00Z", 7)], state)
    assert late == [False]
    assert state.plans["poc-1"].series["COPM-performance\x1fg1"].count == 3
    assert PatientState.from_bytes(state.to_bytes()) == state


# ------------------------------------------------------------------ the reorder window


def test_the_reorder_window_holds_events_until_a_newer_one_releases_them(held_engine):
    state = PatientState("p-1")
    first = held_engine.process(state, parse_event(_plan(), held_engine.catalogue))
    assert first.held and not first.released
    eva = held_engine.process(state, parse_event(_evaluation("e-1", "2026-01-06T10:00:00Z", 8),
                                                 held_engine.catalogue))
    assert eva.held and not eva.released
    assert PatientState.from_bytes(state.to_bytes()) == state  # what is held survives a restart
    later = held_engine.process(state, parse_event(_visit("v-1", "2026-01-10T10:00:00Z", "attended"),
                                                   held_engine.catalogue))
    assert [r.event.event_id for r in later.released] == ["e-plan", "e-1"]
    assert any(rec.kind == "advance_goal" for r in later.released for rec in r.recommendations)
    assert [e.event_id for e in state.held] == ["v-1"]


def test_with_a_window_an_event_before_its_plan_event_is_taken_in_order(held_engine):
    bodies = [_evaluation("e-1", "2026-01-06T10:00:00Z", 8), _plan()]
    state, recs, _ = _feed(held_engine, bodies)
    assert "poc-1" in state.plans and any(r.kind == "advance_goal" for r in recs)


def test_with_a_window_an_event_whose_plan_never_opens_is_dead_lettered_at_release():
    engine = Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=WINDOW)
    lines = [json.dumps(_plan()), json.dumps({**_evaluation("e-1", "2026-01-06T10:00:00Z", 8), "plan_id": "poc-9"})]
    letters = io.StringIO()
    pipeline = Pipeline(engine, lambda r: None, DeadLetterSink(letters))
    pipeline.feed(JsonlSource(io.BytesIO("\n".join(lines).encode()), "in.jsonl"))
    pipeline.core.flush()
    tally = pipeline.summary
    assert (tally.read, tally.processed, tally.rejected) == (2, 1, 1) and tally.balanced
    letter = json.loads(letters.getvalue())
    assert 'no plan event has opened "poc-9"' in letter["reason"]
    assert json.loads(letter["original"] if "original" in letter else letter["raw"])["event_id"] == "e-1"


def test_run_with_a_window_on_the_time_ordered_sample_changes_nothing(tmp_path):
    runner = CliRunner()
    plain = runner.invoke(main, ["run", "--quiet"])
    held = runner.invoke(main, ["run", "--quiet", "--reorder-window", "7d"])
    assert plain.exit_code == held.exit_code == 0, held.output
    # the same recommendations; held ones are written when released, so the order differs
    assert sorted(_without_emitted(plain.stdout)) == sorted(_without_emitted(held.stdout))
    assert plain.stdout.count("\n") > 50


def test_run_with_a_window_on_a_shuffled_sample_gives_the_time_ordered_recommendations(tmp_path):
    """The sample, each event delayed by up to 2 days (arrival order), through a 2-day window."""
    events = [json.loads(line) for line in defaults.SAMPLE_STREAM.read_text().splitlines()]
    rng = random.Random(7)

    def arrival(e: dict[str, Any]) -> dt.datetime:
        return (dt.datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00"))
                + dt.timedelta(seconds=rng.uniform(0, 2 * 86400 - 1)))

    shuffled = sorted(events, key=arrival)
    assert shuffled != events
    path = tmp_path / "shuffled.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in shuffled))
    runner = CliRunner()
    plain = runner.invoke(main, ["run", "--quiet"])
    held = runner.invoke(main, ["run", "--quiet", "--input", str(path), "--reorder-window", "2d"])
    unheld = runner.invoke(main, ["run", "--quiet", "--input", str(path)])
    assert held.exit_code == 0, held.output
    assert sorted(_without_emitted(plain.stdout)) == sorted(_without_emitted(held.stdout))
    assert "late" in unheld.stderr and "late" not in held.stderr


def test_a_bad_window_is_a_usage_error():
    result = CliRunner().invoke(main, ["run", "--reorder-window", "2 days"])
    assert result.exit_code == 2 and "is not a duration" in result.output


def _without_emitted(jsonl: str) -> list[str]:
    out = []
    for line in jsonl.splitlines():
        rec = json.loads(line)
        rec.pop("emitted_at", None)
        out.append(json.dumps(rec, sort_keys=True))
    return out


# ------------------------------------------------------------------ the property


@st.composite
def plan_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """One plan's events at distinct times: its opening snapshot, then evaluations (COPM and GAS
    for the goal, FIM-motor without one), visits, restated snapshots and maybe a discharge."""
    n = draw(st.integers(2, 24))
    minutes = sorted(draw(st.lists(st.integers(1, 150 * 24 * 60), min_size=n, max_size=n, unique=True)))
    out = [_plan()]
    for i, minute in enumerate(minutes):
        at = (T0 + dt.timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
        what = draw(st.sampled_from(["evaluation"] * 5 + ["visit"] * 4 + ["plan", "discharge"]))
        if what == "evaluation":
            measures: list[dict[str, Any]] = [
                {"instrument": "COPM-performance", "score": draw(st.integers(1, 10)), "goal_id": "g1"}]
            if draw(st.booleans()):
                measures.append({"instrument": "GAS", "score": draw(st.integers(-2, 2)), "goal_id": "g1"})
            if draw(st.booleans()):
                measures.append({"instrument": "FIM-motor", "score": draw(st.integers(13, 91))})
            kind = draw(st.sampled_from(["progress", "re-evaluation", "initial", "discharge"]))
            out.append({**_evaluation(f"e-{i}", at, 0, kind), "measures": measures})
        elif what == "visit":
            out.append(_visit(f"v-{i}", at, draw(st.sampled_from(["attended", "attended", "missed", "cancelled"]))))
        elif what == "plan":
            out.append(_plan(at, f"e-plan-{i}", frequency=draw(st.integers(1, 5))))
        else:
            out.append({"type": "discharge", "event_id": f"d-{i}", "patient_id": "p-1", "plan_id": "poc-1",
                        "occurred_at": at, "reason": "goals-met"})
    return out


def _time(body: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00"))


def _history(state: PatientState) -> dict[str, Any]:
    """What the plan's history says (not the arrival-ordered idempotency memory)."""
    return {k: p.to_dict() for k, p in state.plans.items()}


def _recs(recs: list[Recommendation]) -> list[str]:
    return sorted(r.to_json() for r in recs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(stream=plan_streams(), data=st.data())
def test_events_out_of_order_by_less_than_the_window_give_the_time_ordered_result(engine, held_engine, stream, data):
    """Any arrival order in which no event comes more than the window after a newer one: the
    same recommendations as the time-ordered stream and the same final state."""
    delays = data.draw(st.lists(st.floats(0, WINDOW.total_seconds() - 1), min_size=len(stream),
                                max_size=len(stream)))
    arrival = sorted(range(len(stream)), key=lambda i: _time(stream[i]) + dt.timedelta(seconds=delays[i]))
    permuted = [stream[i] for i in arrival]
    ordered_state, ordered_recs, _ = _feed(engine, stream)
    state, recs, late = _feed(held_engine, permuted, round_trip=data.draw(st.booleans()))
    assert not any(late)
    assert _recs(recs) == _recs(ordered_recs)
    assert _history(state) == _history(ordered_state)
    assert state.throttle == ordered_state.throttle


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(stream=plan_streams(), data=st.data())
def test_any_arrival_order_without_a_window_ends_in_the_same_history_and_late_events_stay_quiet(
        engine, stream, data):
    """Without a window, events may arrive in any order after the plan's opening snapshot: the
    history ends the same as the time-ordered stream's, and no late event recommends."""
    rest = data.draw(st.permutations(stream[1:]))
    ordered_state, _, _ = _feed(engine, stream)
    state = PatientState("p-1")
    round_trip = data.draw(st.booleans())
    for body in [stream[0], *rest]:
        if round_trip:
            state = PatientState.from_bytes(state.to_bytes())
        outcome = engine.process(state, parse_event(body, engine.catalogue))
        if outcome.late:  # it may close what it answers (a late discharge closes its plan's), not recommend
            assert not [r for r in outcome.recommendations if r.status == "open"]
    assert _history(state) == _history(ordered_state), _diff(_history(state), _history(ordered_state))
    at = max(_time(b) for b in stream) + dt.timedelta(days=1)
    # what a sweep then sees (what it sends also depends on throttles, which follow what was sent)
    assert _checks(engine, state, at) == _checks(engine, ordered_state, at)


def _checks(engine: Engine, state: PatientState, at: dt.datetime) -> list[tuple[str, bool, str]]:
    return [(c.rule.id, c.matched, json.dumps(c.facts, sort_keys=True, default=str))
            for c in engine.sweep_checks(state, at)]


def _diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    pa, pb = a.get("poc-1", {}), b.get("poc-1", {})
    return "; ".join(f"{k}: {pa.get(k)} != {pb.get(k)}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k))


def test_events_are_held_as_the_events_they_are():
    """What the window holds goes through the changelog as the event's own JSON."""
    state = PatientState("p-1", held=[parse_event(_evaluation("e-1", "2026-01-06T10:00:00+02:00", 8.5))])
    again = PatientState.from_bytes(state.to_bytes())
    assert again.held == state.held
    event: Event = again.held[0]
    assert event.occurred_at.utcoffset() == dt.timedelta(hours=2)


def test_run_names_a_held_event_rejected_at_release_without_a_line_number(tmp_path):
    body = json.dumps({**_visit("v-1", "2026-01-06T10:00:00Z", "attended"), "plan_id": "poc-9"})
    result = CliRunner().invoke(main, ["run", "--input", "-", "--reorder-window", "2d", "--dlq", str(tmp_path / "d")],
                                input=body + "\n")
    assert result.exit_code == 0
    assert "- (an event the reorder window held): rejected: plan_id" in result.stderr
    assert "None" not in result.stderr and "p-1" not in result.stderr
    assert json.loads((tmp_path / "d").read_text())["reason"].startswith("plan_id: no plan event has opened")


# ------------------------------------------------------------------ red-team findings, pinned


def _core(window: dt.timedelta, letters: io.StringIO | None = None) -> tuple[Pipeline, list[Recommendation]]:
    engine = Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=window)
    recs: list[Recommendation] = []
    return Pipeline(engine, recs.append, DeadLetterSink(letters)), recs


def _lines(*bodies: dict[str, Any]) -> JsonlSource:
    return JsonlSource(io.BytesIO("".join(json.dumps(b) + "\n" for b in bodies).encode()), "in.jsonl")


def test_a_sweep_keeps_a_patient_whose_events_are_all_held():
    pipeline, _ = _core(WINDOW)
    pipeline.feed(_lines(_plan(), _visit("v-1", "2026-01-06T10:00:00Z", "attended")))
    pipeline.core.sweep(dt.datetime(2026, 1, 6, 12, tzinfo=dt.UTC), dt.timedelta(days=90))
    state = pipeline.states.get("p-1")
    assert state is not None and [e.event_id for e in state.held] == ["e-plan", "v-1"]
    assert pipeline.summary.expired == 0


def test_with_a_window_a_sweep_judges_the_clock_the_window_behind():
    """Evaluations on Jan 5 and Feb 3; at Feb 4 the Feb 3 one is still held, so 'now' for the
    sweep is Feb 2: no 'no evaluation for 30 days' from a state that lacks Feb 3."""
    bodies = [_plan(), _evaluation("e-1", "2026-01-05T10:00:00Z", 4, "initial"),
              _evaluation("e-2", "2026-02-03T10:00:00Z", 5)]
    pipeline, recs = _core(WINDOW)
    pipeline.feed(_lines(*bodies))
    pipeline.core.sweep(dt.datetime(2026, 2, 4, 12, tzinfo=dt.UTC))
    assert not [r for r in recs if r.kind == "re_evaluate"]
    pipeline.core.flush()  # the input ends: the clock is the sweep's own again
    pipeline.core.sweep(dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC))
    assert [r for r in recs if r.kind == "re_evaluate" and "35 days" in r.summary]


def test_one_mistyped_year_is_refused_and_does_not_silence_the_plan():
    letters = io.StringIO()
    for window in (dt.timedelta(0), WINDOW):
        pipeline, recs = _core(window, letters)
        pipeline.feed(_lines(_plan(), _evaluation("e-typo", "2062-01-20T10:00:00Z", 4),
                             _evaluation("e-1", "2026-01-20T10:00:00Z", 8)))
        pipeline.core.flush()
        assert pipeline.summary.rejected == 1 and pipeline.summary.late == 0
        assert any(r.kind == "advance_goal" for r in recs)
    reason = json.loads(letters.getvalue().splitlines()[0])["reason"]
    assert reason.startswith('occurred_at: "2062-01-20T10:00:00Z" is more than 366 days after the latest event')


def test_turning_the_window_off_applies_what_it_held_first(engine, held_engine):
    state = PatientState("p-1")
    for body in (_plan(), _evaluation("e-1", "2026-01-06T10:00:00Z", 8)):
        held_engine.process(state, parse_event(body, held_engine.catalogue))
    assert len(state.held) == 2
    outcome = engine.process(state, parse_event(_visit("v-1", "2026-01-07T10:00:00Z", "attended"), engine.catalogue))
    assert [r.event.event_id for r in outcome.released] == ["e-plan", "e-1"] and not state.held
    assert any(rec.kind == "advance_goal" for r in outcome.released for rec in r.recommendations)
    assert not outcome.late


def test_an_event_dead_lettered_at_release_can_be_sent_again_once_its_plan_opens():
    orphan = {**_visit("v-1", "2026-01-06T10:00:00Z", "attended"), "plan_id": "poc-2"}
    pipeline, _ = _core(WINDOW)
    pipeline.feed(_lines(_plan(), orphan))
    pipeline.core.flush()
    assert pipeline.summary.rejected == 1
    pipeline.feed(_lines({**_plan("2026-01-05T10:00:00Z", "e-plan-2"), "plan_id": "poc-2"}, orphan))
    pipeline.core.flush()
    tally = pipeline.summary
    assert (tally.duplicates, tally.rejected) == (0, 1) and tally.balanced
    state = pipeline.states.get("p-1")
    assert state is not None and state.plans["poc-2"].visits_attended == 1


def test_what_a_window_holds_is_bounded_in_bytes_as_well_as_in_events(held_engine):
    state = PatientState("p-1")
    long = "x" * 900
    for i in range(400):
        body = _plan(f"2026-01-05T09:{i // 60:02d}:{i % 60:02d}Z", f"e-{i}")
        body["goals"] = [{**g, "description": long} for g in body["goals"]] * 1
        held_engine.process(state, parse_event(body, held_engine.catalogue))
    assert len(state.held) < 256 and len(state.to_bytes()) < 300_000
    assert state.held_bytes == PatientState.from_bytes(state.to_bytes()).held_bytes


def test_a_failed_sweep_publishes_what_it_released_once_it_succeeds(monkeypatch):
    pipeline, recs = _core(WINDOW)
    pipeline.feed(_lines(_plan(), _evaluation("e-1", "2026-01-06T10:00:00Z", 8)))
    calls = []
    real = pipeline.core.engine.sweep

    def failing(state: PatientState, at: dt.datetime) -> Any:
        calls.append(at)
        if len(calls) == 1:
            raise RuntimeError("one failure")
        return real(state, at)

    monkeypatch.setattr(pipeline.core.engine, "sweep", failing)
    for _ in range(2):
        pipeline.core.sweep(dt.datetime(2026, 1, 10, 12, tzinfo=dt.UTC), changes=True)
    assert pipeline.summary.sweep_failures == 1
    assert [r.triggered_by for r in recs if r.kind == "advance_goal"] == [["e-1"]]  # once, not twice


def test_a_format_2_run_of_misses_ends_at_the_next_attended_visit_and_same_day_scores_follow_it(engine):
    old = {"v": 2, "patient": "p-1", "seen": "", "throttle": {},
           "plans": {"poc-1": {"setting": "outpatient", "frequency": 2, "certified": ["2026-01-05", "2026-06-30"],
                               "goals": {"g1": ["COPM-performance", 8, 3, None, 1.0, 5, False, None]},
                               "series": {"COPM-performance\x1fg1": [3, 5, "2026-01-19", 2, 1, 3, 1]},
                               "visits": [4, 3], "treated": [], "evaluated": "2026-01-19",
                               "discharged": False, "closed": None}}}
    state = PatientState.from_bytes(json.dumps(old).encode())
    state, _, _ = _feed(engine, [_visit("v-9", "2026-01-20T10:00:00Z", "attended"),
                                 _evaluation("e-9", "2026-01-19T11:00:00+14:00", 6)], state)
    plan = state.plans["poc-1"]
    assert plan.visits_missed_in_a_row == 0
    assert [p.score for p in plan.series["COPM-performance\x1fg1"].points] == [5, 6]
