"""Recommendations (contracts.md §5), shaped like CDS Hooks cards."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal[
    "advance_goal",
    "modify_plan",
    "increase_frequency",
    "decrease_frequency",
    "re_evaluate",
    "progress_report_due",
    "recertify_plan",
    "discharge",
    "clinical_review",
    "adherence_review",
]
Indicator = Literal["info", "warning", "critical"]  # in rising order of urgency (CDS Hooks)
Status = Literal["open", "closed"]
ClosedReason = Literal["superseded", "resolved", "accepted", "overridden", "discharged", "retracted", "capped"]
CLOSED_REASONS: tuple[str, ...] = get_args(ClosedReason)
RECOMMENDATION_KINDS: tuple[str, ...] = get_args(Kind)
INDICATORS: tuple[str, ...] = get_args(Indicator)


class RuleRef(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    ruleset: str
    version: str
    digest: str


class Source(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str


class Recommendation(BaseModel):
    """One decision the care team should look at, with the evidence for it."""

    model_config = ConfigDict(frozen=True)

    recommendation_id: str
    kind: Kind
    patient_id: str
    plan_id: str
    goal_id: str | None = None
    indicator: Indicator
    summary: str = Field(max_length=139)  # CDS Hooks: "<140 characters"
    detail: str | None = None
    rule: RuleRef
    evidence: dict[str, Any]
    triggered_by: list[str]
    occurred_at: str
    emitted_at: str | None = None
    source: Source
    # contracts.md §8: open until something closes it; a closure is this recommendation again, closed
    status: Status = "open"
    closed_at: str | None = None  # event time of what closed it
    closed_by: str | None = None  # the event id that closed it (a feedback event, a newer trigger, clock@...)
    closed_reason: ClosedReason | None = None
    # added to the contract: the plan's care setting (dashboards filter by it), and a clinician's
    # reason on a closure by feedback (what clinical leads tune rules with)
    setting: str | None = None
    override_reason: dict[str, str] | None = None

    def to_json(self) -> str:
        """Compact JSON in field order: byte-identical for identical content."""
        return self.model_dump_json()
