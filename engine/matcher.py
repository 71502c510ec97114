"""Matching through durable_rules, in the shape durable-rules.md recommends.

One durable_rules ruleset of single-pattern rules per rule group. Each set of
facts is asserted as one flat fact with a fixed id and retracted straight
after, so no partial matches or ids pile up inside durable_rules, one sid
serves every patient (it allows at most 1,024), and every matching rule sees
it (a posted *event* would be consumed by the first rule only).

The ruleset is driven through durable_rules' C core (`durable_rules_engine`)
rather than `durable.engine.Host`: the Host serialises each message once per
call and round-trips every match through Python action closures (state
parsed, re-serialised and written back), which cost twice what the matching
does. Here each message is serialised once, and a match is read off the name
of the rule that the core hands out as its next action. No background timer
threads exist at all (the Host's were seen to segfault when racing a caller).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import weakref
from collections.abc import Sequence
from typing import Any

import durable_rules_engine as core
import orjson

from otrules.engine.compiler import Compiled, Derived
from otrules.engine.facts import durable_key
from otrules.engine.limits import MAX_COMPARED_STRING_BYTES

_names = itertools.count()

_HANDLED = 0  # result codes of core.assert_fact / retract_fact (durable/engine.py: Ruleset._handle_result)
_OBSERVED = 2


class Matcher:
    """Which of a group of compiled conditions hold for one set of facts."""

    def __init__(self, conditions: Sequence[Compiled], fact_names: Sequence[str], label: str = "rules") -> None:
        self.name = f"otrules-{label}-{next(_names)}"
        derived = list({d.key: d for c in conditions for d in c.derived}.values())
        self._derived: list[Derived] = derived
        # each distinct expression computed once per message, then posted under every rule's key
        by_expression: dict[str, tuple[Derived, list[str]]] = {}
        for d in derived:
            by_expression.setdefault(d.expression, (d, []))[1].append(d.key)
        self._expressions = list(by_expression.values())
        self._keys = [(name, durable_key(name)) for name in dict.fromkeys(["event.type", *fact_names])]
        self._rule_index = {f"r{i}": i for i in range(len(conditions))}
        self.definition = {f"r{i}": {"all": [{"m": c.condition}]} for i, c in enumerate(conditions)}
        self._handle: int | None = None
        if conditions:
            self._handle = core.create_ruleset(self.name, orjson.dumps(_durable_numbers(self.definition)).decode())
            weakref.finalize(self, core.delete_ruleset, self._handle)

    @property
    def active(self) -> bool:
        """False when the group has no rules (nothing is ever posted)."""
        return self._handle is not None

    def message(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The flat message posted for `facts` (numbers as floats, see compiler)."""
        get = facts.get
        msg = {key: float(v) if type(v := get(name)) is int else v for name, key in self._keys}
        msg["id"], msg["sid"] = "f", "0"
        for d, keys in self._expressions:
            value = d.value(facts)
            for key in keys:
                msg[key] = value
        return msg

    def match(self, facts: dict[str, Any]) -> list[int]:
        """Indexes of the conditions that hold, in rule order."""
        if self._handle is None:
            return []
        msg = self.message(facts)
        raw = orjson.dumps(msg)
        if len(raw) > MAX_COMPARED_STRING_BYTES:  # only then can a text be too long to compare right
            msg = {k: _comparable(v) for k, v in msg.items()}
            raw = orjson.dumps(msg)
        if _EXPONENT.search(raw):  # rare: only then look at each value (see _durable_number)
            raw = orjson.dumps(_durable_numbers(msg))
        return self.match_text(raw.decode())

    def match_text(self, text: str) -> list[int]:
        """`match` for a message already serialised (benchmarks post recorded ones)."""
        handle = self._handle
        matched: set[int] = set()  # an `or` can hand out the same rule once per branch
        code, state = core.assert_fact(handle, text)
        try:
            if code == _HANDLED:
                action = core.start_action_for_state(handle, state)
                pending = action[1] if action else None
                while pending:
                    matched.add(self._rule_index[_rule_name(pending)])
                    pending = core.complete_and_start_action(handle, state)
            elif code == _OBSERVED:
                raise RuntimeError(f"durable_rules ruleset {self.name}: a fact was left asserted")
        finally:
            code, state = core.retract_fact(handle, text)
            if code == _HANDLED and core.start_action_for_state(handle, state):
                raise RuntimeError(f"durable_rules ruleset {self.name}: a retraction matched a rule")
        return sorted(matched)


_PLAIN_FLOATS = (1e-5, 1e16)  # orjson writes floats outside this range in exponent form
_EXPONENT = re.compile(rb"[0-9]e[-+]")  # how orjson writes one (a string may match too: then only slower)


def _durable_number(v: float) -> orjson.Fragment:
    """`v` as a JSON number durable_rules can read: its parser refuses an exponent
    whose mantissa has no point (`1e-6`, `1e+16`: error 204) and takes `1.0e-06`."""
    text = repr(v)
    if "e" in text and "." not in text:
        text = text.replace("e", ".0e")
    return orjson.Fragment(text)


def _durable_numbers(node: Any) -> Any:
    """A ruleset definition with every float made readable to durable_rules (see above)."""
    if isinstance(node, dict):
        return {k: _durable_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_durable_numbers(v) for v in node]
    if type(node) is float and node and not _PLAIN_FLOATS[0] <= abs(node) < _PLAIN_FLOATS[1]:
        return _durable_number(node)
    return node


def _comparable(value: Any) -> Any:
    """A text of 64 KiB or more as a short marker that equals no quoted text in a condition
    (durable_rules compares such texts wrongly: `"a" * 65536 == "a"` holds there)."""
    if isinstance(value, str) and len(value.encode()) > MAX_COMPARED_STRING_BYTES:
        return "\x00too long: sha256 " + hashlib.sha256(value.encode()).hexdigest()
    return value


def _rule_name(action: str) -> str:
    """`{"r3":{"m":{...}}}` -> `r3`: the core's action message names the rule first."""
    return action[2:action.index('"', 2)]
