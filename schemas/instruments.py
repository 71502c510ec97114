"""The instrument catalogue: valid ranges, which direction is better, MCIDs.

Clinical leads edit it as data (`rules/instruments.yaml`); a ruleset may
override any value for its own population.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from otrules.schemas._errors import show_value

MAX_NUMBER = 1e15
"""The largest number, either way, that an instrument's values (min, max, step, mcid) and a
rule's condition may hold (`otrules.engine.conditions.MAX_LITERAL` is this): durable_rules
cannot take an infinite number, and its edge for huge ones is narrower than a float's.
Adjust it here."""

Number = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_NUMBER, le=MAX_NUMBER)]


class Instrument(BaseModel):
    """One standardised measure and what counts as a meaningful change."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    min: Number
    max: Number
    min_exclusive: bool = False
    integer: bool = False
    step: Number | None = Field(default=None, gt=0, description="scores are multiples of step")
    better: Literal["higher", "lower"]
    mcid: Number | None = Field(default=None, gt=0)
    mcid_kind: Literal["MCID", "MIC", "MDC", "MDC90", "SRD", "level"] | None = None
    population: str | None = None
    source: str | None = None

    @model_validator(mode="after")
    def _range_is_ordered(self) -> Instrument:
        if self.min >= self.max:
            raise ValueError(f"min {_num(self.min)} must be below max {_num(self.max)}")
        return self

    def range_text(self) -> str:
        low = f">{_num(self.min)}" if self.min_exclusive else _num(self.min)
        return f"{low}–{_num(self.max)}"

    def out_of_range(self, score: float) -> str | None:
        """Why `score` is not a valid score of this instrument, or None."""
        too_low = score <= self.min if self.min_exclusive else score < self.min
        if too_low or score > self.max:
            return f"is outside the range {self.range_text()}"
        if self.integer and score != int(score):
            return "must be a whole number"
        if self.step and abs(score / self.step - round(score / self.step)) > 1e-9:
            return f"must be a multiple of {_num(self.step)}"
        return None

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is better."""
        return 1 if self.better == "higher" else -1


class InstrumentOverride(BaseModel):
    """A ruleset's change to one catalogue entry, or a whole new instrument."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str | None = None
    min: Number | None = None
    max: Number | None = None
    min_exclusive: bool | None = None
    integer: bool | None = None
    step: Number | None = Field(default=None, gt=0)
    better: Literal["higher", "lower"] | None = None
    mcid: Number | None = Field(default=None, gt=0)
    mcid_kind: Literal["MCID", "MIC", "MDC", "MDC90", "SRD", "level"] | None = None
    population: str | None = None
    source: str | None = None

    def apply(self, base: Instrument | None, instrument_id: str) -> Instrument:
        """`base` (None for a new instrument) with this override, validated as an Instrument;
        ValueError says why it cannot be (e.g. an override that puts min above max)."""
        try:
            return self._merge(base, instrument_id)
        except ValidationError as exc:
            reasons = "; ".join(f"{name}: {message}" if name else message for name, message in _reasons(exc))
            raise ValueError(f"{instrument_id}: {reasons}") from None

    def problems(self, base: Instrument | None, instrument_id: str) -> list[tuple[str, str]]:
        """Why `apply` would fail, as (field or "", message) pairs; [] if it would not."""
        try:
            self._merge(base, instrument_id)
        except ValidationError as exc:
            return _reasons(exc)
        return []

    def _merge(self, base: Instrument | None, instrument_id: str) -> Instrument:
        # A new instrument must say enough to be checked and compared.
        start = base.model_dump() if base is not None else {"name": instrument_id}
        return Instrument.model_validate({**start, **self.model_dump(exclude_none=True)})


class Catalogue(BaseModel):
    """All known instruments by canonical id (see clinical.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    catalogue: str = "otrules-instruments"
    version: str = "1"
    instruments: dict[str, Instrument]

    def get(self, instrument_id: str) -> Instrument | None:
        return self.instruments.get(instrument_id)

    def with_overrides(self, overrides: dict[str, InstrumentOverride]) -> Catalogue:
        if not overrides:
            return self
        merged = dict(self.instruments)
        for iid, override in overrides.items():
            merged[iid] = override.apply(merged.get(iid), iid)
        return self.model_copy(update={"instruments": merged})


def _reasons(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors(include_url=False):
        name = ".".join(str(part) for part in err["loc"])
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            out.append((name, str(err["ctx"]["error"])))
        elif err["type"] == "missing":
            out.append((name, "required field is missing"))
        else:
            out.append((name, f"{err['msg']} (got {show_value(err.get('input'))})"))
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
