"""Matching through durable_rules, in the shape durable-rules.md recommends.

One durable_rules ruleset of single-pattern rules per rule group. Each set of
facts is asserted as one flat fact with a fixed id and retracted straight
after, so no partial matches or ids pile up inside durable_rules, one sid
serves every patient (it allows at most 1,024), and every matching rule sees
it (a posted *event* would be consumed by the first rule only). Actions only
record which rules matched; the caller builds recommendations afterwards.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from durable import engine as durable

from otrules.engine.compiler import Compiled, Derived
from otrules.engine.facts import durable_key

_names = itertools.count()


class _QuietHost(durable.Host):
    """A Host without its background timer threads (seen to segfault when
    racing with the caller); otrules drives it from one thread."""

    def _run(self) -> None:  # noqa: D401 - overrides the thread start-up
        return None


class Matcher:
    """Which of a group of compiled conditions hold for one set of facts."""

    def __init__(self, conditions: Sequence[Compiled], fact_names: Sequence[str], label: str = "rules") -> None:
        self._name = f"otrules-{label}-{next(_names)}"
        self._matched: set[int] = set()
        self._derived: list[Derived] = [d for c in conditions for d in c.derived]
        self._keys = [(name, durable_key(name)) for name in dict.fromkeys(["event.type", *fact_names])]
        self._host: durable.Host | None = None
        if conditions:
            definition = {
                f"r{i}": {"all": [{"m": c.condition}], "run": self._collector(i)} for i, c in enumerate(conditions)
            }
            self._host = _QuietHost()
            self._host.set_rulesets({self._name: definition})

    def _collector(self, index: int) -> Any:
        def collect(c: Any) -> None:
            self._matched.add(index)

        return collect

    def message(self, facts: dict[str, Any]) -> dict[str, Any]:
        """The flat message posted for `facts` (numbers as floats, see compiler)."""
        msg: dict[str, Any] = {"id": "f", "sid": "0"}
        for name, key in self._keys:
            msg[key] = _plain(facts.get(name))
        for d in self._derived:
            msg[d.key] = d.value(facts)
        return msg

    def match(self, facts: dict[str, Any]) -> list[int]:
        """Indexes of the conditions that hold, in rule order."""
        if self._host is None:
            return []
        msg = self.message(facts)
        self._matched.clear()
        try:
            self._host.assert_fact(self._name, msg)
        except durable.MessageNotHandledException:
            pass
        try:
            self._host.retract_fact(self._name, msg)
        except durable.MessageNotHandledException:
            pass
        return sorted(self._matched)


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return float(value)
