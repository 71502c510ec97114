"""`otrules explain`: every rule one event was checked against, and why it did or did not fire."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from otrules.consumers import EventCore, Fault, PatientStates, Record, Rejection
from otrules.consumers.fhir.mapping import FhirMapper
from otrules.engine import Engine, PatientState
from otrules.engine.explain import Clause, failing_clauses
from otrules.engine.processor import RuleCheck
from otrules.engine.recommend import format_value
from otrules.schemas import (
    EvaluationEvent,
    Event,
    EventRejected,
    FeedbackEvent,
    OtrulesError,
    Recommendation,
    RetractionEvent,
)


class EventNotFound(OtrulesError, LookupError):
    pass


@dataclass
class Explanation:
    event: Event | None
    checks: list[RuleCheck]
    emitted: list[Recommendation]
    duplicate: bool
    rejected: Rejection | None = None  # the record was set aside instead (why, and where)
    where: str = ""
    sweep_at: dt.datetime | None = None  # a sweep (`clock@<time>`), not an event
    patient_id: str | None = None
    late: bool = False  # older than its plan's latest event: placed in history, recommends nothing
    closed: list[Recommendation] | None = None  # what the event closed (feedback, a retraction, an answer)
    retracted_by: str | None = None  # a later retraction in the input took this evaluation's scores back
    retraction: str | None = None  # a retraction explained: applied, or ignored (unknown or already retracted)


class _Collect:
    """The event core's sink while replaying: keeps the target event's outputs."""

    def __init__(self) -> None:
        self.recs: list[Recommendation] = []
        self.closed: list[Recommendation] = []
        self.letters: list[tuple[Record, Rejection]] = []

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        self.recs.extend(r for r in recs if r.status == "open")  # what the event recommended
        self.closed.extend(r for r in recs if r.status == "closed")

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        self.letters.append((record, rejection))


def explain(engine: Engine, records: Iterable[Record], event_id: str, patient_id: str | None = None,
            input_format: str = "auto", fhir: FhirMapper | None = None, max_future: dt.timedelta | None = None,
            clock: Callable[[], dt.datetime] | None = None) -> Explanation:
    """Replay the stream up to `event_id` (of `patient_id`, if given) and explain that event.

    A record with that id that was rejected (or that the engine failed on) is
    explained too: where it is and why it was set aside. `clock@<time>` (what a
    recommendation made when time advanced carries as its trigger) explains the
    sweep of one patient at that time, after the whole stream."""
    if event_id.startswith("clock@"):
        return _explain_sweep(engine, records, event_id, patient_id, max_future, clock)
    records = iter(records)  # what is left after the event is read for a later retraction of it
    states = PatientStates()
    sink = _Collect()
    core = EventCore(engine, states, sink, Fault.ISOLATE, input_format=input_format, fhir=fhir,
                     max_future=max_future, clock=clock)
    for record in records:
        if core.is_fhir(record):
            found = _explain_fhir_line(engine, core, sink, record, event_id, patient_id)
            if found is not None:
                return found
            continue
        try:
            event = core.parse(record)
        except EventRejected as exc:
            if _claims(record.raw, event_id, patient_id):
                return Explanation(None, [], [], False, Rejection(exc.field or "(event)", exc.reason), record.where)
            continue
        if event.event_id != event_id or patient_id not in (None, event.patient_id):
            core.handle(record, event=event)
            continue
        state = states.get(event.patient_id) or PatientState(event.patient_id)
        duplicate = state.has_seen(event.event_id)
        late = False
        retraction = None
        answers = isinstance(event, (FeedbackEvent, RetractionEvent))  # no rule is checked: it closes, or not
        try:
            facts = None if duplicate or answers else engine.explain_facts(copy.deepcopy(state), event)
            late = facts is not None and facts.late
            checks = [] if facts is None else engine.checks(facts)
        except Exception as exc:  # the engine fails on this event: say so rather than crash
            checks = []
            sink.letters.append((record, Rejection("(event)", f"internal error: the rules engine failed on this "
                                                              f"event ({type(exc).__name__})", "engine")))
        else:
            sink.recs.clear()
            sink.closed.clear()
            sink.letters.clear()
            applied = core.tally.retracted
            core.handle(record, event=event)
            if isinstance(event, RetractionEvent) and not duplicate:
                retraction = "applied" if core.tally.retracted > applied else (
                    "ignored" if not state.held else "held")
        if sink.letters:
            return Explanation(event, [], [], duplicate, sink.letters[-1][1], record.where)
        later = _retraction_of(records, event) if isinstance(event, EvaluationEvent) else None
        return Explanation(event, checks, list(sink.recs), duplicate, None, record.where, late=late,
                           closed=list(sink.closed), retracted_by=later, retraction=retraction)
    who = f" of patient {patient_id}" if patient_id else ""
    raise EventNotFound(f"no event with event_id {event_id!r}{who} in the input")


def _explain_fhir_line(engine: Engine, core: EventCore, sink: _Collect, record: Record, event_id: str,
                       patient_id: str | None) -> Explanation | None:
    """A FHIR line: its events go through the core as usual, and the one asked for is watched (its
    facts worked out on a copy of the state the engine is about to apply it to)."""
    seen: dict[str, Any] = {}

    def watch(event: Event, state: PatientState | None) -> None:
        if "done" in seen:
            return
        if state is not None and "event" in seen:  # a later event of the same line: the target's outputs are in
            seen["done"] = True
            return
        if event.event_id != event_id or patient_id not in (None, event.patient_id):
            return
        if state is None:
            seen["done"] = True
            seen["emitted"] = list(sink.recs[seen["start"]:])
            return
        seen["event"], seen["start"] = event, len(sink.recs)
        try:
            facts = engine.explain_facts(copy.deepcopy(state), event)
            seen["late"], seen["checks"] = facts.late, engine.checks(facts)
        except Exception as exc:  # the engine fails on this event: the core dead-letters it
            seen["checks"], seen["late"] = [], False
            seen["failed"] = type(exc).__name__

    letters = len(sink.letters)
    core.observe = watch
    try:
        core.handle(record)
    finally:
        core.observe = None
    if "event" in seen:
        event = seen["event"]
        mine = [r for r in sink.letters[letters:] if r[1].reason.find(event_id.split("/_history/")[0]) >= 0]
        if "emitted" not in seen and mine:
            return Explanation(event, [], [], False, mine[-1][1], record.where)
        return Explanation(event, seen["checks"], seen.get("emitted", []), False, None, record.where,
                           late=seen["late"])
    # set aside by the mapping (refused, or a duplicate): say so if the resource is the one asked for
    resource = event_id.split("/_history/")[0]
    for rec, rejection in sink.letters[letters:]:
        if f"({resource})" in rejection.reason or rejection.reason.startswith(f"{resource}:"):
            return Explanation(None, [], [], False, rejection, rec.where)
    return None


def _explain_sweep(engine: Engine, records: Iterable[Record], trigger: str, patient_id: str | None,
                   max_future: dt.timedelta | None, clock: Callable[[], dt.datetime] | None) -> Explanation:
    text = trigger.removeprefix("clock@")
    try:
        at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EventNotFound(f"{trigger!r}: the time after clock@ is not an RFC 3339 date-time") from None
    if at.tzinfo is None:
        raise EventNotFound(f"{trigger!r}: the time after clock@ has no offset")
    if patient_id is None:
        raise EventNotFound(f"{trigger!r} is a sweep of every open plan: say which patient with --patient")
    states = PatientStates()
    EventCore(engine, states, _Collect(), Fault.ISOLATE, max_future=max_future, clock=clock).feed(records)
    state = states.get(patient_id)
    if state is None:
        raise EventNotFound(f"no event of patient {patient_id!r} in the input")
    checks = engine.sweep_checks(state, at)
    emitted = list(engine.sweep(copy.deepcopy(state), at))
    return Explanation(None, checks, emitted, False, sweep_at=at, patient_id=patient_id)


def _retraction_of(records: Iterable[Record], event: Event) -> str | None:
    """The first later retraction (native lines) of this evaluation in the rest of the input."""
    for record in records:
        try:
            body = orjson.loads(record.raw)
        except orjson.JSONDecodeError:
            continue
        if (isinstance(body, dict) and body.get("type") == "retraction" and body.get("retracts") == event.event_id
                and body.get("patient_id") == event.patient_id and isinstance(body.get("event_id"), str)):
            return str(body["event_id"])
    return None


def _claims(raw: bytes, event_id: str, patient_id: str | None) -> bool:
    """Whether a rejected record says it is that event (read leniently: it did not validate)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(body, dict) and body.get("event_id") == event_id
            and patient_id in (None, body.get("patient_id")))


