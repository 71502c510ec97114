"""Rules files (contracts.md §4): immutable rule types, validated as data.

Conditions stay strings here; `otrules.engine` parses and type-checks them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from otrules.schemas.instruments import InstrumentOverride
from otrules.schemas.recommendations import Indicator, Kind

_DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""Rule ids and ruleset names: 1 to 64 ASCII letters, digits, '.', '_' and '-', starting
with a letter or digit. They are typed in test cases and on command lines, shown on every
recommendation and in log lines, and hashed into recommendation ids, so they hold no
spaces, control characters or look-alike letters (an `é` can be stored two ways)."""
ID_RULE = "1 to 64 letters (A-Z, a-z), digits, '.', '_' or '-', starting with a letter or digit"

RuleId = Annotated[str, Field(pattern=ID_PATTERN, description=f"Unique in the file: {ID_RULE}.")]


def parse_duration(text: str) -> dt.timedelta:
    """'14d' -> 14 days. Units: m(inutes), h(ours), d(ays), w(eeks)."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a duration; write a whole number and a unit, e.g. 14d, 12h, 2w, 30m")
    try:
        return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        raise ValueError(f"{text!r} is too long; a duration can be at most {dt.timedelta.max.days} days") from None


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WhenAll(_Frozen):
    all: Annotated[list[When], Field(min_length=1)]


class WhenAny(_Frozen):
    any: Annotated[list[When], Field(min_length=1)]


class WhenNot(_Frozen):
    not_: When = Field(alias="not")


When = Annotated[str, Field(min_length=1)] | WhenAll | WhenAny | WhenNot


class Recommend(_Frozen):
    kind: Kind
    indicator: Indicator
    summary: Annotated[str, Field(min_length=1)]
    detail: str | None = None


class Throttle(_Frozen):
    once_within: str
    per: Literal["goal", "plan", "patient"] = "plan"

    @field_validator("once_within")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def window(self) -> dt.timedelta:
        return parse_duration(self.once_within)


class RuleSpec(_Frozen):
    id: RuleId
    description: str | None = None
    when: When
    recommend: Recommend
    throttle: Throttle | None = None
    references: list[str] = Field(default_factory=list)
    enabled: bool = True


class RulesetFile(_Frozen):
    ruleset: Annotated[str, Field(pattern=ID_PATTERN, description=f"The ruleset's name: {ID_RULE}.")]
    version: Annotated[str, Field(min_length=1)]
    description: str | None = None
    instruments: dict[str, InstrumentOverride] = Field(default_factory=dict)
    rules: Annotated[list[RuleSpec], Field(min_length=1)]


WhenAll.model_rebuild()
WhenAny.model_rebuild()
WhenNot.model_rebuild()
