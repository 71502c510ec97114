"""Turn pydantic errors into one-line reasons that name the field and the value."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

_MAX_VALUE_CHARS = 60


class OtrulesError(Exception):
    """Base of otrules' own exceptions: `except OtrulesError` catches any of them.

    Where a built-in exception fits too, the class derives from it as well, so
    `except ValueError` around parsing and loading keeps working::

        OtrulesError
        ├── EventRejected (ValueError)   otrules.schemas: an input event that cannot be processed
        ├── RulesetError (ValueError)    otrules.engine: rules files that cannot be used, every problem listed
        ├── ConditionError (ValueError)  otrules.engine: a condition that cannot be parsed or type-checked
        ├── SuiteError (ValueError)      otrules.ruletests: a rule-test suite that cannot be read
        ├── CaseError (ValueError)       otrules.ruletests: one test case that cannot be expanded
        ├── EventNotFound (LookupError)  otrules.explain: no such event in the stream
        ├── EventFailed                  otrules.consumers: the engine failed on one record (Fault.RAISE)
        ├── TooLarge                     otrules.consumers: an output over the record size limit
        ├── StateTooLarge                otrules.consumers.kafka: a patient's state over the changelog's limit
        └── KafkaUnreachable             otrules.consumers.kafka: no broker answered within --connect-timeout
    """


class EventRejected(OtrulesError, ValueError):
    """An input event that cannot be processed; `reason` names field and value."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def field_path(loc: tuple[Any, ...]) -> str:
    """`('measures', 0, 'score')` -> `measures[0].score`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(event)"


def show_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 1] + "…"
    return text


class _Literal(str):
    """A JSON number or constant exactly as it was written."""


def literal_at(raw: bytes | str | None, loc: tuple[Any, ...]) -> str | None:
    """The number at `loc` in the JSON text `raw`, as it was sent (`1e309`, not Infinity; all 38
    digits of an integer, not a rounded float). Only on the error path: it parses `raw` again."""
    if raw is None:
        return None
    try:
        node: Any = json.loads(raw, parse_float=_Literal, parse_int=_Literal, parse_constant=_Literal)
    except (ValueError, RecursionError):
        return None
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return str(node) if isinstance(node, _Literal) else None


def describe_validation_error(exc: ValidationError, *, strip_union_tags: bool = True,
                              raw: bytes | str | None = None) -> str:
    """The first few errors as `field: message (got value)`, joined by '; '. With the JSON text
    `raw`, a number is shown as it was sent."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = tuple(err["loc"])
        if strip_union_tags and loc and loc[0] in {"plan", "evaluation", "visit", "discharge"}:
            loc = loc[1:]  # the discriminated union adds the tag to the path
        msg = err["msg"]
        if err["type"] == "missing":
            parts.append(f"{field_path(loc)}: required field is missing")
            continue
        sent = literal_at(raw, loc) if isinstance(err.get("input"), (int, float)) else None
        parts.append(f"{field_path(loc)}: {msg} (got {sent or show_value(err.get('input'))})")
    more = len(exc.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
