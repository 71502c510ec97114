"""Pin the public surface: what users import must not move or vanish silently.

Each package's `__all__` is pinned exactly, so adding a name is as deliberate as
removing one: change the list here in the same commit.
"""

import importlib

import pytest

import otrules
import otrules.consumers
import otrules.engine
import otrules.schemas
from otrules.engine import FACTS

SURFACE: dict[str, list[str] | None] = {
    "otrules": ["OtrulesError", "__version__"],
    "otrules.schemas": [
        "CLOSED_REASONS", "Catalogue", "DischargeEvent", "EvaluationEvent", "Event", "EventRejected",
        "FeedbackEvent", "Goal", "INDICATORS",
        "Instrument", "InstrumentOverride", "Measure", "OtrulesError", "PlanEvent", "RECOMMENDATION_KINDS",
        "Recommend", "Recommendation", "RetractionEvent", "RuleRef", "RuleSpec", "RulesetFile", "Source", "Throttle",
        "VisitEvent",
        "describe_validation_error", "parse_duration", "parse_event"],
    "otrules.engine": [
        "CompiledRuleset", "ConditionError", "Engine", "FACTS", "FactInfo", "Outcome", "PatientState", "Problem", "Released",
        "Rule", "RulesetError", "check", "evaluate", "load_catalogue", "load_ruleset", "load_rulesets", "parse",
        "parse_ruleset_text", "to_text"],
    "otrules.consumers": [
        "DeadLetter", "DeadLetterSink", "EventCore", "EventFailed", "Fault", "FileSink", "JsonlSource",
        "PatientStates", "Pipeline", "RecommendationWriter", "Record", "Rejection", "Tally", "TooLarge"],
    "otrules.consumers.kafka": None,  # no __all__: its modules are imported by name; pin one here if it gets one
}


@pytest.mark.parametrize("package", SURFACE)
def test_all_is_pinned(package):
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    expected = SURFACE[package]
    if expected is None:
        assert exported is None, f"{package} now has __all__: pin it in SURFACE"
        return
    assert expected == sorted(expected), "keep the pinned list sorted"
    assert exported is not None
    assert sorted(exported) == expected
    assert len(set(exported)) == len(exported), "a name is listed twice"
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == [], f"{package}.__all__ names what it does not define"


def test_one_base_for_otrules_exceptions():
    """`except OtrulesError` catches otrules' own exceptions; the ValueError ones stay ValueErrors."""
    assert otrules.OtrulesError is otrules.schemas.OtrulesError
    value_errors: list[type[Exception]] = [
        otrules.schemas.EventRejected, otrules.engine.RulesetError, otrules.engine.ConditionError]
    for exc in value_errors:
        assert issubclass(exc, otrules.OtrulesError) and issubclass(exc, ValueError), exc
    from otrules import explain, ruletests
    from otrules.consumers.kafka.connect import KafkaUnreachable
    from otrules.consumers.kafka.service import StateTooLarge

    for exc in [ruletests.SuiteError, ruletests.CaseError]:
        assert issubclass(exc, otrules.OtrulesError) and issubclass(exc, ValueError), exc
    assert issubclass(explain.EventNotFound, otrules.OtrulesError) and issubclass(explain.EventNotFound, LookupError)
    for exc in [otrules.consumers.EventFailed, otrules.consumers.TooLarge, StateTooLarge, KafkaUnreachable]:
        assert issubclass(exc, otrules.OtrulesError), exc


def test_every_contract_fact_is_available():
    contract = """event.type event.kind event.occurred_at patient.id plan.id plan.setting plan.frequency_per_week
    measure.instrument measure.score measure.previous measure.baseline measure.change measure.change_from_baseline
    measure.improvement measure.improvement_from_baseline measure.mcid measure.improved measure.declined
    measure.stable_count measure.count measure.days_since_previous goal.id goal.target goal.met goal.progress
    goal.days_to_target goal.gas_level plan.goals_total plan.goals_met plan.all_goals_met plan.gas_t
    plan.visits_attended plan.visits_missed_in_a_row plan.treatment_days_since_report plan.days_since_evaluation
    plan.days_until_cert_end""".split()
    assert set(contract) <= set(FACTS)
