"""For random conditions and fact values, durable_rules agrees with the plain-Python meaning.

Values are multiples of 0.5 and divisors are powers of two (or facts, which
otrules computes itself), so float arithmetic is exact on both sides and any
disagreement is a real compilation error.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otrules.engine.compiler import compile_condition
from otrules.engine.conditions import And, Arith, Compare, Const, Fact, In, Neg, Not, Or, check, evaluate, to_text
from otrules.engine.matcher import Matcher

NUMBERS = ["measure.score", "measure.previous", "measure.mcid", "goal.progress"]
BOOLS = ["goal.met", "measure.improved"]
TEXTS = ["measure.instrument", "plan.setting"]

halves = st.integers(-8, 8).map(lambda n: n / 2)
number_value = st.one_of(st.none(), halves)

number_leaf = st.one_of(st.sampled_from(NUMBERS).map(Fact), halves.map(lambda v: Const(float(v))))


def _arith(children):
    return st.one_of(
        st.tuples(st.sampled_from("+-*"), children, children).map(lambda t: Arith(*t)),
        st.tuples(children, st.sampled_from([2.0, 4.0, 0.5])).map(lambda t: Arith("/", t[0], Const(t[1]))),
        st.tuples(children, st.sampled_from(NUMBERS)).map(lambda t: Arith("/", t[0], Fact(t[1]))),
        children.map(Neg),
    )


number_expr = st.recursive(number_leaf, _arith, max_leaves=4)

comparison = st.one_of(
    st.tuples(st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), number_expr, number_expr).map(lambda t: Compare(*t)),
    st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(TEXTS).map(Fact),
              st.one_of(st.sampled_from(["A", "B"]).map(Const), st.sampled_from(TEXTS).map(Fact))).map(lambda t: Compare(*t)),
    st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(BOOLS).map(Fact),
              st.booleans().map(Const)).map(lambda t: Compare(*t)),
    st.tuples(st.sampled_from(["==", "!="]), st.one_of(number_expr, st.sampled_from(TEXTS + BOOLS).map(Fact)),
              st.just(Const(None))).map(lambda t: Compare(*t)),
    st.tuples(st.sampled_from(NUMBERS).map(Fact), st.lists(halves, min_size=1, max_size=3)).map(
        lambda t: In(t[0], tuple(float(v) for v in t[1]))),
    st.tuples(st.sampled_from(TEXTS).map(Fact), st.lists(st.sampled_from(["A", "B", "C"]), min_size=1, max_size=2)).map(
        lambda t: In(t[0], tuple(t[1]))),
    st.sampled_from(BOOLS).map(lambda n: Compare("==", Fact(n), Const(True))),
)

condition = st.recursive(
    comparison,
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda xs: And(tuple(xs))),
        st.lists(children, min_size=2, max_size=3).map(lambda xs: Or(tuple(xs))),
        children.map(Not),
    ),
    max_leaves=6,
)

fact_values = st.fixed_dictionaries({
    **dict.fromkeys(NUMBERS, number_value),
    **{n: st.one_of(st.none(), st.booleans()) for n in BOOLS},
    **{n: st.one_of(st.none(), st.sampled_from(["A", "B", "C"])) for n in TEXTS},
})


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(node=condition, samples=st.lists(fact_values, min_size=8, max_size=8))
def test_compiled_ruleset_agrees_with_python_evaluation(node, samples):
    node = check(node)
    matcher = Matcher([compile_condition(node, "p")], NUMBERS + BOOLS + TEXTS, label="property")
    for facts in samples:
        facts = {"event.type": "evaluation", **facts}
        expected = evaluate(node, facts)
        got = matcher.match(facts) == [0]
        assert got == expected, f"{to_text(node)} with {facts}: durable_rules {got}, python {expected}"


def test_the_generator_reaches_both_outcomes():
    """Guard against a vacuous property: both answers occur for simple conditions."""
    node = check(Compare(">", Fact("measure.score"), Const(1.0)))
    matcher = Matcher([compile_condition(node, "g")], ["measure.score"])
    assert matcher.match({"event.type": "x", "measure.score": 2.0}) == [0]
    assert matcher.match({"event.type": "x", "measure.score": 0.5}) == []
    assert matcher.match({"event.type": "x", "measure.score": None}) == []


EXTREMES = [0.0, -0.0, 1e-6, 2e-6, -1e-7, 1e-5, 20.000001, 1e15, 1e16, 1.5e16, 2e16, -1e16, 1e300, -1e300, 5e-324]


def test_tiny_and_huge_numbers_match_as_python_compares_them():
    """orjson and json write these in exponent form (`1e-6`, `1e+16`), which durable_rules
    refuses (error 204) unless the mantissa has a point: a valid score once stopped the stream."""
    for constant in EXTREMES:
        for op in ["<", "<=", "==", ">", ">="]:
            node = check(Compare(op, Fact("measure.score"), Const(constant)))
            matcher = Matcher([compile_condition(node, "x")], ["measure.score"], label="extremes")
            for value in EXTREMES:
                facts = {"event.type": "evaluation", "measure.score": value}
                got = matcher.match(facts) == [0]
                assert got == evaluate(node, facts), f"{value} {op} {constant}: durable_rules {got}"


# ---------------------------------------------------------------- at scale: many rules, long ors, big in lists

wide_or = st.lists(comparison, min_size=12, max_size=40).map(lambda xs: Or(tuple(xs)))
big_in = st.tuples(st.sampled_from(NUMBERS).map(Fact), st.integers(60, 700)).map(
    lambda t: In(t[0], tuple(float(v) / 2 for v in range(-t[1] // 2, t[1] // 2))))
any_condition = st.one_of(condition, wide_or, big_in, st.tuples(wide_or, condition).map(lambda t: And(t)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(nodes=st.lists(any_condition, min_size=40, max_size=150), samples=st.lists(fact_values, min_size=4, max_size=4))
def test_many_rules_long_ors_and_big_in_lists_agree_with_python(nodes, samples):
    """What the engine builds for a big rules file (engine/limits.py): the rules split into
    several durable_rules rulesets, conditions too large for one computed by otrules. Each rule
    answers as the plain-Python meaning does, and nothing errors or hangs."""
    from otrules.engine.processor import shard_bounds

    checked = [check(n) for n in nodes]
    compiled = [compile_condition(n, f"s{i}") for i, n in enumerate(checked)]
    names = NUMBERS + BOOLS + TEXTS
    shards = [(start, Matcher(compiled[start:end], names, label="scale"))
              for start, end in shard_bounds([(names, c) for c in compiled])]
    assert len(shards) >= len(nodes) // 64
    for facts in samples:
        facts = {"event.type": "evaluation", **facts}
        got = {start + i for start, matcher in shards for i in matcher.match(facts)}
        expected = {i for i, n in enumerate(checked) if evaluate(n, facts)}
        assert got == expected, f"rules {sorted(got ^ expected)} disagree with {facts}"


def test_arithmetic_that_overflows_is_null_in_both_meanings():
    """Red team: constants each within range multiplied past the largest float gave inf, which
    durable_rules saw as null (false) while the Python meaning said true; explain disagreed."""
    big = Const(1e15)
    product = Arith("*", Fact("measure.score"), big)
    for _ in range(21):
        product = Arith("*", product, big)
    node = check(Compare(">", product, Const(1.0)))
    matcher = Matcher([compile_condition(node, "o")], ["measure.score"], label="overflow")
    facts = {"event.type": "evaluation", "measure.score": 2.0}
    assert evaluate(node, facts) is False and matcher.match(facts) == []
