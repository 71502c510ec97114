"""Turn pydantic errors into one-line reasons that name the field and the value."""

from __future__ import annotations

import json
import re
import unicodedata
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


# What an id or a text may not hold (Unicode Cc, Cf, Zl, Zp; Cs cannot pass the JSON parser). In a
# reason, these and every other character Python does not call printable (spaces other than
# U+0020, unassigned and private-use code points) are shown as JSON escapes (\u202e): they would
# break the reason's line, or hide or reorder text in a log viewer, or look like a plain space.
_UNSEEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KIND = {"Cc": "a control character", "Cf": "a format character", "Cs": "a surrogate", "Zl": "a line separator",
         "Zp": "a paragraph separator"}
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?$")


def show_value(value: Any) -> str:
    """The value as JSON, at most 60 characters, with characters that are not printable as escapes."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in text)
    if len(text) > _MAX_VALUE_CHARS:
        cut = text[: _MAX_VALUE_CHARS - 1]
        partial = _PARTIAL_ESCAPE.search(cut)
        if partial:
            before = cut[: partial.start()]
            if (len(before) - len(before.rstrip("\\"))) % 2 == 0:  # the backslash begins an escape: cut in half
                cut = before
        text = cut + "…"
    return text


def what_is_unprintable(value: str) -> str:
    """For a reason: the first character an id or a text may not hold, and where (1-based)."""
    for i, c in enumerate(value, start=1):
        category = unicodedata.category(c)
        if category in _UNSEEN:
            name = unicodedata.name(c, "")
            return f"U+{ord(c):04X}{f' {name}' if name else ''}, {_KIND[category]}, at character {i}"
    if value.isspace():
        return "only spaces"
    if value[:1].isspace():
        return "a space at the start"
    return "a space at the end" if value[-1:].isspace() else "an unprintable character"


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
        if err["type"] in ("id_characters", "text_characters") and isinstance(err.get("input"), str):
            msg += f": {what_is_unprintable(err['input'])}"
        parts.append(f"{field_path(loc)}: {msg} (got {sent or show_value(err.get('input'))})")
    more = len(exc.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
