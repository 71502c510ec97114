"""Text that cannot inject (issue 13 item 4, contracts.md §1 and §5).

Identifiers have a shape (printable, no control or format characters, no space at either end,
1 to 128 characters) and free text a bound (1 to 1000 printable characters); the rest is rejected
naming the field. Every value from an event that lands in a recommendation's `summary` or Markdown
`detail` is escaped for Markdown and HTML, table cells included: checked with two real renderers,
markdown-it (GFM-like: tables, strikethrough, linkify, raw HTML on) and cmark-gfm (GitHub's own),
over every text field of every event type and every rule of the default rules.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import html.parser
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token
from pydantic import TypeAdapter

from conftest import Story, engine_for, goal, run_story
from otrules import ruletests
from otrules.engine import Engine
from otrules.engine.loader import SUMMARY_MAX
from otrules.engine.recommend import escape_text, format_value
from otrules.schemas import EventRejected, Recommendation, parse_event
from otrules.schemas._errors import show_value
from otrules.schemas.events import ID_MAX, TEXT_MAX, Id, Text

ROOT = Path(__file__).resolve().parent.parent
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
MD = MarkdownIt("gfm-like", {"typographer": False})  # tables, strikethrough, linkify, raw HTML
_BAD = {"Cc", "Cf", "Zl", "Zp"}

BASE = {"event_id": "e-1", "patient_id": "p-1", "plan_id": "poc-1", "occurred_at": "2026-01-05T09:00:00Z"}
EVENTS: dict[str, dict[str, Any]] = {
    "plan": {"type": "plan", **BASE, "setting": "outpatient", "frequency_per_week": 2, "certified_from": "2026-01-05",
             "certified_until": "2026-04-04",
             "goals": [{"goal_id": "g1", "description": "Dress", "instrument": "COPM-performance", "target": 7}]},
    "evaluation": {"type": "evaluation", **BASE, "kind": "progress", "clinician_id": "ot-4",
                   "measures": [{"instrument": "COPM-performance", "score": 5, "goal_id": "g1"}]},
    "visit": {"type": "visit", **BASE, "status": "attended"},
    "discharge": {"type": "discharge", **BASE, "reason": "goals-met"},
}
_COMMON = ["event_id", "patient_id", "plan_id"]
ID_FIELDS = [(t, f) for t in EVENTS for f in _COMMON] + [
    ("plan", "goals[0].goal_id"), ("plan", "goals[0].instrument"), ("evaluation", "clinician_id"),
    ("evaluation", "measures[0].instrument"), ("evaluation", "measures[0].goal_id")]
TEXT_FIELDS = [("plan", "goals[0].description"), ("discharge", "reason")]

# (value, what the reason says is wrong with it)
BAD_IDS = [
    ("a\nb", "U+000A, a control character, at character 2"),
    ("a\r\nb", "U+000D, a control character, at character 2"),
    ("a\tb", "U+0009"), ("a\x00b", "U+0000"), ("ab\x7f", "U+007F, a control character, at character 3"),
    ("a\x85b", "U+0085"), ("a\x9bb", "U+009B"),
    ("g1\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE, a format character, at character 3"),
    ("a\u2066b", "U+2066 LEFT-TO-RIGHT ISOLATE"), ("a\u200bb", "U+200B ZERO WIDTH SPACE"),
    ("a\u200db", "U+200D ZERO WIDTH JOINER"), ("\ufeffa", "U+FEFF ZERO WIDTH NO-BREAK SPACE, a format character, at character 1"),
    ("a\u00adb", "U+00AD SOFT HYPHEN"), ("a\u061cb", "U+061C ARABIC LETTER MARK"),
    ("a\u2028b", "U+2028 LINE SEPARATOR, a line separator"), ("a\u2029b", "U+2029 PARAGRAPH SEPARATOR"),
    ("a\U000e0041b", "U+E0041 TAG LATIN CAPITAL LETTER A, a format character"),
    (" g1", "a space at the start"), ("g1 ", "a space at the end"), ("\u00a0g1", "a space at the start"),
    ("g1\u3000", "a space at the end"), ("   ", "only spaces"),
]
ASTRAL = {"a\U000e0041b"}  # a format character beyond the BMP: otrules rejects it, the JSON Schema cannot say
GOOD_IDS = ["x" * ID_MAX, "a b", "p 17/3", "urn:uuid:6f1d2c8e-5a3b-5e0f-9c47-0d7b3a1e2f60", "Müller-Lüdenscheidt",
            "患者-17", "😀-1", "a\u00a0b", "<img src=x onerror=alert(1)>", "[click](javascript:alert(1))",
            "# URGENT", "| a | b |", "&amp;", "https://evil.example"]
BAD_TEXTS = [("a\nb", "U+000A"), ("\tDress", "U+0009"), ("Dress\u202e", "U+202E"), (" ", "only spaces"),
             ("\u00a0 \u3000", "only spaces"), ("a\u2028b", "U+2028")]
GOOD_TEXTS = ["x" * TEXT_MAX, " Dress, then undress ", "**bold** <script>alert(1)</script> [x](https://evil.example)"]


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    node: Any = event
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
    return event


def _get(event: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+", path):
        event = event[int(part)] if part.isdigit() else getattr(event, part)
    return event


def _rejected(catalogue, event: dict[str, Any]) -> EventRejected:
    with pytest.raises(EventRejected) as info:
        parse_event(json.dumps(event, ensure_ascii=False).encode(), catalogue)
    return info.value


def _event_schema():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "json" / "event.schema.json").read_text()))


# ---------------------------------------------------------------- identifiers and free text


@pytest.mark.parametrize(("etype", "field"), ID_FIELDS, ids=[f"{t}.{f}" for t, f in ID_FIELDS])
@pytest.mark.parametrize(("value", "why"), BAD_IDS, ids=[ascii(v) for v, _ in BAD_IDS])
def test_an_id_that_is_not_printable_is_rejected_naming_the_field_and_showing_the_value(catalogue, etype, field,
                                                                                        value, why):
    rejected = _rejected(catalogue, _set(EVENTS[etype], field, value))
    assert rejected.field == field
    assert rejected.reason.startswith(f"{field}: Input should be an id of printable characters with no space "
                                      f"at either end: {why}"), rejected.reason
    assert rejected.reason.endswith(f"(got {show_value(value)})"), rejected.reason
    assert rejected.reason.isprintable(), rejected.reason  # the character itself shown as an escape, never raw


@pytest.mark.parametrize(("etype", "field"), ID_FIELDS, ids=[f"{t}.{f}" for t, f in ID_FIELDS])
def test_an_id_is_1_to_128_characters(catalogue, etype, field):
    rejected = _rejected(catalogue, _set(EVENTS[etype], field, "x" * (ID_MAX + 1)))
    assert (rejected.field, rejected.reason) == (
        field, f'{field}: String should have at most 128 characters (got "{"x" * 58}…)')
    rejected = _rejected(catalogue, _set(EVENTS[etype], field, ""))
    assert rejected.reason == f'{field}: String should have at least 1 character (got "")'


@pytest.mark.parametrize(("etype", "field"), ID_FIELDS, ids=[f"{t}.{f}" for t, f in ID_FIELDS])
@pytest.mark.parametrize("value", GOOD_IDS)
def test_any_printable_id_is_accepted_as_it_was_sent(catalogue, etype, field, value):
    event = parse_event(json.dumps(_set(EVENTS[etype], field, value)).encode(), catalogue)
    assert _get(event, field) == value


@pytest.mark.parametrize(("etype", "field"), TEXT_FIELDS, ids=[f"{t}.{f}" for t, f in TEXT_FIELDS])
@pytest.mark.parametrize(("value", "why"), BAD_TEXTS, ids=[ascii(v) for v, _ in BAD_TEXTS])
def test_free_text_that_is_not_printable_is_rejected(catalogue, etype, field, value, why):
    rejected = _rejected(catalogue, _set(EVENTS[etype], field, value))
    assert rejected.field == field
    assert rejected.reason.startswith(f"{field}: Input should be printable text, not only spaces: {why}"), \
        rejected.reason
    assert rejected.reason.endswith(f"(got {show_value(value)})") and rejected.reason.isprintable()


@pytest.mark.parametrize(("etype", "field"), TEXT_FIELDS, ids=[f"{t}.{f}" for t, f in TEXT_FIELDS])
def test_free_text_is_bounded_and_may_hold_markup(catalogue, etype, field):
    rejected = _rejected(catalogue, _set(EVENTS[etype], field, "x" * (TEXT_MAX + 1)))
    assert rejected.reason.startswith(f"{field}: String should have at most 1000 characters (got ")
    for value in GOOD_TEXTS:
        assert _get(parse_event(_set(EVENTS[etype], field, value), catalogue), field) == value


def test_the_json_schema_holds_the_same_shapes():
    """Pipelines validating with schemas/json/event.schema.json reject what otrules rejects, except
    format characters beyond the BMP (the README lists them as not expressible)."""
    schema = _event_schema()
    for etype, field in ID_FIELDS:
        for value, _ in BAD_IDS:
            assert schema.is_valid(_set(EVENTS[etype], field, value)) is (value in ASTRAL), (field, value)
        assert not schema.is_valid(_set(EVENTS[etype], field, "x" * (ID_MAX + 1)))
        for value in GOOD_IDS:
            assert schema.is_valid(_set(EVENTS[etype], field, value)), (field, value)
    for etype, field in TEXT_FIELDS:
        for value, _ in BAD_TEXTS:
            assert not schema.is_valid(_set(EVENTS[etype], field, value)), (field, value)
        assert not schema.is_valid(_set(EVENTS[etype], field, "x" * (TEXT_MAX + 1)))
        for value in GOOD_TEXTS:
            assert schema.is_valid(_set(EVENTS[etype], field, value)), (field, value)


def test_the_excluded_characters_are_exactly_unicodes_control_format_and_separator_characters():
    """Every code point, through pydantic-core's own regex: Cc, Cf, Zl and Zp are refused, and
    nothing else but code points this Python's Unicode does not assign yet (the list is Unicode
    15.0's). Run on all 1.1 million code points, in strings of up to 1000."""
    text = TypeAdapter(Text)
    refused: set[int] = set()
    allowed = [cp for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and unicodedata.category(chr(cp)) not in _BAD]
    for i in range(0, len(allowed), TEXT_MAX - 2):  # allowed characters pass in bulk; a failing chunk is split up
        chunk = allowed[i: i + TEXT_MAX - 2]
        try:
            text.validate_python("a" + "".join(map(chr, chunk)) + "a")
        except ValueError:
            for cp in chunk:
                try:
                    text.validate_python(f"a{chr(cp)}a")
                except ValueError:
                    refused.add(cp)
    assert all(unicodedata.category(chr(cp)) == "Cn" for cp in refused), sorted(map(hex, refused))
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) in _BAD:
            with pytest.raises(ValueError):
                text.validate_python(f"a{chr(cp)}a")
    with pytest.raises(ValueError):
        TypeAdapter(Id).validate_python("a\u2003")  # EM SPACE at the end of an id


