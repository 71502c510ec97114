"""Event time that no single event can corrupt (issue 23, contracts.md §1).

- A bound on the future: an event more than --max-future after processing time (the wall clock,
  or --as-of) is rejected naming occurred_at; a closing sweep runs at the latest accepted event
  time, never past processing time.
- Clocks are local: a plan's clock and watermark move only with that plan's own plan, evaluation,
  visit and discharge events; feedback and retractions move none, and no event of one patient
  changes another's recommendations, closures or facts (hypothesis properties below).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otrules import defaults
from otrules.cli import main
from otrules.consumers import DeadLetterSink, EventCore, Fault, JsonlSource, PatientStates, Pipeline, Record
from otrules.engine import Engine, PatientState
from otrules.schemas import Recommendation
from otrules.serve.sources import Embedded
from test_event_time import T0, _evaluation, _plan, _visit, plan_streams

DAY = dt.timedelta(days=1)
AS_OF = T0 + dt.timedelta(days=200)  # processing time of the property tests: after every event of plan_streams


def _z(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _lines(*bodies: dict[str, Any]) -> bytes:
    return "".join(json.dumps(b) + "\n" for b in bodies).encode()


def _run(tmp_path: Path, bodies: list[dict[str, Any]], *args: str) -> tuple[list[dict[str, Any]], str, list[Any]]:
    """`otrules run` over the bodies: (recommendations, stderr, dead letters)."""
    src, dlq = tmp_path / "in.jsonl", tmp_path / "dlq.jsonl"
    src.write_bytes(_lines(*bodies))
    result = CliRunner().invoke(main, ["run", "--input", str(src), "--dlq", str(dlq), "--quiet", *args])
    assert result.exit_code == 0, result.output
    recs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    letters = [json.loads(line) for line in dlq.read_text().splitlines()] if dlq.exists() else []
    return recs, result.stderr, letters


# ------------------------------------------------------------------ the bound on the future


def _patient_a(now: dt.datetime) -> list[dict[str, Any]]:
    """A plan two days old, scored yesterday: nothing is due."""
    plan = _plan(_z(now - 2 * DAY))
    plan["certified_from"] = (now - 2 * DAY).date().isoformat()
    plan["certified_until"] = (now + 60 * DAY).date().isoformat()
    plan["goals"][0]["target_date"] = (now + 40 * DAY).date().isoformat()
    return [plan, _evaluation("e-1", _z(now - DAY), 5, "initial")]


def _far_future_plan(now: dt.datetime) -> dict[str, Any]:
    """Another patient's new plan with a mistyped year (36 years on: 2062 for 2026)."""
    at = now.replace(year=now.year + 36)
    body = _plan(_z(at), "b-plan")
    return {**body, "patient_id": "p-2", "plan_id": "poc-2", "certified_from": at.date().isoformat(),
            "certified_until": (at + 80 * DAY).date().isoformat()}


