"""Why a rule did or did not match: the first false clause and its fact values.

Used by `otrules explain`; a plain walk over the parsed condition, using the
same reference semantics as `conditions.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from otrules.engine.conditions import And, Node, Not, Or, evaluate, facts_named, to_text


@dataclass(frozen=True, slots=True)
class Clause:
    """One comparison and the values of the facts in it."""

    text: str
    holds: bool
    values: dict[str, Any]


def failing_clauses(node: Node, facts: dict[str, Any]) -> list[Clause]:
    """The clauses that make `node` false: the first false one of an `and`,
    every branch of an `or`, the inner clause of a `not`. Empty if `node` holds."""
    if evaluate(node, facts):
        return []
    if isinstance(node, And):
        first = next(item for item in node.items if not evaluate(item, facts))
        return failing_clauses(first, facts)
    if isinstance(node, Or):
        return [c for item in node.items for c in failing_clauses(item, facts)]
    if isinstance(node, Not):
        return [_clause(node, facts)]
    return [_clause(node, facts)]


def _clause(node: Node, facts: dict[str, Any]) -> Clause:
    return Clause(to_text(node), evaluate(node, facts), {n: facts.get(n) for n in facts_named(node)})