# ---------------------------------------------------------------- escaping


@pytest.mark.parametrize(("value", "escaped"), [
    ("g1", "g1"), ("poc-17-1", "poc-17-1"), ("COPM-performance", "COPM-performance"),
    ("2026-01-05T09:00:00Z", "2026-01-05T09:00:00Z"), ("p 17/3; 4%, x=y?", "p 17/3; 4%, x=y?"),
    ("# URGENT: discharge now <img src=x onerror=alert(1)>",
     r"\# URGENT\: discharge now &lt;img src=x onerror=alert\(1\)&gt;"),
    ("[click](javascript:alert(1))", r"\[click\]\(javascript\:alert\(1\)\)"),
    ("![i](https://evil.example/i.png)", r"\!\[i\]\(https\://evil\.example/i\.png\)"),
    ("| a | b |", r"\| a \| b \|"), ("<javascript:alert(1)>", r"&lt;javascript\:alert\(1\)&gt;"),
    ("https://evil.example", r"https\://evil\.example"), ("www.evil.example", r"www\.evil\.example"),
    ("a@b.example", r"a\@b\.example"), ("*a* _b_ `c` ~~d~~ $e$ ^f^ {g}", r"\*a\* \_b\_ \`c\` \~\~d\~\~ \$e\$ \^f\^ \{g\}"),
    ("&amp; &#106; \\", r"&amp;amp; &amp;\#106; \\"), ("it's \"q\"", "it&#39;s &quot;q&quot;"),
    ("- item", r"\- item"), ("+ item", r"\+ item"), ("===", r"\==="), ("1. one", r"1\. one"), ("12) x", r"12\) x"),
    ("> quote", "&gt; quote"), ("```", r"\`\`\`"), ("x.", r"x\."), (":x", r"\:x"), ("1.5", r"1\.5"),
    ("a\nb\u202ec", "a\ufffdb\ufffdc"),  # never in a valid event; a state from before the rule, say
])
def test_escape_text(value, escaped):
    assert escape_text(value) == escaped


