"""CDS Hooks 2.0 documents (contracts.md §9): discovery, hook requests, cards and feedback.

The models follow https://cds-hooks.hl7.org/2.0/ with the field names of the
specification (camelCase, as they go on the wire). Requests and feedback from a
CDS client are validated from their JSON bytes in strict mode by `parse_request`
and `parse_feedback`, which raise `BadRequest` (HTTP 400) with one reason per
problem, each naming the field and why, never the value: a request carries
patient ids and an access token, and reasons end up in logs.

What is read strictly and what is let through:

- `hook` must be `patient-view` (the one hook otrules serves); `hookInstance` a
  UUID (8-4-4-4-12 hexadecimal digits); `context.userId` `[ResourceType]/[id]`
  with the resource types the patient-view hook names; `context.patientId` and
  `encounterId` FHIR ids. `fhirServer` is required with `fhirAuthorization`.
- Unknown top-level fields (`extension`, or ones a client adds) and unknown
  `context` fields (a hook's minor version may add optional ones) are ignored.
- Feedback: `card` a UUID (otrules' card uuids are recommendation ids, uuid5);
  `acceptedSuggestions` required with `accepted` and refused with `overridden`;
  `overrideReason` only with `overridden`, holding a `reason`, a `userComment`
  or both; `outcomeTimestamp` an RFC 3339 date-time with an offset.

Responses (`Discovery`, `CardsResponse`) refuse empty strings when built and
leave out null and empty values when dumped (`dump`, `dump_json`), as CDS Hooks
forbids `null`, `""`, `[]` and `{}` except where it says otherwise: the top-level
`cards` and `services` arrays may be empty. `problems` checks a JSON document
against the specification without these models, for tests of what the service
sends and receives.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, ClassVar, Literal, Self, get_args
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from otrules.schemas._errors import OtrulesError

__all__ = [
    "HOOK",
    "INDICATORS",
    "AcceptedSuggestion",
    "Action",
    "BadRequest",
    "Card",
    "CardsResponse",
    "Coding",
    "Discovery",
    "FeedbackItem",
    "FeedbackRequest",
    "FhirAuthorization",
    "HookRequest",
    "Link",
    "OverrideReason",
    "PatientViewContext",
    "Service",
    "Source",
    "Suggestion",
    "parse_feedback",
    "parse_request",
    "problems",
]

HOOK = "patient-view"
Indicator = Literal["info", "warning", "critical"]  # in rising order of urgency
INDICATORS: tuple[str, ...] = get_args(Indicator)
_MAX_REASONS = 5  # reasons a BadRequest lists before "… and N more"


class BadRequest(OtrulesError, ValueError):
    """A request or feedback body that is not CDS Hooks 2.0 (HTTP 400).

    `reasons` holds one `field: why` per problem (`context.patientId: is required`);
    the message joins them. No reason holds a value from the body.
    """

    def __init__(self, reasons: list[str]) -> None:
        shown = reasons[:_MAX_REASONS]
        more = len(reasons) - len(shown)
        super().__init__("; ".join(shown) + (f"; … and {more} more" if more else ""))
        self.reasons = reasons
        self.field = reasons[0].split(":", 1)[0] if reasons else None


# ---------------------------------------------------------------- value checks


def _fail(kind: str, why: str) -> PydanticCustomError:
    return PydanticCustomError(kind, why)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 `id`
_USER_ID = re.compile(r"(?:Practitioner|PractitionerRole|Patient|RelatedPerson)/[A-Za-z0-9\-.]{1,64}")
_SERVICE_ID = re.compile(r"[A-Za-z0-9\-._~]{1,64}")  # one URL path segment, unreserved characters only
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})")


def _uuid(value: str) -> str:
    if not _UUID.fullmatch(value):
        raise _fail("cds_uuid", "must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return value


def _fhir_id(value: str) -> str:
    if not _FHIR_ID.fullmatch(value):
        raise _fail("cds_fhir_id", "must be a FHIR id (1 to 64 of A-Z, a-z, 0-9, '-' and '.')")
    return value


def _user_id(value: str) -> str:
    if not _USER_ID.fullmatch(value):
        raise _fail("cds_user_id", "must be Practitioner/<id>, PractitionerRole/<id>, Patient/<id> or "
                                   "RelatedPerson/<id>")
    return value


def _service_id(value: str) -> str:
    if not _SERVICE_ID.fullmatch(value):
        raise _fail("cds_service_id", "must be 1 to 64 of A-Z, a-z, 0-9, '-', '.', '_' and '~' (a URL path segment)")
    return value


def _absolute_url(value: str) -> str:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        raise _fail("cds_url", "must be an absolute http or https URL")
    return value


def _rfc3339(value: str) -> str:
    _parse_time(value)
    return value


def _parse_time(value: str) -> dt.datetime:
    if not _DATE_TIME.fullmatch(value):
        raise _fail("cds_date_time", "must be an RFC 3339 date-time with an offset, e.g. 2026-02-20T10:00:00Z")
    text = value.upper().replace("Z", "+00:00")
    head, sep, tail = text.partition(".")
    if sep:  # fromisoformat reads at most 6 fractional digits on 3.11
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = head + "." + (tail[:digits] + "000000")[:6] + tail[digits:]
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        why = "is not a valid date-time (month, day, hour, minute or second out of range)"
        raise _fail("cds_date_time", why) from None


UuidStr = Annotated[str, AfterValidator(_uuid)]
FhirId = Annotated[str, AfterValidator(_fhir_id)]
UserId = Annotated[str, AfterValidator(_user_id)]
ServiceId = Annotated[str, AfterValidator(_service_id)]
AbsoluteUrl = Annotated[str, AfterValidator(_absolute_url)]
DateTime = Annotated[str, AfterValidator(_rfc3339)]


def _rule(field: str, why: str) -> PydanticCustomError:
    """A rule between fields, raised by a model validator: the reason names `field` under the model's path."""
    return PydanticCustomError("cds_rule", "{field}: {why}", {"field": field, "why": why})


