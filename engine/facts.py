"""The facts rules can name (contracts.md §3), with their types.

One table serves the condition type checker, `did you mean` hints, the
evidence of recommendations, the authoring docs and the JSON Schema.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from otrules.schemas.events import SETTINGS, DischargeEvent, EvaluationEvent, PlanEvent, VisitEvent

FactType = Literal["number", "string", "bool"]
Scope = Literal["event", "plan", "measure", "goal"]


@dataclass(frozen=True, slots=True)
class FactInfo:
    name: str
    type: FactType
    description: str
    time_dependent: bool = False  # changes as event time moves on
    values: tuple[str, ...] = ()  # a text fact's only values (besides null), where the contract fixes them

    @property
    def scope(self) -> Scope:
        head = self.name.split(".", 1)[0]
        return "plan" if head == "patient" else head  # type: ignore[return-value]

    @property
    def per_measure(self) -> bool:
        """Naming any measure.* or goal.* fact makes a rule run once per measure."""
        return self.scope in ("measure", "goal")


def _f(name: str, type_: FactType, description: str, time_dependent: bool = False,
       values: tuple[str, ...] = ()) -> FactInfo:
    return FactInfo(name, type_, description, time_dependent, values)


def _literal(model: Any, field: str) -> tuple[str, ...]:
    """The values of a `Literal[...]` field of an event model."""
    return tuple(get_args(model.model_fields[field].annotation))


EVENT_TYPES = (*(_literal(m, "type")[0] for m in (PlanEvent, EvaluationEvent, VisitEvent, DischargeEvent)), "clock")
"""`event.type`: the four event types, and `clock` at a sweep (time passing without events)."""


FACTS: dict[str, FactInfo] = {
    f.name: f
    for f in (
        _f("event.type", "string", "plan, evaluation, visit or discharge", values=EVENT_TYPES),
        _f("event.kind", "string", "evaluation kind: initial, re-evaluation, progress, discharge",
           values=_literal(EvaluationEvent, "kind")),
        _f("event.status", "string", "visit status: attended, missed, cancelled",
           values=_literal(VisitEvent, "status")),
        _f("event.reason", "string", "discharge reason"),
        _f("event.occurred_at", "string", "event time, RFC 3339"),
        _f("patient.id", "string", "the patient's id"),
        _f("plan.id", "string", "the plan-of-care episode's id"),
        _f("plan.setting", "string", "inpatient-rehab, outpatient, home-health, school, skilled-nursing, acute",
           values=SETTINGS),
        _f("plan.frequency_per_week", "number", "planned visits per week"),
        _f("plan.goals_total", "number", "goals in the current plan"),
        _f("plan.goals_met", "number", "goals whose latest score reached the target"),
        _f("plan.all_goals_met", "bool", "the plan has goals and every one is met"),
        _f("plan.gas_t", "number", "GAS T-score over the goals' latest GAS levels; null until every goal has one"),
        _f("plan.visits_attended", "number", "attended visits in this plan"),
        _f("plan.visits_missed_in_a_row", "number", "missed visits since the last attended one"),
        _f("plan.treatment_days_since_report", "number",
           "distinct dates with an attended visit since the last progress report"),
        _f("plan.days_since_evaluation", "number", "days since the last evaluation of any kind", True),
        _f("plan.days_until_cert_end", "number", "days until certified_until; negative once past", True),
        _f("plan.discharged", "bool", "a discharge event closed this plan"),
        _f("measure.instrument", "string", "the instrument's canonical id"),
        _f("measure.score", "number", "this score"),
        _f("measure.previous", "number", "previous score of this instrument (same goal if any) in this plan"),
        _f("measure.baseline", "number", "the goal's baseline, else the first score"),
        _f("measure.change", "number", "score - previous, signed"),
        _f("measure.change_from_baseline", "number", "score - baseline, signed"),
        _f("measure.improvement", "number", "change with direction applied: positive is better"),
        _f("measure.improvement_from_baseline", "number", "change from baseline, positive is better"),
        _f("measure.mcid", "number", "smallest meaningful change: ruleset override, else catalogue"),
        _f("measure.improved", "bool", "improvement >= mcid"),
        _f("measure.declined", "bool", "improvement <= -mcid"),
        _f("measure.stable_count", "number", "consecutive scores, this one included, with abs(improvement) < mcid"),
        _f("measure.plateau_count", "number",
           "consecutive later scores within one MCID of the score that began the run (steady small gains end it)"),
        _f("measure.count", "number", "scores of this instrument (and goal) so far, this one included"),
        _f("measure.days_since_previous", "number", "days since the previous score"),
        _f("goal.id", "string", "the goal this measure scores"),
        _f("goal.instrument", "string", "the instrument the goal's target is set in"),
        _f("goal.target", "number", "the goal's target score"),
        _f("goal.met", "bool", "the goal's latest score reached the target in the good direction"),
        _f("goal.met_before", "bool", "the goal had been met at an earlier event of this plan"),
        _f("goal.progress", "number", "share of baseline -> target covered (0.75 = three quarters)"),
        _f("goal.days_to_target", "number", "days until target_date; negative once past", True),
        _f("goal.gas_level", "number", "the goal's latest GAS level (-2..+2)"),
    )
}


def durable_key(name: str) -> str:
    """Field name inside durable_rules messages (dots would read as nesting)."""
    return name.replace(".", "__")
