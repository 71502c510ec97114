"""Turn pydantic errors into one-line reasons that name the field and the value."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

_MAX_VALUE_CHARS = 60


class EventRejected(ValueError):
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


def describe_validation_error(exc: ValidationError, *, strip_union_tags: bool = True) -> str:
    """The first few errors as `field: message (got value)`, joined by '; '."""
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = tuple(err["loc"])
        if strip_union_tags and loc and loc[0] in {"plan", "evaluation", "visit", "discharge"}:
            loc = loc[1:]  # the discriminated union adds the tag to the path
        msg = err["msg"]
        if err["type"] == "missing":
            parts.append(f"{field_path(loc)}: required field is missing")
            continue
        parts.append(f"{field_path(loc)}: {msg} (got {show_value(err.get('input'))})")
    more = len(exc.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)
