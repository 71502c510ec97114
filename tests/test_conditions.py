"""The condition language: parsing, precedence, type checks and their messages."""

from __future__ import annotations

import pytest

from otrules.engine.conditions import ConditionError, check, evaluate, facts_named, parse, to_text


def ev(text: str, **facts) -> bool:
    return evaluate(check(parse(text)), {k.replace("__", "."): v for k, v in facts.items()})


def test_not_binds_looser_than_comparison():
    # the contract's example: not (measure.previous >= goal.target)
    assert ev("goal.met and not measure.previous >= goal.target", goal__met=True, measure__previous=5.0, goal__target=7.0)
    assert not ev("goal.met and not measure.previous >= goal.target", goal__met=True, measure__previous=7.0, goal__target=7.0)


def test_null_never_satisfies_a_comparison_and_not_negates():
    assert not ev("measure.previous >= 3", measure__previous=None)
    assert not ev("measure.previous < 3", measure__previous=None)
    assert ev("not measure.previous >= 3", measure__previous=None)


def test_null_is_tested_with_equality():
    assert ev("measure.previous == null", measure__previous=None)
    assert not ev("measure.previous != null", measure__previous=None)
    assert ev("measure.previous != null", measure__previous=0.0)


def test_arithmetic_precedence_and_unary_minus():
    assert ev("measure.improvement <= -2 * measure.mcid", measure__improvement=-4.0, measure__mcid=2.0)
    assert not ev("measure.improvement <= -2 * measure.mcid", measure__improvement=-3.9, measure__mcid=2.0)
    assert ev("measure.score - measure.previous * 2 == 1", measure__score=7.0, measure__previous=3.0)
    assert ev("(measure.score - measure.previous) * 2 == 8", measure__score=7.0, measure__previous=3.0)


def test_in_and_not_in():
    assert ev('plan.setting in ["outpatient", "home-health"]', plan__setting="outpatient")
    assert not ev('plan.setting in ["outpatient"]', plan__setting=None)
    assert ev('plan.setting not in ["acute"]', plan__setting=None)
    assert ev("measure.score in [1, 2, 3]", measure__score=2.0)


def test_or_and_precedence():
    assert ev("goal.met or measure.improved and measure.declined", goal__met=True, measure__improved=False,
              measure__declined=False)


def test_division_by_zero_is_null():
    assert not ev("measure.score / measure.previous > 1", measure__score=3.0, measure__previous=0.0)


def test_facts_named_in_order_of_appearance():
    assert facts_named(parse("goal.met and measure.score > goal.target and goal.met")) == [
        "goal.met", "measure.score", "goal.target"]


def test_round_trip_to_text():
    node = check(parse("not (measure.score + 1 > goal.target or goal.met)"))
    assert to_text(node) == "not (measure.score + 1 > goal.target or goal.met)"
    assert to_text(check(parse(to_text(node)))) == to_text(node)


@pytest.mark.parametrize(
    ("text", "message", "col", "hint"),
    [
        ("measure.scor >= 5", "unknown fact 'measure.scor'", 1, "did you mean measure.score?"),
        ("goal.met == 1", "cannot compare yes/no (goal.met) with a number (1)", 10, "a yes/no fact is tested on its own"),
        ("measure.score", "measure.score is a number, not a yes/no fact", 1, "compare it, e.g. measure.score >= 5"),
        ("measure.score >= ", "expected a fact, a number or '(' but found the end of the condition", 18, None),
        ("measure.score = 5", "'=' is not an operator", None, "write == to compare"),
        ("goal.met && measure.improved", "unexpected '&&'", 10, "write and"),
        ('plan.setting < "acute"', "< compares numbers; text can only be tested with == or !=", 14, None),
        ("measure.score > null", "null can only be tested with == or !=, not >", 15, None),
        ('measure.score in ["a"]', "'in' compares a number with a list holding text \"a\"", 15, None),
        ("", "the condition is empty", 1, None),
        ("(goal.met", "expected ')', found the end of the condition", 10, None),
    ],
)
def test_errors_name_the_problem_and_column(text, message, col, hint):
    with pytest.raises(ConditionError) as info:
        check(parse(text))
    err = info.value
    assert err.message.startswith(message)
    if col is not None:
        assert err.col == col
    if hint:
        assert err.hint and err.hint.startswith(hint)


def test_nothing_is_executed():
    with pytest.raises(ConditionError):
        check(parse("__import__('os').system('true')"))