def test_one_far_future_event_is_rejected_naming_occurred_at_and_moves_no_clock(tmp_path):
    """Issue 23, case 1, through `otrules run` on the wall clock (dates relative to now)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    far = _far_future_plan(now)
    recs, err, letters = _run(tmp_path, [*_patient_a(now)[:1], far, *_patient_a(now)[1:]])
    assert [letter["field"] for letter in letters] == ["occurred_at"]
    assert far["occurred_at"] in letters[0]["reason"] and "--max-future" in letters[0]["reason"]
    assert "rejected 1 (1 dated past --max-future)" in err
    # nothing judged at 2062: no "no evaluation for 13152 days", no recertify, no target date passed
    assert not [r for r in recs if r["kind"] in ("re_evaluate", "recertify_plan", "modify_plan")], recs
    assert all(r["patient_id"] == "p-1" for r in recs)


def test_the_bound_counts_from_as_of_across_offsets_and_dst(tmp_path):
    """--as-of is processing time; the bound is exact in UTC whatever the offsets (+14:00, -12:00,
    either side of a DST change): exactly max-future after is accepted, one second more is not."""
    as_of = "2026-03-08T01:30:00-08:00"  # 09:30Z, before US daylight saving time began that day
    plan = _plan("2026-03-01T09:00:00Z")
    times = {
        "at-bound-dst": "2026-03-09T02:30:00-07:00",  # 09:30Z the next day: exactly 24 h (it looks like 25)
        "past-bound-dst": "2026-03-09T02:30:01-07:00",
        "at-bound-east": "2026-03-09T23:30:00+14:00",  # 09:30Z
        "past-bound-west": "2026-03-08T21:30:01-12:00",  # 09:30:01Z
        "west-inside": "2026-03-08T21:29:59-12:00",
    }
    visits = [_visit(k, v, "attended") for k, v in times.items()]
    _, err, letters = _run(tmp_path, [plan, *visits], "--as-of", as_of)
    rejected = sorted(json.loads(letter["original"])["event_id"] for letter in letters)
    assert rejected == ["past-bound-dst", "past-bound-west"], err
    assert all(letter["reason"].startswith("occurred_at: '2026-03-0") for letter in letters)
    _, err, letters = _run(tmp_path, [plan, *visits], "--as-of", as_of, "--max-future", "2d")
    assert letters == []


def test_max_future_reads_its_variable_and_zero_means_nothing_after_now(tmp_path, monkeypatch):
    plan = _plan("2026-03-01T09:00:00Z")
    later = _visit("v-1", "2026-03-01T09:00:01Z", "attended")
    monkeypatch.setenv("OTRULES_MAX_FUTURE", "0m")
    _, _, letters = _run(tmp_path, [plan, later], "--as-of", "2026-03-01T09:00:00Z")
    assert [letter["field"] for letter in letters] == ["occurred_at"]


def _pipeline(window: dt.timedelta, now: dt.datetime, recs: list[Recommendation] | None = None) -> Pipeline:
    engine = Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=window)
    sink: list[Recommendation] = recs if recs is not None else []
    return Pipeline(engine, sink.append, DeadLetterSink(None), max_future=DAY, clock=lambda: now)


def test_the_closing_sweep_runs_at_the_latest_accepted_event_never_past_processing_time():
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    pipeline = _pipeline(dt.timedelta(0), now)
    pipeline.feed(JsonlSource(io.BytesIO(_lines(_plan("2026-02-01T09:00:00Z"))), "in"))
    assert pipeline.core.closing_time() == dt.datetime(2026, 2, 1, 9, tzinfo=dt.UTC)
    # accepted (inside the bound) but after processing time: the sweep stops at processing time
    pipeline.feed(JsonlSource(io.BytesIO(_lines(_visit("v-1", "2026-03-02T06:00:00Z", "attended"))), "in"))
    assert pipeline.summary.rejected == 0 and pipeline.core.closing_time() == now
    # feedback (serve stamps it with the wall clock) and retractions move no clock
    feedback = {"type": "feedback", "event_id": "f-1", "patient_id": "p-1", "plan_id": "poc-1",
                "occurred_at": "2026-03-02T11:00:00Z", "recommendation_id": "nothing", "outcome": "accepted"}
    pipeline = _pipeline(dt.timedelta(0), now)
    pipeline.feed(JsonlSource(io.BytesIO(_lines(_plan("2026-02-01T09:00:00Z"), feedback, {
        **feedback, "type": "retraction", "event_id": "r-1", "retracts": "e-1"})), "in"))
    assert pipeline.core.closing_time() == dt.datetime(2026, 2, 1, 9, tzinfo=dt.UTC)


def test_an_event_the_window_held_then_dead_lettered_does_not_move_the_closing_sweep():
    """H2: a visit for a plan that never opened, dated after everything else, is held by the
    reorder window and dead-lettered at release: the closing sweep stays at the latest accepted
    clinical event."""
    now = dt.datetime(2026, 3, 1, 12, tzinfo=dt.UTC)
    pipeline = _pipeline(DAY, now)
    stray = {**_visit("v-stray", "2026-02-20T09:00:00Z", "attended"), "patient_id": "p-2", "plan_id": "poc-nope"}
    pipeline.feed(JsonlSource(io.BytesIO(_lines(_plan("2026-02-01T09:00:00Z"), stray)), "in"))
    pipeline.core.flush()
    assert pipeline.summary.rejected == 1 and pipeline.summary.balanced
    assert pipeline.core.closing_time() == dt.datetime(2026, 2, 1, 9, tzinfo=dt.UTC)
    # the same visit once its plan is open is accepted when released, and moves it
    pipeline = _pipeline(DAY, now)
    pipeline.feed(JsonlSource(io.BytesIO(_lines(_plan("2026-02-01T09:00:00Z"),
                                                 _visit("v-1", "2026-02-20T09:00:00Z", "attended"))), "in"))
    pipeline.core.flush()
    assert pipeline.core.closing_time() == dt.datetime(2026, 2, 20, 9, tzinfo=dt.UTC)


def test_serve_sweeps_at_the_latest_accepted_event_and_refuses_the_far_future_one(tmp_path):
    """Case 1 through serve's file source, and through --follow when the event is appended."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    path = tmp_path / "in.jsonl"
    path.write_bytes(_lines(*_patient_a(now), _far_future_plan(now)))
    engine = Engine(defaults.rulesets(), defaults.catalogue())
    source = Embedded.from_path(engine, path)
    try:
        assert source.tally.rejected_by["future"] == 1
        assert not [r for r in source.all_open() if r.kind in ("re_evaluate", "recertify_plan", "modify_plan")]
    finally:
        source.close()
    path.write_bytes(_lines(*_patient_a(now)))
    source = Embedded.from_path(engine, path, follow=True)
    try:
        before = sorted(r.recommendation_id for r in source.all_open())
        with path.open("ab") as f:
            f.write(_lines({**_far_future_plan(now), "event_id": "b-2"}))
        deadline = time.monotonic() + 10
        while source.tally.read < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert source.tally.rejected_by["future"] == 1
        assert sorted(r.recommendation_id for r in source.all_open()) == before
    finally:
        source.close()