def _inline_text(tokens: list[Token]) -> str:
    """The text of one paragraph, which must hold nothing but text (and line breaks)."""
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], [t.type for t in tokens]
    children = tokens[1].children or []
    assert {c.type for c in children} <= {"text", "softbreak"}, [(c.type, c.content) for c in children]
    return "".join("\n" if c.type == "softbreak" else c.content for c in children)


def _tables(tokens: list[Token]) -> list[list[list[tuple[str, list[str]]]]]:
    """Each table's rows, each row a list of (cell text, the cell's inline token types)."""
    tables: list[list[list[tuple[str, list[str]]]]] = []
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            tables.append([])
        elif t.type == "tr_open":
            tables[-1].append([])
        elif t.type == "inline" and tokens[i - 1].type in ("th_open", "td_open"):
            children = t.children or []
            tables[-1][-1].append(("".join(c.content for c in children), [c.type for c in children]))
    return tables


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _html_tags(markup: str) -> _Tags:
    parser = _Tags()
    parser.feed(markup)
    parser.close()
    return parser


def _github(markdown: str) -> _Tags:
    """What GitHub's renderer (cmark-gfm with its extensions, raw HTML allowed) makes of it."""
    return _html_tags(cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE))


_PRINTABLE = st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=40)
_MARKUP_CHARS = st.text(st.sampled_from(list("\\`*_{}[]()#+-=!|~$^@&<>\"':./ 1aZ\u00a0")), min_size=1, max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_PRINTABLE, _MARKUP_CHARS).map(str.strip).filter(bool))
def test_any_escaped_value_renders_as_itself_and_nothing_else(value):
    """At the start of a line, inside one, and in a table cell: only text comes out of a
    Markdown renderer with raw HTML and linkify on, and it is the value as sent."""
    esc = escape_text(value)
    assert _inline_text(MD.parse(esc)) == value
    assert _inline_text(MD.parse(f"{esc} x")) == f"{value} x"
    assert _inline_text(MD.parse(f"x {esc} x")) == f"x {value} x"
    rows, = _tables(MD.parse(f"| fact | value |\n|---|---|\n| `goal.id` | {esc} |\n| {esc} | 1 |"))
    assert rows == [[("fact", ["text"]), ("value", ["text"])], [("goal.id", ["code_inline"]), (value, ["text"])],
                    [(value, ["text"]), ("1", ["text"])]]
    gh = _github(f"x {esc} x")
    assert "".join(gh.text).strip() == f"x {value} x"
    links = [attrs for tag, attrs in gh.tags if tag == "a"]
    assert [t for t, _ in gh.tags if t != "a"] == ["p"]
    # the one link cmark-gfm makes whatever the escapes: its e-mail autolink (documented), to the text shown
    assert all("@" in value and (a["href"] or "").startswith(("mailto:", "xmpp:"))
               and (a["href"] or "").split(":", 1)[1] in value for a in links), links
    assert not _html_tags(esc).tags  # put into HTML as it is, it makes no element either