# ---------------------------------------------------------------- bases


class _In(BaseModel):
    """What a CDS client sends: strict JSON types, no empty strings, unknown fields ignored."""

    model_config = ConfigDict(strict=True, frozen=True, extra="ignore", str_min_length=1)


class _Out(BaseModel):
    """What otrules sends: no empty strings, no unknown fields; `dump` leaves out null and empty values."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", str_min_length=1)

    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset()  # top-level arrays the specification lets be empty

    def dump(self) -> dict[str, Any]:
        """The JSON object, without any null, empty string, empty array or empty object."""
        data = self.model_dump(mode="json", exclude_none=True)
        out: dict[str, Any] = {}
        for key, value in data.items():
            pruned = _prune(value)
            if not _is_empty(pruned) or (key in self.KEEP_EMPTY and pruned == []):
                out[key] = pruned
        return out

    def dump_json(self) -> bytes:
        """`dump` as compact UTF-8 JSON."""
        return json.dumps(self.dump(), ensure_ascii=False, separators=(",", ":")).encode()


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | dict) and len(value) == 0)


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if not _is_empty(v)}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


# ---------------------------------------------------------------- data types


class Coding(_In):
    """A code (`system` and `code` required); `display` is required in a card's overrideReasons."""

    system: str
    code: str
    display: str | None = None


# ---------------------------------------------------------------- discovery


class Service(_Out):
    hook: str
    title: str | None = None
    description: str
    id: ServiceId
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(_Out):
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset({"services"})

    services: list[Service]


# ---------------------------------------------------------------- request


class FhirAuthorization(_In):
    """The OAuth 2.0 token a client may pass; `access_token` is a SecretStr so it shows in no repr or dump."""

    access_token: SecretStr
    token_type: Literal["Bearer"]
    expires_in: int = Field(ge=0)
    scope: str
    subject: str
    patient: FhirId | None = None

    @model_validator(mode="after")
    def _token_not_empty(self) -> Self:
        if not self.access_token.get_secret_value():
            raise _rule("access_token", "must not be empty")
        return self


class PatientViewContext(_In):
    userId: UserId
    patientId: FhirId
    encounterId: FhirId | None = None


class HookRequest(_In):
    hook: Literal["patient-view"]
    hookInstance: UuidStr
    fhirServer: AbsoluteUrl | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None  # a value may be null: the client could not fetch it
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _server_with_authorization(self) -> Self:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise _rule("fhirServer", "is required when fhirAuthorization is given")
        return self


