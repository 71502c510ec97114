"""Input events (contracts.md §1): a discriminated union on `type`.

Events are validated from their JSON bytes in strict mode, so a score sent as
the string "5" or a date-time without an offset is rejected rather than
guessed at. Score ranges depend on the instrument catalogue and are checked by
`parse_event` after the structural validation.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from otrules.schemas._errors import EventRejected, describe_validation_error, show_value
from otrules.schemas.instruments import Catalogue

NonEmpty = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
Score = Annotated[float, Field(allow_inf_nan=False)]

Setting = Literal["inpatient-rehab", "outpatient", "home-health", "school", "skilled-nursing", "acute"]
SETTINGS: tuple[str, ...] = get_args(Setting)


class _EventBase(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    event_id: NonEmpty
    patient_id: NonEmpty
    plan_id: NonEmpty
    occurred_at: AwareDatetime
    schema_version: Literal["1"] = "1"

    @property
    def local_date(self) -> dt.date:
        """Calendar date in the event's own offset: the clinic's day."""
        return self.occurred_at.date()


class Goal(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    goal_id: NonEmpty
    description: str | None = None
    instrument: NonEmpty
    baseline: Score | None = None
    target: Score
    target_date: dt.date | None = None
    gas_weight: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0


class PlanEvent(_EventBase):
    """A full snapshot of the plan of care; a later one for the plan replaces it."""

    type: Literal["plan"]
    setting: Setting
    frequency_per_week: Annotated[int, Field(ge=0, le=21)] | None = None
    certified_from: dt.date | None = None
    certified_until: dt.date | None = None
    goals: list[Goal] = Field(default_factory=list)

    @field_validator("goals")
    @classmethod
    def _unique_goal_ids(cls, goals: list[Goal]) -> list[Goal]:
        seen: set[str] = set()
        for goal in goals:
            if goal.goal_id in seen:
                raise ValueError(f"goal_id {goal.goal_id!r} appears twice")
            seen.add(goal.goal_id)
        return goals


class Measure(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    instrument: NonEmpty
    score: Score
    goal_id: NonEmpty | None = None


class EvaluationEvent(_EventBase):
    type: Literal["evaluation"]
    kind: Literal["initial", "re-evaluation", "progress", "discharge"]
    clinician_id: str | None = None
    measures: Annotated[list[Measure], Field(min_length=1)]

    @property
    def starts_reporting_period(self) -> bool:
        """Progress notes and re-evaluations count as progress reports; the
        initial evaluation opens the first reporting period (CMS 100-02 ch.15
        §220.3.D). Each resets the treatment-day counter."""
        return self.kind in ("progress", "re-evaluation", "initial")


class VisitEvent(_EventBase):
    type: Literal["visit"]
    status: Literal["attended", "missed", "cancelled"]


class DischargeEvent(_EventBase):
    type: Literal["discharge"]
    reason: str | None = None


Event = Annotated[
    Union[PlanEvent, EvaluationEvent, VisitEvent, DischargeEvent],
    Field(discriminator="type"),
]
EVENT_TYPES = ("plan", "evaluation", "visit", "discharge")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Event)


def parse_event(raw: bytes | str | dict[str, Any], catalogue: Catalogue | None = None) -> Event:
    """Validate one event; raise `EventRejected` naming the field and the value."""
    if isinstance(raw, dict):
        raw = json.dumps(raw)
    elif isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            raise EventRejected(f"not UTF-8 text: byte 0x{bad} at position {exc.start}") from None
    try:
        event = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise EventRejected(_reason(exc, raw)) from None
    if catalogue is not None and isinstance(event, EvaluationEvent):
        _check_scores(event, catalogue)
    return event


def _reason(exc: ValidationError, raw: bytes | str) -> str:
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return f"not valid JSON: {first['ctx'].get('error', first['msg'])}"
    if kind == "model_type" or kind == "model_attributes_type":
        return f"(event): expected a JSON object (got {show_value(first.get('input'))})"
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        return f"type: unknown event type {show_value(tag)}; expected one of {', '.join(EVENT_TYPES)}"
    if kind == "union_tag_not_found":
        return "type: required field is missing (one of " + ", ".join(EVENT_TYPES) + ")"
    return describe_validation_error(exc)


def _check_scores(event: EvaluationEvent, catalogue: Catalogue) -> None:
    for i, measure in enumerate(event.measures):
        instrument = catalogue.get(measure.instrument)
        if instrument is None:
            continue  # unknown instruments are kept, with null MCID facts
        why = instrument.out_of_range(measure.score)
        if why:
            field = f"measures[{i}].score"
            raise EventRejected(
                f"{field}: {show_value(measure.score)} {why} of {measure.instrument}", field
            )