# GFM's extended e-mail autolink, which cmark-gfm applies to text whatever its escapes
EMAIL = re.compile(r"[A-Za-z0-9.+_-]+@[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")


def test_github_links_an_e_mail_address_whatever_its_escapes():
    """The one thing escaping cannot stop (documented): cmark-gfm's e-mail autolink. The link goes
    to the address shown, nowhere else; markdown-it, like most renderers, makes no link of it."""
    esc = escape_text("x ot.lead@clinic.example y")
    assert _inline_text(MD.parse(esc)) == "x ot.lead@clinic.example y"
    assert _github(esc).tags == [("p", {}), ("a", {"href": "mailto:ot.lead@clinic.example"})]


# ---------------------------------------------------------------- through the rules


MARKUP = {
    "patient_id": "{} <img src=x onerror=alert(1)> | x |",
    "plan_id": "[{}](javascript:alert(1)) ![i](https://evil.example/i.png)",
    "goal_id": "# URGENT: discharge now {} | a | b |",
    "event_id": "- {} *_`x`_* <script>alert(1)</script>",
    "clinician_id": "{} <b onclick=alert(1)>ot</b>",
    "description": "**{}** <iframe src=https://evil.example></iframe> [x](https://evil.example)",
    "reason": "1. {} - [ ] www.evil.example &amp; &#106;avascript\\: <a href='javascript:alert(1)'>x</a>",
}


