"""Compile checked conditions to durable_rules JSON.

durable_rules (2.0.28) quirks this works around, all observed:
- a comparison with a missing field, or `$nex`, is unreliable (`$nex` hangs),
  so every fact is posted, null as JSON null, and each comparison is guarded
  with explicit null tests; negation is pushed down to the comparisons
  (De Morgan), where "not (a < b)" means "a is null or b is null or a >= b";
- `$div` on integers truncates, so every number is posted and compiled as a
  float;
- the left side of a comparison must be a field: when neither side is a bare
  fact, otrules computes the left side and posts it as a derived field;
- a division by a fact could divide by zero (inf in C, null here), so such a
  comparison is computed by otrules and posted as a derived yes/no field;
- an expression made only of constants (e.g. `-(0.5)` as `$mul`) is
  mis-evaluated, so constant sub-expressions are folded before compiling
  (found by the property test in tests/test_compiler_property.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from otrules.engine.conditions import (
    And,
    Arith,
    Compare,
    Const,
    Fact,
    In,
    Neg,
    Node,
    Not,
    Or,
    evaluate,
    facts_named,
    to_text,
    value_of,
    walk,
)
from otrules.engine.facts import durable_key
from otrules.engine.limits import MAX_BOOL_NODES_PER_RULE, MAX_PENDING_ALPHAS, bool_nodes, combined, pending_level

_OPS = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte", "!=": "$neq"}
_INVERSE = {"==": "!=", "!=": "==", "<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ARITH = {"+": "$add", "-": "$sub", "*": "$mul", "/": "$div"}

_TRUE: dict[str, Any] = {"$neq": {"event__type": "\x00"}}  # event.type is always posted
_FALSE: dict[str, Any] = {"event__type": "\x00"}


@dataclass(frozen=True, slots=True)
class Derived:
    """A value otrules computes and posts beside the facts (see module doc)."""

    key: str  # per rule: durable_rules shares a node for equal tests under one parent (engine/limits.py)
    node: Node  # a number expression, or a comparison for yes/no fields
    expression: str = ""  # the same for the same expression in any rule: its value is computed once

    @property
    def boolean(self) -> bool:
        return isinstance(self.node, (Compare, In, And, Or, Not))

    def value(self, facts: dict[str, Any]) -> Any:
        if self.boolean:
            return evaluate(self.node, facts)
        v = value_of(self.node, facts)
        return None if v is None else float(v)


@dataclass(slots=True)
class Compiled:
    condition: dict[str, Any]
    derived: list[Derived] = field(default_factory=list)


def compile_condition(node: Node, prefix: str) -> Compiled:
    """A durable_rules `m` condition for one checked condition AST.

    A condition too large for one durable_rules rule (engine/limits.py: more `$and`/`$or`
    nodes than it compiles, or more pending nodes than it can walk, as a long `or` or a
    long `in [...]` gives) is computed by otrules instead and posted as one yes/no fact,
    which durable_rules then matches."""
    out = Compiled(condition={})
    out.condition = _Compiler(prefix, out.derived).compile(node, negated=False)
    if (bool_nodes(out.condition) > MAX_BOOL_NODES_PER_RULE
            or combined(pending_level(out.condition)) > MAX_PENDING_ALPHAS):
        whole = _derived(prefix, node)
        return Compiled(condition={whole.key: True}, derived=[whole])
    return out


class _Compiler:
    def __init__(self, prefix: str, derived: list[Derived]) -> None:
        self.prefix = prefix
        self.derived = derived

    def derive(self, node: Node) -> str:
        derived = _derived(self.prefix, node)
        self.derived.append(derived)
        return derived.key

    def compile(self, node: Node, negated: bool) -> dict[str, Any]:
        if isinstance(node, Not):
            return self.compile(node.item, not negated)
        if isinstance(node, (And, Or)):
            conjunction = isinstance(node, And) != negated
            return _combine([self.compile(i, negated) for i in node.items], conjunction)
        if isinstance(node, Const):
            return _TRUE if (node.value is True) != negated else _FALSE
        if isinstance(node, In):
            return self.compile_in(node, negated)
        if isinstance(node, Compare):
            return self.compile_compare(node, negated)
        raise AssertionError(node)  # pragma: no cover

    def compile_compare(self, node: Compare, negated: bool) -> dict[str, Any]:
        names = facts_named(node)
        if not names:  # constant comparison: fold it
            return _TRUE if evaluate(node, {}) != negated else _FALSE
        if _is_null(node.left) or _is_null(node.right):
            other = node.right if _is_null(node.left) else node.left
            if _divides_by_fact(other):
                return self.derived_bool(node, negated)
            wants_null = (node.op == "==") != negated
            return _null_test(names, wants_null)
        if _divides_by_fact(node):
            return self.derived_bool(node, negated)
        op, left, right = node.op, node.left, node.right
        if not isinstance(left, Fact) and isinstance(right, Fact):
            op, left, right = _FLIP[op], right, left
        key = durable_key(left.name) if isinstance(left, Fact) else self.derive(left)
        if negated:
            op = _INVERSE[op]
        test = _compare(op, key, _operand(right))
        if negated:
            return _combine([*(_is(n, None) for n in names), test], conjunction=False)
        return _combine([*(_is_not(n, None) for n in names), test], conjunction=True)

    def compile_in(self, node: In, negated: bool) -> dict[str, Any]:
        names = facts_named(node.operand)
        if not names:
            return _TRUE if evaluate(node, {}) != negated else _FALSE
        if _divides_by_fact(node.operand):
            return self.derived_bool(node, negated)
        operand = node.operand
        key = durable_key(operand.name) if isinstance(operand, Fact) else self.derive(operand)
        values = list({(type(v), v): v for v in node.values}.values())  # a repeated value would match twice
        if negated:
            tests = [_compare("!=", key, v) for v in values]
            return _combine([*(_is(n, None) for n in names), _combine(tests, True)], conjunction=False)
        tests = [_compare("==", key, v) for v in values]
        return _combine([*(_is_not(n, None) for n in names), _combine(tests, False)], conjunction=True)

    def derived_bool(self, node: Node, negated: bool) -> dict[str, Any]:
        derived = _derived(self.prefix, node)
        self.derived.append(derived)
        return {derived.key: not negated}


def _derived(prefix: str, node: Node) -> Derived:
    """A derived value under a key of this rule's own. Rules that shared one key would share its
    durable_rules node, whose children then count together against the 64-node stack (a
    red-team file of 33 such rules passed validate and failed 43% of the sample). The
    expression digest lets the matcher compute each distinct expression once per message."""
    expression = hashlib.blake2b(to_text(node).encode(), digest_size=8).hexdigest()
    return Derived(f"__{prefix}_{expression}", node, expression)


def _operand(node: Node) -> Any:
    if isinstance(node, Const):
        if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return float(node.value)
        return node.value
    if isinstance(node, Fact):
        return {"$m": durable_key(node.name)}
    if not facts_named(node):  # durable_rules mis-evaluates all-constant expressions: fold them
        return float(value_of(node, {}))  # type: ignore[arg-type]
    if isinstance(node, Neg):
        return {"$mul": {"$l": -1.0, "$r": _operand(node.operand)}}
    if isinstance(node, Arith):
        return {_ARITH[node.op]: {"$l": _operand(node.left), "$r": _operand(node.right)}}
    raise AssertionError(node)  # pragma: no cover


def _compare(op: str, key: str, operand: Any) -> dict[str, Any]:
    if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        operand = float(operand)
    if op == "==":
        return {key: operand}
    return {_OPS[op]: {key: operand}}


def _is(name: str, value: Any) -> dict[str, Any]:
    return {durable_key(name): value}


def _is_not(name: str, value: Any) -> dict[str, Any]:
    return {"$neq": {durable_key(name): value}}


def _null_test(names: list[str], wants_null: bool) -> dict[str, Any]:
    if wants_null:  # null when any fact in it is null
        return _combine([_is(n, None) for n in names], conjunction=False)
    return _combine([_is_not(n, None) for n in names], conjunction=True)


def _combine(items: list[dict[str, Any]], conjunction: bool) -> dict[str, Any]:
    unit, zero = (_TRUE, _FALSE) if conjunction else (_FALSE, _TRUE)
    kept: list[dict[str, Any]] = []
    op = "$and" if conjunction else "$or"
    for item in items:
        if item is zero:
            return zero
        if item is unit:
            continue
        if len(item) == 1 and op in item:  # flatten nested $and / $or of the same kind
            kept.extend(item[op])
        else:
            kept.append(item)
    if not kept:
        return unit
    if len(kept) == 1:
        return kept[0]
    return {op: kept}


def _is_null(node: Node) -> bool:
    return isinstance(node, Const) and node.value is None


def _divides_by_fact(node: Node) -> bool:
    """A division whose divisor is a fact or zero: C gives inf where we give null."""
    return any(
        isinstance(n, Arith) and n.op == "/" and (facts_named(n.right) or value_of(n.right, {}) == 0)
        for n in walk(node)
    )
