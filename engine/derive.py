"""Apply one event to a patient's state and derive the facts of contracts.md §3.

All time arithmetic uses event time, in whole calendar days between the
events' own local dates (the clinic's day, from the timestamp's offset).
Facts are computed after the event is applied; each measure's `previous`,
`change` and `stable_count` are taken against the score before it in event
time. A late event (older than the plan's latest) takes its place in the
history: the scores after it are re-judged against it, and "latest" and
"days since" stay where the newest event put them.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

import orjson

from otrules.engine.facts import FACTS
from otrules.engine.gas import gas_t_score
from otrules.engine.state import (
    MAX_POINTS,
    MAX_SCORED,
    MAX_SCORED_BYTES,
    MAX_VISITS,
    GoalState,
    PatientState,
    PlanState,
    Point,
    Series,
    scored_key,
    series_digest,
    series_key,
)
from otrules.schemas import (
    Catalogue,
    DischargeEvent,
    EvaluationEvent,
    Event,
    Measure,
    PlanEvent,
    RetractionEvent,
    VisitEvent,
)

Facts = dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventFacts:
    """Facts for the once-per-event rules, and one set per measure."""

    base: Facts
    per_measure: tuple[tuple[Measure, Facts], ...]
    late: bool = False  # older than the plan's latest event: placed in history, recommends nothing


def apply_event(state: PatientState, event: Event, catalogue: Catalogue,
                wanted: frozenset[str] | None = None) -> EventFacts:
    """Apply `event` to `state` and present its facts. With `wanted` (the facts the loaded rules
    name, in conditions and texts), facts that cost work and no rule reads are left null."""
    plan = state.plan(event.plan_id)
    at = event.occurred_at.timestamp()
    late = plan.latest_at is not None and at < plan.latest_at
    met_before = {gid: g.met_ever for gid, g in plan.goals.items()}
    measure_facts: list[tuple[Measure, Facts]] = []
    if isinstance(event, PlanEvent):
        _apply_plan(plan, event, at)
    elif isinstance(event, VisitEvent):
        _apply_visit(plan, event, at)
    elif isinstance(event, EvaluationEvent):
        for measure in event.measures:
            measure_facts.append((measure, _apply_measure(plan, event, measure, catalogue, at)))
        # where its scores went, so a retraction can take them back
        _remember_scores(plan, event, at, state.groups.pop(event.event_id, None))
        if plan.last_evaluation is None or event.local_date > plan.last_evaluation:
            plan.last_evaluation = event.local_date
        if event.starts_reporting_period and (plan.reported_at is None or at > plan.reported_at):
            plan.reported_at = at
            plan.treated = {day: t for day, t in plan.treated.items() if t >= at}
    elif isinstance(event, DischargeEvent):
        _apply_discharge(plan, event, at)
    if not late:
        plan.latest_at, plan.latest_day = at, event.local_date
    today = plan.latest_day or event.local_date  # a late event's facts are the plan's as of its newest event
    met_now = _goals_met(plan, catalogue)
    base = _plan_facts(state, plan, today, _event_fields(event, wanted), met_now, wanted)
    per_measure = tuple(
        (m, {**base, **mf, **_goal_facts(plan, plan.goals.get(m.goal_id) if m.goal_id else None, today,
                                         met_now, met_before)})
        for m, mf in measure_facts
    )
    return EventFacts(base, per_measure, late)


@dataclass(frozen=True, slots=True)
class ClockFacts:
    """What one open plan presents to the rules when time advances without events."""

    plan: PlanState
    base: Facts
    per_goal: tuple[tuple[str, Facts], ...]


def clock_facts(state: PatientState, at: dt.datetime, catalogue: Catalogue) -> list[ClockFacts]:
    """Facts of every open (not discharged) plan at time `at`, in plan-id order."""
    today = at.date()
    fields = {"event.type": "clock", "event.kind": None, "event.status": None, "event.reason": None,
              "event.occurred_at": rfc3339(at)}
    out = []
    for plan_id in sorted(state.plans):
        plan = state.plans[plan_id]
        if plan.discharged:
            continue
        met_now = _goals_met(plan, catalogue)
        base = _plan_facts(state, plan, today, fields, met_now, None)
        met = {gid: g.met_ever for gid, g in plan.goals.items()}
        per_goal = tuple((gid, {**base, **_NO_MEASURE, **_goal_facts(plan, g, today, met_now, met)})
                         for gid, g in plan.goals.items())
        out.append(ClockFacts(plan, base, per_goal))
    return out


def _event_fields(event: Event, wanted: frozenset[str] | None = None) -> Facts:
    # isinstance, not getattr(event, name, None): a missing attribute on a pydantic
    # model raises inside __getattr__, which cost more than the rest of this function
    return {
        "event.type": event.type,
        "event.kind": event.kind if isinstance(event, EvaluationEvent) else None,
        "event.status": event.status if isinstance(event, VisitEvent) else None,
        "event.reason": event.reason if isinstance(event, DischargeEvent) else None,
        "event.occurred_at": rfc3339(event.occurred_at) if wanted is None or "event.occurred_at" in wanted else None,
    }


# ---------------------------------------------------------------- state changes


def _apply_plan(plan: PlanState, event: PlanEvent, at: float) -> None:
    """A plan event is a full snapshot; goal history is kept by goal_id. An older snapshot than
    the one in force changes nothing; a newer one than the discharge in force re-opens the plan."""
    if plan.opened_at is not None and at < plan.opened_at:
        return
    plan.opened_at = at
    if plan.discharged and (plan.closed_at is None or at >= plan.closed_at):
        plan.discharged, plan.closed_on, plan.closed_at = False, None, None
    plan.setting = event.setting
    plan.frequency_per_week = event.frequency_per_week
    plan.certified_from = event.certified_from
    plan.certified_until = event.certified_until
    old = plan.goals
    plan.goals = {}
    for goal in event.goals:
        previous = old.get(goal.goal_id)
        if previous is None:
            plan.goals[goal.goal_id] = GoalState.of(goal)
        else:
            previous.update(goal)
            plan.goals[goal.goal_id] = previous


def _apply_discharge(plan: PlanState, event: DischargeEvent, at: float) -> None:
    """A discharge older than the snapshot in force (a re-opened plan) changes nothing."""
    if plan.opened_at is not None and at < plan.opened_at:
        return
    if not plan.discharged or plan.closed_at is None or at >= plan.closed_at:
        plan.discharged, plan.closed_at, plan.closed_on = True, at, event.local_date


def _apply_visit(plan: PlanState, event: VisitEvent, at: float) -> None:
    if event.status == "cancelled":
        return  # a cancelled visit neither counts as missed nor breaks a run of misses
    if event.status == "attended":
        plan.visits_attended += 1
        if plan.reported_at is None or at >= plan.reported_at:  # one treatment day per calendar date
            day = event.local_date
            plan.treated[day] = max(at, plan.treated.get(day, at))
        if plan.attended_at is None or at >= plan.attended_at:
            plan.attended_at = at
            kept = [t for t in plan.missed_since if t > at]
            if not kept or len(kept) < len(plan.missed_since):
                plan.missed_carry = 0  # the misses let go (or carried from format 2) were older still
            plan.missed_since = kept
    elif plan.attended_at is None or at > plan.attended_at:  # a miss older than the last attended visit ends no run
        bisect.insort_right(plan.missed_since, at)
        if len(plan.missed_since) > MAX_VISITS:
            del plan.missed_since[0]
            plan.missed_carry += 1


def _point_time(point: Point) -> float:
    return point.at


def _apply_measure(plan: PlanState, event: EvaluationEvent, measure: Measure, catalogue: Catalogue,
                   at: float) -> Facts:
    score = measure.score
    key = series_key(measure.instrument, measure.goal_id)
    series = plan.series.get(key)
    instrument = catalogue.get(measure.instrument)
    goal = plan.goals.get(measure.goal_id) if measure.goal_id else None
    own_goal = goal is not None and goal.instrument == measure.instrument
    sign = instrument.sign if instrument else None
    mcid = instrument.mcid if instrument else None

    # its place in event time: after every score at or before `at` (equal times: arrival order)
    index = 0 if series is None else bisect.bisect_right(series.points, at, key=_point_time)
    before = series.points[index - 1] if series is not None and index else None
    if before is not None and not before.known:
        assert series is not None
        _work_out_runs(series, index - 1, sign, mcid)
        before = series.points[index - 1]
    previous = before.score if before else None
    if own_goal and goal is not None and goal.baseline is not None:
        baseline = goal.baseline
    else:
        baseline = series.first if series is not None and at >= series.first_at else score
    change = _diff(score, previous)
    change_from_baseline = _round(score - baseline)  # a baseline is always there: the first score at the latest
    improvement = None if sign is None or change is None else _round(sign * change)
    point = _point(before, at, event.local_date, score, sign, mcid)

    facts: Facts = {
        "measure.instrument": measure.instrument,
        "measure.score": score,
        "measure.previous": previous,
        "measure.baseline": baseline,
        "measure.change": change,
        "measure.change_from_baseline": change_from_baseline,
        "measure.improvement": improvement,
        "measure.improvement_from_baseline": None if sign is None else _round(sign * change_from_baseline),
        "measure.mcid": mcid,
        "measure.improved": None if improvement is None or mcid is None else improvement >= mcid,
        "measure.declined": None if improvement is None or mcid is None else improvement <= -mcid,
        "measure.stable_count": point.stable_count,
        "measure.plateau_count": point.plateau_count,
        "measure.count": (series.dropped if series is not None else 0) + index + 1,
        "measure.days_since_previous": (event.local_date - before.day).days if before else None,
    }

    if not (math.isfinite(score) and (previous is None or math.isfinite(previous - score))
            and math.isfinite(baseline - score)):  # scores near ±1e308 (an unknown instrument): no inf facts
        facts = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in facts.items()}

    if series is None:
        series = plan.series[key] = Series([point], at, score)
    else:
        series.points.insert(index, point)
        for i in range(index + 1, len(series.points)):  # the scores after a late one are judged against it
            later = series.points[i]
            series.points[i] = _point(series.points[i - 1], later.at, later.day, later.score, sign, mcid)
        if at < series.first_at:
            series.first_at, series.first = at, score
        if len(series.points) > MAX_POINTS:
            _work_out_runs(series, 1, sign, mcid)  # the new first point's runs are stored
            del series.points[0]
            series.dropped += 1
    if goal is not None:
        if own_goal:
            goal.latest = series.last
            if _goal_met(goal, catalogue, score):  # met at its time, even if it arrived late
                goal.met_ever = True
        if measure.instrument == "GAS":
            goal.gas_level = series.last
    return facts


def _remember_scores(plan: PlanState, event: EvaluationEvent, at: float, ids: list[str] | None) -> None:
    """PlanState.scored: the evaluation's scores by its event id; or, for an evaluation made of
    several source records (a FHIR Bundle's Observations, `ids` one per measure), each record's
    score by its own id, with the evaluation's id to close what it triggered."""
    places = [[series_digest(series_key(m.instrument, m.goal_id)), m.score] for m in event.measures]
    if ids is not None and len(ids) == len(places):
        for one, place in zip(ids, places, strict=True):
            _put_scored(plan, scored_key(one), [_compact_at(at), [place], event.event_id])
    else:
        _put_scored(plan, scored_key(event.event_id), [_compact_at(at), places])
    while len(plan.scored) > MAX_SCORED:
        _pop_scored(plan, _oldest(plan))
    # the bytes bound (the index's JSON is one more byte than its entries' shares): the oldest go
    while _scored_bytes(plan) >= MAX_SCORED_BYTES and len(plan.scored) > 1:
        _pop_scored(plan, _oldest(plan))


def _oldest(plan: PlanState) -> str:
    """The entry to let go first: the earliest in event time (then by key). Not the first in the
    dict: the stored state sorts its keys, so that order does not survive a round trip, and what
    a plan remembers must not depend on whether its state was decoded in between."""
    scored = plan.scored
    return min(scored, key=lambda key: (float(scored[key][0]), key))


def _entry_bytes(key: str, entry: list[Any]) -> int:
    """An entry's share of PlanState.scored's JSON: `"key":value` and a comma."""
    return len(orjson.dumps({key: entry})) - 1


def _scored_bytes(plan: PlanState) -> int:
    """The sum of PlanState.scored's entries' shares (its JSON less one byte), whichever way it was
    reached: worked out from the index once after a decode, then kept as entries come and go."""
    if plan.scored_bytes is None:
        plan.scored_bytes = len(orjson.dumps(plan.scored)) - 1 if plan.scored else 0
    return plan.scored_bytes


def _put_scored(plan: PlanState, key: str, entry: list[Any]) -> None:
    if key in plan.scored:
        _pop_scored(plan, key)
    if plan.scored_bytes is not None:
        plan.scored_bytes += _entry_bytes(key, entry)
    plan.scored[key] = entry


def _pop_scored(plan: PlanState, key: str) -> list[Any] | None:
    entry = plan.scored.pop(key, None)
    if entry is not None and plan.scored_bytes is not None:
        plan.scored_bytes -= _entry_bytes(key, entry)
    return entry


def group_scores(state: PatientState, event: EvaluationEvent, ids: list[str]) -> None:
    """An evaluation made of several source records (`ids`, one per measure, the first its own
    event id): each can be retracted on its own. Called after the event went to the engine: if it
    was applied, its entry is split now; if a reorder window holds it, when it is applied."""
    plan = state.plans.get(event.plan_id)
    entry = plan.scored.get(scored_key(event.event_id)) if plan is not None else None
    if plan is None or entry is None or len(entry) != 2:
        if any(held is event or held.event_id == event.event_id for held in state.held):
            state.groups[event.event_id] = list(ids)
        return
    _pop_scored(plan, scored_key(event.event_id))
    _remember_scores(plan, event, float(entry[0]), list(ids))


def retract(state: PatientState, event: RetractionEvent,
            catalogue: Catalogue) -> tuple[str, frozenset[str] | None] | None:
    """Take an evaluation's scores out of its plan's history (contracts.md §1); the scores after them
    are judged again without them, as for a late score. Returns what to close: the recommendations
    triggered by that event id (with a goal filter when one record of a grouped evaluation was
    retracted: those of its goals and those of the whole plan); None (nothing changed) when the
    plan does not know the evaluation: unknown, already retracted, not an evaluation, or older than
    the MAX_SCORED evaluations a plan remembers. Moves no clock: "latest" and "days since" stay."""
    plan = state.plans.get(event.plan_id)
    entry = _pop_scored(plan, scored_key(event.retracts)) if plan is not None else None
    if plan is None or entry is None:
        return None
    keys = _series_keys(plan, [sk for sk, _ in entry[1]])
    closes: tuple[str, frozenset[str] | None] = (event.retracts, None)
    if len(entry) > 2:  # one record of a grouped evaluation
        goals = frozenset(key.partition("\x1f")[2] for key in keys if key is not None) - {""}
        closes = (str(entry[2]), goals)
    at = float(entry[0])
    for key, (_, score) in zip(keys, entry[1], strict=True):
        series = plan.series.get(key) if key is not None else None
        if key is None or series is None:
            continue
        points = series.points
        index = bisect.bisect_left(points, at, key=_point_time)
        while index < len(points) and points[index].at == at and points[index].score != score:
            index += 1
        if index >= len(points) or points[index].at != at:
            continue  # let go already (past MAX_POINTS)
        instrument_id, _, goal_id = key.partition("\x1f")
        instrument = catalogue.get(instrument_id)
        sign = instrument.sign if instrument else None
        mcid = instrument.mcid if instrument else None
        _work_out_runs(series, index - 1, sign, mcid)
        del points[index]
        goal = plan.goals.get(goal_id) if goal_id else None
        if not points:
            del plan.series[key]
        else:
            for i in range(index, len(points)):  # the scores after it are judged without it
                later = points[i]
                before = points[i - 1] if i else None
                if before is None and series.dropped and later.known:
                    continue  # the first kept point's runs began in scores let go
                points[i] = _point(before, later.at, later.day, later.score, sign, mcid)
            if series.dropped == 0 and series.first_at == at:
                series.first_at, series.first = points[0].at, points[0].score
        if goal is not None:
            kept = plan.series.get(key)
            if goal.instrument == instrument_id:
                goal.latest = kept.last if kept is not None else None
                if kept is None or series.dropped == 0:  # met by a score still kept (or let go before)
                    goal.met_ever = kept is not None and any(_goal_met(goal, catalogue, p.score) for p in kept.points)
            if instrument_id == "GAS":
                goal.gas_level = kept.last if kept is not None else None
    return closes


def _series_keys(plan: PlanState, stored: list[str]) -> list[str | None]:
    """The plan's series keys for PlanState.scored's digests (None: that series is gone); a key
    stored whole (a format-4 state written before digests) stands for itself."""
    digests: dict[str, str] | None = None
    out: list[str | None] = []
    for one in stored:
        if one in plan.series:
            out.append(one)
            continue
        if digests is None:
            digests = {series_digest(key): key for key in plan.series}
        out.append(digests.get(one))
    return out


def _compact_at(at: float) -> int | float:
    return int(at) if at.is_integer() else at


def _work_out_runs(series: Series, upto: int, sign: int | None, mcid: float | None) -> None:
    """Work out the runs of points[1..upto] again (the first point's are always kept)."""
    points = series.points
    for i in range(1, upto + 1):
        p = points[i]
        if not p.known:
            points[i] = _point(points[i - 1], p.at, p.day, p.score, sign, mcid)


def _point(before: Point | None, at: float, day: dt.date, score: float, sign: int | None,
           mcid: float | None) -> Point:
    """A score with the runs it ends, judged against the score before it in event time."""
    improvement = None if sign is None or before is None else _round(sign * _round(score - before.score))
    if mcid is None:
        stable_count = None
    elif improvement is None:
        stable_count = 0
    elif abs(improvement) < mcid:
        stable_count = (before.stable_count or 0) + 1 if before else 1
    else:
        stable_count = 0
    anchor, plateau_count = _plateau(before, score, mcid)
    return Point(at, day, score, stable_count, anchor, plateau_count)


def _plateau(before: Point | None, score: float, mcid: float | None) -> tuple[float | None, int | None]:
    """A run of scores that stay within one MCID of the score that began it.

    Unlike stable_count, slow steady progress (+1, +1, +1 on a 2-point MCID)
    breaks the run once it adds up to a meaningful change.
    """
    if mcid is None:
        return None, None
    if before is None or before.anchor is None:
        return score, 0
    if abs(score - before.anchor) < mcid:
        return before.anchor, (before.plateau_count or 0) + 1
    return score, 0


# ---------------------------------------------------------------- facts


def _goals_met(plan: PlanState, catalogue: Catalogue) -> dict[str, bool]:
    """Whether each goal's latest score meets its target, worked out once per event."""
    return {gid: g.latest is not None and _goal_met(g, catalogue) for gid, g in plan.goals.items()}


def _plan_facts(state: PatientState, plan: PlanState, today: dt.date, event_fields: Facts,
                met_now: dict[str, bool], wanted: frozenset[str] | None) -> Facts:
    goals = list(plan.goals.values())
    met = sum(met_now.values())
    levels = [g.gas_level for g in goals]
    gas_t = None
    if goals and (wanted is None or "plan.gas_t" in wanted) and all(level is not None for level in levels):
        t = gas_t_score(levels, [g.gas_weight for g in goals])  # type: ignore[arg-type]
        gas_t = None if t is None or not math.isfinite(t) else round(t, 2)
    return {
        **event_fields,
        "patient.id": state.patient_id,
        "plan.id": plan.plan_id,
        "plan.setting": plan.setting,
        "plan.frequency_per_week": plan.frequency_per_week,
        "plan.goals_total": len(goals),
        "plan.goals_met": met,
        "plan.all_goals_met": bool(goals) and met == len(goals),
        "plan.gas_t": gas_t,
        "plan.visits_attended": plan.visits_attended,
        "plan.visits_missed_in_a_row": plan.visits_missed_in_a_row,
        "plan.treatment_days_since_report": len(plan.treatment_dates),
        "plan.days_since_evaluation": (today - plan.last_evaluation).days if plan.last_evaluation else None,
        "plan.days_until_cert_end": (plan.certified_until - today).days if plan.certified_until else None,
        "plan.discharged": plan.discharged,
    }


_NO_GOAL: Facts = {name: None for name in FACTS if name.startswith("goal.")}


_NO_MEASURE: Facts = {name: None for name in FACTS if name.startswith("measure.")}


def _goal_facts(
    plan: PlanState, state: GoalState | None, today: dt.date, met_now: dict[str, bool], met_before: dict[str, bool]
) -> Facts:
    if state is None:
        return _NO_GOAL
    goal = state
    return {
        "goal.id": goal.goal_id,
        "goal.instrument": goal.instrument,
        "goal.target": goal.target,
        "goal.met": None if state.latest is None else met_now[goal.goal_id],
        "goal.met_before": met_before.get(goal.goal_id, False),
        "goal.progress": _progress(plan, state),
        "goal.days_to_target": (goal.target_date - today).days if goal.target_date else None,
        "goal.gas_level": state.gas_level,
    }


def goal_direction(goal_state: GoalState, catalogue: Catalogue) -> int:
    """+1 if higher scores are better for this goal, -1 if lower are."""
    goal = goal_state
    instrument = catalogue.get(goal.instrument)
    if instrument is not None:
        return instrument.sign
    if goal.baseline is not None and goal.baseline != goal.target:
        return 1 if goal.target > goal.baseline else -1
    return 1


def _goal_met(goal_state: GoalState, catalogue: Catalogue, score: float | None = None) -> bool:
    """Whether the goal's latest score (or `score`) reaches its target in the good direction."""
    value = goal_state.latest if score is None else score
    if value is None:
        return False
    return goal_direction(goal_state, catalogue) * (value - goal_state.target) >= 0


def _progress(plan: PlanState, goal_state: GoalState) -> float | None:
    goal = goal_state
    if goal_state.latest is None:
        return None
    baseline = goal.baseline
    if baseline is None:
        series = plan.series.get(series_key(goal.instrument, goal.goal_id))
        baseline = series.first if series else None
    if baseline is None or goal.target == baseline:
        return None
    return round((goal_state.latest - baseline) / (goal.target - baseline), 4)


def _diff(a: float, b: float | None) -> float | None:
    return None if b is None else _round(a - b)


def _round(x: float) -> float:
    """Derived numbers are rounded so that 7 - 5.1 reads 1.9, not 1.9000000000000004."""
    return round(x, 6)


def rfc3339(ts: dt.datetime) -> str:
    text = ts.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