def render(ex: Explanation) -> list[str]:
    ev = ex.event
    if ex.rejected is not None:
        head = f"Event at {ex.where}" if ev is None else f"Event {ev.event_id} ({ev.type}) at {ex.where}"
        what = ("the rules engine failed on it" if ex.rejected.kind == "engine" else "it was rejected")
        return [f"{head}: {what}, so it is dead-lettered and no rule is checked", f"  {ex.rejected.reason}"]
    if ex.sweep_at is not None:
        lines = [f"Sweep at {ex.sweep_at.isoformat()} (time advanced with no event) of patient {ex.patient_id}: "
                 "every open plan, after the whole input"]
        if not ex.checks:
            lines.append("  no open plan: nothing is checked")
        return lines + _render_checks(ex)
    assert ev is not None
    kind = getattr(ev, "kind", None) or getattr(ev, "status", None)
    lines = [f"Event {ev.event_id} ({ev.type}{', ' + kind if kind else ''}) of patient {ev.patient_id}, "
             f"plan {ev.plan_id}, at {ev.occurred_at.isoformat()}"]
    if ex.duplicate:
        return [*lines, "  a duplicate: this event_id was seen before for the patient, so it was skipped"]
    if isinstance(ev, RetractionEvent):
        if ex.retraction == "ignored":
            return [*lines, f"  retracts {ev.retracts}: no evaluation of this plan by that id is known (unknown, not "
                            "an evaluation, or already retracted), so it is counted and changes nothing"]
        lines.append(f"  retracts {ev.retracts}: its scores left the plan's history and the scores after them are "
                     "judged without them; no rule is checked and no clock moves")
        lines += [f"  closed as retracted: {r.recommendation_id} ({r.kind}, rule {r.rule.id})" for r in ex.closed or ()]
        return lines
    if isinstance(ev, FeedbackEvent):
        answered = [f"  closed as {r.closed_reason}: {r.recommendation_id} ({r.kind}, rule {r.rule.id})"
                for r in ex.closed or ()]
        return lines + (answered or ["  answers no open recommendation (unknown or already closed): counted, changes "
                                 "nothing"])
    if ex.late:
        lines.append("  late: it occurred before the plan's latest event, so it took its place in the history "
                     "(the scores after it are judged against it) and recommends nothing; the checks below are "
                     "what its facts give")
    if ex.retracted_by is not None:
        lines.append(f"  retracted later by {ex.retracted_by}: its scores leave the history then, and what it "
                     "recommended is closed as retracted")
    return lines + _render_checks(ex)



