"""Open recommendations (contracts.md §8): each patient's open set, and what closes one.

A recommendation is open until a newer one from the same rule for the same goal
(or plan) supersedes it, the event that answers it arrives, its plan is
discharged, a clinician answers it, the evaluation that triggered it is
retracted, or the per-patient cap closes it. A closure is the same recommendation
again with `status: closed`, `closed_at` (event time), `closed_by` (the event
id) and `closed_reason`. All of it is a function of the event stream, kept in
the patient's state: replays give the same closures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from otrules.engine.derive import rfc3339
from otrules.engine.state import PatientState
from otrules.schemas import (
    DischargeEvent,
    EvaluationEvent,
    Event,
    FeedbackEvent,
    PlanEvent,
    Recommendation,
    RetractionEvent,
    VisitEvent,
)

MAX_OPEN = 64
"""Open recommendations kept per patient (a patient with 64 decisions waiting has a worklist no one
reads). Past it one is closed as `capped`: the oldest of the lowest urgency (info before warning
before critical), so the cap never closes a critical or warning recommendation while an info one is
open, and never a critical one while a warning one is."""

_URGENCY = {"info": 0, "warning": 1, "critical": 2}

# what each kind of event answers (contracts.md §8)
_REPORT = frozenset({"progress_report_due"})
_REEVALUATION = frozenset({"progress_report_due", "re_evaluate", "clinical_review"})
_NEW_PLAN = frozenset({"advance_goal", "modify_plan", "increase_frequency", "decrease_frequency"})


def answered(state: PatientState, event: Event, certification_before: dt.date | None) -> list[Recommendation]:
    """Close what `event` answers (on its plan, raised at or before its time); returns the closures.
    `certification_before`: the plan's certified_until before a plan snapshot was applied."""
    kinds: frozenset[str] | None
    reason = "resolved"
    if isinstance(event, DischargeEvent):
        kinds, reason = None, "discharged"  # everything on the plan
    elif isinstance(event, EvaluationEvent):
        kinds = _REEVALUATION if event.kind == "re-evaluation" else _REPORT if event.kind == "progress" else frozenset()
    elif isinstance(event, VisitEvent):
        kinds = frozenset({"adherence_review"}) if event.status == "attended" else frozenset()
    elif isinstance(event, PlanEvent):
        further = certification_before is None or event.certified_until > certification_before
        kinds = _NEW_PLAN | {"recertify_plan"} if further else _NEW_PLAN
    else:
        return []
    if kinds is not None and not kinds:
        return []
    when = event.occurred_at
    return close(state, (rec for rec in state.open.values() if rec.plan_id == event.plan_id
                         and (kinds is None or rec.kind in kinds) and _time(rec.occurred_at) <= when),
                 rfc3339(when), event.event_id, reason)


def opened(state: PatientState, recs: Iterable[Recommendation]) -> list[Recommendation]:
    """Add new recommendations to the open set; each supersedes an open one from the same rule for
    the same goal (or plan). Returns the closures."""
    closures: list[Recommendation] = []
    last: Recommendation | None = None
    for rec in recs:
        last = rec
        same = [old for old in state.open.values() if old.rule.id == rec.rule.id
                and old.rule.ruleset == rec.rule.ruleset and old.plan_id == rec.plan_id and old.goal_id == rec.goal_id
                and old.recommendation_id != rec.recommendation_id]
        closures += close(state, same, rec.occurred_at, rec.triggered_by[0], "superseded")
        state.open[rec.recommendation_id] = rec
    while len(state.open) > MAX_OPEN and last is not None:  # pushed out by the newest: closed by its trigger
        closures += close(state, [capped(state)], last.occurred_at, last.triggered_by[0], "capped")
    return closures


def capped(state: PatientState) -> Recommendation:
    """What the cap closes: the oldest (first opened) of the lowest urgency."""
    return min(state.open.values(), key=lambda rec: _URGENCY.get(rec.indicator, 0))  # min keeps the first of equals


def feedback(state: PatientState, event: FeedbackEvent) -> Recommendation | None:
    """The closure a clinician's answer makes, or None when it answers nothing open (counted by the
    caller, nothing changes): unknown or closed, of another plan than the feedback names, or raised
    after the feedback's time."""
    rec = state.open.get(event.recommendation_id)
    if rec is None or rec.plan_id != event.plan_id or _time(rec.occurred_at) > event.occurred_at:
        return None  # another plan's, or an answer before the question: it answers nothing
    closure = close(state, [rec], rfc3339(event.occurred_at), event.event_id, event.outcome)[0]
    if event.override_reason is None:
        return closure
    return closure.model_copy(update={"override_reason": event.override_reason.model_dump(exclude_none=True)})


def retracted(state: PatientState, event: RetractionEvent, trigger: str,
              goals: frozenset[str] | None = None) -> list[Recommendation]:
    """Close every open recommendation the retracted evaluation (`trigger`) triggered (contracts.md
    §1); with `goals` (one record of a grouped evaluation), those about its goals or the whole plan."""
    return close(state, (rec for rec in state.open.values() if trigger in rec.triggered_by
                         and (goals is None or rec.goal_id is None or rec.goal_id in goals)),
                 rfc3339(event.occurred_at), event.event_id, "retracted")


def close(state: PatientState, recs: Iterable[Recommendation], at: str, by: str, reason: str) -> list[Recommendation]:
    out = []
    for rec in list(recs):
        del state.open[rec.recommendation_id]
        out.append(rec.model_copy(update={"status": "closed", "closed_at": at, "closed_by": by,
                                          "closed_reason": reason, "emitted_at": None}))
    return out


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))


def drop_plan(state: PatientState, plan_id: str) -> None:
    """A plan forgotten (retention, the state bound): its open recommendations go with it."""
    for rec_id in [r for r, rec in state.open.items() if rec.plan_id == plan_id]:
        del state.open[rec_id]
