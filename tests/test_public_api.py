"""Pin the public surface: what users import must not move or vanish silently."""

import otrules.consumers
import otrules.engine
import otrules.schemas
from otrules.engine import FACTS


def test_engine_surface():
    assert set(otrules.engine.__all__) == {
        "CompiledRuleset", "ConditionError", "Engine", "FACTS", "FactInfo", "Outcome", "PatientState", "Problem",
        "Rule", "RulesetError", "check", "evaluate", "load_catalogue", "load_ruleset", "load_rulesets", "parse",
        "parse_ruleset_text", "to_text"}


def test_schemas_surface():
    for name in ("Event", "parse_event", "EventRejected", "Recommendation", "RulesetFile", "Catalogue"):
        assert name in otrules.schemas.__all__


def test_consumers_surface():
    assert {"Pipeline", "JsonlSource", "RecommendationWriter", "DeadLetterSink"} <= set(otrules.consumers.__all__)


def test_every_contract_fact_is_available():
    contract = """event.type event.kind event.occurred_at patient.id plan.id plan.setting plan.frequency_per_week
    measure.instrument measure.score measure.previous measure.baseline measure.change measure.change_from_baseline
    measure.improvement measure.improvement_from_baseline measure.mcid measure.improved measure.declined
    measure.stable_count measure.count measure.days_since_previous goal.id goal.target goal.met goal.progress
    goal.days_to_target goal.gas_level plan.goals_total plan.goals_met plan.all_goals_met plan.gas_t
    plan.visits_attended plan.visits_missed_in_a_row plan.treatment_days_since_report plan.days_since_evaluation
    plan.days_until_cert_end""".split()
    assert set(contract) <= set(FACTS)