# ------------------------------------------------------------------ clocks are local


def _window_stream(extra: dict[str, Any] | None) -> list[dict[str, Any]]:
    """An evaluation an hour out of order, inside a 1-day window, after `extra`."""
    plan = _plan()
    plan["goals"][0]["baseline"], plan["goals"][0]["target"] = 3, 7
    out = [plan, _evaluation("e-1", "2026-01-10T10:00:00Z", 4, "initial")]
    if extra is not None:
        out.append(extra)
    return [*out, _visit("v-1", "2026-01-20T10:00:00Z", "attended"),
            _evaluation("e-2", "2026-01-20T09:00:00Z", 7)]  # goal met: advance_goal and discharge


def _opened(recs: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r.items() if k != "emitted_at"}, sort_keys=True)
                  for r in recs if r["status"] == "open")


@pytest.mark.parametrize("extra", [
    pytest.param({"type": "feedback", "event_id": "f-1", "patient_id": "p-1", "plan_id": "poc-1",
                  "occurred_at": "2026-11-30T15:00:00Z", "recommendation_id": "unknown", "outcome": "accepted"},
                 id="a feedback click stamped with the wall clock"),
    pytest.param({**_plan("2026-02-25T09:00:00Z", "other-plan"), "plan_id": "poc-2"},
                 id="another plan's event a month ahead"),
    pytest.param({"type": "retraction", "event_id": "r-1", "patient_id": "p-1", "plan_id": "poc-1",
                  "occurred_at": "2026-11-30T15:00:00Z", "retracts": "nothing"}, id="a retraction"),
])
def test_nothing_but_the_plans_own_events_moves_its_reorder_window(tmp_path, extra):
    """Issue 23, case 2, through `otrules run`: the out-of-order evaluation keeps its window."""
    expected, _, _ = _run(tmp_path, _window_stream(None), "--reorder-window", "1d", "--as-of", "2026-12-01T00:00:00Z")
    assert {r["kind"] for r in expected if r["status"] == "open"} >= {"advance_goal", "discharge"}
    recs, err, letters = _run(tmp_path, _window_stream(extra), "--reorder-window", "1d",
                              "--as-of", "2026-12-01T00:00:00Z")
    assert letters == [] and "late" not in err
    mine = [r for r in recs if r["plan_id"] == "poc-1"]
    assert _opened(mine) == _opened([r for r in expected if r["plan_id"] == "poc-1"])


def test_a_flood_of_feedback_does_not_push_a_held_evaluation_out_of_the_window(tmp_path):
    """M1: more feedback events than the window holds (MAX_HELD) go early themselves; the clinical
    events they were held with keep their window."""
    from otrules.engine.state import MAX_HELD

    expected, _, _ = _run(tmp_path, _window_stream(None), "--reorder-window", "1d", "--as-of", "2026-12-01T00:00:00Z")
    *head, visit, late = _window_stream(None)
    flood = [{"type": "feedback", "event_id": f"f-{i}", "patient_id": "p-1", "plan_id": "poc-1",
              "occurred_at": "2026-01-20T10:30:00Z", "recommendation_id": f"unknown-{i}", "outcome": "accepted"}
             for i in range(MAX_HELD + 44)]
    recs, err, letters = _run(tmp_path, [*head, visit, *flood, late], "--reorder-window", "1d",
                              "--as-of", "2026-12-01T00:00:00Z")
    assert letters == [] and "late" not in err
    assert _opened(recs) == _opened(expected)


# ------------------------------------------------------------------ the properties


def _core(window: dt.timedelta) -> tuple[EventCore, list[Recommendation]]:
    engine = _ENGINES[window]
    out: list[Recommendation] = []

    class Sink:
        def recommend(self, recs: Any, record: Any) -> None:
            out.extend(recs)

        def dead_letter(self, record: Any, rejection: Any) -> None:
            pass

    return EventCore(engine, PatientStates(), Sink(), Fault.ISOLATE, max_future=DAY, clock=lambda: AS_OF), out


_ENGINES = {w: Engine(defaults.rulesets(), defaults.catalogue(), reorder_window=w) for w in (dt.timedelta(0), DAY)}


