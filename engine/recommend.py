"""Turn a matched rule into a recommendation: id, summary, evidence, detail."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from typing import Any, Protocol

from otrules.engine.derive import rfc3339
from otrules.engine.loader import SUMMARY_MAX, CompiledRuleset, Rule
from otrules.schemas import Recommendation, RuleRef, Source
from otrules.schemas.events import NOT_PRINTABLE

# uuid5 namespace for recommendation ids: fixed forever, so replays give the same ids.
NAMESPACE = uuid.UUID("6f1d2c8e-5a3b-5e0f-9c47-0d7b3a1e2f60")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def recommendation_id(ruleset: str, rule_id: str, patient_id: str, event_id: str, goal_id: str | None) -> str:
    """A function of ruleset, rule, trigger event and goal only (not version)."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join((ruleset, rule_id, patient_id, event_id, goal_id or ""))))


class Trigger(Protocol):
    """An event, or the clock tick of a sweep."""

    @property
    def event_id(self) -> str: ...
    @property
    def patient_id(self) -> str: ...
    @property
    def plan_id(self) -> str: ...
    @property
    def occurred_at(self) -> dt.datetime: ...


def build(ruleset: CompiledRuleset, rule: Rule, event: Trigger, facts: dict[str, Any]) -> Recommendation:
    goal_id = facts.get("goal.id")
    evidence = {name: _json_value(facts.get(name)) for name in rule.evidence_facts}
    return Recommendation(
        recommendation_id=recommendation_id(ruleset.name, rule.id, event.patient_id, event.event_id, goal_id),
        kind=rule.recommend.kind,
        patient_id=event.patient_id,
        plan_id=event.plan_id,
        goal_id=goal_id,
        indicator=rule.recommend.indicator,
        summary=_clip(_render_units(rule.recommend.summary, facts)),
        detail=_detail(rule, facts, evidence),
        rule=RuleRef(id=rule.id, ruleset=ruleset.name, version=ruleset.version, digest=ruleset.digest),
        evidence=evidence,
        triggered_by=[event.event_id],
        occurred_at=rfc3339(event.occurred_at),
        source=Source(label=ruleset.label),
    )


def render(template: str, facts: dict[str, Any]) -> str:
    """Fill `{fact.name}` placeholders, text from events escaped (`escape_text`); nothing else in
    the template is interpreted, and a value is not searched for placeholders again."""
    return "".join(_render_units(template, facts))


def _render_units(template: str, facts: dict[str, Any]) -> list[str]:
    """The filled template as units: a character of the template, or one character of a value
    with its escape (`\\|`, `&lt;`), which a cut must keep whole."""
    units: list[str] = []
    at = 0
    for m in _PLACEHOLDER.finditer(template):
        units += template[at : m.start()]
        value = facts.get(m.group(1).strip())
        units += escape_units(value) if isinstance(value, str) else format_value(value)
        at = m.end()
    units += template[at:]
    return units


# ---------------------------------------------------------------- text from events
#
# contracts.md §5: text that came from an event (ids, instrument names, a discharge reason) is
# data, wherever it lands in `summary` or the Markdown `detail`. CDS Hooks shows a summary as
# plain text and renders the detail as (GitHub-flavoured) Markdown, but dashboards put either
# into HTML or through a Markdown renderer with raw HTML on. So one escaping serves both, and a
# value reads the same in all three: plain letters, digits, spaces and `- , / ; ? % =` inside a
# value are left alone (`poc-17-1`, `COPM-performance`, `2026-01-05T09:00:00Z` are unchanged).
#
# - `& < > " '` become HTML entities: no tag, attribute or entity of the input survives in
#   HTML, and Markdown shows an entity as the character (so no raw HTML and no `<autolink>`).
# - Markdown punctuation gets a backslash (CommonMark shows any escaped ASCII punctuation as
#   itself, table cells included), every one of  \ ` * _ { } [ ] ( ) # + ! | ~ $ ^ @  - so no
#   emphasis, code, link, image, footnote, heading, table cell, strikethrough, math or mention.
# - Where a linkifier would see a link: a `:` after a letter or at the value's start
#   (`https\://`), a `.` next to a letter or at either end (`evil\.com`, `www\.1`), so only
#   a `.` between digits or punctuation is left alone (`1.5`).
# - At the value's start (after any spaces), where the value may begin a line of the detail:
#   a `-` or `=` (list item, setext heading, thematic break) and the `.` or `)` after leading
#   digits (ordered list).
# - A control or format character, which validation keeps out of events, becomes U+FFFD.
#
# GitHub's own renderer (cmark-gfm) makes anything shaped like an e-mail address a mailto: link
# whatever its escapes; such a link can only go to the address the text shows.

_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_BACKSLASHED = frozenset("\\`*_{}[]()#+!|~$^@")
_UNPRINTABLE = re.compile(f"[{NOT_PRINTABLE}]")
_LIST_START = re.compile(r" *(?:[-=]|[0-9]{1,9}[.)])")


def escape_text(text: str) -> str:
    """`text` written so that Markdown and HTML show it literally (see above)."""
    return "".join(escape_units(text))


def escape_units(text: str) -> list[str]:
    """`escape_text` as units: one per character of `text`, with its escape if it has one."""
    text = _UNPRINTABLE.sub("\ufffd", text)
    start = _LIST_START.match(text)
    marker = start.end() - 1 if start else -1
    units: list[str] = []
    last = len(text) - 1
    for i, c in enumerate(text):
        if c in _ENTITIES:
            units.append(_ENTITIES[c])
        elif (c in _BACKSLASHED or i == marker
              or (c == ":" and (i == 0 or text[i - 1].isalpha()))
              or (c == "." and (i in (0, last) or text[i - 1].isalpha() or text[i + 1].isalpha()))):
            units.append("\\" + c)
        else:
            units.append(c)
    return units


def format_value(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"  # never `nan` or `inf` in a summary
        if value.is_integer():
            return str(int(value))
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(value)


def _detail(rule: Rule, facts: dict[str, Any], evidence: dict[str, Any]) -> str:
    """The rule's own text (`detail` filled in, else its description), the condition that matched
    and the evidence as a table. Values from events are escaped, in the table's cells too. Fact
    names and the rule's id hold nothing but letters, digits and `._-` (the loader sees to it);
    fact names are code, or a linkifier would make `goal.id` a link to a domain in .id."""
    lines = []
    if rule.recommend.detail:
        lines += [render(rule.recommend.detail, facts), ""]
    elif rule.description:
        lines += [rule.description, ""]
    lines += [f"Rule `{rule.id}` matched: {_code(rule.condition_text)}", "", "| fact | value |", "|---|---|"]
    lines += [f"| `{name}` | {escape_text(value) if isinstance(value, str) else format_value(value)} |"
              for name, value in evidence.items()]
    if rule.references:
        lines += ["", "References:"] + [f"- {ref}" for ref in rule.references]
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    """Whole numbers as integers, so evidence reads 7 rather than 7.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _code(text: str) -> str:
    """`text` as one Markdown code span on one line: a condition may span lines (a YAML block; a
    blank line would end the span) and hold backticks in a quoted text, which would end a span
    of one backtick."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _clip(units: list[str]) -> str:
    """At most SUMMARY_MAX characters (CDS Hooks: fewer than 140), cut with '…' between units,
    so an escape is never cut in half."""
    if sum(map(len, units)) <= SUMMARY_MAX:
        return "".join(units)
    kept, size = [], 0
    for unit in units:
        if size + len(unit) > SUMMARY_MAX - 1:
            break
        kept.append(unit)
        size += len(unit)
    return "".join(kept) + "…"
