"""The engine: a function of (patient state, event) to recommendations.

No Kafka, no files, no clock: the caller owns state storage, reading and
writing, and stamps `emitted_at`. Duplicate event ids are skipped; throttles
are kept in the patient's state and measured in event time.

Event time: an event older than its plan's latest (late) takes its place in the
history and recommends nothing. With a reorder window W, events wait in the
patient's state until an event of their plan W newer (or a sweep W later, or the
end of the input) releases them in event-time order, so events out of order by
less than W give exactly what the time-ordered stream gives.

Clocks are local: a plan's clock and its watermark move only with that plan's
own plan, evaluation, visit and discharge events. Feedback and retractions
wait their turn in the window but move no clock.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from otrules.engine import open_recs
from otrules.engine.compiler import Compiled, compile_condition
from otrules.engine.derive import EventFacts, apply_event, clock_facts, retract, rfc3339
from otrules.engine.limits import MAX_MESSAGE_KEYS, MAX_PENDING_ALPHAS, Level, combined, merge, pending_level
from otrules.engine.loader import CompiledRuleset, Problem, Rule, RulesetError, instrument_problems
from otrules.engine.matcher import Matcher
from otrules.engine.recommend import build
from otrules.engine.state import (
    CLOCK_TYPES,
    MAX_HELD,
    MAX_HELD_BYTES,
    MAX_PLANS,
    SEEN_BYTES,
    PatientState,
    ThrottleKey,
    held_size,
)
from otrules.schemas import (
    Catalogue,
    Event,
    EventRejected,
    FeedbackEvent,
    Measure,
    PlanEvent,
    Recommendation,
    RetractionEvent,
)
from otrules.schemas._errors import show_value


@dataclass(frozen=True, slots=True)
class Released:
    """An event the reorder window held, applied now; or, with `failure` (field, reason, kind),
    one the engine could not apply (its plan never opened, or the engine failed on it)."""

    event: Event
    recommendations: tuple[Recommendation, ...] = ()  # new ones (open), then the closures (closed)
    failure: tuple[str, str, str] | None = None
    late: bool = False
    dropped: int = 0
    feedback: str | None = None  # a feedback event: accepted | overridden (it closed one), or ignored
    retraction: str | None = None  # a retraction: applied, or ignored (unknown or already retracted target)


@dataclass(frozen=True, slots=True)
class Outcome:
    duplicate: bool
    # the event's own (none while it is held): new ones (status open), then what it closed (status closed)
    recommendations: tuple[Recommendation, ...] = ()
    dropped: int = 0  # remembered ids and plans let go by the state bound (engine/state.py)
    late: bool = False  # older than its plan's latest event: placed in history, recommended nothing
    held: bool = False  # waiting in the reorder window
    released: tuple[Released, ...] = ()  # held events this one's time released
    feedback: str | None = None  # a feedback event: accepted | overridden (it closed one), or ignored
    retraction: str | None = None  # a retraction: applied, or ignored (unknown or already retracted target)


class _RuleGroup:
    """Rules checked the same way (once per event, or once per measure), split into as many
    durable_rules rulesets (shards) as durable_rules' limits need (engine/limits.py)."""

    def __init__(self, ruleset: CompiledRuleset, rules: list[Rule], label: str) -> None:
        self.ruleset = ruleset
        self.rules = rules
        compiled: list[Compiled] = [compile_condition(r.condition, f"{label}{i}") for i, r in enumerate(rules)]
        self.shards: list[tuple[Matcher, list[Rule]]] = []
        for start, end in shard_bounds([(r.facts, c) for r, c in zip(rules, compiled, strict=True)]):
            names = sorted({n for r in rules[start:end] for n in r.facts})
            matcher = Matcher(compiled[start:end], names, label=f"{ruleset.name}-{label}{len(self.shards)}")
            self.shards.append((matcher, rules[start:end]))

    def matches(self, facts: dict[str, Any]) -> list[Rule]:
        if len(self.shards) == 1:
            matcher, rules = self.shards[0]
            return [rules[i] for i in matcher.match(facts)]
        return [rules[i] for matcher, rules in self.shards for i in matcher.match(facts)]


