"""Input events (contracts.md §1): a discriminated union on `type`.

Events are validated from their JSON bytes in strict mode, so a score sent as
the string "5" or a date-time without an offset is rejected rather than
guessed at. Date-times must be RFC 3339 (`2026-01-05T09:00:00Z`,
`2026-01-05T10:00:00.5+01:00`) and dates `YYYY-MM-DD`: pydantic on its own
would also read "20260105" or "1767225600" as Unix time. Score ranges depend
on the instrument catalogue and are checked by `parse_event` after the
structural validation.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema
from typing_extensions import TypeAliasType

from otrules.schemas._errors import EventRejected, describe_validation_error, field_path, literal_at, show_value
from otrules.schemas.instruments import Catalogue

Score = Annotated[float, Field(allow_inf_nan=False)]

# ---------------------------------------------------------------- identifiers and free text
#
# An id (event_id, patient_id, plan_id, goal_id, clinician_id, instrument) goes into Kafka keys
# (patient_id decides the partition), recommendation ids (a uuid5 over ids joined by U+001F),
# the patient's state and its changelog record, and the text of cards: 1 to 128 characters
# bounds all of those (a FHIR id is at most 64, a urn:uuid 45) and leaves room in a summary of
# fewer than 140. Printable only: a control character (newline, tab, DEL, NUL, C1), a format
# character (zero-width space and joiners, bidi controls such as U+202E, the BOM, soft hyphen,
# tag characters) or a line/paragraph separator (U+2028/9) would break keys, logs and tables,
# or make an id look like another; and no white space at either end, which no one can see.
# Free text (a goal's description, a discharge reason) is 1 to 1000 characters with the same
# characters excluded (no line breaks either) and not only white space.
#
# Each class is written out as \uXXXX ranges, which pydantic-core's Rust regex, Python's re and
# ECMA-262 (the JSON Schema dialect) all read alike. The format characters outside the Basic
# Multilingual Plane (\U escapes; ECMA-262 needs a `u` flag and \u{...} for them, which Python's
# re does not read) are checked by otrules only: the JSON Schema leaves them out, and the README
# lists that. Unicode 15.0's Cc, Cf, Zl and Zp; a test compares these with `unicodedata`.
ID_MAX = 128
TEXT_MAX = 1000
_NOT_PRINTABLE_BMP = (r"\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
                      r"\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb")
_NOT_PRINTABLE_ASTRAL = (r"\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
                         r"\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f")
NOT_PRINTABLE = _NOT_PRINTABLE_BMP + _NOT_PRINTABLE_ASTRAL
"""A regex character-class body: the characters no id or free text may hold."""
# White space other than the excluded controls (Unicode Zs), not allowed at either end of an id.
_SPACE = r" \u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"


def _id_pattern(bad: str) -> str:
    return f"^[^{bad}{_SPACE}](?:[^{bad}]*[^{bad}{_SPACE}])?$"


def _text_pattern(bad: str) -> str:
    return f"^[^{bad}]*[^{bad}{_SPACE}][^{bad}]*$"


ID_PATTERN = _id_pattern(NOT_PRINTABLE)
TEXT_PATTERN = _text_pattern(NOT_PRINTABLE)
# What the JSON Schemas say: the same without the characters beyond the BMP (see above).
SCHEMA_ID_PATTERN = _id_pattern(_NOT_PRINTABLE_BMP)
SCHEMA_TEXT_PATTERN = _text_pattern(_NOT_PRINTABLE_BMP)
ID_RULE = (f"1 to {ID_MAX} printable characters: no control or format characters (line breaks, tabs, "
           "zero-width or bidi controls) and no space at either end")
TEXT_RULE = (f"1 to {TEXT_MAX} printable characters, not only spaces: no control or format characters "
             "(line breaks, tabs, zero-width or bidi controls)")


class _Printable:
    """A JSON string of bounded length (pydantic's own messages), then the character rule with a
    message of its own: pydantic's would quote the whole pattern."""

    def __init__(self, max_length: int, pattern: str, schema_pattern: str, error: str, message: str,
                 description: str) -> None:
        self.max_length, self.pattern, self.schema_pattern = max_length, pattern, schema_pattern
        self.error, self.message, self.description = error, message, description

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.chain_schema([
            core_schema.str_schema(min_length=1, max_length=self.max_length, strict=True),
            core_schema.custom_error_schema(core_schema.str_schema(pattern=self.pattern),
                                            custom_error_type=self.error, custom_error_message=self.message),
        ])

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1, "maxLength": self.max_length, "pattern": self.schema_pattern,
                "description": self.description}