# ---------------------------------------------------------------- response


class Source(_Out):
    label: str
    url: AbsoluteUrl | None = None
    icon: AbsoluteUrl | None = None
    topic: Coding | None = None


class Action(_Out):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = None


class Suggestion(_Out):
    label: str
    uuid: UuidStr | None = None
    isRecommended: bool | None = None
    actions: list[Action] = Field(default_factory=list)


class Link(_Out):
    label: str
    url: AbsoluteUrl
    type: Literal["absolute", "smart"]
    appContext: str | None = None

    @model_validator(mode="after")
    def _app_context_for_smart(self) -> Self:
        if self.appContext is not None and self.type != "smart":
            raise _rule("appContext", "is only allowed on a link of type 'smart'")
        return self


class Card(_Out):
    uuid: UuidStr | None = None
    summary: str = Field(max_length=139)  # "<140-character summary"
    detail: str | None = None  # GitHub-flavoured Markdown
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] = Field(default_factory=list)
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] = Field(default_factory=list)
    links: list[Link] = Field(default_factory=list)

    @model_validator(mode="after")
    def _card_rules(self) -> Self:
        if self.suggestions and self.selectionBehavior is None:
            raise _rule("selectionBehavior", "is required when the card has suggestions")
        for i, reason in enumerate(self.overrideReasons):
            if reason.display is None:
                raise _rule(f"overrideReasons[{i}].display", "is required on a card's override reasons")
        return self


class CardsResponse(_Out):
    KEEP_EMPTY: ClassVar[frozenset[str]] = frozenset({"cards"})

    cards: list[Card]


# ---------------------------------------------------------------- feedback


class AcceptedSuggestion(_In):
    id: str


class OverrideReason(_In):
    reason: Coding | None = None
    userComment: str | None = None  # free text from a clinician: may hold PHI, never log it

    @model_validator(mode="after")
    def _reason_or_comment(self) -> Self:
        if self.reason is None and self.userComment is None:
            raise _rule("reason", "is required when there is no userComment")
        return self


class FeedbackItem(_In):
    card: UuidStr
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, min_length=1)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: DateTime

    @model_validator(mode="after")
    def _outcome_rules(self) -> Self:
        if self.outcome == "accepted":
            if self.acceptedSuggestions is None:
                raise _rule("acceptedSuggestions", "is required when the outcome is 'accepted'")
            if self.overrideReason is not None:
                raise _rule("overrideReason", "is only allowed when the outcome is 'overridden'")
        elif self.acceptedSuggestions is not None:
            raise _rule("acceptedSuggestions", "is only allowed when the outcome is 'accepted'")
        return self

    @property
    def outcome_time(self) -> dt.datetime:
        """`outcomeTimestamp` as an aware datetime in UTC."""
        return _parse_time(self.outcomeTimestamp).astimezone(dt.UTC)


class FeedbackRequest(_In):
    feedback: list[FeedbackItem] = Field(min_length=1)


# ---------------------------------------------------------------- parsing


def parse_request(body: bytes) -> HookRequest:
    """A patient-view hook request from its JSON body; `BadRequest` says what is wrong, field by field."""
    try:
        return HookRequest.model_validate_json(body)
    except ValidationError as e:
        raise BadRequest(_reasons(e)) from None


def parse_feedback(body: bytes) -> FeedbackRequest:
    """A feedback request from its JSON body; `BadRequest` says what is wrong, field by field."""
    try:
        return FeedbackRequest.model_validate_json(body)
    except ValidationError as e:
        raise BadRequest(_reasons(e)) from None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


_WHY = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must not be empty",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be an array",
    "is_instance_of": "must be a string",
    "json_type": "must be a JSON document",
}