def _marked(event: dict[str, Any]) -> dict[str, Any]:
    """The event with markup around every id and text (instruments stay: the catalogue knows them)."""
    out = dict(event)
    for field in ("patient_id", "plan_id", "event_id", "clinician_id", "reason"):
        if field in out:
            out[field] = MARKUP[field].format(out[field])
    if "goals" in out:
        out["goals"] = [{**g, "goal_id": MARKUP["goal_id"].format(g["goal_id"]),
                         "description": MARKUP["description"].format(g["description"])} for g in out["goals"]]
    if "measures" in out:
        out["measures"] = [{**m, **({"goal_id": MARKUP["goal_id"].format(m["goal_id"])} if "goal_id" in m else {})}
                           for m in out["measures"]]
    return out


def _rules_by_id(engine: Engine) -> dict[str, Any]:
    return {r.id: r for rs in engine.rulesets for r in rs.rules}


def _plain(template: str, evidence: dict[str, Any]) -> str:
    """A template filled with the evidence as plain text: what a reader must see."""
    return _PLACEHOLDER.sub(lambda m: format_value(evidence[m.group(1).strip()]), template)


def _check_summary(rec: Recommendation, template: str) -> None:
    assert len(rec.summary) <= SUMMARY_MAX
    expected = _plain(template, rec.evidence)
    shown = _inline_text(MD.parse(rec.summary))
    if rec.summary.endswith("…") and not expected.endswith("…"):  # cut: a prefix of what it says
        assert expected.startswith(shown[:-1]), (shown, expected)
    else:
        assert shown == expected
    assert [t for t, _ in _github(rec.summary).tags] == ["p"]
    assert not _html_tags(rec.summary).tags  # put into HTML as it is, it makes no element either


