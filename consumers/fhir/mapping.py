"""FHIR R4 resources into otrules events (contracts.md §7): the one place that knows FHIR.

The engine never sees FHIR. A line (a resource, or a Bundle of them) becomes
steps the event core runs in order: an event to apply (an evaluation may be
made of several Observations), a resource joined into the patient's FHIR
state (a Goal waiting for its CarePlan), one skipped (a vitals Observation, a
Patient), or one refused with its FHIR path and value. Steps are made one at
a time, after the previous one was applied, because a resource's meaning can
depend on the one before it (a CarePlan then its Observations, in one Bundle).

What has to be joined across lines lives in the patient's state
(`PatientState.fhir`), so it is in the Kafka changelog and survives a restart:
the Goals seen (by id), each CarePlan's goal references and last snapshot,
and Goal.outcomeReference links.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from otrules.consumers.fhir.resources import (
    Entry,
    PartialTime,
    add_days,
    codings,
    contained,
    date_of,
    event_time,
    identity,
    last_updated,
    local_refs,
    reference,
    version_id,
)
from otrules.engine import PatientState
from otrules.engine.state import MAX_PLANS
from otrules.schemas import Catalogue, Event, EventRejected
from otrules.schemas._errors import show_value
from otrules.schemas.events import ID_MAX, MAX_MEASURES, parse_event
from otrules.schemas.events import Goal as NativeGoal
from otrules.schemas.fhir_codes import CodeTable, InstrumentCode

GOAL_BASELINE = "https://otrules.org/fhir/StructureDefinition/goal-baseline"
GOAL_GAS_WEIGHT = "https://otrules.org/fhir/StructureDefinition/goal-gas-weight"
UNRECORDED = "unrecorded"
"""clinician_id of an evaluation whose Observations name no performer."""

# The elements the mapping reads, by the JSON type FHIR gives them: checked on every mapped resource
# (the light, typed part of validation; `--fhir-validation full` validates the whole resource)
_LISTS: dict[str, tuple[str, ...]] = {
    "CarePlan": ("goal", "activity", "category", "contained"),
    "Goal": ("target", "outcomeReference", "extension"),
    "Observation": ("basedOn", "focus", "derivedFrom", "hasMember", "performer", "category"),
    "Encounter": ("type", "participant", "episodeOfCare", "basedOn", "location"),
    "Appointment": ("serviceType", "serviceCategory", "specialty", "participant", "basedOn"),
    "EpisodeOfCare": ("type",),
}
_OBJECTS: dict[str, tuple[str, ...]] = {
    "CarePlan": ("subject", "period", "meta"),
    "Goal": ("subject", "description", "meta"),
    "Observation": ("subject", "code", "valueQuantity", "valueCodeableConcept", "effectivePeriod", "encounter",
                    "meta"),
    "Encounter": ("subject", "class", "serviceType", "period", "meta"),  # R4 serviceType: 0..1 (a list in R5)
    "Appointment": ("appointmentType", "meta"),
    "EpisodeOfCare": ("patient", "period", "meta"),
}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAPPED = ("CarePlan", "Goal", "Observation", "Encounter", "Appointment", "EpisodeOfCare")
PATIENT_OWNED = ("CarePlan", "Goal", "Observation", "Encounter", "Appointment", "EpisodeOfCare", "ServiceRequest")
MAX_GOALS = 64  # Goals kept per patient for joining, and Goals one CarePlan may reference
MAX_OUTCOMES = 256  # Goal.outcomeReference links kept per patient
MAX_CANDIDATES = 4  # CarePlans kept per patient that their Goals, still to come, may make OT
MAX_EPISODES = 16  # EpisodeOfCare -> plan links kept per patient (learnt from Encounters)
# Why a resource was skipped: a fixed vocabulary (the summary's and the service's metric label), never
# text from the feed
SKIP_TYPE = "other type"  # a Patient, a Condition, a Practitioner ...
SKIP_CODE = "unmapped code"  # an Observation whose code is not in the code table (vitals, labs)
SKIP_NOT_OT = "not OT"  # an Encounter, Appointment or CarePlan of another service
SKIP_NO_PLAN = "no OT plan"  # OT care, or an OT score, with no open OT plan to go to
SKIP_STATUS = "other status"  # planned, booked, preliminary, draft ...
SKIP_NO_VALUE = "no value"  # an Observation with a dataAbsentReason
SKIP_NO_TARGET = "no target"  # a Goal with no target on a measure of the code table
SKIP_NOT_OPEN = "nothing open"  # a completed CarePlan or finished episode whose plan is not open
SKIP_EPISODE = "episode not linked"  # an EpisodeOfCare no OT plan's Encounters named
SKIP_REASONS = (SKIP_NOT_OT, SKIP_CODE, SKIP_TYPE, SKIP_NO_PLAN, SKIP_STATUS, SKIP_NO_VALUE, SKIP_NO_TARGET,
                SKIP_NOT_OPEN, SKIP_EPISODE)
# A reference of an OT resource otrules cannot follow, left out (counted) while the resource is read
UNFOLLOWED_IDENTIFIER = "goal by identifier"  # CarePlan.goal with only an identifier (valid FHIR)
UNFOLLOWED_UNREADABLE = "goal reference unreadable"  # CarePlan.goal whose reference is no Goal/<id> (too long ...)
UNFOLLOWED = (UNFOLLOWED_IDENTIFIER, UNFOLLOWED_UNREADABLE)
# GAS as the Person-Centered Outcomes IG writes it: a Goal on the GAS score with no number is aimed at
# the expected level, 0
GAS_CODES = ("107332-9", "107333-7", "107334-5")
LOINC = "http://loinc.org"
US_CORE_CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"  # assess-plan: no service
MAX_OBSERVATIONS = 512  # Observation id -> the version applied (and its plan), for entered-in-error/amended


# ---------------------------------------------------------------- steps


@dataclass(slots=True)
class Apply:
    """An event to run through the engine, made of these resources (`where`, `event_ids`: the first
    is the event's own id; the others are remembered, so resending one alone is a duplicate)."""

    event: Event
    where: list[str]
    event_ids: list[str]
    entries: list[Entry] = field(default_factory=list)
    unfollowed: list[str] = field(default_factory=list)  # references left out, by a reason of UNFOLLOWED


@dataclass(slots=True)
class Joined:
    """A resource kept in the patient's FHIR state, no event yet (processed)."""

    patient_id: str
    where: str
    event_id: str | None = None


@dataclass(slots=True)
class Skipped:
    """A resource otrules does not read (counted, never dead-lettered); `why` for the tally."""

    where: str
    why: str


@dataclass(slots=True)
class Refused:
    """A mapped resource that is malformed or out of range: dead-lettered with path and value."""

    where: str
    field: str
    reason: str
    kind: str = "invalid"  # invalid | key (a Kafka key that is not the resource's patient)
    entry: Entry | None = None  # the refused resource and where it sits (a dead letter carries it, not its Bundle)


@dataclass(slots=True)
class Duplicate:
    """A resource version seen before for this patient."""

    patient_id: str
    where: str


Step = Apply | Joined | Skipped | Refused | Duplicate


class _Refuse(Exception):
    def __init__(self, field: str, reason: str, kind: str = "invalid") -> None:
        self.field, self.reason, self.kind = field, reason, kind


class _Skip(Exception):
    def __init__(self, why: str) -> None:
        self.why = why


def _validators() -> dict[str, Any]:
    """fhir.resources' models of the resources otrules maps. Its R4B package: fhir.resources 8
    ships R4B and R5, not R4, and R4B reads these six R4 resources unchanged (R4B's changes are
    in other resources). Imported on first use: the native path never pays for them."""
    from fhir.resources.R4B.appointment import Appointment
    from fhir.resources.R4B.careplan import CarePlan
    from fhir.resources.R4B.encounter import Encounter
    from fhir.resources.R4B.episodeofcare import EpisodeOfCare
    from fhir.resources.R4B.goal import Goal
    from fhir.resources.R4B.observation import Observation

    return {m.__name__: m for m in (Appointment, CarePlan, Encounter, EpisodeOfCare, Goal, Observation)}


# ---------------------------------------------------------------- the mapper


@dataclass
class _Pending:
    """Observations of one Bundle that make one evaluation (same patient, plan, time, kind, clinician;
    never two versions of one Observation)."""

    key: tuple[str, ...]
    event: dict[str, Any]
    where: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    rids: set[str] = field(default_factory=set)
    entries: list[Entry] = field(default_factory=list)
    retraction: Apply | None = None  # an amended/corrected Observation first retracts its earlier version

    @property
    def rid(self) -> str:
        return next(iter(self.rids))


@dataclass
class _Line:
    """What every resource of one line is read against."""

    bundle: dict[str, tuple[str, str]]  # fullUrl -> (type, id) of the line's entries
    encounters: dict[str, Entry]  # the line's Encounters by id (an Observation's kind may be its type)
    careplan_goals: set[str]
    state_of: Callable[[str], PatientState]
    key: str | None
    by_id: dict[tuple[str, str], Entry] = field(default_factory=dict)  # (type, id) -> the line's entry
    goal_links: dict[str, str] = field(default_factory=dict)  # Observation id -> Goal, by focus/hasMember
    local: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # container id -> #id -> (type, id)

    def refs_of(self, e: Entry) -> dict[str, tuple[str, str]]:
        """The reference map for resource `e`: the line's fullUrls, and `#id` of what `e` contains."""
        rid = identity(e)
        local = self.local.get(rid) if rid is not None else None
        return {**self.bundle, **local} if local else self.bundle


VALIDATION = ("mapped", "full")
"""`mapped`: what the mapping reads is checked as it reads it (types, codes, ranges, times, through
the native event model); `full`: each mapped resource is also validated whole with fhir.resources."""


def make_mapper(catalogue: Catalogue, codes: CodeTable | str | Path | None = None,
                validation: str = "mapped") -> FhirMapper:
    """The one way to build the FHIR mapping (run, backtest, explain, consume, serve and the event
    core): the code table (a path, a table, or None for the bundled one, checked against
    `catalogue`) and the validation level. Raises `RulesetError` for a broken table."""
    from otrules.consumers.fhir.codes import load_code_table

    if validation not in VALIDATION:
        raise ValueError(f"validation: {validation!r} is not one of {', '.join(VALIDATION)}")
    table = codes if isinstance(codes, CodeTable) else load_code_table(codes, catalogue)
    return FhirMapper(table, catalogue, validate=validation == "full")


class FhirMapper:
    """Steps of one line at a time; `state_of(patient_id)` is the patient's state as applied so far."""

    def __init__(self, codes: CodeTable, catalogue: Catalogue, validate: bool = True) -> None:
        self.codes = codes
        self.catalogue = catalogue
        self.validate = validate
        self._models: dict[str, Any] | None = None

    def steps(self, items: list[Entry], state_of: Callable[[str], PatientState],
              key: str | None = None) -> Iterator[Step]:
        """The steps of one line's resources. `key`: the Kafka key, which every resource's patient must
        be (checked before the resource touches any state)."""
        bundle: dict[str, tuple[str, str]] = {}
        encounters: dict[str, Entry] = {}
        careplan_goals: set[str] = set()  # Goals a CarePlan of this line names: no snapshot of their own
        local: dict[str, dict[str, tuple[str, str]]] = {}
        inner: list[Entry] = []
        for e in items:  # contained resources (`#id`) are read like entries of their own
            found_local = local_refs(e) if "contained" in e.resource else {}
            if found_local:
                local[identity(e) or ""] = found_local
                inner += contained(e)
        items = inner + items if inner else items
        by_id: dict[tuple[str, str], Entry] = {}
        for e in items:
            rid = identity(e)
            if e.full_url and rid:
                bundle[e.full_url] = (e.type, rid)
            if rid:
                by_id[e.type, rid] = e
            if e.type == "Encounter" and rid:
                encounters[rid] = e
        context = _Line(bundle, encounters, careplan_goals, state_of, key, by_id, {}, local)
        for e in items:
            if e.type == "CarePlan":
                for ref in _list(e.resource.get("goal")):
                    found = reference(ref, context.refs_of(e))
                    if found and found[0] == "Goal":
                        careplan_goals.add(found[1])
            elif e.type == "Observation":  # a GAS panel or score naming its Goal: its members follow it
                goal = next((f[1] for ref in _list(e.resource.get("focus"))
                             if (f := reference(ref, context.refs_of(e))) and f[0] == "Goal"), None)
                rid = identity(e)
                if goal is not None and rid is not None:
                    context.goal_links.setdefault(rid, goal)
                    for ref in _list(e.resource.get("hasMember")):
                        found = reference(ref, context.refs_of(e))
                        if found and found[0] == "Observation":
                            context.goal_links.setdefault(found[1], goal)
        # Goals, then the plans they belong to, then the rest in order: a transaction's order has no
        # meaning, and a CarePlan must be open before what happens on it (a completed one stays in place)
        def rank(e: Entry) -> int:
            if e.type == "Goal":
                return 0
            return 1 if e.type == "CarePlan" and e.resource.get("status") in ("active", "on-hold") else 2
        ordered = sorted(items, key=rank)
        pending: _Pending | None = None
        for e in ordered:
            if pending is not None and e.type != "Observation":  # applied before the next resource is read
                yield from self._finish(pending)
                pending = None
            step: Step | _Pending
            try:
                if e.repeated is not None:  # contracts.md §1: which value wins is ambiguous; the entry alone
                    raise _Refuse("(repeated key)", f"the key {show_value(e.repeated)} appears more than once "
                                                    "in one JSON object")
                step = self._one(e, context)
            except _Skip as skip:
                step = Skipped(e.where(), skip.why)
            except _Refuse as refuse:
                step = Refused(e.where(), refuse.field, f"{e.where()}: {refuse.field}: {refuse.reason}", refuse.kind,
                               e)
            except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError) as exc:
                # a shape no check above foresaw: this resource is malformed, the line goes on
                step = Refused(e.where(), e.path(""), f"{e.where()}: malformed {e.type} ({type(exc).__name__})",
                               "invalid", e)
            if isinstance(step, _Pending):
                if step.retraction is not None:  # the earlier version goes before the new value is applied
                    if pending is not None:  # (which may be in the group read so far)
                        yield from self._finish(pending)
                        pending = None
                    yield step.retraction
                if (pending is not None and pending.key == step.key and step.rid not in pending.rids
                        and len(pending.event["measures"]) < MAX_MEASURES):  # past it, a new evaluation
                    pending.event["measures"] += step.event["measures"]
                    pending.where += step.where
                    pending.event_ids += step.event_ids
                    pending.rids |= step.rids
                    pending.entries += step.entries
                    continue
                if pending is not None:
                    yield from self._finish(pending)
                pending = step
                continue
            yield step
        if pending is not None:
            yield from self._finish(pending)

    def _finish(self, pending: _Pending) -> Iterator[Step]:
        event = pending.event
        try:
            parsed = parse_event(_json(event), self.catalogue)
        except EventRejected as exc:
            for where, entry in zip(pending.where, pending.entries, strict=True):
                yield Refused(where, exc.field or "(event)", f"{where}: {exc.reason}", "invalid", entry)
            return
        yield Apply(parsed, pending.where, pending.event_ids, pending.entries)

    def _validate(self, e: Entry) -> None:
        if not self.validate:
            return
        if self._models is None:
            self._models = _validators()
        try:
            self._models[e.type].model_validate(e.resource)
        except RecursionError:
            raise _Refuse(e.path(""), "not valid FHIR R4: nested too deeply") from None
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            path, unknown = _loc_path(err["loc"], err["type"] == "extra_forbidden")
            msg = err["msg"].removeprefix("Value error, ")
            got = f" (got {show_value(err.get('input'))})" if err["type"] != "missing" else ""
            # an element name that is not FHIR's is feed text (a key may be a name, an MRN): only the
            # reason, which goes to the dead letter alone, quotes it; the field that stderr and logs show
            # says (unknown element)
            named = f" at {show_value(unknown)}" if unknown is not None else ""
            raise _Refuse(e.path(path), f"not valid FHIR R4: {msg}{named}{got}") from None

    # ------------------------------------------------------------ one resource

    def _one(self, e: Entry, line: _Line) -> Step | _Pending:
        kind = e.type
        if kind not in MAPPED:
            raise _Skip(SKIP_TYPE)
        # what decides whether otrules reads the resource at all comes before validation, so a
        # feed's vitals and labs cost nothing; what it reads must be valid FHIR
        status_field = "lifecycleStatus" if kind == "Goal" else "status"
        status = e.resource.get(status_field)
        if kind == "Observation":
            if status not in ("final", "amended", "corrected", "entered-in-error"):
                raise _Skip(SKIP_STATUS)
            if self._instrument(e) is None:
                raise _Skip(SKIP_CODE)
        elif isinstance(status, str) and ((kind == "Encounter" and status not in ("finished", "cancelled")) or
                                          (kind == "Appointment" and status not in ("noshow", "cancelled"))):
            raise _Skip(SKIP_STATUS)
        self._validate(e)
        if not isinstance(status, str):
            raise _Refuse(e.path(status_field), "required element is missing")
        rid = identity(e)
        if rid is None:
            raise _Refuse(e.path("id"), "required: a resource otrules reads needs an id (or a urn:uuid fullUrl)")
        if "id" in e.resource and not _FHIR_ID.match(rid):  # what full validation would say of it, for free
            raise _Refuse(e.path("id"), f"{show_value(rid)} is not a FHIR id ([A-Za-z0-9-.]{{1,64}})")
        r = e.resource
        for name in _LISTS[kind]:
            if name in r and not isinstance(r[name], list):
                raise _Refuse(e.path(name), f"expected a list (got {show_value(r[name])})")
        for name in _OBJECTS[kind]:
            if name in r and not isinstance(r[name], dict):
                raise _Refuse(e.path(name), f"expected an object (got {show_value(r[name])})")
        patient = self._patient(e, line.bundle)
        if line.key is not None and patient != line.key:  # before anything of the patient is touched
            raise _Refuse("key", f"the Kafka key {show_value(line.key)} is not the resource's patient "
                                 f"{show_value(patient)}", "key")
        state = line.state_of(patient)
        event_id = _event_id(e, rid)
        if kind == "Observation" and status == "entered-in-error" and not version_id(e.resource):
            event_id = _derived_id(event_id, "entered-in-error")  # an EHR that keeps no versions
        if state.has_seen(event_id):
            return Duplicate(patient, e.where())
        if kind == "Goal":
            return self._goal(e, rid, event_id, patient, state, line.careplan_goals)
        if kind == "CarePlan":
            return self._careplan(e, rid, event_id, patient, state, line)
        if kind == "Observation":
            if status == "entered-in-error":
                return self._retraction(e, rid, event_id, patient, state)
            return self._observation(e, rid, event_id, patient, state, line)
        if kind == "Encounter":
            visit = {"finished": "attended", "cancelled": "cancelled"}[status]
            plan_id = self._ot_plan(e, rid, patient, state, line)  # skipped unless OT
            period = _dict(e.resource.get("period"))
            at = self._time(e, "period.start", period.get("start"))
            for ref in _list(e.resource.get("episodeOfCare")):  # learnt: which plan an episode is about
                found = reference(ref, line.refs_of(e))
                if found and found[0] == "EpisodeOfCare":
                    self._link_episode(state, found[1], plan_id)
            return self._event(e, event_id, {"type": "visit", "patient_id": patient, "occurred_at": at,
                                             "plan_id": plan_id, "status": visit})
        if kind == "Appointment":
            visit = {"noshow": "missed", "cancelled": "cancelled"}[status]
            plan_id = self._ot_plan(e, rid, patient, state, line)
            at = self._time(e, "start", e.resource.get("start"))
            return self._event(e, event_id, {"type": "visit", "patient_id": patient, "occurred_at": at,
                                             "plan_id": plan_id, "status": visit})
        # EpisodeOfCare: it closes the plan its Encounters were on, and only that one (an episode of
        # another service, cardiology say, names no OT plan). An open one sent with its OT CarePlan
        # (one transaction) is that plan's.
        if status in ("active", "waitlist", "planned", "onhold"):
            plan_ids = [r for (t, r), c in line.by_id.items() if t == "CarePlan" and r in state.plans
                        and not state.plans[r].discharged and c.resource.get("status") in ("active", "on-hold")]
            # linked when it is OT by its type, or names no service and comes with the one plan, or the
            # line's OT CarePlan or OT Encounter names it: never an episode typed as another service
            # (cardiology) that merely shares the transaction, whose end would discharge the OT plan
            types = codings(e.resource.get("type"))
            if not (self.codes.is_ot("type", types) or (not types and len(plan_ids) == 1)
                    or self._named_by_ot_care(e, rid, plan_ids, line)):
                raise _Skip(SKIP_EPISODE)
            if len(plan_ids) != 1:
                plan_ids = _open_plans(state)[:1]
                if not plan_ids:
                    raise _Skip(SKIP_NO_PLAN)
            self._link_episode(state, rid, plan_ids[0])
            state.remember(event_id)
            return Joined(patient, e.where(), event_id)
        if status not in ("finished", "cancelled"):
            raise _Skip(SKIP_STATUS)
        plan_id = _join(state).get("episodes", {}).get(rid)
        if plan_id is None:
            raise _Skip(SKIP_EPISODE)
        plan = state.plans.get(plan_id)
        if plan is None or plan.discharged:
            raise _Skip(SKIP_NOT_OPEN)
        period = _dict(e.resource.get("period"))
        element, value = ("period.end", period.get("end")) if period.get("end") else \
            ("meta.lastUpdated", last_updated(e.resource))
        at = self._time(e, element, value)
        return self._event(e, event_id, {"type": "discharge", "patient_id": patient, "occurred_at": at,
                                         "plan_id": plan_id, "reason": f"EpisodeOfCare {status}"})

    def _named_by_ot_care(self, e: Entry, rid: str, plan_ids: list[str], line: _Line) -> bool:
        """Whether an OT CarePlan of the line (`supportingInfo`) or an OT Encounter of the line
        (`episodeOfCare`: typed OT, or `basedOn` the line's OT plan) names this EpisodeOfCare."""
        for (kind, _id), other in line.by_id.items():
            r = other.resource
            refs = line.refs_of(other)
            if kind == "CarePlan" and _id in plan_ids:
                names = _list(r.get("supportingInfo"))
            elif kind == "Encounter":
                ot = self.codes.is_ot("type", codings(r.get("type"))) or \
                    self.codes.is_ot("serviceType", codings(r.get("serviceType"))) or \
                    any((f := reference(ref, refs)) and f[0] == "CarePlan" and f[1] in plan_ids
                        for ref in _list(r.get("basedOn")))
                names = _list(r.get("episodeOfCare")) if ot else []
            else:
                continue
            if any((f := reference(ref, refs)) and f == ("EpisodeOfCare", rid) for ref in names):
                return True
        return False

    @staticmethod
    def _link_episode(state: PatientState, episode: str, plan_id: str) -> None:
        episodes: dict[str, str] = _join(state).setdefault("episodes", {})
        episodes.pop(episode, None)
        episodes[episode] = plan_id
        while len(episodes) > MAX_EPISODES:
            episodes.pop(next(iter(episodes)))

    def _ot_plan(self, e: Entry, rid: str, patient: str, state: PatientState, line: _Line) -> str:
        """The OT plan an Encounter or Appointment is a visit of; `_Skip` when it is not OT care.
        OT by an explicit link to an OT plan (basedOn, episodeOfCare, the plan's activity.reference),
        or by a code of the table (type, serviceType ..., a performer's PractitionerRole)."""
        r = e.resource
        refs = line.refs_of(e)
        join = _join(state)
        open_ids = set(_open_plans(state))
        elements = (("type", "type"), ("serviceType", "serviceType")) if e.type == "Encounter" else \
            (("serviceType", "serviceType"), ("serviceCategory", "serviceCategory"), ("specialty", "specialty"),
             ("appointmentType", "appointmentType"))
        ot = any(self.codes.is_ot(name, codings(r.get(element))) for element, name in elements)
        typed = any(code for element, _name in elements for _s, code in codings(r.get(element)))
        if typed and not ot:
            # typed as another service (a primary-care check-up): a link to the OT plan does not make it
            # an OT visit, nor does the performer's role; what it was is what it says
            raise _Skip(SKIP_NOT_OT)
        for ref in _list(r.get("basedOn")):
            found = self._own(e, "basedOn", ref, patient, line)
            if found and found[0] == "CarePlan" and found[1] in open_ids:
                return found[1]
        for ref in _list(r.get("episodeOfCare")):
            found = self._own(e, "episodeOfCare", ref, patient, line)
            plan_id = join.get("episodes", {}).get(found[1]) if found and found[0] == "EpisodeOfCare" else None
            if plan_id is not None and plan_id in open_ids:
                return plan_id
        plan_id = join.get("activities", {}).get(f"{e.type}/{rid}")
        if plan_id is not None and plan_id in open_ids:
            return plan_id
        if not ot:
            people = [p.get("individual") for p in _list(r.get("participant")) if isinstance(p, dict)] + \
                [p.get("actor") for p in _list(r.get("participant")) if isinstance(p, dict)]
            for ref in people:
                found = reference(ref, refs)
                role = line.by_id.get(found) if found and found[0] == "PractitionerRole" else None
                if role is not None and self.codes.is_ot("performer-role", codings(role.resource.get("code")) +
                                                         codings(role.resource.get("specialty"))):
                    ot = True
                    break
        if not ot:
            raise _Skip(SKIP_NOT_OT)
        if not open_ids:
            raise _Skip(SKIP_NO_PLAN)
        return _open_plans(state)[0]

    def _own(self, e: Entry, element: str, ref: Any, patient: str, line: _Line) -> tuple[str, str] | None:
        """(type, id) a reference names; refused when it names a resource of this line that is another
        patient's (never silently dropped)."""
        found = reference(ref, line.refs_of(e))
        if found is None:
            return None
        other = line.by_id.get(found)
        if other is not None and other.type in PATIENT_OWNED:
            theirs = _patient_or_none(other, line.bundle)
            if theirs is not None and theirs != patient:
                raise _Refuse(e.path(element), f"{found[0]}/{show_value(found[1])} is another patient's "
                                               f"({show_value(theirs)}), not {show_value(patient)}'s")
        return found

    def _event(self, e: Entry, event_id: str, fields: dict[str, Any]) -> Apply:
        event = {"event_id": event_id, **fields}
        try:
            parsed = parse_event(_json(event), self.catalogue)
        except EventRejected as exc:
            raise _Refuse(e.path(_FIELD_PATHS.get((e.type, exc.field or ""), exc.field or "(resource)")),
                          exc.reason.split(": ", 1)[-1]) from None
        return Apply(parsed, [e.where()], [event_id], [e])

    # ------------------------------------------------------------ Goal and CarePlan

    def _goal(self, e: Entry, rid: str, event_id: str, patient: str, state: PatientState,
              careplan_goals: set[str]) -> Step:
        r = e.resource
        status = r["lifecycleStatus"]
        withdrawn = status in ("cancelled", "entered-in-error", "rejected")
        goal = None if withdrawn else self._goal_fields(e, rid)  # refused here, not later on its CarePlan
        if goal is None and not withdrawn:
            raise _Skip(SKIP_NO_TARGET)
        join = _join(state)
        goals: dict[str, Any] = join.setdefault("goals", {})
        goals.pop(rid, None)
        if goal is not None:
            goals[rid] = goal
            while len(goals) > MAX_GOALS:
                goals.pop(next(iter(goals)))
        candidate = next((pid for pid, c in join.get("candidates", {}).items()
                          if rid in c["goals"] and pid not in state.plans), None) if goal is not None else None
        links: dict[str, str] = join.setdefault("outcomes", {})
        for ref in _list(r.get("outcomeReference")):
            found = reference(ref)
            if found and found[0] == "Observation":
                links.pop(found[1], None)
                links[found[1]] = rid
        while len(links) > MAX_OUTCOMES:
            links.pop(next(iter(links)))
        # a Goal that changes an open plan already made: that plan again, as a new snapshot (a
        # discharged plan stays closed: goals are marked achieved at discharge as a matter of course)
        plans = [pid for pid, plan in sorted(join.get("plans", {}).items())
                 if rid in plan["goals"] and pid in state.plans and not state.plans[pid].discharged]
        if candidate is not None and rid not in careplan_goals:
            # the Goal on an OT measure that a candidate CarePlan named: that plan opens, as OT
            c = join["candidates"].pop(candidate)
            snapshot = {"fields": c["fields"], "goals": c["goals"], "at": c["at"]}
            step = self._plan_event(e, c["event_id"], patient, candidate, snapshot, c["at"], state)
            known: dict[str, Any] = join.setdefault("plans", {})
            known.pop(candidate, None)
            known[candidate] = snapshot
            while len(known) > MAX_PLANS:
                known.pop(next(iter(known)))
            step.event_ids.append(event_id)  # the Goal sent again is a duplicate
            return step
        if rid in careplan_goals or not plans:
            state.remember(event_id)
            return Joined(patient, e.where(), event_id)
        at = last_updated(r) or join["plans"][plans[0]]["at"]
        at = self._time(e, "meta.lastUpdated", at)
        return self._plan_event(e, event_id, patient, plans[0], join["plans"][plans[0]], at, state)

    def _goal_fields(self, e: Entry, rid: str) -> dict[str, Any] | None:
        """The goal as otrules' plan event holds it, checked now: a bad Goal is refused with its own
        path, rather than failing the CarePlan that names it later. None: no target otrules scores."""
        r = e.resource
        description = _dict(r.get("description"))
        text = description.get("text") or next(
            (c.get("display") for c in _list(description.get("coding")) if isinstance(c, dict) and c.get("display")),
            None)
        for i, target in enumerate(_list(r.get("target"))):
            target = _dict(target)
            entry = None
            for system, code in codings(target.get("measure")):
                entry = self.codes.instrument_of(system, code)
                if entry is not None:
                    break
            if entry is None:
                continue  # a target otrules cannot score against
            paths = {"target": f"target[{i}].detail[x]", "target_date": f"target[{i}].dueDate",
                     "description": "description.text", "goal_id": "id",
                     "baseline": f"extension({GOAL_BASELINE})", "gas_weight": f"extension({GOAL_GAS_WEIGHT})"}
            if "detailQuantity" in target:
                paths["target"] = f"target[{i}].detailQuantity.value"
                value = self._quantity(e, f"target[{i}].detailQuantity", _dict(target["detailQuantity"]), entry,
                                       unit_needed=False)
            elif "detailInteger" in target:
                paths["target"] = f"target[{i}].detailInteger"
                value = target["detailInteger"]
            elif entry.answers is not None:  # GAS the PCO way: a level as its LA code, else the expected level 0
                paths["target"] = f"target[{i}].detailCodeableConcept"
                value = next((entry.answers[c] for _s, c in codings(target.get("detailCodeableConcept"))
                              if c in entry.answers), 0)
            else:
                raise _Refuse(e.path(f"target[{i}].detail[x]"), "a target on a scored measure needs "
                                                               "detailQuantity or detailInteger")
            goal: dict[str, Any] = {"goal_id": rid, "description": text or f"Goal {rid}",
                                    "instrument": entry.instrument, "target": value}
            if target.get("dueDate"):
                goal["target_date"] = target["dueDate"]
            for ext in _list(r.get("extension")):
                ext = _dict(ext)
                if ext.get("url") == GOAL_BASELINE and "valueDecimal" in ext:
                    goal["baseline"] = ext["valueDecimal"]
                elif ext.get("url") == GOAL_GAS_WEIGHT and "valueDecimal" in ext:
                    goal["gas_weight"] = ext["valueDecimal"]
            try:
                NativeGoal.model_validate_json(orjson.dumps(goal))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                name = str(err["loc"][0]) if err["loc"] else "goal_id"
                got = show_value(err.get("input"))
                raise _Refuse(e.path(paths.get(name, name)), f"{got}: {err['msg']}") from None
            return goal
        return None  # no measurable target: not a goal otrules can follow

    def _careplan(self, e: Entry, rid: str, event_id: str, patient: str, state: PatientState,
                  line: _Line) -> Step:
        r = e.resource
        bundle = line.refs_of(e)
        status = r["status"]
        join = _join(state)
        plans: dict[str, Any] = join.setdefault("plans", {})
        known = plans.get(rid)
        if status in ("completed", "revoked"):
            if rid not in state.plans or state.plans[rid].discharged:
                raise _Skip(SKIP_NOT_OPEN)
            period = _dict(r.get("period"))
            element, value = (("meta.lastUpdated", last_updated(r)) if last_updated(r) else
                              ("period.end", period.get("end")))
            at = self._time(e, element, value)
            return self._event(e, event_id, {"type": "discharge", "patient_id": patient, "plan_id": rid,
                                             "occurred_at": at, "reason": f"CarePlan {status}"})
        if status not in ("active", "on-hold"):
            raise _Skip(SKIP_STATUS)
        refs = _list(r.get("goal"))
        if known is None:  # a care plan of another service is skipped before anything in it is checked
            named = [f[1] for ref in refs if (f := reference(ref, bundle)) and f[0] == "Goal"]
            if not self._is_ot_plan(e, named, state):
                if named and not self._names_a_service(e) and len(named) <= MAX_GOALS:
                    return self._candidate(e, rid, event_id, patient, named, line, state)
                raise _Skip(SKIP_NOT_OT)
        # a CarePlan first seen opens the plan when it was made; a later version, when it changed
        first = ("created", r.get("created")), ("meta.lastUpdated", last_updated(r))
        element, value = next(((k, v) for k, v in (first if known is None else first[::-1]) if v),
                              ("period.start", _dict(r.get("period")).get("start")))
        at = self._time(e, element, value)
        if len(refs) > MAX_GOALS:
            raise _Refuse(e.path("goal"), f"{len(refs)} Goals, over the {MAX_GOALS} otrules follows in one plan")
        goal_ids: list[str] = []
        unfollowed: list[str] = []
        for i, ref in enumerate(refs):
            found = self._own(e, f"goal[{i}]", ref, patient, line)
            if found is None and isinstance(ref, dict):
                # a Goal named only by identifier (valid FHIR), or by a reference otrules cannot read (an
                # id over 64 characters): that goal is left out and counted, the plan is read
                unfollowed.append(UNFOLLOWED_UNREADABLE if isinstance(ref.get("reference"), str)
                                  else UNFOLLOWED_IDENTIFIER)
                continue
            if found is None or found[0] != "Goal":
                raise _Refuse(e.path(f"goal[{i}]"), f"not a reference to a Goal (got {show_value(ref)})")
            goal_ids.append(found[1])
        snapshot = {"fields": self._plan_fields(e, known, line), "goals": goal_ids, "at": at}
        step = self._plan_event(e, event_id, patient, rid, snapshot, at, state)
        step.unfollowed = unfollowed
        plans.pop(rid, None)  # kept only once the plan event is good; the newest last
        plans[rid] = snapshot
        while len(plans) > MAX_PLANS:
            plans.pop(next(iter(plans)))
        activities: dict[str, str] = join.setdefault("activities", {})  # what the plan names as its own
        for activity in _list(r.get("activity")):
            found = reference(_dict(activity).get("reference"), bundle)
            if found and found[0] in ("Appointment", "Encounter"):
                activities.pop(f"{found[0]}/{found[1]}", None)
                activities[f"{found[0]}/{found[1]}"] = rid
        while len(activities) > MAX_OUTCOMES:
            activities.pop(next(iter(activities)))
        return step

    def _is_ot_plan(self, e: Entry, goal_ids: list[str], state: PatientState) -> bool:
        """A CarePlan is OT by a code of the table in its category or an activity's code, or by a Goal
        on a measure of the code table (an OT outcome measure)."""
        r = e.resource
        if self.codes.is_ot("category", codings(r.get("category"))):
            return True
        for activity in _list(r.get("activity")):
            detail = _dict(_dict(activity).get("detail"))
            if self.codes.is_ot("activity", codings(detail.get("code"))):
                return True
        # a Goal on an OT measure makes a plan OT only when the plan names no other service: a physical
        # therapy plan (activity SNOMED 91251008) with a Barthel goal is not OT
        if self._names_a_service(e):
            return False
        goals = _join(state).get("goals", {})
        return any(g in goals for g in goal_ids)

    def _names_a_service(self, e: Entry) -> bool:
        """Whether a CarePlan not coded OT names a service (another one) in its category or activity codes.
        US Core's category (assess-plan) and a setting of the code table (AMB) name no service."""
        r = e.resource
        return any(code and system != US_CORE_CAREPLAN_CATEGORY and self.codes.setting_of(system, code) is None
                   for system, code in codings(r.get("category"))) or \
            any(code for a in _list(r.get("activity"))
                for _system, code in codings(_dict(_dict(a).get("detail")).get("code")))

    def _candidate(self, e: Entry, rid: str, event_id: str, patient: str, goal_ids: list[str], line: _Line,
                   state: PatientState) -> Step:
        """A CarePlan that names no service and whose Goals otrules has not seen (Bulk Data writes the
        CarePlan file before the Goal file): kept as a candidate, bounded, and opened as an OT plan when
        one of its Goals arrives on a measure of the code table. Skipped `not OT` when it cannot be."""
        r = e.resource
        try:
            first = ("created", r.get("created")), ("meta.lastUpdated", last_updated(r))
            element, value = next(((k, v) for k, v in first if v),
                                  ("period.start", _dict(r.get("period")).get("start")))
            at = self._time(e, element, value)
            fields = self._plan_fields(e, None, line)
        except _Refuse:
            raise _Skip(SKIP_NOT_OT) from None
        candidates: dict[str, Any] = _join(state).setdefault("candidates", {})
        candidates.pop(rid, None)
        candidates[rid] = {"event_id": event_id, "fields": fields, "goals": goal_ids, "at": at}
        while len(candidates) > MAX_CANDIDATES:
            candidates.pop(next(iter(candidates)))
        return Joined(patient, e.where())  # its event id is the plan's, when it opens

    def _setting(self, e: Entry, known: dict[str, Any] | None, line: _Line) -> str:
        """CarePlan.category via the code table; else the class of the line's OT Encounters, the type of
        an EpisodeOfCare or of an Encounter's Location; else the plan's setting so far; else the code
        table's default_setting. Never a reason to refuse a plan."""
        found = self._setting_in(codings(e.resource.get("category")))
        if found is not None:
            return found
        candidates: list[tuple[str | None, str | None]] = []
        refs = line.refs_of(e)
        for (kind, _rid), other in line.by_id.items():
            if kind == "Encounter":
                cls = _dict(other.resource.get("class"))
                if self.codes.is_ot("type", codings(other.resource.get("type"))) or any(
                        (f := reference(ref, refs)) and f[0] == "CarePlan" and f[1] == identity(e)
                        for ref in _list(other.resource.get("basedOn"))):
                    candidates.append((cls.get("system"), cls.get("code")))
                    for loc in _list(other.resource.get("location")):
                        where = reference(_dict(loc).get("location"), refs)
                        place = line.by_id.get(where) if where else None
                        if place is not None:
                            candidates += codings(place.resource.get("type"))
            elif kind == "EpisodeOfCare":
                candidates += codings(other.resource.get("type"))
        found = self._setting_in(candidates)
        if found is not None:
            return found
        if known is not None:
            return str(known["fields"]["setting"])
        return self.codes.default_setting

    def _setting_in(self, pairs: list[tuple[str | None, str | None]]) -> str | None:
        return next((s for system, code in pairs if (s := self.codes.setting_of(system, code)) is not None), None)

    def _plan_fields(self, e: Entry, known: dict[str, Any] | None, line: _Line) -> dict[str, Any]:
        r = e.resource
        setting = self._setting(e, known, line)
        period = _dict(r.get("period"))
        if not isinstance(period.get("start"), str):
            raise _Refuse(e.path("period.start"), "required: the start of the certification period")
        try:
            start = date_of(period["start"])
            until = date_of(period["end"]) if isinstance(period.get("end"), str) else \
                add_days(start, self.codes.certification_days - 1)
        except (PartialTime, ValueError, OverflowError):
            raise _Refuse(e.path("period"), f"{show_value(period)}: not full dates") from None
        frequency = self._frequency(e)
        if frequency is None:
            frequency = self._requested_frequency(e, line)
        if frequency is None and known is not None:
            frequency = known["fields"].get("frequency_per_week")
        fields: dict[str, Any] = {"setting": setting, "certified_from": start, "certified_until": until}
        if frequency is not None:  # unknown: left out, and rules comparing it do not match (contracts.md §1)
            fields["frequency_per_week"] = frequency
        return fields

    def _requested_frequency(self, e: Entry, line: _Line) -> int | None:
        """The visit frequency of a ServiceRequest of the line that the plan names (activity.reference)
        or that names the plan (basedOn): its occurrenceTiming."""
        rid = identity(e)
        refs = line.refs_of(e)
        named = {f for a in _list(e.resource.get("activity")) if (f := reference(_dict(a).get("reference"), refs))}
        for (kind, sid), request in line.by_id.items():
            if kind != "ServiceRequest":
                continue
            based = any((f := reference(ref, line.refs_of(request))) and f == ("CarePlan", rid)
                        for ref in _list(request.resource.get("basedOn")))
            if (kind, sid) in named or based:
                repeat = _dict(_dict(request.resource.get("occurrenceTiming")).get("repeat"))
                if repeat:
                    return self._times(request, "occurrenceTiming.repeat", repeat)
        return None

    @classmethod
    def _frequency(cls, e: Entry) -> int | None:
        for i, activity in enumerate(_list(e.resource.get("activity"))):
            timing = _dict(_dict(_dict(_dict(activity).get("detail")).get("scheduledTiming")).get("repeat"))
            if not timing:
                continue
            return cls._times(e, f"activity[{i}].detail.scheduledTiming.repeat", timing)
        return None

    @staticmethod
    def _times(e: Entry, where: str, timing: dict[str, Any]) -> int:
        """Visits a week of a Timing.repeat."""
        per_unit = {"d": 7.0, "wk": 1.0, "mo": 7 / 30.4375, "a": 7 / 365.25}
        unit = timing.get("periodUnit", "wk")
        if unit not in per_unit:
            raise _Refuse(e.path(f"{where}.periodUnit"), f"{show_value(unit)}: otrules reads d, wk, mo or a")
        frequency, period = timing.get("frequencyMax", timing.get("frequency", 1)), timing.get("period", 1)
        if not _number(frequency) or frequency < 0:
            raise _Refuse(e.path(f"{where}.frequency"), f"{show_value(frequency)}: not a count of visits")
        if not _number(period) or period <= 0:
            raise _Refuse(e.path(f"{where}.period"), f"{show_value(period)}: not a positive period")
        times = frequency / period * per_unit[unit]
        value = round(times) if math.isfinite(times) and times < 1e6 else 10**6
        if not 0 <= value <= 21:
            raise _Refuse(e.path(where), f"{times:g} visits a week is outside the range 0–21")
        return value

    def _plan_event(self, e: Entry, event_id: str, patient: str, plan_id: str, snapshot: dict[str, Any],
                    at: str, state: PatientState) -> Apply:
        """The plan as a snapshot: the CarePlan's fields and the Goals of it seen so far (a Goal that
        comes later makes a new snapshot)."""
        goals = _join(state).get("goals", {})
        return self._event(e, event_id, {
            "type": "plan", "patient_id": patient, "plan_id": plan_id, "occurred_at": at, **snapshot["fields"],
            "goals": [goals[g] for g in snapshot["goals"] if g in goals]})

    # ------------------------------------------------------------ Observation

    def _instrument(self, e: Entry) -> InstrumentCode | None:
        for system, code in codings(e.resource.get("code")):
            entry = self.codes.instrument_of(system, code)
            if entry is not None:
                return entry
        return None

    def _observation(self, e: Entry, rid: str, event_id: str, patient: str, state: PatientState,
                     line: _Line) -> _Pending:
        r = e.resource
        bundle = line.refs_of(e)
        entry = self._instrument(e)
        assert entry is not None  # checked before validation
        score, element = self._score(e, entry)
        instrument = self.catalogue.get(entry.instrument)
        if instrument is not None:
            why = instrument.out_of_range(score)
            if why:
                raise _Refuse(e.path(element), f"{_num(score)} {why} of {entry.instrument}")
        for element_name in ("effectiveDateTime", "effectiveInstant"):
            if r.get(element_name):
                at = self._time(e, element_name, r[element_name])
                break
        else:
            if _dict(r.get("effectivePeriod")).get("start"):
                at = self._time(e, "effectivePeriod.start", r["effectivePeriod"]["start"])
            elif r.get("issued"):
                at = self._time(e, "issued", r["issued"])
            else:
                raise _Refuse(e.path("effective[x]"), "required: when the score was taken "
                                                      "(effectiveDateTime, effectivePeriod.start or issued)")
        plan_id = None
        for i, ref in enumerate(_list(r.get("basedOn"))):
            found = self._own(e, f"basedOn[{i}]", ref, patient, line)
            if found and found[0] == "CarePlan":
                plan_id = found[1]
                break
        if plan_id is None:  # a score taken outside OT (a MoCA in a memory clinic) is not an OT evaluation
            open_plans = _open_plans(state)
            if not open_plans:
                raise _Skip(SKIP_NO_PLAN)
            plan_id = open_plans[0]
        # the goal: one the plan has (a Goal otrules could not follow, such as a GAS-level goal of the
        # Person-Centered Outcomes IG, is no goal of the plan)
        plan = state.plans.get(plan_id)
        of_plan = plan.goals if plan is not None else {}
        outcomes = _join(state).get("outcomes", {})
        goal_id = outcomes.get(rid)
        if goal_id not in of_plan:
            goal_id = next((found[1] for i, ref in enumerate(_list(r.get("focus")))
                            if (found := self._own(e, f"focus[{i}]", ref, patient, line))
                            and found[0] == "Goal" and found[1] in of_plan), None)
        if goal_id is None:  # a member of a panel that names the Goal, or derived from a score that does
            linked = [rid] + [f[1] for ref in _list(r.get("derivedFrom"))
                              if (f := reference(ref, bundle)) and f[0] == "Observation"]
            goal_id = next((g for o in linked if (g := line.goal_links.get(o) or outcomes.get(o)) in of_plan), None)
        if goal_id is not None and outcomes.get(rid) != goal_id:
            # kept for a later line: a score `derivedFrom` this one (a GAS follow-up) finds its Goal
            _remember_outcome(state, rid, goal_id)
        if goal_id is None:
            same = [g for g, goal in sorted(of_plan.items()) if goal.instrument == entry.instrument]
            goal_id = same[0] if len(same) == 1 else None
        kind = self._kind(e, line)
        clinician = UNRECORDED
        for ref in _list(r.get("performer")):
            found = reference(ref, bundle)
            if found and found[0] in ("Practitioner", "PractitionerRole"):
                clinician = found[1]
                break
        measure: dict[str, Any] = {"instrument": entry.instrument, "score": score}
        if goal_id is not None:
            measure["goal_id"] = goal_id
        event = {"type": "evaluation", "event_id": event_id, "patient_id": patient, "plan_id": plan_id,
                 "occurred_at": at, "kind": kind, "clinician_id": clinician, "measures": [measure]}
        key = (patient, plan_id, at, kind, clinician)
        retraction = None
        earlier = _join(state).get("observations", {}).get(rid)
        if r.get("status") in ("amended", "corrected") and earlier is not None and earlier[0] != event_id:
            # contracts.md §7: the earlier version is retracted and the new value applies at its time
            retraction = self._retraction_event(e, _derived_id(event_id, "retraction"), patient, earlier, at, [])
        _remember_observation(state, rid, event_id, plan_id)
        return _Pending(key, event, [e.where()], [event_id], {rid}, [e], retraction)

    def _retraction(self, e: Entry, rid: str, event_id: str, patient: str, state: PatientState) -> Apply:
        """An Observation sent again as entered-in-error: a retraction (contracts.md §1) of the version
        applied before. None known (never seen, already retracted): a retraction of nothing otrules
        knows, which the engine counts and which changes nothing."""
        r = e.resource
        observations: dict[str, list[str]] = _join(state).setdefault("observations", {})
        earlier = observations.pop(rid, None)
        if earlier is None:
            plans = _open_plans(state)
            earlier = [f"Observation/{rid}", plans[0] if plans else "(none)"]
        for element in ("issued", "effectiveDateTime", "effectiveInstant"):
            if isinstance(r.get(element), str) and r[element]:
                at = self._time(e, element, r[element])
                break
        else:
            start = _dict(r.get("effectivePeriod")).get("start")
            updated = _dict(r.get("meta")).get("lastUpdated")
            if not start and not updated:
                raise _Refuse(e.path("issued"), "required: when the Observation was marked entered-in-error "
                                                "(issued, effective[x] or meta.lastUpdated)")
            at = self._time(e, "effectivePeriod.start" if start else "meta.lastUpdated", start or updated)
        return self._retraction_event(e, event_id, patient, earlier, at, [e.where()])

    def _retraction_event(self, e: Entry, event_id: str, patient: str, earlier: list[str], at: str,
                          where: list[str]) -> Apply:
        body = {"type": "retraction", "event_id": event_id, "patient_id": patient, "plan_id": earlier[1],
                "occurred_at": at, "retracts": earlier[0], "reason": f"Observation {e.resource.get('status')}"}
        try:
            parsed = parse_event(_json(body), self.catalogue)
        except EventRejected as exc:
            raise _Refuse(e.path("id"), exc.reason) from None
        return Apply(parsed, where, [event_id])

    def _score(self, e: Entry, entry: InstrumentCode) -> tuple[float, str]:
        r = e.resource
        _one_choice(e, "value")
        _one_choice(e, "effective")
        if "valueQuantity" in r:
            return self._quantity(e, "valueQuantity", _dict(r["valueQuantity"]), entry), "valueQuantity.value"
        if "valueInteger" in r:
            value = r["valueInteger"]
            if not isinstance(value, int) or isinstance(value, bool):
                raise _Refuse(e.path("valueInteger"), f"{show_value(value)}: not a whole number")
            return value, "valueInteger"
        if "valueCodeableConcept" in r:
            answers = entry.answers or {}
            for _system, code in codings(r["valueCodeableConcept"]):
                if code in answers:
                    return answers[code], "valueCodeableConcept"
            sent = show_value(codings(r["valueCodeableConcept"]))
            raise _Refuse(e.path("valueCodeableConcept"), f"no answer of {entry.system}|{entry.code} in the code "
                                                          f"table among {sent}")
        if "dataAbsentReason" in r:
            raise _Skip(SKIP_NO_VALUE)
        if "valueString" in r:
            raise _Refuse(e.path("valueString"), f"{show_value(r['valueString'])}: a score must be a number "
                                                 "(valueQuantity or valueInteger)")
        raise _Refuse(e.path("value[x]"), "required: the score (valueQuantity.value or valueInteger)")

    def _quantity(self, e: Entry, element: str, quantity: dict[str, Any], entry: InstrumentCode,
                  unit_needed: bool = True) -> float:
        """The number of a Quantity in the instrument's unit. A score without a unit is refused
        where the code table lists units (grip in kg or lb); a goal's target may leave it out."""
        value = quantity.get("value")
        number: float = value if isinstance(value, (int, float)) else math.nan
        if not _number(value):
            raise _Refuse(e.path(f"{element}.value"), f"required: a number (got {show_value(value)})")
        if quantity.get("comparator"):
            raise _Refuse(e.path(f"{element}.comparator"), f"{show_value(quantity['comparator'])}: a score "
                                                           "must be exact")
        unit = quantity.get("code") or quantity.get("unit")
        if entry.units is not None and (unit_needed or unit is not None):
            factor = entry.units.get(unit) if isinstance(unit, str) else None
            if factor is None:
                raise _Refuse(e.path(f"{element}.code"), f"{show_value(unit)} is not a unit otrules reads for "
                                                         f"{entry.instrument} ({', '.join(entry.units)})")
            if factor != 1:
                return round(number * factor, 6)
        return number

    def _kind(self, e: Entry, line: _Line) -> str:
        for system, code in codings(e.resource.get("category")):
            kind = self.codes.kind_of(system, code)
            if kind is not None:
                return kind
        encounter = reference(e.resource.get("encounter"), line.bundle)
        if encounter is not None and encounter[0] == "Encounter" and encounter[1] in line.encounters:
            for system, code in codings(line.encounters[encounter[1]].resource.get("type")):
                kind = self.codes.kind_of(system, code)
                if kind is not None:
                    return kind
        return "progress"

    # ------------------------------------------------------------ shared

    def _patient(self, e: Entry, bundle: dict[str, tuple[str, str]]) -> str:
        pid = _patient_or_none(e, bundle)
        if pid is None:
            element = {"EpisodeOfCare": "patient", "Appointment": "participant.actor"}.get(e.type, "subject")
            sent = e.resource.get(element.split(".")[0])
            raise _Refuse(e.path(element), f"required: a reference to the Patient (got {show_value(sent)})")
        return pid

    @staticmethod
    def _time(e: Entry, element: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise _Refuse(e.path(element), "required: when it happened")
        try:
            return event_time(value)
        except PartialTime:
            raise _Refuse(e.path(element), f"{show_value(value)} has no day: otrules needs a full date") from None


# ---------------------------------------------------------------- helpers


def _event_id(e: Entry, rid: str) -> str:
    """contracts.md §7: `<resourceType>/<id>/_history/<versionId>`, without the history part when
    there is no versionId; the same version sent twice is a duplicate, a new version a new event."""
    version = version_id(e.resource)
    event_id = f"{e.type}/{rid}/_history/{version}" if version else f"{e.type}/{rid}"
    if len(event_id) > ID_MAX:
        raise _Refuse(e.path("meta.versionId"), f"the event id {e.type}/<id>/_history/<versionId> would be "
                                                f"{len(event_id)} characters, over {ID_MAX}")
    return event_id


def _derived_id(event_id: str, suffix: str) -> str:
    """An event id made from a resource's, for a second event of the same resource."""
    derived = f"{event_id}#{suffix}"
    if len(derived) <= ID_MAX:
        return derived
    return f"{suffix}:" + hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()


def _remember_outcome(state: PatientState, observation: str, goal_id: str) -> None:
    """Observation -> Goal, as Goal.outcomeReference, focus or derivedFrom said (bounded, newest last)."""
    links: dict[str, str] = _join(state).setdefault("outcomes", {})
    links.pop(observation, None)
    links[observation] = goal_id
    while len(links) > MAX_OUTCOMES:
        links.pop(next(iter(links)))


def _remember_observation(state: PatientState, rid: str, event_id: str, plan_id: str) -> None:
    """The version of an Observation applied last (and its plan): what a later entered-in-error,
    amended or corrected version of it retracts."""
    observations: dict[str, list[str]] = _join(state).setdefault("observations", {})
    observations.pop(rid, None)
    observations[rid] = [event_id, plan_id]
    while len(observations) > MAX_OBSERVATIONS:
        del observations[next(iter(observations))]


def _one_choice(e: Entry, name: str) -> None:
    """A choice element (`value[x]`, `effective[x]`) is 0..1: two of its forms at once (valueInteger and
    valueQuantity) are invalid FHIR, refused rather than one of them picked."""
    sent = sorted(k for k in e.resource if k.startswith(name) and k[len(name):len(name) + 1].isupper())
    if len(sent) > 1:
        raise _Refuse(e.path(f"{name}[x]"), f"{len(sent)} forms of {name}[x] ({', '.join(sent)}): FHIR allows one")


UNKNOWN_ELEMENT = "(unknown element)"
_ELEMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _loc_path(loc: tuple[Any, ...], extra: bool) -> tuple[str, str | None]:
    """The FHIR path of a pydantic error's location, safe to log: an element FHIR does not have (an
    extra key, or any name that is not a plain identifier) is `(unknown element)`, and the path stops
    there; the name itself is returned apart, for the reason only."""
    parts: list[str] = []
    for i, p in enumerate(loc):
        if isinstance(p, int):
            continue
        name = str(p)
        if (extra and i == len(loc) - 1) or not _ELEMENT_NAME.match(name):
            parts.append(UNKNOWN_ELEMENT)
            return ".".join(parts), ".".join(str(x) for x in loc if not isinstance(x, int))
        parts.append(name)
    return ".".join(parts) or "(resource)", None


def _patient_or_none(e: Entry, bundle: dict[str, tuple[str, str]]) -> str | None:
    r = e.resource
    refs: list[Any]
    if e.type == "EpisodeOfCare":
        refs = [r.get("patient")]
    elif e.type == "Appointment":
        refs = [p.get("actor") for p in _list(r.get("participant")) if isinstance(p, dict)]
    else:
        refs = [r.get("subject")]
    for ref in refs:
        found = reference(ref, bundle)
        if found is not None and found[0] == "Patient":
            return found[1]
    return None


def _list(value: Any) -> list[Any]:
    """A FHIR list element as a list (anything else, read before validation, as none)."""
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _join(state: PatientState) -> dict[str, Any]:
    if state.fhir is None:
        state.fhir = {}
    return state.fhir


def _open_plans(state: PatientState) -> list[str]:
    """The patient's plans not discharged, the most recently opened first."""
    plans = [p for p in state.plans.values() if not p.discharged]
    plans.sort(key=lambda p: (-(p.opened_at or 0.0), p.plan_id))
    return [p.plan_id for p in plans]


def _json(event: dict[str, Any]) -> bytes:
    """The event as JSON for `parse_event` (orjson: a third of the cost of json.dumps). A value JSON
    cannot hold (NaN) is refused by the model; orjson would write it as null."""
    try:
        return orjson.dumps(event)
    except TypeError:
        return b"{}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# native field -> FHIR element, for a refusal the native model makes
_FIELD_PATHS = {
    ("Encounter", "occurred_at"): "period.start",
    ("Appointment", "occurred_at"): "start",
    ("EpisodeOfCare", "occurred_at"): "period.end",
    ("CarePlan", "occurred_at"): "meta.lastUpdated",
    ("Encounter", "patient_id"): "subject",
    ("Appointment", "patient_id"): "participant.actor",
}