def _replay(bodies: list[dict[str, Any]], window: dt.timedelta) -> tuple[list[str], PatientState | None]:
    """(patient p-1's outputs in order, p-1's state) after the input, its end and a sweep at AS_OF."""
    core, out = _core(window)
    for i, body in enumerate(bodies, 1):
        core.handle(Record(json.dumps(body).encode(), "t", line=i))
    core.flush()
    core.sweep(AS_OF, dt.timedelta(days=365))  # nothing expires: the whole state is compared
    return [r.to_json() for r in out if r.patient_id == "p-1"], core.states.get("p-1")


_OFFSETS = st.sampled_from([dt.timezone(dt.timedelta(hours=h)) for h in (-12, -5, 0, 1, 5.5, 14)])


@st.composite
def other_patient_events(draw: st.DrawFn) -> dict[str, Any]:
    """Any one event of patient p-2: any type, any time (far past to far future, any offset), on a plan
    of the same id as p-1's or another, valid or not."""
    at = draw(st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2150, 1, 1), timezones=_OFFSETS))  # noqa: DTZ001
    plan_id = draw(st.sampled_from(["poc-1", "poc-9"]))
    kind = draw(st.sampled_from(["plan", "evaluation", "visit", "discharge", "feedback", "retraction", "bad"]))
    base = {"event_id": draw(st.sampled_from(["e-1", "b-1", "e-plan"])), "patient_id": "p-2", "plan_id": plan_id,
            "occurred_at": at.isoformat()}
    if kind == "plan":
        return {**_plan(), **base}
    if kind == "evaluation":
        return {**_evaluation("x", "2026-01-01T00:00:00Z", draw(st.integers(1, 10))), **base}
    if kind == "visit":
        return {**_visit("x", "2026-01-01T00:00:00Z", "missed"), **base}
    if kind == "discharge":
        return {**base, "type": "discharge", "reason": "goals-met"}
    if kind == "feedback":
        return {**base, "type": "feedback", "recommendation_id": "x", "outcome": "accepted"}
    if kind == "retraction":
        return {**base, "type": "retraction", "retracts": draw(st.sampled_from(["e-1", "e-2", "b-1"]))}
    return {**_evaluation("x", "2026-01-01T00:00:00Z", 11), **base}  # COPM 11: out of range, rejected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=plan_streams(), other=other_patient_events(), data=st.data())
def test_no_event_of_another_patient_changes_anything_of_this_one(stream, other, data):
    window = data.draw(st.sampled_from([dt.timedelta(0), DAY]))
    position = data.draw(st.integers(0, len(stream)))
    alone = _replay(stream, window)
    together = _replay([*stream[:position], other, *stream[position:]], window)
    assert together[0] == alone[0]
    assert (together[1] and together[1].to_bytes()) == (alone[1] and alone[1].to_bytes())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=plan_streams(), data=st.data())
def test_a_feedback_event_changes_nothing_but_the_closure_it_answers(stream, data):
    window = data.draw(st.sampled_from([dt.timedelta(0), DAY]))
    outputs, state = _replay(stream, window)
    ids = sorted({json.loads(o)["recommendation_id"] for o in outputs}) or ["none"]
    answered = data.draw(st.sampled_from([*ids, "unknown"]))
    at = data.draw(st.datetimes(dt.datetime(2026, 1, 1), dt.datetime(2026, 12, 1),  # noqa: DTZ001
                                timezones=_OFFSETS))
    feedback = {"type": "feedback", "event_id": "f-1", "patient_id": "p-1", "plan_id": "poc-1",
                "occurred_at": at.isoformat(), "recommendation_id": answered,
                "outcome": data.draw(st.sampled_from(["accepted", "overridden"]))}
    position = data.draw(st.integers(1, len(stream)))
    after, state_after = _replay([*stream[:position], feedback, *stream[position:]], window)
    assert state is not None and state_after is not None

    def opened(outs: list[str]) -> list[str]:
        return [o for o in outs if json.loads(o)["status"] == "open"]

    def closures(outs: list[str]) -> dict[str, str]:
        return {json.loads(o)["recommendation_id"]: o for o in outs if json.loads(o)["status"] == "closed"}

    assert opened(after) == opened(outputs)
    before_closed, after_closed = closures(outputs), closures(after)
    assert {k: v for k, v in after_closed.items() if k != answered} == {
        k: v for k, v in before_closed.items() if k != answered}
    if answered in after_closed and json.loads(after_closed[answered])["closed_by"] == "f-1":
        assert answered not in state_after.open
    assert {k: p.to_dict() for k, p in state_after.plans.items()} == {k: p.to_dict() for k, p in state.plans.items()}
    assert {k for k in state_after.open if k != answered} == {k for k in state.open if k != answered}
    assert state_after.throttle == state.throttle