def _check_detail(rec: Recommendation, plain: Recommendation | None = None) -> None:
    assert rec.detail is not None
    tokens = MD.parse(rec.detail)
    kinds = {t.type for t in tokens} | {c.type for t in tokens for c in t.children or []}
    assert not kinds & {"html_block", "html_inline", "link_open", "image", "heading_open", "fence", "code_block",
                        "blockquote_open", "ordered_list_open", "hr", "em_open", "strong_open", "s_open"}, kinds
    rows = _tables(tokens)[-1]  # the evidence: the last table
    assert rows[0] == [("fact", ["text"]), ("value", ["text"])]
    assert rows[1:] == [[(name, ["code_inline"]), (format_value(value), ["text"])]
                        for name, value in rec.evidence.items()]
    tags = {t for t, _ in _github(rec.detail).tags}
    assert tags <= {"p", "code", "table", "thead", "tbody", "tr", "th", "td", "ul", "li"}, tags
    if plain is not None:  # the same Markdown structure as with plain ids: nothing added, nothing lost
        assert [(t.type, [c.type for c in t.children or []]) for t in tokens] == \
            [(t.type, [c.type for c in t.children or []]) for t in MD.parse(plain.detail or "")]


def _default_cases() -> list[ruletests.Case]:
    return [case for path in ruletests.find_suites([ROOT / "rules"]) for case in ruletests.load_suite(path).cases]


def test_markup_in_every_id_and_text_goes_through_every_default_rule_as_text(engine):
    """Every case of the default rules' own tests, again with markup around every id and text:
    the same recommendations, each summary and detail reading the markup as text."""
    rules = _rules_by_id(engine)
    fired: set[str] = set()
    for case in _default_cases():
        plain = ruletests.run_case(engine, case)
        marked = ruletests.run_case(engine, dataclasses.replace(
            case, events=[e if e["type"] == "clock" else _marked(e) for e in case.events]))
        assert marked.error is None and plain.error is None, (case.name, marked.error, plain.error)
        assert len(marked.produced) == len(plain.produced), case.name
        for rec, was in zip(marked.produced, plain.produced, strict=True):
            assert (rec.rule.id, rec.kind, rec.indicator) == (was.rule.id, was.kind, was.indicator), case.name
            assert rec.patient_id == MARKUP["patient_id"].format(was.patient_id)
            assert rec.goal_id == (None if was.goal_id is None else MARKUP["goal_id"].format(was.goal_id))
            _check_summary(rec, rules[rec.rule.id].recommend.summary)
            _check_detail(rec, was)
            fired.add(rec.rule.id)
    assert fired == set(rules), f"no case fires {sorted(set(rules) - fired)}"


EVERY_TEXT_RULES = """\
ruleset: t
version: "1"
rules:
  - id: every-text
    when: measure.count >= 1
    recommend:
      kind: clinical_review
      indicator: info
      summary: "{patient.id} {plan.id} {goal.id} {measure.instrument} {goal.instrument}"
      detail: "{goal.id}\\n{plan.id}\\n\\n{patient.id} and {measure.instrument} ({goal.instrument})\\n\\n| a | b |\\n|---|---|\\n| {goal.id} | {plan.id} |"
  - id: discharged
    when: event.type == "discharge"
    recommend:
      kind: discharge
      indicator: info
      summary: "{event.reason} on {plan.id}"
      detail: "{event.reason}\\n\\n- {event.reason}\\n\\n{event.occurred_at} {event.reason}"
"""


