"""`otrules explain`: every rule one event was checked against, and why it did or did not fire."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from otrules.consumers import EventCore, Fault, PatientStates, Record, Rejection
from otrules.engine import Engine, PatientState
from otrules.engine.explain import Clause, failing_clauses
from otrules.engine.processor import RuleCheck
from otrules.engine.recommend import format_value
from otrules.schemas import Event, EventRejected, OtrulesError, Recommendation


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


class _Collect:
    """The event core's sink while replaying: keeps the target event's outputs."""

    def __init__(self) -> None:
        self.recs: list[Recommendation] = []
        self.letters: list[tuple[Record, Rejection]] = []

    def recommend(self, recs: Sequence[Recommendation], record: Record | None) -> None:
        self.recs.extend(recs)

    def dead_letter(self, record: Record, rejection: Rejection) -> None:
        self.letters.append((record, rejection))


def explain(engine: Engine, records: Iterable[Record], event_id: str, patient_id: str | None = None) -> Explanation:
    """Replay the stream up to `event_id` (of `patient_id`, if given) and explain that event.

    A record with that id that was rejected (or that the engine failed on) is
    explained too: where it is and why it was set aside."""
    states = PatientStates()
    sink = _Collect()
    core = EventCore(engine, states, sink, Fault.ISOLATE)
    for record in records:
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
        try:
            checks = [] if duplicate else engine.checks(engine.explain_facts(copy.deepcopy(state), event))
        except Exception as exc:  # the engine fails on this event: say so rather than crash
            checks = []
            sink.letters.append((record, Rejection("(event)", f"internal error: the rules engine failed on this "
                                                              f"event ({type(exc).__name__})", "engine")))
        else:
            sink.recs.clear()
            sink.letters.clear()
            core.handle(record, event=event)
        if sink.letters:
            return Explanation(event, [], [], duplicate, sink.letters[-1][1], record.where)
        return Explanation(event, checks, list(sink.recs), duplicate, None, record.where)
    who = f" of patient {patient_id}" if patient_id else ""
    raise EventNotFound(f"no event with event_id {event_id!r}{who} in the input")


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
    assert ev is not None
    kind = getattr(ev, "kind", None) or getattr(ev, "status", None)
    lines = [f"Event {ev.event_id} ({ev.type}{', ' + kind if kind else ''}) of patient {ev.patient_id}, "
             f"plan {ev.plan_id}, at {ev.occurred_at.isoformat()}"]
    if ex.duplicate:
        return [*lines, "  a duplicate: this event_id was seen before for the patient, so it was skipped"]
    emitted = {(r.rule.ruleset, r.rule.id, r.goal_id) for r in ex.emitted}
    current = None
    for check in ex.checks:
        if check.ruleset.name != current:
            current = check.ruleset.name
            lines.append(f"ruleset {check.ruleset.name} {check.ruleset.version}")
        where = "" if check.measure is None else f" [{check.measure.instrument}" + (
            f", goal {check.measure.goal_id}]" if check.measure.goal_id else "]")
        head = f"  {check.rule.id}{where}: "
        if check.matched:
            key = (check.ruleset.name, check.rule.id, check.facts.get("goal.id"))
            fate = ("recommended " + check.rule.recommend.kind) if key in emitted else (
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
        return {"where": ex.where, "rejected": {"kind": ex.rejected.kind, "field": ex.rejected.field,
                                                "reason": ex.rejected.reason},
                "checks": [], "recommendations": []}
    assert ex.event is not None
    return {
        "event_id": ex.event.event_id,
        "patient_id": ex.event.patient_id,
        "where": ex.where,
        "duplicate": ex.duplicate,
        "checks": [
            {"ruleset": c.ruleset.name, "rule": c.rule.id,
             "measure": None if c.measure is None else c.measure.model_dump(),
             "matched": c.matched,
             "false_clauses": [] if c.matched else [
                 {"clause": cl.text, "values": cl.values} for cl in failing_clauses(c.rule.condition, c.facts)]}
            for c in ex.checks
        ],
        "recommendations": [r.recommendation_id for r in ex.emitted],
    }
