"""The FHIR code table (`rules/fhir-codes.yaml`): which codes mean which instrument,
evaluation kind and care setting (contracts.md §7).

It is data, like the instrument catalogue, so an integration analyst can add a
local code without touching Python. Codes in otrules' own systems need no
entry: `urn:otrules:instrument|<catalogue id>`, `urn:otrules:evaluation-kind|<kind>`
and `urn:otrules:setting|<setting>` always map to themselves.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from otrules.schemas.events import SETTINGS, Id, Setting
from otrules.schemas.instruments import Number

INSTRUMENT_SYSTEM = "urn:otrules:instrument"
KIND_SYSTEM = "urn:otrules:evaluation-kind"
SETTING_SYSTEM = "urn:otrules:setting"
EvaluationKind = Literal["initial", "re-evaluation", "progress", "discharge"]
EVALUATION_KINDS: tuple[str, ...] = ("initial", "re-evaluation", "progress", "discharge")

System = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^\S+$",
                              description="A FHIR code system URI, e.g. http://loinc.org")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$", description="A code in that system")]


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    system: System
    code: Code
    display: str | None = None
    source: str | None = Field(default=None, description="Where the code was checked (a public LOINC page, an IG)")


class InstrumentCode(_Entry):
    """An Observation.code (or Goal.target.measure) coding that is a score of `instrument`."""

    instrument: Id
    answers: dict[Code, Number] | None = Field(
        default=None, description="For a coded value (valueCodeableConcept, e.g. LOINC answers LA...): the score "
                                  "each answer code stands for")
    units: dict[Code, Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        default=None, description="For a valueQuantity: the UCUM codes accepted and the factor that turns each into "
                                  "the instrument's unit; a quantity in another unit is refused. None: any unit")


class KindCode(_Entry):
    """A coding (Observation.category, or the type of the Encounter it names) that says the evaluation kind."""

    kind: EvaluationKind


class SettingCode(_Entry):
    """A CarePlan.category coding that says the care setting."""

    setting: Setting


OtElement = Literal["type", "serviceType", "serviceCategory", "specialty", "appointmentType", "category",
                    "activity", "performer-role", "class"]


class OtCode(_Entry):
    """A coding that makes an Encounter, Appointment or CarePlan occupational therapy (a CPT OT
    evaluation or treatment code, a SNOMED CT OT regime, an HL7 service type, the NUCC taxonomy of a
    performer's role). `on`: the elements it is looked for in (default: all)."""

    on: list[OtElement] | None = Field(default=None, description="Where the code counts: Encounter.type, "
                                       "Appointment.serviceType, CarePlan.category or activity.detail.code, "
                                       "a PractitionerRole's code/specialty (performer-role) ...; none: anywhere")


class CodeTable(BaseModel):
    """The whole file; `instrument_of`, `kind_of` and `setting_of` are the lookups the mapping uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    codes: Id = Field(description="The table's name, e.g. otrules-fhir-codes")
    version: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    instruments: list[InstrumentCode] = Field(default_factory=list)
    evaluation_kinds: list[KindCode] = Field(default_factory=list)
    settings: list[SettingCode] = Field(default_factory=list)
    occupational_therapy: list[OtCode] = Field(
        default_factory=list, description="What makes an Encounter, Appointment or CarePlan occupational therapy; "
                                          "anything else is skipped as `not OT`")
    default_setting: Setting = Field(
        default="outpatient", description="The care setting of a CarePlan whose category, Encounters' class and "
                                          "EpisodeOfCare/Location type say none")
    certification_days: Annotated[int, Field(ge=1, le=366)] = Field(
        default=90, description="A CarePlan without period.end is certified for this many days from period.start "
                                "(Medicare: at most 90)")

    @model_validator(mode="after")
    def _one_meaning_per_code(self) -> CodeTable:
        for name in ("instruments", "evaluation_kinds", "settings", "occupational_therapy"):
            seen: set[tuple[str, str]] = set()
            for i, entry in enumerate(getattr(self, name)):
                key = (entry.system, entry.code)
                if key in seen:
                    raise ValueError(f"{name}[{i}]: {entry.system}|{entry.code} is listed twice")
                seen.add(key)
        return self

    _instruments: dict[tuple[str, str], InstrumentCode] = PrivateAttr(default_factory=dict)
    _kinds: dict[tuple[str, str], str] = PrivateAttr(default_factory=dict)
    _settings: dict[tuple[str, str], str] = PrivateAttr(default_factory=dict)
    _ot: dict[tuple[str, str], frozenset[str] | None] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object) -> None:
        self._instruments = {(e.system, e.code): e for e in self.instruments}
        self._kinds = {(e.system, e.code): e.kind for e in self.evaluation_kinds}
        self._settings = {(e.system, e.code): e.setting for e in self.settings}
        self._ot = {(e.system, e.code): (frozenset(e.on) if e.on else None) for e in self.occupational_therapy}

    def instrument_of(self, system: str | None, code: str | None) -> InstrumentCode | None:
        """The entry for a coding; otrules' own system maps any code to the instrument of that id."""
        if system is None or code is None:
            return None
        found = self._instruments.get((system, code))
        if found is None and system == INSTRUMENT_SYSTEM:
            found = InstrumentCode(system=system, code=code, instrument=code)
        return found

    def kind_of(self, system: str | None, code: str | None) -> str | None:
        if system == KIND_SYSTEM and code in EVALUATION_KINDS:
            return code
        return self._kinds.get((system or "", code or ""))

    def setting_of(self, system: str | None, code: str | None) -> str | None:
        if system == SETTING_SYSTEM and code in SETTINGS:
            return code
        return self._settings.get((system or "", code or ""))

    def is_ot(self, element: str, pairs: list[tuple[str | None, str | None]]) -> bool:
        """Whether any (system, code) found in `element` is an occupational therapy code of the table."""
        for system, code in pairs:
            key = (system or "", code or "")
            if key in self._ot:
                on = self._ot[key]
                if on is None or element in on:
                    return True
        return False

    def coding_for(self, instrument: str) -> InstrumentCode:
        """The coding a writer of FHIR uses for an instrument: the table's first entry for it
        (a standard code where one exists), else otrules' own system."""
        for entry in self.instruments:
            if entry.instrument == instrument:
                return entry
        return InstrumentCode(system=INSTRUMENT_SYSTEM, code=instrument, instrument=instrument)

    def kind_coding(self, kind: str) -> tuple[str, str]:
        """(system, code) a writer of FHIR uses for an evaluation kind: the table's first code for
        it (CPT for initial and re-evaluation), else otrules' own system."""
        for entry in self.evaluation_kinds:
            if entry.kind == kind:
                return entry.system, entry.code
        return KIND_SYSTEM, kind

    def setting_coding(self, setting: str) -> tuple[str, str]:
        """(system, code) a writer of FHIR uses for a care setting (HL7 v3 ActCode where the table
        has one), else otrules' own system."""
        for entry in self.settings:
            if entry.setting == setting:
                return entry.system, entry.code
        return SETTING_SYSTEM, setting
