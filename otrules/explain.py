"""`otrules explain`: every rule one event was checked against, and why it did or did not fire."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from otrules.consumers import Line
from otrules.engine import Engine, PatientState
from otrules.engine.explain import Clause, failing_clauses
from otrules.engine.processor import RuleCheck
from otrules.engine.recommend import format_value
from otrules.schemas import Event, EventRejected, Recommendation, parse_event


class EventNotFound(LookupError):
    pass


@dataclass
class Explanation:
    event: Event
    checks: list[RuleCheck]
    emitted: list[Recommendation]
    duplicate: bool


def explain(engine: Engine, lines: Iterable[Line], event_id: str, patient_id: str | None = None) -> Explanation:
    """Replay the stream up to `event_id` (of `patient_id`, if given) and explain that event."""
    states: dict[str, PatientState] = {}
    for line in lines:
        try:
            event = parse_event(line.raw, engine.catalogue)
        except EventRejected:
            continue
        state = states.setdefault(event.patient_id, PatientState(event.patient_id))
        if event.event_id == event_id and patient_id in (None, event.patient_id):
            duplicate = state.has_seen(event.event_id)
            checks = [] if duplicate else engine.checks(engine.explain_facts(copy.deepcopy(state), event))
            outcome = engine.process(state, event)
            return Explanation(event, checks, list(outcome.recommendations), duplicate)
        engine.process(state, event)
    who = f" of patient {patient_id}" if patient_id else ""
    raise EventNotFound(f"no valid event with event_id {event_id!r}{who} in the input")


def render(ex: Explanation) -> list[str]:
    ev = ex.event
    kind = getattr(ev, "kind", None) or getattr(ev, "status", None)
    lines = [f"Event {ev.event_id} ({ev.type}{', ' + kind if kind else ''}) of patient {ev.patient_id}, "
             f"plan {ev.plan_id}, at {ev.occurred_at.isoformat()}"]
    if ex.duplicate:
        return lines + ["  a duplicate: this event_id was seen before for the patient, so it was skipped"]
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
    return {
        "event_id": ex.event.event_id,
        "patient_id": ex.event.patient_id,
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
