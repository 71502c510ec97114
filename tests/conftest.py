"""Shared fixtures: the default engine and a compact way to write patient stories."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from otrules import defaults
from otrules.engine import Engine, PatientState, parse_ruleset_text
from otrules.schemas import Recommendation, parse_event

pytest_plugins = ["kafka_support", "fhir_validator_support"]


@pytest.fixture(scope="session")
def catalogue():
    return defaults.catalogue()


@pytest.fixture(scope="session")
def engine(catalogue) -> Engine:
    return Engine(defaults.rulesets(), catalogue)


def engine_for(rules_yaml: str) -> Engine:
    return Engine([parse_ruleset_text(rules_yaml, "test.yaml")], defaults.catalogue())


class Story:
    """One patient's events, written by day number from a start date.

    >>> Story().plan(0, goals=[goal("g1", "COPM-performance", 3, 7)]).evaluation(14, ("COPM-performance", 5, "g1"))
    """

    def __init__(self, patient: str = "p-1", plan_id: str = "poc-1", start: str = "2026-01-05") -> None:
        self.patient, self.plan_id = patient, plan_id
        self.start = dt.date.fromisoformat(start)
        self.events: list[dict[str, Any]] = []

    def _at(self, day: int, hour: int) -> str:
        return f"{self.start + dt.timedelta(days=day)}T{hour:02d}:00:00Z"

    def _add(self, type_: str, day: int, hour: int, **fields: Any) -> Story:
        n = len(self.events) + 1
        self.events.append({"type": type_, "event_id": f"{self.patient}-e{n:03d}", "patient_id": self.patient,
                            "plan_id": self.plan_id, "occurred_at": self._at(day, hour), **fields})
        return self

    def plan(self, day: int = 0, goals: list[dict[str, Any]] | None = None, cert_days: int = 90,
             setting: str = "outpatient", frequency: int = 2) -> Story:
        start = self.start + dt.timedelta(days=day)
        return self._add("plan", day, 8, setting=setting, frequency_per_week=frequency,
                         certified_from=str(start), certified_until=str(start + dt.timedelta(days=cert_days - 1)),
                         goals=goals or [])

    def evaluation(self, day: int, *measures: tuple[Any, ...], kind: str = "progress") -> Story:
        ms = [{"instrument": m[0], "score": m[1], **({"goal_id": m[2]} if len(m) > 2 else {})} for m in measures]
        return self._add("evaluation", day, 10, kind=kind, clinician_id="ot-1", measures=ms)

    def visit(self, day: int, status: str = "attended", hour: int = 9) -> Story:
        return self._add("visit", day, hour, status=status)

    def discharge(self, day: int, reason: str = "goals-met") -> Story:
        return self._add("discharge", day, 16, reason=reason)

    def feedback(self, day: int, recommendation_id: str, outcome: str = "accepted", reason: str | None = None,
                 hour: int = 17) -> Story:
        extra: dict[str, Any] = {"override_reason": {"code": reason, "display": reason}} if reason else {}
        return self._add("feedback", day, hour, recommendation_id=recommendation_id, outcome=outcome,
                         user_id="ot-1", **extra)


def goal(goal_id: str, instrument: str, baseline: float | None, target: float, target_day: int | None = None,
         start: str = "2026-01-05", weight: float = 1) -> dict[str, Any]:
    g: dict[str, Any] = {"goal_id": goal_id, "description": f"goal {goal_id}", "instrument": instrument,
                         "target": target, "gas_weight": weight}
    if baseline is not None:
        g["baseline"] = baseline
    if target_day is not None:
        g["target_date"] = str(dt.date.fromisoformat(start) + dt.timedelta(days=target_day))
    return g


def run_story(engine: Engine, story: Story | list[dict[str, Any]]) -> list[Recommendation]:
    """Recommendations for a list of events, through the real engine (what it recommends: the
    closures of open ones are left out, tests/test_open_recommendations.py has them)."""
    events = story.events if isinstance(story, Story) else story
    states: dict[str, PatientState] = {}
    out: list[Recommendation] = []
    for raw in events:
        event = parse_event(raw, engine.catalogue)
        state = states.setdefault(event.patient_id, PatientState(event.patient_id))
        out.extend(r for r in engine.process(state, event).recommendations if r.status == "open")
    return out


def by_rule(recs: list[Recommendation], rule_id: str) -> list[Recommendation]:
    return [r for r in recs if r.rule.id == rule_id]