# Named type aliases: the JSON Schemas define each once (`$defs/Id`, `$defs/Text`) and refer to it.
Id = TypeAliasType("Id", Annotated[str, _Printable(
    ID_MAX, ID_PATTERN, SCHEMA_ID_PATTERN, "id_characters",
    "Input should be an id of printable characters with no space at either end",
    f"An identifier: {ID_RULE}.",
)])
"""event_id, patient_id, plan_id, goal_id, clinician_id, instrument: see the comment above."""

Text = TypeAliasType("Text", Annotated[str, _Printable(
    TEXT_MAX, TEXT_PATTERN, SCHEMA_TEXT_PATTERN, "text_characters",
    "Input should be printable text, not only spaces",
    f"Free text: {TEXT_RULE}.",
)])
"""A goal's description, a discharge reason."""

# RFC 3339 §5.6 `date-time` ("T" and "Z" may be lower case) and `full-date`.
# [0-9], not \d: the Rust regex engine's \d also matches non-ASCII digits.
_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_TIME = r"[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
_OFFSET = r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
DATE_TIME_PATTERN = f"^{_DATE}[Tt]{_TIME}{_OFFSET}$"
DATE_PATTERN = f"^{_DATE}$"
# What the JSON Schemas say: the same shapes with the year range (1900-2199) that parse_event
# checks in a second step, so pipelines validating with the schema reject those years too.
_YEAR_RANGE = "(19[0-9]{2}|2[01][0-9]{2})"
SCHEMA_DATE_TIME_PATTERN = f"^{_YEAR_RANGE}{_DATE[8:]}[Tt]{_TIME}{_OFFSET}$"
SCHEMA_DATE_PATTERN = f"^{_YEAR_RANGE}{_DATE[8:]}$"


# Years outside this window are typing errors in clinical data; near year 9999 the
# engine's date arithmetic (and a stored state's timestamps) would overflow. Checked
# on the text, in pydantic-core, as the shape is: a Python validator cost a third more per event.
_PLAUSIBLE_YEAR = r"^(19[0-9]{2}|2[01][0-9]{2})-"
_YEARS = "Input should be in the years 1900–2199"


class _Rfc3339:
    """A JSON string in RFC 3339 form first, then pydantic's date/datetime.

    The shape is checked before pydantic parses the value (all in
    pydantic-core), so numbers and digit strings never reach its Unix-time
    reading. A date-time without an offset passes the shape check on purpose,
    to get pydantic's clearer "Input should have timezone info".
    """

    def __init__(self, shape: str, then: core_schema.CoreSchema, message: str, json_schema: dict[str, Any]) -> None:
        self.shape, self.then, self.message, self.json_schema = shape, then, message, json_schema

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.chain_schema([
            core_schema.custom_error_schema(core_schema.str_schema(pattern=self.shape, strict=True),
                                            custom_error_type="rfc3339_format", custom_error_message=self.message),
            core_schema.custom_error_schema(core_schema.str_schema(pattern=_PLAUSIBLE_YEAR),
                                            custom_error_type="date_range", custom_error_message=_YEARS),
            self.then,
        ])

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return dict(self.json_schema)


DateTime = Annotated[dt.datetime, _Rfc3339(
    f"^{_DATE}[Tt]{_TIME}{_OFFSET}?$",
    core_schema.datetime_schema(tz_constraint="aware", strict=False),
    'Input should be an RFC 3339 date-time with an offset (Z or ±hh:mm), such as "2026-01-05T09:00:00Z"',
    {"type": "string", "format": "date-time", "pattern": SCHEMA_DATE_TIME_PATTERN},
)]
"""RFC 3339 date-time with an explicit offset, e.g. 2026-01-05T09:00:00Z or ...+01:00."""

Date = Annotated[dt.date, _Rfc3339(
    DATE_PATTERN,
    core_schema.date_schema(strict=False),
    'Input should be a date written YYYY-MM-DD, such as "2026-04-04"',
    {"type": "string", "format": "date", "pattern": SCHEMA_DATE_PATTERN},
)]
"""RFC 3339 full-date, YYYY-MM-DD."""