def shard_bounds(rules: Sequence[tuple[Sequence[str], Compiled]]) -> list[tuple[int, int]]:
    """(start, end) of consecutive rules that one durable_rules ruleset can hold: at most
    MAX_PENDING_ALPHAS pending nodes under its root, and a message of at most MAX_MESSAGE_KEYS
    keys (event.type, id and sid, the facts the rules name, the values otrules derives)."""
    bounds: list[tuple[int, int]] = []
    start, names, derived = 0, {"event.type"}, 0
    levels: list[Level] = []
    for i, (facts, compiled) in enumerate(rules):
        level = pending_level(compiled.condition)
        grown = names | set(facts)
        keys = 2 + len(grown) + derived + len(compiled.derived)
        if i > start and (combined(merge([*levels, level])) > MAX_PENDING_ALPHAS or keys > MAX_MESSAGE_KEYS):
            bounds.append((start, i))
            start, grown, derived, levels = i, {"event.type", *facts}, 0, []
        names = grown
        derived += len(compiled.derived)
        levels.append(level)
    if rules:
        bounds.append((start, len(rules)))
    return bounds


class _LoadedRuleset:
    def __init__(self, ruleset: CompiledRuleset) -> None:
        self.ruleset = ruleset
        enabled = [r for r in ruleset.rules if r.enabled]
        self.per_event = _RuleGroup(ruleset, [r for r in enabled if not r.per_measure], "e")
        self.per_measure = _RuleGroup(ruleset, [r for r in enabled if r.per_measure], "m")
        self.position = {r.id: i for i, r in enumerate(ruleset.rules)}