@pytest.mark.parametrize("instrument", ["<b>x</b>|y", "[a](javascript:alert(1))", "# H", "-", "1.", "x" * ID_MAX])
def test_markup_in_every_text_fact_comes_out_as_text(instrument):
    """A rule that names every text fact in its summary and in a detail that puts them at the
    start of lines and in a table of its own; an instrument the catalogue does not know."""
    engine = engine_for(EVERY_TEXT_RULES)
    story = Story(patient="p-1").plan(0, [goal("g1", instrument, 3, 7)]).evaluation(14, (instrument, 5, "g1")) \
        .discharge(20, reason="goals met")
    recs = run_story(engine, [_marked(e) for e in story.events])
    assert [r.rule.id for r in recs] == ["every-text", "discharged"]
    rules = _rules_by_id(engine)
    for rec in recs:
        _check_summary(rec, rules[rec.rule.id].recommend.summary)
        _check_detail(rec)
    every, discharged = (MD.parse(r.detail or "") for r in recs)
    # the rule's own text: two lines of one paragraph, then one; the markup in each is text
    assert _inline_text(every[0:3]) == f"{MARKUP['goal_id'].format('g1')}\n{MARKUP['plan_id'].format('poc-1')}"
    assert _inline_text(every[3:6]) == f"{MARKUP['patient_id'].format('p-1')} and {instrument} ({instrument})"
    own, _evidence = _tables(every)  # the rule's own table keeps its two columns
    assert own == [[("a", ["text"]), ("b", ["text"])],
                   [(MARKUP["goal_id"].format("g1"), ["text"]), (MARKUP["plan_id"].format("poc-1"), ["text"])]]
    reason = MARKUP["reason"].format("goals met")
    assert [t.type for t in discharged[:9]] == ["paragraph_open", "inline", "paragraph_close", "bullet_list_open",
                                                "list_item_open", "paragraph_open", "inline", "paragraph_close",
                                                "list_item_close"]
    assert _inline_text(discharged[0:3]) == reason and _inline_text(discharged[5:8]) == reason
    assert _inline_text(discharged[10:13]) == f"2026-01-25T16:00:00Z {reason}"


@pytest.mark.parametrize("lead", range(8))
def test_a_cut_summary_never_splits_an_escape(lead):
    """A summary over 139 characters is cut between whole escapes, wherever the cut falls."""
    engine = engine_for('ruleset: t\nversion: "1"\nrules:\n  - id: long\n    when: measure.count >= 1\n'
                        '    recommend: {kind: clinical_review, indicator: info, summary: "{goal.id}"}\n')
    gid = ("x" * lead + "&|<\"'" * 25)[:ID_MAX]  # escaped, 4 to 6 characters each
    rec, = run_story(engine, Story().plan(0, [goal(gid, "COPM-performance", 3, 9)])
                     .evaluation(14, ("COPM-performance", 5, gid)))
    assert rec.summary.endswith("…") and len(rec.summary) <= SUMMARY_MAX
    body = rec.summary[:-1]
    assert re.fullmatch(r"x*(?:&amp;|\\\||&lt;|&quot;|&#39;)*", body), body
    assert len(body) > SUMMARY_MAX - 7  # cut after the last whole escape that fits, not earlier
    shown = _inline_text(MD.parse(rec.summary))
    assert shown.endswith("…") and gid.startswith(shown[:-1])


def test_a_condition_with_backticks_and_blank_lines_stays_one_code_span():
    """The condition shown in the detail is the rule author's, but a YAML block may hold a blank
    line and a quoted text a backtick: either would have ended the code span."""
    engine = engine_for('ruleset: t\nversion: "1"\nrules:\n  - id: d\n    when: |\n      event.type == "discharge"\n\n'
                        '      and event.reason != "a`b # c"\n'
                        '    recommend: {kind: discharge, indicator: info, summary: "{event.reason}"}\n')
    rec, = run_story(engine, Story().plan(0).discharge(3, reason="goals met"))
    tokens = MD.parse(rec.detail or "")
    assert [t.type for t in tokens[:3]] == ["paragraph_open", "inline", "paragraph_close"]
    assert [(c.type, c.content) for c in tokens[1].children or []] == [
        ("text", "Rule "), ("code_inline", "d"), ("text", " matched: "),
        ("code_inline", 'event.type == "discharge"  and event.reason != "a`b # c"')]
    _check_detail(rec)