MAX_GAS_WEIGHT = 100.0
MAX_MEASURES = 64  # scores per evaluation: a battery is a dozen; the cap keeps one event's state bounded
"""A goal's weight in the GAS T-score: 0 to 100 (Kiresuk & Sherman use small integers; 1e308 made
the T-score NaN)."""

Setting = Literal["inpatient-rehab", "outpatient", "home-health", "school", "skilled-nursing", "acute"]
SETTINGS: tuple[str, ...] = get_args(Setting)


class _EventBase(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    event_id: Id
    patient_id: Id
    plan_id: Id
    occurred_at: DateTime
    schema_version: Literal["1"] = "1"

    @property
    def local_date(self) -> dt.date:
        """Calendar date in the event's own offset: the clinic's day."""
        return self.occurred_at.date()


class Goal(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    goal_id: Id
    description: Text
    instrument: Id
    baseline: Score | None = None
    target: Score
    target_date: Date | None = None
    gas_weight: Annotated[float, Field(ge=0, le=MAX_GAS_WEIGHT, allow_inf_nan=False)] = 1.0


class PlanEvent(_EventBase):
    """A full snapshot of the plan of care; a later one for the plan replaces it."""

    type: Literal["plan"]
    setting: Setting
    frequency_per_week: Annotated[int, Field(ge=0, le=21)] | None = None  # unknown: facts null (contracts.md §1)
    certified_from: Date
    certified_until: Date
    goals: list[Goal]  # may be empty: the contract sets no minimum

    @field_validator("goals")
    @classmethod
    def _unique_goal_ids(cls, goals: list[Goal]) -> list[Goal]:
        seen: set[str] = set()
        for goal in goals:
            if goal.goal_id in seen:
                raise ValueError(f"goal_id {goal.goal_id!r} appears twice")
            seen.add(goal.goal_id)
        return goals

    @field_validator("certified_until")
    @classmethod
    def _not_before_certified_from(cls, until: dt.date, info: ValidationInfo) -> dt.date:
        since = info.data.get("certified_from")
        if since is not None and until < since:
            raise PydanticCustomError("date_order", "Input should not be before certified_from \"{certified_from}\"",
                                      {"certified_from": since.isoformat()})
        return until


class Measure(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    instrument: Id
    score: Score
    goal_id: Id | None = None


class EvaluationEvent(_EventBase):
    type: Literal["evaluation"]
    kind: Literal["initial", "re-evaluation", "progress", "discharge"]
    clinician_id: Id
    measures: Annotated[list[Measure], Field(min_length=1, max_length=MAX_MEASURES)]

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
    reason: Text


class OverrideReason(BaseModel):
    """Why a clinician overrode a recommendation: a code (the card's overrideReasons offer some) and its text."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")

    code: Id
    display: Text | None = None


class FeedbackEvent(_EventBase):
    """A clinician's answer to a recommendation (contracts.md §8): it closes the recommendation if
    it is still open; on an unknown or closed one it is counted and changes nothing."""

    type: Literal["feedback"]
    recommendation_id: Id
    outcome: Literal["accepted", "overridden"]
    override_reason: OverrideReason | None = None
    user_id: Id | None = None

    @field_validator("override_reason")
    @classmethod
    def _only_when_overridden(cls, reason: OverrideReason | None, info: ValidationInfo) -> OverrideReason | None:
        if reason is not None and info.data.get("outcome") == "accepted":
            raise PydanticCustomError("override_reason", "Input should be absent when outcome is accepted")
        return reason


class RetractionEvent(_EventBase):
    """A score taken back (entered in error, contracts.md §1): the evaluation `retracts` names leaves
    the history and what it triggered is closed as `retracted`. A retraction of an unknown or already
    retracted event is counted and changes nothing; it never moves a clock."""

    type: Literal["retraction"]
    retracts: Id
    reason: Text | None = None


Event = Annotated[
    PlanEvent | EvaluationEvent | VisitEvent | DischargeEvent | FeedbackEvent | RetractionEvent,
    Field(discriminator="type"),
]
EVENT_TYPES = ("plan", "evaluation", "visit", "discharge", "feedback", "retraction")
_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
# The event field that holds objects (a list of them), for _keys: Goal and Measure hold none.
_NESTED: dict[type[BaseModel], str] = {PlanEvent: "goals", EvaluationEvent: "measures"}
_ONE_NESTED: dict[type[BaseModel], str] = {FeedbackEvent: "override_reason"}


def parse_event(raw: bytes | str | dict[str, Any], catalogue: Catalogue | None = None) -> Event:
    """Validate one event; raise `EventRejected` naming the field and the value."""
    if isinstance(raw, dict):
        try:
            raw = json.dumps(raw, allow_nan=False)
        except (TypeError, ValueError):
            raise EventRejected(*_not_json(raw)) from None
    elif isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start : exc.start + 1].hex()
            raise EventRejected(f"not UTF-8 text: byte 0x{bad} at position {exc.start}", "not UTF-8 text") from None
    try:
        event = _ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise EventRejected(*_reason(exc, raw)) from None
    # a repeated key: count the key ends in the text against the keys the models saw (inline: this
    # runs for every event); any difference (extra fields, say) takes the exact, slower look
    data = raw if isinstance(raw, bytes) else raw.encode()
    ends = len(_KEY.findall(data)) if _SPACED_KEY.search(data) else data.count(b'":')
    fields = event.__pydantic_fields_set__
    keys = len(fields)
    nested = _NESTED.get(type(event))
    if nested is not None and nested in fields:
        keys += sum(len(item.__pydantic_fields_set__) for item in getattr(event, nested))
    one = _ONE_NESTED.get(type(event))
    if one is not None and getattr(event, one) is not None:
        keys += len(getattr(event, one).__pydantic_fields_set__)
    if ends != keys:
        check_repeated_keys(raw)
    if catalogue is not None and isinstance(event, EvaluationEvent):
        _check_scores(event, catalogue, raw)
    return event


# The end of every object key is its closing quote, then the colon (white space between them is
# rare, and slower to count). A string value that holds `":` counts too, which only sends the
# event down the exact path. Sound while no validator adds fields to a model (none does).
_KEY = re.compile(rb'"[ \t\r\n]*:')
_SPACED_KEY = re.compile(rb'"[ \t\r\n]+:')


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _RepeatedKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def check_repeated_keys(raw: bytes | str) -> None:
    """contracts.md §1: an object that repeats a key is rejected (which value wins is ambiguous)."""
    try:
        json.loads(raw, object_pairs_hook=_no_repeats)
    except _RepeatedKey as exc:
        key = show_value(exc.key)  # the key name is data: in the reason only, cut to 60 characters
        raise EventRejected(f"(repeated key): the key {key} appears more than once in one JSON object",
                            "(repeated key)") from None


def _not_json(value: Any, loc: tuple[Any, ...] = ()) -> tuple[str, str]:
    """(reason, field) for the first value in a Python event that JSON cannot hold."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{field_path(loc)}: not a JSON object key (got {type(key).__name__} {key!r})", field_path(loc)
            found = _not_json(item, (*loc, key))
            if found[0]:
                return found
        return "", ""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _not_json(item, (*loc, i))
            if found[0]:
                return found
        return "", ""
    if value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value)):
        return "", ""
    shown = value.isoformat() if isinstance(value, (dt.date, dt.time)) else repr(value)
    return f"{field_path(loc)}: not a JSON value (got {type(value).__name__} {shown})", field_path(loc)


def _reason(exc: ValidationError, raw: bytes | str) -> tuple[str, str]:
    """(reason naming field and value, the field alone)."""
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return f"not valid JSON: {first['ctx'].get('error', first['msg'])}", "not valid JSON"
    if kind == "model_type" or kind == "model_attributes_type":
        return f"(event): expected a JSON object (got {show_value(first.get('input'))})", "(event)"
    if kind == "union_tag_invalid":
        tag = first.get("ctx", {}).get("tag")
        return f"type: unknown event type {show_value(tag)}; expected one of {', '.join(EVENT_TYPES)}", "type"
    if kind == "union_tag_not_found":
        return "type: required field is missing (one of " + ", ".join(EVENT_TYPES) + ")", "type"
    loc = tuple(first["loc"])
    return describe_validation_error(exc, raw=raw), field_path(loc[1:] if loc and loc[0] in EVENT_TYPES else loc)


def _check_scores(event: EvaluationEvent, catalogue: Catalogue, raw: bytes | str | None = None) -> None:
    for i, measure in enumerate(event.measures):
        instrument = catalogue.get(measure.instrument)
        if instrument is None:
            continue  # unknown instruments are kept, with null MCID facts
        why = instrument.out_of_range(measure.score)
        if why:
            field = f"measures[{i}].score"
            sent = literal_at(raw, ("measures", i, "score")) or show_value(measure.score)
            raise EventRejected(f"{field}: {sent} {why} of {measure.instrument}", field)
