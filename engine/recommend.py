"""Turn a matched rule into a recommendation: id, summary, evidence, detail."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from typing import Any, Protocol

from otrules.engine.derive import rfc3339
from otrules.engine.loader import SUMMARY_MAX, CompiledRuleset, Rule
from otrules.schemas import Recommendation, RuleRef, Source

# uuid5 namespace for recommendation ids: fixed forever, so replays give the same ids.
NAMESPACE = uuid.UUID("6f1d2c8e-5a3b-5e0f-9c47-0d7b3a1e2f60")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def recommendation_id(ruleset: str, rule_id: str, patient_id: str, event_id: str, goal_id: str | None) -> str:
    """A function of ruleset, rule, trigger event and goal only (not version)."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join((ruleset, rule_id, patient_id, event_id, goal_id or ""))))


class Trigger(Protocol):
    """An event, or the clock tick of a sweep."""

    @property
    def event_id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def plan_id(self) -> str: ...
    @property
    def occurred_at(self) -> dt.datetime: ...


def build(ruleset: CompiledRuleset, rule: Rule, event: Trigger, facts: dict[str, Any]) -> Recommendation:
    goal_id = facts.get("goal.id")
    evidence = {name: _json_value(facts.get(name)) for name in rule.evidence_facts}
    return Recommendation(
        recommendation_id=recommendation_id(ruleset.name, rule.id, event.patient_id, event.event_id, goal_id),
        kind=rule.recommend.kind,
        patient_id=event.patient_id,
        plan_id=event.plan_id,
        goal_id=goal_id,
        indicator=rule.recommend.indicator,
        summary=_clip(render(rule.recommend.summary, facts)),
        detail=_detail(rule, facts, evidence),
        rule=RuleRef(id=rule.id, ruleset=ruleset.name, version=ruleset.version, digest=ruleset.digest),
        evidence=evidence,
        triggered_by=[event.event_id],
        occurred_at=rfc3339(event.occurred_at),
        source=Source(label=ruleset.label),
    )


def render(template: str, facts: dict[str, Any]) -> str:
    """Fill `{fact.name}` placeholders; nothing else in the template is interpreted."""
    return _PLACEHOLDER.sub(lambda m: format_value(facts.get(m.group(1).strip())), template)


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"  # never `nan` or `inf` in a summary
        if value.is_integer():
            return str(int(value))
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _detail(rule: Rule, facts: dict[str, Any], evidence: dict[str, Any]) -> str:
    lines = []
    if rule.recommend.detail:
        lines += [render(rule.recommend.detail, facts), ""]
    elif rule.description:
        lines += [rule.description, ""]
    lines += [f"Rule `{rule.id}` matched: `{rule.condition_text}`", "", "| fact | value |", "|---|---|"]
    lines += [f"| {name} | {format_value(value)} |" for name, value in evidence.items()]
    if rule.references:
        lines += ["", "References:"] + [f"- {ref}" for ref in rule.references]
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    """Whole numbers as integers, so evidence reads 7 rather than 7.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"
