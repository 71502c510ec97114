"""What durable_rules 2.0.28 can take, found by experiment; tests/test_durable_limits.py pins
each edge (at it, and one past it), so a durable_rules that moves one fails there first.

The compiler and the engine stay inside these, so a rules file that validates
never meets them: a group of rules is split into as many durable_rules rulesets
as the pending-node and message-key limits need, and a condition too large for
one durable_rules rule is computed by otrules and posted as one yes/no fact.

How the pending-node limit comes about: a condition becomes a tree of alpha
nodes, one per comparison (`$and` a chain, each `$or` branch a child that ends
in a join node). Asserting a fact walks the tree depth-first on a stack of 64
pending nodes; more at once is error 303 on every assert, whether or not a rule
matches. For the children c_1..c_k of one node the stack needs at most
(k - 1) + max pending(c_i): `pending_level` computes that, per rule and for a
whole ruleset (whose root's children are every rule's first comparisons).
"""

from __future__ import annotations

from typing import Any

MAX_PENDING_ALPHAS = 64  # alpha nodes pending at once while one fact is asserted; past it: error 303
MAX_BOOL_NODES_PER_RULE = 15  # `$and` + `$or` nodes in one rule's condition; 16: error 113 at create
MAX_MESSAGE_KEYS = 254  # keys of one posted message, `id` and `sid` included; 255: error 302
MAX_COMPARED_STRING_BYTES = 65_535  # longer strings compare wrongly (lengths held in 16 bits), silently
# Equal tests under one parent share a node, and the model above counts each rule's nodes apart.
# So the compiler keeps rules from sharing: every test starts under a null guard (never shared),
# and values otrules derives are posted under keys of each rule's own. With that, these two
# stay below the pending bound (a shared node once let 33 rules overflow the stack):
MAX_RULES_PER_SHARED_ALPHA = 255  # rules ending on one shared node (segfault past it)
MAX_ALPHA_CHILDREN = 511  # children of one node (hangs past it)

Level = tuple[int, int]  # (sibling nodes at one level, the largest pending count inside any of them)
EMPTY: Level = (0, 0)


def combined(level: Level) -> int:
    """Pending nodes needed for a level of siblings: (k - 1) + the largest inside one."""
    width, inner = level
    return 0 if width == 0 else width - 1 + inner


def pending_level(condition: dict[str, Any], then: Level = EMPTY) -> Level:
    """The level a compiled condition adds under its parent, followed by `then`."""
    if len(condition) == 1:
        ((op, items),) = condition.items()
        if op == "$and" and isinstance(items, list):
            for item in reversed(items):
                then = pending_level(item, then)
            return then
        if op == "$or" and isinstance(items, list):
            join: Level = (1, max(1, combined(then)))
            branches = [pending_level(item, join) for item in items]
            return sum(w for w, _ in branches), max(p for _, p in branches)
    return 1, max(1, combined(then))  # a comparison: one node, then what follows


def bool_nodes(condition: Any) -> int:
    """`$and` and `$or` nodes in a compiled condition (leaf comparisons take none)."""
    if isinstance(condition, dict) and len(condition) == 1:
        ((op, items),) = condition.items()
        if op in ("$and", "$or") and isinstance(items, list):
            return 1 + sum(bool_nodes(i) for i in items)
    return 0


def merge(levels: list[Level]) -> Level:
    """Sibling levels under one parent (rules under a ruleset's root)."""
    return sum(w for w, _ in levels), max((p for _, p in levels), default=0)