def _render_checks(ex: Explanation) -> list[str]:
    lines: list[str] = []
    emitted = {(r.rule.ruleset, r.rule.id, r.plan_id if ex.sweep_at else None, r.goal_id) for r in ex.emitted}
    current = None
    for check in ex.checks:
        if check.ruleset.name != current:
            current = check.ruleset.name
            lines.append(f"ruleset {check.ruleset.name} {check.ruleset.version}")
        where = "" if check.measure is None else f" [{check.measure.instrument}" + (
            f", goal {check.measure.goal_id}]" if check.measure.goal_id else "]")
        if check.plan_id is not None:
            where = f" [plan {check.plan_id}" + (f", goal {check.goal_id}]" if check.goal_id else "]")
        head = f"  {check.rule.id}{where}: "
        if check.matched:
            key = (check.ruleset.name, check.rule.id, check.plan_id, check.facts.get("goal.id"))
            fate = ("recommended " + check.rule.recommend.kind) if key in emitted else (
                "not sent: the event is late" if ex.late else
                "not sent: throttled, or already recommended for this event")
            lines.append(head + f"MATCHED, {fate}")
            lines += [f"      {name} = {format_value(check.facts.get(name))}" for name in check.rule.facts]
        else:
            clauses = failing_clauses(check.rule.condition, check.facts)
            lines.append(head + "no")
            lines += [f"      false: {_clause_text(c)}" for c in clauses]
    return lines


def _clause_text(c: Clause) -> str:
    values = ", ".join(f"{k} = {format_value(v)}" for k, v in c.values.items())
    return f"{c.text}   ({values})" if values else c.text


def as_json(ex: Explanation) -> dict[str, Any]:
    if ex.rejected is not None:
        return {"event_id": None if ex.event is None else ex.event.event_id, "where": ex.where,
                "rejected": {"kind": ex.rejected.kind, "field": ex.rejected.field, "reason": ex.rejected.reason},
                "checks": [], "recommendations": []}
    if ex.sweep_at is not None:
        head: dict[str, Any] = {"event_id": f"clock@{ex.sweep_at.isoformat()}", "patient_id": ex.patient_id,
                                "sweep": True}
    else:
        assert ex.event is not None
        head = {"event_id": ex.event.event_id, "patient_id": ex.event.patient_id, "where": ex.where,
                "duplicate": ex.duplicate, "late": ex.late}
        if isinstance(ex.event, RetractionEvent):
            head |= {"retracts": ex.event.retracts, "retraction": ex.retraction}
        if ex.retracted_by is not None:
            head["retracted_by"] = ex.retracted_by
        if ex.closed:
            head["closed"] = [{"recommendation_id": r.recommendation_id, "closed_reason": r.closed_reason}
                              for r in ex.closed]
    return {
        **head,
        "checks": [
            {"ruleset": c.ruleset.name, "rule": c.rule.id,
             "measure": None if c.measure is None else c.measure.model_dump(),
             **({"plan_id": c.plan_id, "goal_id": c.goal_id} if c.plan_id is not None else {}),
             "matched": c.matched,
             "false_clauses": [] if c.matched else [
                 {"clause": cl.text, "values": cl.values} for cl in failing_clauses(c.rule.condition, c.facts)]}
            for c in ex.checks
        ],
        "recommendations": [r.recommendation_id for r in ex.emitted],
    }