def _reasons(error: ValidationError) -> list[str]:
    """One `field: why` per error, from pydantic's error types: no input value, ever."""
    out: list[str] = []
    for err in error.errors(include_url=False, include_input=False):
        kind, ctx, path = err["type"], err.get("ctx") or {}, _path(err["loc"])
        if kind == "cds_rule":
            path = f"{path}.{ctx['field']}" if path else str(ctx["field"])
            why = str(ctx["why"])
        elif kind.startswith("cds_"):
            why = err["msg"]
        elif kind == "json_invalid":
            why = "is not valid JSON"
        elif kind == "literal_error":
            why = f"must be {ctx['expected']}"
        elif kind == "string_too_long":
            why = f"must be at most {ctx['max_length']} characters"
        elif kind == "too_short":
            why = f"must hold at least {ctx['min_length']} item{'s' if ctx['min_length'] != 1 else ''}"
        elif kind == "greater_than_equal":
            why = f"must be at least {ctx['ge']}"
        else:
            why = _WHY.get(kind, "is not valid")
        out.append(f"{path or 'body'}: {why}")
    return out


# ---------------------------------------------------------------- an independent check of documents
#
# `problems` reads the specification's tables again, field by field, without the models above:
# tests use it to check what the service sends, so a mistake in a model does not hide itself.

_P_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_P_TIME = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?([Zz]|([+-])(\d\d):(\d\d))$")

# field -> (required, type) per object kind; type: "str", "bool", "obj", "arr", "any"
_SPEC: dict[str, dict[str, tuple[bool, str]]] = {
    "service": {"hook": (True, "str"), "title": (False, "str"), "description": (True, "str"), "id": (True, "str"),
                "prefetch": (False, "obj"), "usageRequirements": (False, "str"), "extension": (False, "obj")},
    "card": {"uuid": (False, "str"), "summary": (True, "str"), "detail": (False, "str"), "indicator": (True, "str"),
             "source": (True, "obj"), "suggestions": (False, "arr"), "selectionBehavior": (False, "str"),
             "overrideReasons": (False, "arr"), "links": (False, "arr"), "extension": (False, "obj")},
    "source": {"label": (True, "str"), "url": (False, "str"), "icon": (False, "str"), "topic": (False, "obj")},
    "coding": {"system": (True, "str"), "code": (True, "str"), "display": (False, "str")},
    "suggestion": {"label": (True, "str"), "uuid": (False, "str"), "isRecommended": (False, "bool"),
                   "actions": (False, "arr")},
    "action": {"type": (True, "str"), "description": (True, "str"), "resource": (False, "obj"),
               "resourceId": (False, "str")},
    "link": {"label": (True, "str"), "url": (True, "str"), "type": (True, "str"), "appContext": (False, "str")},
    "feedback": {"card": (True, "str"), "outcome": (True, "str"), "acceptedSuggestions": (False, "arr"),
                 "overrideReason": (False, "obj"), "outcomeTimestamp": (True, "str"), "extension": (False, "obj")},
    "acceptedSuggestion": {"id": (True, "str")},
    "overrideReason": {"reason": (False, "obj"), "userComment": (False, "str")},
}
_JSON_TYPE = {"str": str, "bool": bool, "obj": dict, "arr": list}
_TYPE_NAME = {"str": "a string", "bool": "true or false", "obj": "an object", "arr": "an array"}


def problems(doc: Any, kind: Literal["discovery", "cards", "feedback"]) -> list[str]:
    """What in a JSON document (as parsed) breaks CDS Hooks 2.0; `[]` when nothing does.

    `kind` is `discovery` (GET /cds-services), `cards` (a service's response) or
    `feedback` (a feedback request). Checked: required fields, JSON types, value
    sets, summary under 140 characters, UUIDs, absolute URLs, RFC 3339 times,
    the rules between fields, and that no value anywhere is null or an empty
    string, array or object (except the top-level `cards` and `services`).
    Fields the specification does not define are reported too.
    """
    out: list[str] = []
    if not isinstance(doc, dict):
        return ["(document): must be a JSON object"]
    _no_null_or_empty(doc, "", out)
    top = {"discovery": "services", "cards": "cards", "feedback": "feedback"}[kind]
    allowed_top = {top, "extension"} | ({"systemActions"} if kind == "cards" else set())
    for key in doc:
        if key not in allowed_top:
            out.append(f"{key}: is not a field of a CDS Hooks {kind} document")
    items = doc.get(top)
    if top not in doc:
        out.append(f"{top}: is required")
    elif not isinstance(items, list):
        out.append(f"{top}: must be an array")
    else:
        check = {"discovery": _p_service, "cards": _p_card, "feedback": _p_feedback}[kind]
        for i, item in enumerate(items):
            check(item, f"{top}[{i}]", out)
        if kind == "feedback" and not items:
            out.append("feedback: must hold at least one entry")
        if kind == "cards":
            seen: set[str] = set()
            for i, item in enumerate(items):
                uid = item.get("uuid") if isinstance(item, dict) else None
                if isinstance(uid, str):
                    if uid.lower() in seen:
                        out.append(f"cards[{i}].uuid: is the uuid of an earlier card")
                    seen.add(uid.lower())
        if kind == "discovery":
            ids = [s.get("id") for s in items if isinstance(s, dict)]
            for i, sid in enumerate(ids):
                if isinstance(sid, str) and sid in ids[:i]:
                    out.append(f"services[{i}].id: is the id of an earlier service")
    if kind == "cards" and isinstance(doc.get("systemActions"), list):
        for i, action in enumerate(doc["systemActions"]):
            _p_object(action, "action", f"systemActions[{i}]", out)
            _p_action(action, f"systemActions[{i}]", out)
    return out


