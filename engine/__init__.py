"""The otrules engine: rules files in, recommendations out, one event at a time.

Public surface (everything else in this package is private to it)::

    from otrules.engine import Engine, PatientState, load_rulesets, load_catalogue
    engine = Engine(load_rulesets(["rules/ot-core.yaml"]), load_catalogue("rules/instruments.yaml"))
    outcome = engine.process(state, event)   # state: PatientState, updated in place
"""

from otrules.engine.conditions import ConditionError, check, evaluate, parse, to_text
from otrules.engine.facts import FACTS, FactInfo
from otrules.engine.loader import (
    CompiledRuleset,
    Problem,
    Rule,
    RulesetError,
    load_catalogue,
    load_ruleset,
    load_rulesets,
    parse_ruleset_text,
)
from otrules.engine.processor import Engine, Outcome, Released
from otrules.engine.state import PatientState

__all__ = [
    "FACTS",
    "CompiledRuleset",
    "ConditionError",
    "Engine",
    "FactInfo",
    "Outcome",
    "PatientState",
    "Problem",
    "Released",
    "Rule",
    "RulesetError",
    "check",
    "evaluate",
    "load_catalogue",
    "load_ruleset",
    "load_rulesets",
    "parse",
    "parse_ruleset_text",
    "to_text",
]
