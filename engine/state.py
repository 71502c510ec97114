"""Per-patient state: what the engine remembers between events.

Kept small on purpose (a summary per score series, not every score), because
memory per patient decides how many patients one instance can own. Plain
dataclasses with `to_dict`/`from_dict`, so a state store or changelog can
persist them as JSON.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from otrules.schemas import Goal


@dataclass(slots=True)
class Series:
    """Scores of one instrument (for one goal, if any) within one plan."""

    first: float
    last: float
    last_date: dt.date
    count: int = 1
    stable_count: int | None = 0  # run of scores with abs(improvement) < mcid
    anchor: float | None = None  # score that began the current plateau run
    plateau_count: int | None = 0  # later scores within one MCID of the anchor

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "last_date": self.last_date.isoformat(),
                "count": self.count, "stable_count": self.stable_count, "anchor": self.anchor,
                "plateau_count": self.plateau_count}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Series":
        return cls(d["first"], d["last"], dt.date.fromisoformat(d["last_date"]), d["count"], d["stable_count"],
                   d.get("anchor"), d.get("plateau_count"))


@dataclass(slots=True)
class GoalState:
    goal: Goal
    latest: float | None = None  # latest score in the goal's own instrument
    met_ever: bool = False
    gas_level: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"goal": self.goal.model_dump(mode="json"), "latest": self.latest,
                "met_ever": self.met_ever, "gas_level": self.gas_level}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GoalState":
        return cls(Goal.model_validate(d["goal"], strict=False), d["latest"], d["met_ever"], d["gas_level"])


@dataclass(slots=True)
class PlanState:
    plan_id: str
    setting: str | None = None
    frequency_per_week: int | None = None
    certified_from: dt.date | None = None
    certified_until: dt.date | None = None
    goals: dict[str, GoalState] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)  # key: instrument + "\x1f" + goal_id
    visits_attended: int = 0
    visits_missed_in_a_row: int = 0
    treatment_dates: set[dt.date] = field(default_factory=set)  # since the last progress report
    last_evaluation: dt.date | None = None
    discharged: bool = False
    closed_on: dt.date | None = None  # date of the discharge event; retention counts from it

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan_id": self.plan_id, "setting": self.setting, "frequency_per_week": self.frequency_per_week,
            "certified_from": _iso(self.certified_from), "certified_until": _iso(self.certified_until),
            "goals": {k: g.to_dict() for k, g in self.goals.items()},
            "series": {k: s.to_dict() for k, s in self.series.items()},
            "visits_attended": self.visits_attended, "visits_missed_in_a_row": self.visits_missed_in_a_row,
            "treatment_dates": sorted(d.isoformat() for d in self.treatment_dates),
            "last_evaluation": _iso(self.last_evaluation), "discharged": self.discharged,
            "closed_on": _iso(self.closed_on),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PlanState":
        return cls(
            plan_id=d["plan_id"], setting=d["setting"], frequency_per_week=d["frequency_per_week"],
            certified_from=_date(d["certified_from"]), certified_until=_date(d["certified_until"]),
            goals={k: GoalState.from_dict(g) for k, g in d["goals"].items()},
            series={k: Series.from_dict(s) for k, s in d["series"].items()},
            visits_attended=d["visits_attended"], visits_missed_in_a_row=d["visits_missed_in_a_row"],
            treatment_dates={dt.date.fromisoformat(x) for x in d["treatment_dates"]},
            last_evaluation=_date(d["last_evaluation"]), discharged=d["discharged"],
            closed_on=_date(d.get("closed_on")),
        )


@dataclass(slots=True)
class PatientState:
    patient_id: str
    plans: dict[str, PlanState] = field(default_factory=dict)
    seen_event_ids: set[str] = field(default_factory=set)
    throttle: dict[str, dt.datetime] = field(default_factory=dict)  # throttle key -> last emitted

    def plan(self, plan_id: str) -> PlanState:
        plan = self.plans.get(plan_id)
        if plan is None:
            plan = self.plans[plan_id] = PlanState(plan_id)
        return plan

    def to_dict(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "plans": {k: p.to_dict() for k, p in self.plans.items()},
            "seen_event_ids": sorted(self.seen_event_ids),
            "throttle": {k: v.isoformat() for k, v in sorted(self.throttle.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatientState":
        return cls(
            patient_id=d["patient_id"],
            plans={k: PlanState.from_dict(p) for k, p in d["plans"].items()},
            seen_event_ids=set(d["seen_event_ids"]),
            throttle={k: dt.datetime.fromisoformat(v) for k, v in d["throttle"].items()},
        )


def series_key(instrument: str, goal_id: str | None) -> str:
    return f"{instrument}\x1f{goal_id or ''}"


def _iso(d: dt.date | None) -> str | None:
    return d.isoformat() if d else None


def _date(s: str | None) -> dt.date | None:
    return dt.date.fromisoformat(s) if s else None