class Engine:
    """Rulesets compiled into durable_rules, plus the instrument catalogue."""

    def __init__(self, rulesets: Sequence[CompiledRuleset], catalogue: Catalogue,
                 reorder_window: dt.timedelta = dt.timedelta(0)) -> None:
        if reorder_window < dt.timedelta(0):
            raise ValueError(f"reorder window: must not be negative, got {reorder_window}")
        self.reorder_window = reorder_window
        self._window_s = reorder_window.total_seconds()
        problems = [p for rs in rulesets for p in instrument_problems(rs, catalogue)]
        if problems:
            raise RulesetError(problems)
        self.catalogue = effective_catalogue(rulesets, catalogue)
        self.rulesets = tuple(rulesets)
        self._loaded = [_LoadedRuleset(rs) for rs in rulesets]
        # the facts a rule reads (condition, summary, evidence): only these need computing per event
        self._wanted = frozenset(n for rs in rulesets for r in rs.rules for n in r.evidence_facts)

    def process(self, state: PatientState, event: Event) -> Outcome:
        """Apply `event` to `state` (in place) and return what the rules recommend.

        An event for a plan that no plan event opened is rejected (`EventRejected`, with nothing
        applied). After a discharge, events still enter the plan's history but recommend
        nothing, until a plan snapshot re-opens the plan (contracts.md §1). A late event enters
        the history in its place and recommends nothing."""
        if isinstance(event, (FeedbackEvent, RetractionEvent)):
            if not state.remember(event.event_id):
                return _DUPLICATE
            if not self._window_s:
                answer = self._answer(state, event)
                return Outcome(duplicate=False, recommendations=answer.recommendations, feedback=answer.feedback,
                               retraction=answer.retraction, dropped=self._trim(state))
            # with a window, feedback and retractions wait their turn in event time too: what they
            # answer may still be held, and a replay must close what the live run closed
            return self._hold(state, event)
        # with a reorder window the plan event may come later, within the window: checked at release
        if not self._window_s and event.plan_id not in state.plans and not isinstance(event, PlanEvent) and not any(
                isinstance(held, PlanEvent) and held.plan_id == event.plan_id for held in state.held):
            if state.has_seen(event.event_id):
                return _DUPLICATE
            raise EventRejected(f"plan_id: no plan event has opened {show_value(event.plan_id)}", "plan_id")
        at = event.occurred_at.timestamp()
        _check_plausible(state, event, at)
        if not state.remember(event.event_id):
            return _DUPLICATE
        if not self._window_s:
            # events a window held before it was turned off go first, in event time
            released = self.flush(state) if state.held else ()
            outcome = self._apply(state, event)
            return replace(outcome, released=released) if released else outcome
        return self._hold(state, event)

    def _answer(self, state: PatientState, event: FeedbackEvent | RetractionEvent) -> Released:
        """A clinician's feedback or a retraction applied: what it closed, and how it is counted."""
        if isinstance(event, FeedbackEvent):
            closure = open_recs.feedback(state, event)
            return Released(event, (closure,) if closure else (), feedback=event.outcome if closure else "ignored")
        closes = retract(state, event, self.catalogue)
        if closes is None:
            return Released(event, retraction="ignored")
        closures = open_recs.retracted(state, event, *closes)
        return Released(event, tuple(closures), retraction="applied")

    def _hold(self, state: PatientState, event: Event) -> Outcome:
        bisect.insort_right(state.held, event, key=_event_time)  # equal times: arrival order
        state.held_bytes += held_size(event)
        released = self.release(state, -math.inf)  # what the plans' own watermarks now release
        return Outcome(duplicate=False, held=any(e is event for e in state.held), released=released,
                       dropped=self._trim(state))

    def release(self, state: PatientState, upto: float) -> tuple[Released, ...]:
        """Apply, in event time, the held events that occurred at or before `upto` (seconds since
        the epoch; `math.inf` at the end of an input, `-math.inf` for none) or at least the window
        before their plan's watermark (PatientState.watermark), and the oldest past MAX_HELD events or
        MAX_HELD_BYTES (the state is one changelog record): feedback and retractions first, then
        clinical events."""
        out: list[Released] = []
        if not state.held:
            return ()
        marks: dict[str, float | None] = {}  # releasing an event never raises its plan's watermark
        due = [e for e in state.held if self._due(state, e, upto, marks)]
        if due:
            gone = {id(e) for e in due}
            state.held = [e for e in state.held if id(e) not in gone]
            if state.held and any(isinstance(e, RetractionEvent) for e in due):
                # a retraction waits for the evaluation it names while the window still holds it,
                # whatever their times (one dated before what it takes back would find nothing)
                waiting = {e.event_id for e in state.held}
                back = [e for e in due if isinstance(e, RetractionEvent) and e.retracts in waiting]
                for waits in back:
                    bisect.insort_right(state.held, waits, key=_event_time)
                due = [e for e in due if not any(e is b for b in back)]
        sizes = {id(e): held_size(e) for e in due}
        kept_bytes = state.held_bytes - sum(sizes.values())
        while len(state.held) > MAX_HELD or kept_bytes > MAX_HELD_BYTES:
            # the bound: the oldest feedback or retraction goes early first, so a flood of them
            # cannot push a clinical event out of its window; then the oldest clinical event
            early = state.held.pop(_first_answer(state.held))
            sizes[id(early)] = size = held_size(early)
            kept_bytes -= size
            due.append(early)
        if len(due) > 1:
            due.sort(key=_event_time)  # stable: equal times keep arrival order
            if any(isinstance(e, RetractionEvent) for e in due):
                due = _retractions_after_their_targets(due)
        state.held_bytes = kept_bytes
        for event in due:
            if isinstance(event, (FeedbackEvent, RetractionEvent)):
                out.append(self._answer(state, event))
                continue
            if event.plan_id not in state.plans and not isinstance(event, PlanEvent):
                state.forget(event.event_id)  # so it can be sent again once its plan is open
                state.groups.pop(event.event_id, None)
                reason = f"plan_id: no plan event has opened {show_value(event.plan_id)} by this event's time"
                out.append(Released(event, failure=("plan_id", reason, "invalid")))
                continue
            try:
                outcome = self._apply(state, event)
            except Exception as exc:  # the core dead-letters it; the rest of the window goes on
                reason = f"internal error: the rules engine failed on this event ({type(exc).__name__})"
                out.append(Released(event, failure=("(event)", reason, "engine")))
            else:
                out.append(Released(event, outcome.recommendations, late=outcome.late, dropped=outcome.dropped))
        return tuple(out)

    def _due(self, state: PatientState, event: Event, upto: float, marks: dict[str, float | None]) -> bool:
        at = _event_time(event)
        if at <= upto:
            return True
        plan_id = event.plan_id
        if plan_id not in marks:
            marks[plan_id] = state.watermark(plan_id)
        mark = marks[plan_id]
        return mark is not None and at <= mark - self._window_s

    def flush(self, state: PatientState) -> tuple[Released, ...]:
        """The end of an input: every held event, in event time."""
        return self.release(state, math.inf)

    def _apply(self, state: PatientState, event: Event) -> Outcome:
        plan = state.plans.get(event.plan_id)
        opens = isinstance(event, PlanEvent)
        certified = plan.certified_until if plan is not None else None
        facts = apply_event(state, event, self.catalogue, self._wanted)
        closed = open_recs.answered(state, event, certified) if state.open else []
        if facts.late or (plan is not None and plan.discharged and not opens and event.type != "discharge"):
            dropped = self._trim(state)  # placed in history, recommends nothing
            if dropped or facts.late or closed:
                return Outcome(duplicate=False, recommendations=tuple(closed), dropped=dropped, late=facts.late)
            return _NOTHING
        out: list[Recommendation] = []
        for loaded in self._loaded:
            hits = [(rule, facts.base) for rule in loaded.per_event.matches(facts.base)]
            if loaded.per_measure.rules:
                hits += [(rule, fs) for _, fs in facts.per_measure for rule in loaded.per_measure.matches(fs)]
            if hits:
                self._emit(state, loaded, hits, event, out)
        if out:
            closed += open_recs.opened(state, out)
        dropped = self._trim(state)
        if out or dropped or closed:
            return Outcome(duplicate=False, recommendations=(*out, *closed), dropped=dropped)
        return _NOTHING

    @staticmethod
    def _trim(state: PatientState) -> int:
        return state.trim() if len(state.seen_events) > SEEN_BYTES or len(state.plans) > MAX_PLANS else 0

    def sweep(self, state: PatientState, at: dt.datetime) -> tuple[Recommendation, ...]:
        """Check every open plan at time `at`, as if a clock event had arrived.

        Once-per-event rules see the plan's facts at `at`; rules that name goal
        facts but no measure facts are checked once per goal. Rules about a
        measure need a score, so they wait for the next evaluation.
        """
        out: list[Recommendation] = []
        for plan_facts in clock_facts(state, at, self.catalogue):
            tick = ClockTick(state.patient_id, plan_facts.plan.plan_id, at)
            for loaded in self._loaded:
                hits = [(rule, plan_facts.base) for rule in loaded.per_event.matches(plan_facts.base)]
                hits += [(rule, fs) for _, fs in plan_facts.per_goal
                         for rule in loaded.per_measure.matches(fs) if rule.per_goal]
                self._emit(state, loaded, hits, tick, out)
        return (*out, *open_recs.opened(state, out)) if out else ()

    @staticmethod
    def expire(state: PatientState, at: dt.datetime, retention: dt.timedelta) -> bool:
        """Forget plans closed longer than `retention` ago (event time); True when nothing is left
        (no plan and no event held in a reorder window)."""
        for plan_id in [p for p, plan in state.plans.items()
                        if plan.closed_on is not None and plan.closed_on + retention <= at.date()]:
            state.forget_plan(plan_id)
        return not state.plans and not state.held

    def _emit(self, state: PatientState, loaded: _LoadedRuleset, hits: list[tuple[Rule, dict[str, Any]]],
              trigger: Any, out: list[Recommendation]) -> None:
        """Build recommendations in file order, one per rule, trigger and goal, throttled in event time."""
        hits.sort(key=lambda hit: loaded.position[hit[0].id])  # stable: measure order kept
        seen_ids = {r.recommendation_id for r in out}
        for rule, fact_set in hits:
            rec = build(loaded.ruleset, rule, trigger, fact_set)
            if rec.recommendation_id in seen_ids:
                continue  # the same rule, trigger and goal through another measure
            if _throttled(state, loaded.ruleset, rule, rec, trigger.occurred_at):
                continue
            seen_ids.add(rec.recommendation_id)
            plan = state.plans.get(rec.plan_id)
            out.append(rec.model_copy(update={"setting": plan.setting}) if plan is not None and plan.setting else rec)

    def explain_facts(self, state: PatientState, event: Event) -> EventFacts:
        """The facts an event presents to the rules (applies it to `state`)."""
        return apply_event(state, event, self.catalogue)

    def checks(self, facts: EventFacts) -> list[RuleCheck]:
        """Every rule check an event makes, as durable_rules answers it."""
        out: list[RuleCheck] = []
        for loaded in self._loaded:
            matched_event = {r.id for r in loaded.per_event.matches(facts.base)}
            per_measure = [(m, fs, {r.id for r in loaded.per_measure.matches(fs)}) for m, fs in facts.per_measure]
            for rule in loaded.ruleset.rules:
                if not rule.enabled:
                    continue
                if not rule.per_measure:
                    out.append(RuleCheck(loaded.ruleset, rule, None, facts.base, rule.id in matched_event))
                else:
                    out += [RuleCheck(loaded.ruleset, rule, m, fs, rule.id in hit) for m, fs, hit in per_measure]
        return out

    def sweep_checks(self, state: PatientState, at: dt.datetime) -> list[RuleCheck]:
        """Every rule check a sweep at `at` makes for this patient (leaves `state` as it was):
        once-per-event rules per open plan, goal rules per goal, as `sweep` checks them."""
        out: list[RuleCheck] = []
        for plan_facts in clock_facts(state, at, self.catalogue):
            for loaded in self._loaded:
                matched_plan = {r.id for r in loaded.per_event.matches(plan_facts.base)}
                per_goal = [(gid, fs, {r.id for r in loaded.per_measure.matches(fs)})
                            for gid, fs in plan_facts.per_goal]
                for rule in loaded.ruleset.rules:
                    if not rule.enabled or (rule.per_measure and not rule.per_goal):
                        continue  # rules about a measure wait for the next evaluation
                    if not rule.per_measure:
                        out.append(RuleCheck(loaded.ruleset, rule, None, plan_facts.base, rule.id in matched_plan,
                                             plan_id=plan_facts.plan.plan_id))
                    else:
                        out += [RuleCheck(loaded.ruleset, rule, None, fs, rule.id in hit, goal_id=gid,
                                          plan_id=plan_facts.plan.plan_id) for gid, fs, hit in per_goal]
        return out


