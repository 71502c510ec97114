"""Pydantic v2 models for everything that crosses otrules' boundary.

Depends on nothing else in the project. Input events, recommendations, rules
files and the instrument catalogue are defined here exactly as in
`shared/design/contracts.md`; the engine and consumers import them from here.
"""

from otrules.schemas._errors import EventRejected, OtrulesError, describe_validation_error
from otrules.schemas.events import (
    DischargeEvent,
    EvaluationEvent,
    Event,
    FeedbackEvent,
    Goal,
    Measure,
    PlanEvent,
    RetractionEvent,
    VisitEvent,
    parse_event,
)
from otrules.schemas.instruments import Catalogue, Instrument, InstrumentOverride
from otrules.schemas.recommendations import (
    CLOSED_REASONS,
    INDICATORS,
    RECOMMENDATION_KINDS,
    Recommendation,
    RuleRef,
    Source,
)
from otrules.schemas.rulesets import (
    Recommend,
    RulesetFile,
    RuleSpec,
    Throttle,
    parse_duration,
)

__all__ = [
    "CLOSED_REASONS",
    "INDICATORS",
    "RECOMMENDATION_KINDS",
    "Catalogue",
    "DischargeEvent",
    "EvaluationEvent",
    "Event",
    "EventRejected",
    "FeedbackEvent",
    "Goal",
    "Instrument",
    "InstrumentOverride",
    "Measure",
    "OtrulesError",
    "PlanEvent",
    "Recommend",
    "Recommendation",
    "RetractionEvent",
    "RuleRef",
    "RuleSpec",
    "RulesetFile",
    "Source",
    "Throttle",
    "VisitEvent",
    "describe_validation_error",
    "parse_duration",
    "parse_event",
]