def _no_null_or_empty(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if item is None:
                out.append(f"{sub}: is null")
            elif isinstance(item, str | list | dict) and len(item) == 0 and not (path == "" and key in (
                    "cards", "services")):
                out.append(f"{sub}: is empty ({json.dumps(item)})")
            _no_null_or_empty(item, sub, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            if item is None:
                out.append(f"{sub}: is null")
            elif isinstance(item, str | list | dict) and len(item) == 0:
                out.append(f"{sub}: is empty ({json.dumps(item)})")
            _no_null_or_empty(item, sub, out)


def _p_object(obj: Any, kind: str, path: str, out: list[str]) -> bool:
    """Required fields, JSON types and unknown fields of one object; False when it is not an object."""
    if not isinstance(obj, dict):
        out.append(f"{path}: must be an object")
        return False
    spec = _SPEC[kind]
    for name, (required, typ) in spec.items():
        if name not in obj:
            if required:
                out.append(f"{path}.{name}: is required")
            continue
        value = obj[name]
        if value is None:
            continue  # reported as null already
        if not isinstance(value, _JSON_TYPE[typ]) or (typ != "bool" and isinstance(value, bool)):
            out.append(f"{path}.{name}: must be {_TYPE_NAME[typ]}")
    for name in obj:
        if name not in spec:
            out.append(f"{path}.{name}: is not a field of {kind}")
    return True


def _str(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    return value if isinstance(value, str) else None


def _p_url(obj: dict[str, Any], name: str, path: str, out: list[str]) -> None:
    value = _str(obj, name)
    if value is None:
        return
    m = re.match(r"^(https?)://([^/?#\s]+)[^\s]*$", value)
    if not m:
        out.append(f"{path}.{name}: must be an absolute http(s) URL")


def _p_uuid(obj: dict[str, Any], name: str, path: str, out: list[str]) -> None:
    value = _str(obj, name)
    if value is not None and not _P_UUID.match(value):
        out.append(f"{path}.{name}: must be a UUID")


def _p_oneof(obj: dict[str, Any], name: str, allowed: tuple[str, ...], path: str, out: list[str]) -> None:
    value = _str(obj, name)
    if value is not None and value not in allowed:
        out.append(f"{path}.{name}: must be one of {', '.join(allowed)}")


def _p_coding(obj: Any, path: str, out: list[str], display: bool) -> None:
    if _p_object(obj, "coding", path, out) and display and "display" not in obj:
        out.append(f"{path}.display: is required on an override reason")


def _p_service(obj: Any, path: str, out: list[str]) -> None:
    if not _p_object(obj, "service", path, out):
        return
    sid = _str(obj, "id")
    if sid is not None and (not sid or any(c in sid for c in "/?#% ") or not sid.isprintable()):
        out.append(f"{path}.id: must be usable as one URL path segment")
    prefetch = obj.get("prefetch")
    if isinstance(prefetch, dict):
        for key, query in prefetch.items():
            if not isinstance(query, str):
                out.append(f"{path}.prefetch.{key}: must be a string (a FHIR query)")


def _p_card(obj: Any, path: str, out: list[str]) -> None:
    if not _p_object(obj, "card", path, out):
        return
    _p_uuid(obj, "uuid", path, out)
    summary = _str(obj, "summary")
    if summary is not None and len(summary) >= 140:
        out.append(f"{path}.summary: must be fewer than 140 characters (has {len(summary)})")
    _p_oneof(obj, "indicator", ("info", "warning", "critical"), path, out)
    source = obj.get("source")
    if source is not None and _p_object(source, "source", f"{path}.source", out):
        _p_url(source, "url", f"{path}.source", out)
        _p_url(source, "icon", f"{path}.source", out)
        if source.get("topic") is not None:
            _p_coding(source["topic"], f"{path}.source.topic", out, display=False)
    suggestions = obj.get("suggestions")
    if isinstance(suggestions, list):
        for i, suggestion in enumerate(suggestions):
            sub = f"{path}.suggestions[{i}]"
            if _p_object(suggestion, "suggestion", sub, out):
                _p_uuid(suggestion, "uuid", sub, out)
                for j, action in enumerate(suggestion.get("actions") or []):
                    if _p_object(action, "action", f"{sub}.actions[{j}]", out):
                        _p_action(action, f"{sub}.actions[{j}]", out)
        if suggestions and "selectionBehavior" not in obj:
            out.append(f"{path}.selectionBehavior: is required when there are suggestions")
    _p_oneof(obj, "selectionBehavior", ("at-most-one", "any"), path, out)
    reasons = obj.get("overrideReasons")
    if isinstance(reasons, list):
        for i, reason in enumerate(reasons):
            _p_coding(reason, f"{path}.overrideReasons[{i}]", out, display=True)
    links = obj.get("links")
    if isinstance(links, list):
        for i, link in enumerate(links):
            sub = f"{path}.links[{i}]"
            if _p_object(link, "link", sub, out):
                _p_url(link, "url", sub, out)
                _p_oneof(link, "type", ("absolute", "smart"), sub, out)
                if "appContext" in link and link.get("type") != "smart":
                    out.append(f"{sub}.appContext: only a link of type smart may have one")


def _p_action(obj: Any, path: str, out: list[str]) -> None:
    if not isinstance(obj, dict):
        return
    _p_oneof(obj, "type", ("create", "update", "delete"), path, out)
    if obj.get("type") in ("create", "update") and "resource" not in obj:
        out.append(f"{path}.resource: is required for a {obj['type']} action")


def _p_feedback(obj: Any, path: str, out: list[str]) -> None:
    if not _p_object(obj, "feedback", path, out):
        return
    _p_uuid(obj, "card", path, out)
    _p_oneof(obj, "outcome", ("accepted", "overridden"), path, out)
    outcome = obj.get("outcome")
    accepted = obj.get("acceptedSuggestions")
    if outcome == "accepted" and "acceptedSuggestions" not in obj:
        out.append(f"{path}.acceptedSuggestions: is required when the outcome is accepted")
    if outcome == "overridden" and "acceptedSuggestions" in obj:
        out.append(f"{path}.acceptedSuggestions: only an accepted outcome has them")
    if isinstance(accepted, list):
        for i, item in enumerate(accepted):
            _p_object(item, "acceptedSuggestion", f"{path}.acceptedSuggestions[{i}]", out)
    reason = obj.get("overrideReason")
    if reason is not None:
        if outcome != "overridden":
            out.append(f"{path}.overrideReason: only an overridden outcome has one")
        if _p_object(reason, "overrideReason", f"{path}.overrideReason", out):
            if "reason" not in reason and "userComment" not in reason:
                out.append(f"{path}.overrideReason: must hold a reason, a userComment or both")
            if reason.get("reason") is not None:
                _p_coding(reason["reason"], f"{path}.overrideReason.reason", out, display=False)
    stamp = _str(obj, "outcomeTimestamp")
    if stamp is not None and not _p_time_ok(stamp):
        out.append(f"{path}.outcomeTimestamp: must be an RFC 3339 date-time")


def _p_time_ok(text: str) -> bool:
    m = _P_TIME.match(text)
    if not m:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    days = [31, 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30,
            31, 30, 31]
    if not 1 <= month <= 12 or not 1 <= day <= days[month - 1]:
        return False
    if hour > 23 or minute > 59 or second > 60:  # RFC 3339 allows a leap second
        return False
    return not (m.group(9) and (int(m.group(10)) > 23 or int(m.group(11)) > 59))