def _event_time(event: Event) -> float:
    return event.occurred_at.timestamp()


MAX_GAP = dt.timedelta(days=366)
"""An event more than this after its plan's latest (applied or held) is refused: a plan of care
spans weeks to months, and one mistyped year (2062 for 2026) would otherwise make every later
event of the plan late, and so silent, for good."""


def _check_plausible(state: PatientState, event: Event, at: float) -> None:
    plan = state.plans.get(event.plan_id)
    times = [_event_time(e) for e in state.held if e.plan_id == event.plan_id and e.type in CLOCK_TYPES]
    if plan is not None and plan.latest_at is not None:
        times.append(plan.latest_at)
    latest = max(times, default=None)
    if latest is not None and at - latest > MAX_GAP.total_seconds():
        seen = dt.datetime.fromtimestamp(latest, dt.UTC).date().isoformat()
        raise EventRejected(f"occurred_at: {show_value(rfc3339(event.occurred_at))} is more than {MAX_GAP.days} days "
                            f"after the latest event seen for this plan ({seen}); a new episode needs a new plan_id",
                            "occurred_at")


_DUPLICATE = Outcome(duplicate=True)
_NOTHING = Outcome(duplicate=False)


@dataclass(frozen=True, slots=True)
class ClockTick:
    """What triggers recommendations made when time advances without an event."""

    patient_id: str
    plan_id: str
    occurred_at: dt.datetime

    @property
    def event_id(self) -> str:
        return f"clock@{rfc3339(self.occurred_at)}"


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule checked against one set of facts (per event, or per measure)."""

    ruleset: CompiledRuleset
    rule: Rule
    measure: Measure | None
    facts: dict[str, Any]
    matched: bool
    goal_id: str | None = None  # a sweep's per-goal check
    plan_id: str | None = None  # a sweep's check of one open plan


def effective_catalogue(rulesets: Sequence[CompiledRuleset], catalogue: Catalogue) -> Catalogue:
    """The catalogue with every ruleset's overrides; conflicting overrides are an error
    (run such rulesets in separate engines, as backtest does)."""
    merged = catalogue
    owner: dict[str, tuple[str, dict[str, Any]]] = {}
    problems: list[Problem] = []
    for rs in rulesets:
        for iid, override in rs.spec.instruments.items():
            values = override.model_dump(exclude_none=True)
            if iid in owner and owner[iid][1] != values:
                problems.append(Problem(rs.source, 1, 1, f"instruments.{iid}: overrides differ from those of ruleset "
                                                         f"{owner[iid][0]}; run them separately"))
            owner.setdefault(iid, (rs.name, values))
        try:
            merged = merged.with_overrides(rs.spec.instruments)
        except ValueError as exc:
            problems.append(Problem(rs.source, 1, 1, f"instruments: {exc}"))
    if problems:
        raise RulesetError(problems)
    return merged


def _throttled(state: PatientState, ruleset: CompiledRuleset, rule: Rule, rec: Recommendation,
               now: dt.datetime) -> bool:
    if rule.throttle is None:
        return False
    per = rule.throttle.per
    key = ThrottleKey(f"{ruleset.name}/{rule.id}", rec.plan_id if per in ("plan", "goal") else None,
                      (rec.goal_id or "") if per == "goal" else None)
    last = state.throttle.get(key)
    if last is not None and now - last < rule.throttle.window:
        return True
    state.throttle[key] = now
    return False


def _first_answer(held: list[Event]) -> int:
    """Where the oldest held feedback or retraction is (held is in event time); 0 when none."""
    return next((i for i, e in enumerate(held) if isinstance(e, (FeedbackEvent, RetractionEvent))), 0)


def _retractions_after_their_targets(due: list[Event]) -> list[Event]:
    """Released events in event time, except that a retraction of one released with it comes
    right after that one (a retraction dated before its evaluation still takes it back)."""
    later = {e.event_id for e in due}
    deferred: dict[str, list[Event]] = {}
    out: list[Event] = []
    for event in due:
        later.discard(event.event_id)
        if isinstance(event, RetractionEvent) and event.retracts in later:
            deferred.setdefault(event.retracts, []).append(event)
            continue
        place = [event]
        while place:  # a deferred retraction may have been retracted in turn: its own follow it
            one = place.pop(0)
            out.append(one)
            place[:0] = deferred.pop(one.event_id, ())
    return out
